"""
Waking up when a file changes, instead of reading it again and again: Linux's inotify, through ctypes
(the standard library has no binding, and a dependency for three calls is not worth it).

The embedded store's waiters use it: SQLite writes a commit into the store file itself (the store uses
the default rollback journal), so a release wakes every waiter within milliseconds, and a waiter costs
nothing while nothing changes. ``PRAGMA data_version`` would need a poll per waiter a few times a second
for the whole wait; inotify needs none. Where inotify is missing (not Linux, or no instance left),
``watch`` returns None and the caller falls back to trying again after its interval.
"""

import ctypes
import os
import select
import sys

# From <sys/inotify.h>; stable kernel ABI.
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
# A file changed in place, or was replaced or removed (the watch then follows the old file: wake up and look).
CHANGED = IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF
_EVENTS = 65536


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class Watch:
    """An inotify instance watching some paths; ``wait`` returns at the first change."""

    def __init__(self, fd):
        self.fd = fd
        self._poll = select.poll()  # not select(): a master's descriptors may pass 1024
        self._poll.register(fd, select.POLLIN)

    def wait(self, seconds):
        """True as soon as something changed since the last call (or now), False after ``seconds``."""
        came = bool(self._poll.poll(max(0.0, seconds) * 1000))
        if came:
            try:
                while os.read(self.fd, _EVENTS):
                    pass  # every queued event counts as one change: look once
            except BlockingIOError:
                pass
        return came

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def watch(targets):
    """A ``Watch`` of ``targets`` (``[(path, mask)]``), or None where inotify cannot be used."""
    if _LIBC is None:
        return None
    fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return None
    for path, mask in targets:
        if _LIBC.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
            os.close(fd)
            return None
    return Watch(fd)
