"""
Every tmux server on this machine, its sessions and what runs in each pane.

Servers are found from the listening unix sockets in /proc/net/unix whose directory is tmux's
``tmux-<uid>`` (this catches ``-L`` names and any ``TMUX_TMPDIR``), and queried with
``tmux -S SOCKET list-panes -a`` run as the socket's owner. Unlike ``su USER -c "tmux ls"`` this needs
no login shell (nologin users too), creates no directory, and runs no shell at all. A socket file in a
``tmux-<uid>`` directory that nobody listens on is a stale socket.

Every socket path comes from someone, so a server is queried only when tmux itself would trust it: the
path is a socket (not a symbolic link), in a directory named for, and owned by, the socket's owner,
that other users can neither enter nor change. The directory is opened once and the client reaches
the socket through that open directory, as the owner, so nothing can be swapped in between: root's
client only ever talks to a socket in root's own directory. Anything else is a warning, never queried.
Servers of different users are queried side by side.
"""

import concurrent.futures
import dataclasses
import datetime
import os
import pathlib
import pwd
import re
import shutil
import stat
import subprocess
import time

from deploytoken.kingfisher import proc
from deploytoken.kingfisher.errors import InputError, SourceError
from deploytoken.model import human_duration as duration

TMUX_DIR = re.compile(r"\Atmux-[0-9]+\Z")
# A POSIX-portable user name (what useradd accepts by default), so nothing odd reaches a command.
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
SHELLS = {"bash", "sh", "dash", "zsh", "fish", "ksh", "tcsh", "csh", "mksh"}
SEP = "\x1f"
FIELDS = (
    "session_name", "session_created", "session_attached", "session_activity",
    "window_index", "window_name", "pane_index", "pane_pid", "pane_current_command",
)
TIMEOUT = 10
# What tmux's client says when nothing accepts on the socket (ECONNREFUSED or ENOENT).
NO_SERVER = "no server running on"
# Listening stream sockets in /proc/net/unix: flag __SO_ACCEPTCON, type SOCK_STREAM, state unconnected.
ACCEPTING = 0x10000
# An entry's fixed fields (Num, RefCount, Protocol, Flags, Type, St, Inode) before its path.
NET_UNIX_LINE = re.compile(r"^[0-9A-Fa-f]+:(?: [0-9A-Fa-f]+){5} [0-9]+ ")
# tmux clients are short waits on their servers; a few at once, whatever the number of users.
WORKERS = 8


def check_users(users):
    """``None`` for "auto", else the list of user names; InputError for a name that is not one."""
    if users is None or users == "auto":
        return None
    if isinstance(users, str):
        users = [name.strip() for name in users.split(",") if name.strip()]
    if not isinstance(users, (list, tuple)) or not users:
        raise InputError("users must be 'auto' or a list of user names, like users=alice,bob.")
    for name in users:
        if not isinstance(name, str) or not USER_NAME.match(name):
            raise InputError(f"{name!r} is not a valid user name: use letters, digits, '_' and '-'.")
    return tuple(users)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Whose tmux servers to report (``kingfisher:tmux:users``): ``auto`` is None, else user names."""

    users: tuple | None = None

    @classmethod
    def parse(cls, raw):
        return cls(users=check_users(raw.get("users", "auto")))


def home_users(home="/home"):
    """Users with a home in /home, and one warning per entry whose name cannot be a user name."""
    names, warnings = [], []
    try:
        entries = sorted(os.listdir(home))
    except OSError:
        return names, warnings
    for entry in entries:
        if not USER_NAME.match(entry):
            warnings.append(f"Skipped {home}/{entry}: {entry!r} is not a valid user name.")
        elif os.path.isdir(os.path.join(home, entry)):
            names.append(entry)
    return names, warnings


def listening_sockets(net_unix="/proc/net/unix"):
    """
    Paths of listening unix stream sockets. A path holding a line break forges a line of its own, so
    these are only candidates: ``sessions`` checks each on disk before anything connects to it.
    """
    paths = set()
    with open(net_unix, errors="surrogateescape") as handle:
        next(handle)
        for line in handle:
            parts = line.split(None, 7)
            if len(parts) == 8 and NET_UNIX_LINE.match(line) and int(parts[3], 16) & ACCEPTING and parts[4] == "0001":
                paths.add(parts[7].rstrip("\n"))
    return paths


def socket_files(tmpdirs):
    """Socket files inside ``tmux-<uid>`` directories of ``tmpdirs``; creates nothing.

    Only a real directory owned by the uid in its name counts, read through one handle opened without
    following a symbolic link: a ``tmux-1001`` link to another folder must not make root list it.
    """
    found = set()
    for tmpdir in tmpdirs:
        try:
            names = [name for name in os.listdir(tmpdir) if TMUX_DIR.match(name)]
        except OSError:
            continue
        for name in names:
            directory = os.path.join(tmpdir, name)
            try:
                dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if os.fstat(dir_fd).st_uid != int(name[len("tmux-"):]):
                    continue
                for entry in os.listdir(dir_fd):
                    if stat.S_ISSOCK(os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                        found.add(os.path.join(directory, entry))
            except OSError:
                continue
            finally:
                os.close(dir_fd)
    return found


def _name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _owner(path):
    try:
        return _name(os.lstat(path).st_uid)
    except OSError:
        return None


class Unsafe(Exception):
    """A socket that tmux itself would not trust; the message says why, for a warning."""


@dataclasses.dataclass(frozen=True)
class Server:
    """A checked socket: its directory held open (``dir_fd``), the socket's name in it, and its owner."""

    path: str
    dir_fd: int
    name: str
    uid: int
    gid: int

    @property
    def owner(self):
        return _name(self.uid)

    @property
    def reachable_path(self):
        """The socket through the directory we checked, whatever now sits at the original path."""
        return f"/proc/self/fd/{self.dir_fd}/{self.name}"


def open_server(path):
    """
    The Server at ``path`` (close its ``dir_fd``), None when nothing is there any more, or Unsafe
    when it is not a socket in a ``tmux-<uid>`` directory owned by its owner and closed to others.
    """
    directory, name = os.path.split(path)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Unsafe(f"its directory {directory} cannot be opened as a directory ({exc.strerror})") from None
    try:
        folder = os.fstat(dir_fd)
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.close(dir_fd)
            return None
        if stat.S_ISLNK(info.st_mode):
            raise Unsafe("it is a symbolic link, not a socket")
        if not stat.S_ISSOCK(info.st_mode):
            raise Unsafe("it is not a socket")
        if folder.st_uid != info.st_uid:
            raise Unsafe(f"it belongs to {_name(info.st_uid)} but its directory belongs to {_name(folder.st_uid)}")
        if os.path.basename(directory) != f"tmux-{info.st_uid}":
            raise Unsafe(f"its directory is not named tmux-{info.st_uid} after its owner {_name(info.st_uid)}")
        if folder.st_mode & (stat.S_IWGRP | stat.S_IRWXO):
            raise Unsafe(f"other users can enter or change its directory (mode {stat.S_IMODE(folder.st_mode):04o})")
    except BaseException:
        os.close(dir_fd)
        raise
    return Server(path, dir_fd, name, info.st_uid, info.st_gid)


def _iso(epoch):
    return datetime.datetime.fromtimestamp(int(epoch)).astimezone().isoformat(timespec="seconds")


def _pane(fields, now):
    pane_pid = int(fields["pane_pid"])
    command = fields["pane_current_command"]
    pane = {
        "window": f"{fields['window_index']}:{fields['window_name']}",
        "pane": int(fields["pane_index"]),
        "command": command,
        "cmdline": None,
        "pid": pane_pid,
        "running_for": None,
        "idle": command in SHELLS,
    }
    try:
        pid = proc.foreground_pid(pane_pid)
        pane["pid"] = pid
        pane["cmdline"] = " ".join(proc.cmdline(pid))
        pane["running_for"] = proc.seconds_since(proc.started(pid), now)
    except (OSError, ValueError, IndexError):
        pass  # the pane's process ended between tmux's answer and our look
    return pane


def parse_panes(text, owner, socket, now=None):
    """tmux's ``list-panes -a`` lines (FIELDS joined by SEP) as sessions with their panes."""
    now = time.time() if now is None else now
    sessions = {}
    for line in text.splitlines():
        values = line.split(SEP)
        if len(values) != len(FIELDS):
            continue
        fields = dict(zip(FIELDS, values))
        name = fields["session_name"]
        if name not in sessions:
            sessions[name] = {
                "owner": owner,
                "socket": socket,
                "name": name,
                "created": _iso(fields["session_created"]),
                "attached": int(fields["session_attached"] or 0),
                "last_activity": _iso(fields["session_activity"]),
                "panes": [],
            }
        sessions[name]["panes"].append(_pane(fields, now))
    for session in sessions.values():
        session["idle"] = all(pane["idle"] for pane in session["panes"])
    return list(sessions.values())


def query(server, tmux="tmux"):
    """
    The raw ``list-panes -a`` answer of a checked ``server``; OSError or CalledProcessError.

    As root, the tmux client runs as the socket's owner: a server is the owner's program, and a tmux
    server can ask its client to run commands, which must never happen as root. The client reaches
    the socket through the directory ``open_server`` checked and holds open.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    command = [tmux, "-S", server.reachable_path, "list-panes", "-a", "-F", SEP.join("#{%s}" % f for f in FIELDS)]
    switch = {}
    if os.geteuid() == 0 and server.uid != 0:
        # setpriv (util-linux) switches users in a program of its own, so Python can start it with a
        # vfork: a fraction of the cost of the full fork it needs to switch users itself, which adds
        # up over many users in a large minion process.
        setpriv = shutil.which("setpriv", path=env["PATH"])
        if setpriv:
            command = [setpriv, f"--reuid={server.uid}", f"--regid={server.gid}", "--clear-groups", "--", *command]
        else:
            switch = {"user": server.uid, "group": server.gid, "extra_groups": []}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, env=env, stdin=subprocess.DEVNULL, check=True,
        pass_fds=(server.dir_fd,), cwd="/", **switch,
    )
    return done.stdout


def _read_server(path, users, tmux, now):
    """``("sessions" | "errors" | "warnings", items)`` for one live socket; None to leave it out."""
    try:
        server = open_server(path)
    except Unsafe as exc:
        return "warnings", [f"Skipped the tmux socket {path!r}: {exc}, so it was not queried."]
    if server is None or (users is not None and server.owner not in users):
        if server is not None:
            os.close(server.dir_fd)
        return None
    try:
        return "sessions", parse_panes(query(server, tmux), server.owner, path, now)
    except subprocess.CalledProcessError as exc:
        if NO_SERVER in (exc.stderr or ""):
            # Nothing accepts on it: a stale socket, listed as live only by a forged /proc/net/unix line.
            return "stale", [{"socket": path, "owner": server.owner}]
        reason = (exc.stderr or "").strip().replace(server.reachable_path, path) or f"exit status {exc.returncode}"
        error = f"tmux failed: {reason.rstrip('.')}."
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = f"tmux failed: {exc}."
    finally:
        os.close(server.dir_fd)
    return "errors", [{"socket": path, "owner": server.owner, "error": error}]


def sessions(settings, tmpdirs=None, home="/home", tmux="tmux"):
    """
    ``{"sessions", "stale", "errors", "checked", "warnings"}``: every session of every live server
    (only those of ``settings.users`` when given), stale sockets, servers that could not be read, and
    sockets that were not queried because tmux itself would not trust them.
    """
    users = settings.users
    if tmpdirs is None:
        tmpdirs = sorted({"/tmp", os.environ.get("TMUX_TMPDIR") or "/tmp"})
    warnings = []
    if users is None:
        names, warnings = home_users(home)
        checked = ["root", *names]
    else:
        checked = list(users)
    live = {path for path in listening_sockets() if TMUX_DIR.match(pathlib.Path(path).parent.name)}
    report = {"sessions": [], "stale": [], "errors": [], "checked": checked, "warnings": warnings}
    for socket in sorted(socket_files(tmpdirs) - live):
        owner = _owner(socket)
        if users is None or owner in users:
            report["stale"].append({"socket": socket, "owner": owner})
    now = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        answers = pool.map(lambda path: _read_server(path, users, tmux, now), sorted(live))
        for answer in answers:
            if answer is not None:
                report[answer[0]].extend(answer[1])
    return report


def read(settings):
    """``sessions`` for the busy check; a failure to look at all is a SourceError."""
    try:
        return sessions(settings)
    except OSError as exc:
        raise SourceError(f"tmux sessions cannot be listed: {exc}") from None


def reasons(report):
    """One sentence per pane that runs something, and per server that cannot be read."""
    found = []
    for session in report.get("sessions", []):
        for pane in session["panes"]:
            if not pane["idle"]:
                found.append(
                    f"tmux session {session['name']!r} of {session['owner']} runs "
                    f"{pane['cmdline'] or pane['command']!r} (for {duration(pane['running_for'])})."
                )
    found += [
        f"The tmux server of {error['owner']} at {error['socket']} cannot be read: {error['error']}"
        for error in report.get("errors", [])
    ]
    return found
