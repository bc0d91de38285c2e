"""Facts about running processes from /proc: command line, start time, foreground process group."""

import os
import time

_TICKS = os.sysconf("SC_CLK_TCK")


def _boot_time():
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("btime "):
                return int(line.split()[1])
    raise OSError("no btime line in /proc/stat")


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return text[text.rindex(")") + 2:].split()


def cmdline(pid):
    """The argument list of ``pid`` (empty for kernel threads and zombies)."""
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return [arg.decode(errors="replace") for arg in handle.read().split(b"\0") if arg]


def started(pid):
    """When ``pid`` started, in seconds since the epoch."""
    return _boot_time() + int(_stat_fields(pid)[19]) / _TICKS


def parent(pid):
    return int(_stat_fields(pid)[1])


def foreground_pid(pid):
    """The leader of the foreground process group on ``pid``'s terminal (``pid`` itself without one)."""
    tpgid = int(_stat_fields(pid)[5])
    return tpgid if tpgid > 0 else pid


def pids():
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def seconds_since(epoch, now=None):
    return max(0, int((time.time() if now is None else now) - epoch))
