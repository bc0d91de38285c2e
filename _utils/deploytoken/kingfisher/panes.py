"""
What runs in each tmux pane, from /proc: the truth a person sees when attaching.

tmux's ``pane_current_command`` only names the pane's foreground process group leader, which is a
shell in many busy panes: ``sh -c 'crawl'`` under dash, ``'crawl; bash'``, a background or stopped
job, a script run by ``bash ./crawl.sh``, a program that left the pane's process group. So a pane
is judged from its processes: those below its shell (``pane_pid``), and those whose environment
carries the pane's ``TMUX`` and ``TMUX_PANE``, which every process started in a pane inherits, even
one that left its session with ``setsid``.

A pane is idle only when nothing but an interactive shell waits at its prompt: the foreground
process group of its terminal is a plain shell (no ``-c``, no script) that leads it, not stopped,
and the only other processes are the shells that wait for it (``sh -c '...; bash'`` once the first
command ended).

The environment is what its process says it is: any user may set any ``TMUX``. A process therefore
only counts for a pane of a server run by its own user, and the text is never used to reach anything.
"""

import dataclasses
import os

from deploytoken.kingfisher import proc

SHELLS = {"bash", "sh", "dash", "zsh", "fish", "ksh", "tcsh", "csh", "mksh"}
SERVER = "tmux: server"
# Per-user daemons that programs in a pane start in a session of their own, and that a restart merely
# ends: they never make a pane busy.
AGENTS = {"ssh-agent", "gpg-agent", "scdaemon", "dirmngr", "keyboxd", "dbus-daemon", "tmux: server", "tmux: client"}
TAGS = (b"TMUX", b"TMUX_PANE")
# What a login brings along, none of it work of its own.
SESSION_PLUMBING = {"systemd", "(sd-pam)", "sshd", "sftp-server", "tmux: client", "tmux", "screen"}
SCREEN = "screen"
# Programs that only start a shell as someone (sudo -i, su -) and wait for it: a shell at its prompt under
# one waits as much as the pane's own shell.
WRAPPERS = {"sudo", "su", "runuser", "sg", "newgrp"}
# A process that has ended and waits for its parent to collect it runs nothing.
ENDED = {"Z", "X", "x"}


def interactive_shell(process, argv):
    """Whether ``process`` (with arguments ``argv``) is a shell reading commands from a person."""
    if process.comm not in SHELLS or not argv or os.path.basename(argv[0]).lstrip("-") not in SHELLS:
        return False
    # Options only: ``-c`` runs a command, ``-s`` reads a script from its input, any other word is a script.
    return all(arg.startswith("--") or (arg.startswith("-") and not set(arg[1:]) & {"c", "s"}) for arg in argv[1:])


@dataclasses.dataclass
class Table:
    """One look at /proc: every process, its children, and who carries which server's pane in ``TMUX``."""

    processes: dict
    children: dict
    # server pid -> pane id ("%3") -> pids of the server owner's processes that carry it.
    tagged: dict
    # pid -> the tmux server process, for every server of the users asked about.
    servers: dict
    argv: dict = dataclasses.field(default_factory=dict)

    def cmdline(self, pid):
        if pid not in self.argv:
            try:
                self.argv[pid] = proc.cmdline(pid)
            except OSError:
                self.argv[pid] = []
        return self.argv[pid]

    def shell(self, pid):
        """Whether ``pid`` is a shell, by its name or by its program: a script run as ``./crawl.sh`` is named
        crawl.sh but runs ``/bin/bash ./crawl.sh``."""
        argv = self.cmdline(pid)
        return self.processes[pid].comm in SHELLS or bool(argv) and os.path.basename(argv[0]).lstrip("-") in SHELLS

    def descendants(self, pid):
        found, todo = set(), [pid]
        while todo:
            for child in self.children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found


def _tag(value):
    """``(server pid, session id)`` from a ``TMUX`` value (``socket,server pid,session``), or None."""
    parts = value.rsplit(",", 2)
    try:
        return int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return None


def read(uids=None):
    """
    A Table of every process now, with the ``TMUX`` tags of the processes of users that run a tmux
    server (of ``uids`` only, when given): environments are read only for them.
    """
    processes = proc.scan()
    children = {}
    for process in processes.values():
        children.setdefault(process.ppid, []).append(process.pid)
    servers = {pid: process for pid, process in processes.items()
               if process.comm == SERVER and (uids is None or process.uid in uids)}
    owners = {server.uid for server in servers.values()}
    tagged = {}
    for process in processes.values():
        if process.uid not in owners or process.pid in servers:
            continue
        env = proc.environ(process.pid, TAGS)
        tag = _tag(env.get("TMUX", ""))
        if tag is None or "TMUX_PANE" not in env:
            continue
        server = servers.get(tag[0])
        if server is not None and server.uid == process.uid:
            tagged.setdefault(tag[0], {}).setdefault(env["TMUX_PANE"], set()).add(process.pid)
    return Table(processes=processes, children=children, tagged=tagged, servers=servers)


def _chain(table, pid, top, members):
    """``pid`` and its ancestors up to ``top`` in ``members`` that are shells, or wrappers such as sudo, waiting
    for it."""
    chain = {pid}
    process = table.processes[pid]
    while process.pid != top and process.ppid in members and (
            table.shell(process.ppid) or table.processes[process.ppid].comm in WRAPPERS):
        process = table.processes[process.ppid]
        chain.add(process.pid)
    return chain


def _work(table, pids, pane_process, now):
    """The work among ``pids`` as dicts, the most telling first: programs before shells, top ones, oldest first."""
    programs = {pid for pid in pids if not table.shell(pid)}
    chosen = programs or pids
    top = [pid for pid in chosen if table.processes[pid].ppid not in chosen]
    top.sort(key=lambda pid: (table.processes[pid].started, pid))
    found = []
    for pid in top:
        process = table.processes[pid]
        detached = pane_process is None or process.sid != pane_process.sid
        found.append({
            "pid": pid,
            "command": process.comm,
            "cmdline": " ".join(table.cmdline(pid)) or process.comm,
            "running_for": proc.seconds_since(process.started, now),
            "stopped": process.stopped,
            "detached": detached,
            "background": not detached and pane_process.tpgid != process.pgid,
        })
    return found


def pane(table, server_pid, pane_id, pane_pid, now):
    """
    ``{"idle", "shell", "work"}`` for one pane: ``shell`` the pid of the interactive shell waiting at
    its prompt (or None), ``work`` what else runs (see ``_work``), the most telling first.
    """
    pane_process = table.processes.get(pane_pid)
    members = set(table.tagged.get(server_pid, {}).get(pane_id, ()))
    if pane_process is not None:
        members |= {pane_pid} | table.descendants(pane_pid)
    members = {pid for pid in members if pid in table.processes and table.processes[pid].state not in ENDED}
    # Daemons that left the pane's session and only serve the user (an ssh-agent) end harmlessly.
    members = {pid for pid in members if not (
        table.processes[pid].comm in AGENTS and pane_process is not None
        and table.processes[pid].sid != pane_process.sid)}
    if pane_process is None and not members:
        return {"idle": True, "shell": None, "work": []}  # the pane's process ended: nothing runs in it
    shell = None
    if pane_process is not None:
        front = table.processes.get(pane_process.tpgid)
        if (front is not None and front.pid in members and front.pgid == front.pid and not front.stopped
                and interactive_shell(front, table.cmdline(front.pid))):
            shell = front.pid
    waiting = _chain(table, shell, pane_pid, members) if shell else set()
    work = _work(table, members - waiting, pane_process, now) if members - waiting else []
    return {"idle": shell is not None and not work, "shell": shell, "work": work}


def left_over(table, server_pid, pane_ids, now):
    """Work started in panes of ``server_pid`` that are no longer among its ``pane_ids`` (closed since)."""
    pids = set()
    for pane_id, tagged in table.tagged.get(server_pid, {}).items():
        if pane_id not in pane_ids:
            pids |= {pid for pid in tagged if pid in table.processes and table.processes[pid].comm not in AGENTS}
    return _work(table, pids, None, now) if pids else []


def server_work(table, server_pid, now):
    """Everything that runs in a server's panes, from /proc alone (for a server whose socket cannot be reached)."""
    seen, found = set(), []
    for child in table.children.get(server_pid, ()):
        # The server starts each pane's first process itself, with the pane's TMUX_PANE.
        pane_id = proc.environ(child, TAGS).get("TMUX_PANE")
        if pane_id is not None:
            seen.add(pane_id)
            found += pane(table, server_pid, pane_id, child, now)["work"]
    return found + left_over(table, server_pid, seen, now)


def _in_tmux(table):
    """Every pid that belongs to a live tmux server: the servers, what runs below them, and what carries
    one of their panes in its environment."""
    found = set(table.servers)
    for pid in table.servers:
        found |= table.descendants(pid)
    for panes in table.tagged.values():
        for pids in panes.values():
            found |= pids
    return found


def outside(table, uids, now):
    """
    ``{"screen": [...], "processes": [...]}``: ``screen`` sessions of the users ``uids``, and their
    programs that run neither in tmux nor in screen (a job started over SSH with ``nohup``, from cron):
    not checked, for warnings. Shells, agents and a login's own processes are left out.
    """
    covered = _in_tmux(table)
    # A screen session's own process calls itself SCREEN; a client attached to it keeps "screen".
    screens = [process for process in table.processes.values()
               if process.uid in uids and process.comm == SCREEN and process.pid not in covered
               and table.cmdline(process.pid)[:1] == ["SCREEN"]]
    for screen in screens:
        covered |= {screen.pid} | table.descendants(screen.pid)
    found = {"screen": [], "processes": []}
    for screen in sorted(screens, key=lambda process: process.started):
        found["screen"].append({"uid": screen.uid, "pid": screen.pid, "cmdline": " ".join(table.cmdline(screen.pid)),
                                "running_for": proc.seconds_since(screen.started, now)})
    loose = {pid for pid, process in table.processes.items()
             if process.uid in uids and pid not in covered and process.state not in ENDED
             and process.comm not in AGENTS | SESSION_PLUMBING
             and not table.shell(pid)}
    for item in _work(table, loose, None, now) if loose else []:
        found["processes"].append(dict(item, uid=table.processes[item["pid"]].uid))
    return found
