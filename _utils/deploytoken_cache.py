"""
A read cache shared by every process on one machine: the master compiles pillar in several worker
processes at once, and each compile would otherwise read the token store.

The value lives in a small JSON file with the time it was read. A lock file serialises the refresh,
so however many processes ask at once, the store is read at most once per ``max_age`` seconds.
"""

import fcntl
import json
import os
import tempfile
import time


def cached(path, max_age, read, clock=time.time):
    """The value ``read()`` returned at most ``max_age`` seconds ago, calling it only when needed.

    ``read`` must return JSON-serialisable data. Cache files that cannot be used are ignored: the
    cache only ever saves reads, it never decides anything.
    """
    value = _fresh(path, max_age, clock)
    if value is not None:
        return value["data"]
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Another process may have refreshed it while this one waited for the lock.
        value = _fresh(path, max_age, clock)
        if value is not None:
            return value["data"]
        data = read()
        _write(path, {"read_at": clock(), "data": data})
        return data


def forget(path):
    """Drop the cached value, so the next ``cached`` call reads again."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fresh(path, max_age, clock):
    try:
        with open(path) as handle:
            value = json.load(handle)
        age = clock() - float(value["read_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if 0 <= age < max_age else None


def _write(path, value):
    """Write atomically, so a reader sees the old file or the new one, never half of one."""
    directory = os.path.dirname(path) or "."
    handle, temp = tempfile.mkstemp(dir=directory, prefix=".deploytoken-cache-")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(value, out)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
