"""
The master's own small files (the read cache, the Google store's spool and noted claims): written
atomically with mode 0600, in folders only the master's user can write, under locks that a local user
can neither create nor hold.
"""

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time

LOCK_POLL = 0.05


class LockTimeout(Exception):
    """Another process kept the lock for longer than the caller wanted to wait."""


class ForeignFolder(Exception):
    """A folder that someone other than this user can write, and that this user cannot repair."""


def private_dir(path):
    """Create ``path`` (mode 0700) or make sure nobody but this user can write it; return ``path``.

    A folder of ours that others may write is repaired (group and other write bits removed); a folder
    owned by another user raises ForeignFolder, since its owner could swap our files under us.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (os.geteuid(), 0):
        raise ForeignFolder(f"The folder {path} is not a folder owned by this user or root.")
    if info.st_mode & 0o022:
        if info.st_uid != os.geteuid():
            raise ForeignFolder(f"The folder {path} can be written by other users.")
        os.chmod(path, stat.S_IMODE(info.st_mode) & ~0o022)
    return path


def write_json(path, data):
    """Write ``data`` as JSON so that a reader sees the old file or the new one, never half of one.

    The temporary file sits in the same folder (so the rename is atomic), is synced before the rename,
    has mode 0600, and is removed if anything fails.
    """
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".deploytoken-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def locked(path, timeout=None):
    """Hold an exclusive lock on the file ``path`` (created 0600, never through a symlink).

    With ``timeout`` (seconds), LockTimeout is raised once the lock stayed taken that long.
    """
    descriptor = _open_lock(path)
    try:
        if timeout is None:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"The lock {path} stayed taken for {timeout} s.") from None
                    time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(descriptor)


def _open_lock(path):
    """A descriptor on the lock file ``path`` that is this user's and private.

    A lock file left readable by an older version (or not this user's) is replaced by a new one, not
    chmod-ed: whoever opened it while it was readable keeps their handle, and could hold its lock for
    ever. Only such a file is ever replaced, and it is checked to be still in place just before.
    """
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        info = os.fstat(descriptor)
        if info.st_uid == os.geteuid() and not info.st_mode & 0o077:
            return descriptor
        os.close(descriptor)
        handle, fresh = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".deploytoken-lock-")
        os.close(handle)
        try:
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
                os.replace(fresh, path)
        except FileNotFoundError:
            pass  # removed meanwhile: the next open creates it
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fresh)
