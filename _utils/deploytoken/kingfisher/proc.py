"""Facts about running processes from /proc: command line, start time, process groups, environment, sockets."""

import dataclasses
import os
import time

_TICKS = os.sysconf("SC_CLK_TCK")


def _boot_time():
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("btime "):
                return int(line.split()[1])
    raise OSError("no btime line in /proc/stat")


def _split_stat(text):
    """``(comm, fields after it)``: the name is in parentheses and may itself hold spaces or parentheses."""
    return text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as handle:
        return _split_stat(handle.read())[1]


def cmdline(pid):
    """The argument list of ``pid`` (empty for kernel threads and zombies)."""
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return [arg.decode(errors="replace") for arg in handle.read().split(b"\0") if arg]


def started(pid):
    """When ``pid`` started, in seconds since the epoch."""
    return _boot_time() + int(_stat_fields(pid)[19]) / _TICKS


def parent(pid):
    return int(_stat_fields(pid)[1])


def pids():
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def seconds_since(epoch, now=None):
    return max(0, int((time.time() if now is None else now) - epoch))


@dataclasses.dataclass(frozen=True)
class Process:
    """One process as ``/proc/PID/stat`` and the owner of ``/proc/PID`` show it."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    sid: int
    # The foreground process group of the process's terminal (-1 without one).
    tpgid: int
    started: float
    uid: int

    @property
    def stopped(self):
        return self.state in ("T", "t")


def scan():
    """Every process now, by pid, from one pass over /proc; those that end while it reads are left out."""
    boot = _boot_time()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                comm, fields = _split_stat(handle.read())
                uid = os.fstat(handle.fileno()).st_uid
        except (OSError, ValueError):
            continue
        pid = int(entry)
        found[pid] = Process(pid=pid, comm=comm, state=fields[0], ppid=int(fields[1]), pgid=int(fields[2]),
                             sid=int(fields[3]), tpgid=int(fields[5]), started=boot + int(fields[19]) / _TICKS,
                             uid=uid)
    return found


def environ(pid, names):
    """The variables ``names`` (bytes) of ``pid``'s environment as it started, as str; {} when it cannot be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            text = handle.read()
    except OSError:
        return {}
    found = {}
    for item in text.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name in names:
            found[name.decode()] = value.decode(errors="replace")
    return found


def socket_inodes(pid):
    """The inodes of the sockets ``pid`` holds open (readable by root or the owner)."""
    found = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[len("socket:["):-1]))
    return found
