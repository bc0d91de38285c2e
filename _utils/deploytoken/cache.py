"""
A read cache shared by every process on one machine: the master compiles pillar in several worker
processes at once, and each compile would otherwise read the token store; the Google store's status
reads use it too.

The value lives in a small JSON file with the time it was read. A lock file serialises the refresh,
so however many processes ask at once, the store is read at most once per ``max_age`` seconds. The
files sit in a folder only this user can write, and the wait for the lock is bounded: a local user who
could hold the lock forever would otherwise stall every pillar compile.
"""

import contextlib
import json
import logging
import os
import time

from deploytoken import files

LOCK_WAIT = 5

log = logging.getLogger(__name__)


def cached(path, max_age, read, clock=time.time, lock_wait=LOCK_WAIT):
    """The value ``read()`` returned at most ``max_age`` seconds ago, calling it only when needed.

    ``read`` must return JSON-serialisable data. Cache files that cannot be used are ignored, and a
    lock still taken after ``lock_wait`` seconds means reading directly: the cache only ever saves
    reads, it never decides anything and never makes a reader wait for long.
    """
    if max_age <= 0:
        return read()
    value = _fresh(path, max_age, clock)
    if value is not None:
        return value["data"]
    with contextlib.ExitStack() as stack:
        try:
            files.private_dir(os.path.dirname(path) or ".")
            stack.enter_context(files.locked(path + ".lock", timeout=lock_wait))
        except (files.LockTimeout, files.ForeignFolder, OSError) as exc:
            log.warning("deploytoken: the read cache %s cannot be used (%s); reading directly", path, exc)
            return read()
        # Another process may have refreshed it while this one waited for the lock.
        value = _fresh(path, max_age, clock)
        if value is not None:
            return value["data"]
        data = read()
        files.write_json(path, {"read_at": clock(), "data": data})
        return data


def forget(path):
    """Drop the cached value, so the next ``cached`` call reads again."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fresh(path, max_age, clock):
    try:
        with open(path) as handle:
            value = json.load(handle)
        age = clock() - float(value["read_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if 0 <= age < max_age else None
