"""
Every tmux server on this machine, its sessions and what runs in each pane.

Servers are found from the listening unix sockets in /proc/net/unix whose directory is tmux's
``tmux-<uid>`` (this catches ``-L`` names and any ``TMUX_TMPDIR``), and queried with
``tmux -S SOCKET list-panes -a`` run as the socket's owner. Unlike ``su USER -c "tmux ls"`` this needs
no login shell (nologin users too), creates no directory, and runs no shell at all. A socket file in a
``tmux-<uid>`` directory that nobody listens on is a stale socket.
"""

import datetime
import os
import pathlib
import pwd
import re
import stat
import subprocess
import time

import kingfisher_proc as proc
from kingfisher_errors import InputError

TMUX_DIR = re.compile(r"^tmux-\d+$")
# A POSIX-portable user name (what useradd accepts by default), so nothing odd reaches a command.
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
SHELLS = {"bash", "sh", "dash", "zsh", "fish", "ksh", "tcsh", "csh", "mksh"}
SEP = "\x1f"
FIELDS = (
    "session_name", "session_created", "session_attached", "session_activity",
    "window_index", "window_name", "pane_index", "pane_pid", "pane_current_command",
)
TIMEOUT = 10
# Listening stream sockets in /proc/net/unix: flag __SO_ACCEPTCON, type SOCK_STREAM, state unconnected.
ACCEPTING = 0x10000


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
    return list(users)


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
    """Paths of listening unix stream sockets."""
    paths = set()
    with open(net_unix) as handle:
        next(handle)
        for line in handle:
            parts = line.split(None, 7)
            if len(parts) == 8 and int(parts[3], 16) & ACCEPTING and parts[4] == "0001":
                paths.add(parts[7].strip())
    return paths


def socket_files(tmpdirs):
    """Socket files inside ``tmux-<uid>`` directories of ``tmpdirs``; creates nothing."""
    found = set()
    for tmpdir in tmpdirs:
        try:
            directories = [entry for entry in pathlib.Path(tmpdir).iterdir() if TMUX_DIR.match(entry.name)]
        except OSError:
            continue
        for directory in directories:
            try:
                found.update(str(path) for path in directory.iterdir() if stat.S_ISSOCK(path.lstat().st_mode))
            except OSError:
                continue
    return found


def _owner(path):
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


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


def query(socket, tmux="tmux"):
    """
    The raw ``list-panes -a`` answer of the server at ``socket``; OSError or CalledProcessError.

    As root, the tmux client runs as the socket's owner: a server is the owner's program, and a tmux
    server can ask its client to run commands, which must never happen as root.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    owner = {}
    info = os.stat(socket)
    if os.geteuid() == 0 and info.st_uid != 0:
        owner = {"user": info.st_uid, "group": info.st_gid, "extra_groups": [], "cwd": "/"}
    done = subprocess.run(
        [tmux, "-S", socket, "list-panes", "-a", "-F", SEP.join("#{%s}" % field for field in FIELDS)],
        capture_output=True, text=True, timeout=TIMEOUT, env=env, stdin=subprocess.DEVNULL, check=True, **owner,
    )
    return done.stdout


def sessions(users=None, tmpdirs=None, home="/home", tmux="tmux"):
    """
    ``{"sessions", "stale", "errors", "checked", "warnings"}``: every session of every live server
    (only those of ``users`` when given), stale sockets, and servers that could not be read.
    """
    users = check_users(users)
    if tmpdirs is None:
        tmpdirs = sorted({"/tmp", os.environ.get("TMUX_TMPDIR") or "/tmp"})
    warnings = []
    if users is None:
        names, warnings = home_users(home)
        checked = ["root", *names]
    else:
        checked = users
    live = {path for path in listening_sockets() if TMUX_DIR.match(pathlib.Path(path).parent.name)}
    report = {"sessions": [], "stale": [], "errors": [], "checked": checked, "warnings": warnings}
    now = time.time()
    for socket in sorted(live | socket_files(tmpdirs)):
        owner = _owner(socket)
        if users is not None and owner not in users:
            continue
        if socket not in live:
            report["stale"].append({"socket": socket, "owner": owner})
            continue
        try:
            report["sessions"].extend(parse_panes(query(socket, tmux), owner, socket, now))
        except subprocess.CalledProcessError as exc:
            reason = (exc.stderr or "").strip() or f"exit status {exc.returncode}"
            report["errors"].append({"socket": socket, "owner": owner, "error": f"tmux failed: {reason}."})
        except (OSError, subprocess.TimeoutExpired) as exc:
            report["errors"].append({"socket": socket, "owner": owner, "error": f"tmux failed: {exc}."})
    return report
