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

tmux names the panes; what runs in them comes from /proc (``panes``): a pane counts as idle only while
nothing but an interactive shell waits at its prompt. A live tmux server that cannot be asked (its
socket or its ``tmux-<uid>`` folder was deleted, as clearing /tmp does) is never skipped: it is found
among the processes and reported as unreadable, with what runs in it, which counts as busy.
"""

import concurrent.futures
import contextlib
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

from deploytoken.kingfisher import panes as pane_truth
from deploytoken.kingfisher import proc
from deploytoken.kingfisher.errors import InputError, SourceError
from deploytoken.model import human_duration as duration

TMUX_DIR = re.compile(r"\Atmux-[0-9]+\Z")
# A POSIX-portable user name (what useradd accepts by default), so nothing odd reaches a command.
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
SEP = "\x1f"
FIELDS = (
    "session_name", "session_created", "session_attached", "session_activity",
    "window_index", "window_name", "pane_index", "pane_pid", "pane_current_command", "pane_id", "pid",
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


def accounts(users):
    """``{name: uid}`` of ``users`` (None: everyone); InputError for a name that is no account here."""
    if users is None:
        return None
    found = {}
    for name in users:
        try:
            found[name] = pwd.getpwnam(name).pw_uid
        except KeyError:
            raise InputError(
                f"There is no user account {name!r} on this server, so its tmux sessions cannot be checked: "
                "give the names of accounts (users=alice,bob) or users=auto.") from None
    return found


@dataclasses.dataclass(frozen=True)
class Settings:
    """Whose tmux servers to report (``kingfisher:tmux:users``): ``auto`` is None, else user names."""

    users: tuple | None = None

    @classmethod
    def parse(cls, raw):
        return cls(users=check_users(raw.get("users", "auto")))

    def check_here(self):
        """InputError when a user named is no account on this server (checked where the sessions are read)."""
        accounts(self.users)


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


def listening(net_unix="/proc/net/unix"):
    """
    ``{inode: path}`` of listening unix stream sockets bound to a path. A path holding a line break forges
    a line of its own, so these are only candidates: ``sessions`` checks each on disk before anything
    connects to it. A socket whose file was deleted is still listed under the path it was bound to.
    """
    found = {}
    with open(net_unix, errors="surrogateescape") as handle:
        next(handle)
        for line in handle:
            parts = line.split(None, 7)
            if len(parts) == 8 and NET_UNIX_LINE.match(line) and int(parts[3], 16) & ACCEPTING and parts[4] == "0001":
                found[int(parts[6])] = parts[7].rstrip("\n")
    return found


def listening_sockets(net_unix="/proc/net/unix"):
    """The paths of ``listening``."""
    return set(listening(net_unix).values())


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


def _pane(fields, table, now):
    pane_pid = int(fields["pane_pid"])
    truth = pane_truth.pane(table, _int(fields["pid"]), fields["pane_id"], pane_pid, now)
    pane = {
        "window": f"{fields['window_index']}:{fields['window_name']}",
        "pane": int(fields["pane_index"]),
        "pane_id": fields["pane_id"],
        "command": fields["pane_current_command"],
        "cmdline": None,
        "pid": pane_pid,
        "running_for": None,
        "idle": truth["idle"],
        "background": False,
        "stopped": False,
        "detached": False,
        "more": 0,
    }
    if truth["work"]:
        first = truth["work"][0]
        shown = ("command", "cmdline", "pid", "running_for", "background", "stopped", "detached")
        pane.update({key: first[key] for key in shown})
        pane["more"] = len(truth["work"]) - 1
    elif truth["shell"] is not None:
        shell = table.processes[truth["shell"]]
        pane.update(command=shell.comm, cmdline=" ".join(table.cmdline(shell.pid)) or shell.comm, pid=shell.pid,
                    running_for=proc.seconds_since(shell.started, now))
    return pane


def _int(text):
    try:
        return int(text)
    except ValueError:
        return None


def parse_panes(text, owner, socket, now=None, table=None):
    """
    tmux's ``list-panes -a`` lines (FIELDS joined by SEP) as sessions with their panes, each judged from
    ``table`` (``panes.read()``, one look at /proc; a fresh one when not given). Work started in one of
    the server's panes that has closed since is kept under ``left_over`` of the first session.
    """
    now = time.time() if now is None else now
    table = pane_truth.read() if table is None else table
    sessions = {}
    pane_ids, server_pid = set(), None
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
        sessions[name]["panes"].append(_pane(fields, table, now))
        pane_ids.add(fields["pane_id"])
        server_pid = _int(fields["pid"])
    for session in sessions.values():
        session["idle"] = all(pane["idle"] for pane in session["panes"])
    found = list(sessions.values())
    left = pane_truth.left_over(table, server_pid, pane_ids, now) if server_pid else []
    if found:
        found[0]["left_over"] = left
        found[0]["idle"] = found[0]["idle"] and not left
    return found, server_pid


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


def _read_server(path, users):
    """The checked Server of one live socket (to ``_ask``), ``("warnings", [sentence])`` for a socket tmux
    would not trust, or None to leave it out (gone, or of a user not asked about)."""
    try:
        server = open_server(path)
    except Unsafe as exc:
        return "warnings", [f"Skipped the tmux socket {path!r}: {exc}, so it was not queried."]
    if server is None or (users is not None and server.owner not in users):
        if server is not None:
            os.close(server.dir_fd)
        return None
    return server


def _ask(server, tmux):
    """``("answer", (server, text))``, or ``("stale" | "errors", items)``; closes the server's ``dir_fd``."""
    try:
        return "answer", (server, query(server, tmux))
    except subprocess.CalledProcessError as exc:
        if NO_SERVER in (exc.stderr or ""):
            # Nothing accepts on it: a stale socket, listed as live only by a forged /proc/net/unix line.
            return "stale", [{"socket": server.path, "owner": server.owner}]
        reason = (exc.stderr or "").strip().replace(server.reachable_path, server.path)
        reason = reason or f"exit status {exc.returncode}"
        error = f"tmux failed: {reason.rstrip('.')}."
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = f"tmux failed: {exc}."
    finally:
        os.close(server.dir_fd)
    return "errors", [{"socket": server.path, "owner": server.owner, "error": error}]


def _why_unreachable(path, pid):
    """Why root did not ask the server ``pid`` listening on ``path`` (None: on no path), and the command that
    gives it its socket back, when there is one (tmux makes its socket again on SIGUSR1)."""
    if path is None:
        return "it listens on no socket bound to a path", None
    directory = os.path.dirname(path)
    if not TMUX_DIR.match(os.path.basename(directory)):
        return f"its socket {path} is not in a tmux-<uid> folder, so it was not queried", None
    if not os.path.lexists(directory):
        mend = f"mkdir -m 700 {directory}; kill -USR1 {pid}"
        return f"its socket {path} and its folder {directory} were deleted", mend
    if not os.path.lexists(path):
        return f"its socket {path} was deleted", f"kill -USR1 {pid}"
    return f"its socket {path} was deleted and another took its place", None


def unreachable(table, read_pids, reported, listening_by_inode, now):
    """
    Live tmux servers in ``table`` that were not read (their pid is not in ``read_pids``) and whose
    socket is not among the ``reported`` paths (an error, a warning, or an answer without panes, which
    names no pid): each with its owner, socket, why, how to mend it, and what runs in it according to
    /proc. A server started since ``now``, when the check began, was not there to be read: it is left out.
    """
    found = []
    for pid, server in sorted(table.servers.items()):
        if pid in read_pids or server.started >= now:
            continue
        paths = sorted(listening_by_inode[inode] for inode in proc.socket_inodes(pid) if inode in listening_by_inode)
        path = paths[0] if paths else None
        if path in reported:
            continue
        why, mend = _why_unreachable(path, pid)
        found.append({"owner": _name(server.uid), "pid": pid, "socket": path, "why": why, "mend": mend,
                      "work": pane_truth.server_work(table, pid, now)})
    return found


def sessions(settings, tmpdirs=None, home="/home", tmux="tmux"):
    """
    ``{"sessions", "stale", "errors", "unreachable", "checked", "warnings"}``: every session of every
    live server (only those of ``settings.users`` when given), stale sockets, servers that could not be
    read, live servers whose socket cannot be reached, and sockets that were not queried because tmux
    itself would not trust them. InputError when a user named is no account here.
    """
    users = settings.users
    uids = accounts(users)
    if tmpdirs is None:
        tmpdirs = sorted({"/tmp", os.environ.get("TMUX_TMPDIR") or "/tmp"})
    warnings = []
    if users is None:
        names, warnings = home_users(home)
        checked = ["root", *names]
    else:
        checked = list(users)
    now = time.time()
    by_inode = listening()
    live = {path for path in by_inode.values() if TMUX_DIR.match(pathlib.Path(path).parent.name)}
    report = {"sessions": [], "stale": [], "errors": [], "unreachable": [], "checked": checked,
              "warnings": warnings}
    for socket in sorted(socket_files(tmpdirs) - live):
        owner = _owner(socket)
        if users is None or owner in users:
            report["stale"].append({"socket": socket, "owner": owner})
    servers = []
    for path in sorted(live):
        found = _read_server(path, users)
        if isinstance(found, Server):
            servers.append(found)
        elif found is not None:
            report[found[0]].extend(found[1])
    answers = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for kind, items in pool.map(lambda server: _ask(server, tmux), servers):
            if kind == "answer":
                answers.append(items)
            else:
                report[kind].extend(items)
    # After the answers, so every pane tmux listed has its processes in this one look at /proc.
    table = pane_truth.read(None if uids is None else set(uids.values()))
    read_pids, reported = set(), set()
    for server, text in answers:
        found, server_pid = parse_panes(text, server.owner, server.path, now, table)
        report["sessions"].extend(found)
        if server_pid is None:
            reported.add(server.path)
        read_pids.add(server_pid)
    reported |= {item["socket"] for item in report["errors"] + report["stale"]}
    reported |= {path for path in live if any(repr(path) in warning for warning in report["warnings"])}
    report["unreachable"] = unreachable(table, read_pids, reported, by_inode, now)
    report["warnings"] += _outside_warnings(table, uids, checked, now)
    return report


def _outside_warnings(table, uids, checked, now):
    """Warnings for the work of the users checked (not root's: the system's own) that tmux does not hold."""
    if uids is None:
        uids = {}
        for name in checked:
            with contextlib.suppress(KeyError):
                uids[name] = pwd.getpwnam(name).pw_uid
    wanted = {uid for uid in uids.values() if uid != 0}
    found = pane_truth.outside(table, wanted, now)
    warnings = [
        f"{_name(screen['uid'])} has a screen session ({screen['cmdline']!r}, pid {screen['pid']}, for "
        f"{duration(screen['running_for'])}), which is not checked: look at it (screen -ls as "
        f"{_name(screen['uid'])}) before a restart."
        for screen in found["screen"]
    ]
    by_user = {}
    for item in found["processes"]:
        by_user.setdefault(item["uid"], []).append(item)
    for uid, items in sorted(by_user.items()):
        first = items[0]
        more = f" and {len(items) - 1} more" if len(items) > 1 else ""
        warnings.append(
            f"{_name(uid)} runs {first['cmdline']!r} (pid {first['pid']}, for {duration(first['running_for'])})"
            f"{more} outside tmux, which is not checked: look at it (ps -u {_name(uid)}) before a restart.")
    return warnings


def read(settings):
    """``sessions`` for the busy check; a failure to look at all is a SourceError."""
    try:
        return sessions(settings)
    except OSError as exc:
        raise SourceError(f"tmux sessions cannot be listed: {exc}") from None


def _doing(work):
    """``runs 'sleep 600' in the background (for 2 min)``: what one piece of work is and how it runs."""
    words = (("background", "in the background"), ("detached", "outside the pane's session"),
             ("stopped", "stopped (Ctrl-Z)"))
    how = [word for key, word in words if work.get(key)]
    return f"runs {work['cmdline'] or work['command']!r}{' ' + ', '.join(how) if how else ''} " \
           f"(for {duration(work['running_for'])})"


def reasons(report):
    """One sentence per pane that runs something, per server that cannot be read, and per live server
    whose socket cannot be reached."""
    found = []
    for session in report.get("sessions", []):
        for pane in session["panes"]:
            if not pane["idle"]:
                more = pane.get("more") or 0
                also = f", and {more} more process{'es' if more > 1 else ''}" if more else ""
                what = _doing(pane) if pane.get("cmdline") or pane.get("command") else "runs something"
                found.append(f"tmux session {session['name']!r} of {session['owner']} {what}{also}.")
        for work in session.get("left_over", []):
            found.append(f"A process of {session['owner']} started in a tmux pane that has closed since (socket "
                         f"{session['socket']}) {_doing(work)}.")
    found += [
        f"The tmux server of {error['owner']} at {error['socket']} cannot be read: {error['error']}"
        for error in report.get("errors", [])
    ]
    for server in report.get("unreachable", []):
        work = server.get("work") or []
        runs = f" {_doing(work[0])}" + (f" and {len(work) - 1} more" if len(work) > 1 else "") if work else ""
        mend = f" {server['owner']} can bring it back with: {server['mend']}." if server.get("mend") else ""
        found.append(f"The tmux server of {server['owner']} (pid {server['pid']}){runs}, but {server['why']}, so "
                     f"its sessions cannot be named and it counts as busy.{mend}")
    return found
