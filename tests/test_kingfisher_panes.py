"""
What runs in a tmux pane, as a person attaching would see it: real users with their own login shells,
real tmux servers, and ``kingfisher.busy`` through the real salt CLI, master and minion.

Each test asks about its own users only (``users=``), so other tests' sessions cannot change its answer.
"""

import os
import pathlib
import pwd
import shutil
import subprocess

import pytest

from conftest import MINION_ID as MINION
from kingfisher_fixtures import RUNUSER, run_as, start_scrapyd, user_env, wait_for

pytestmark = pytest.mark.daemons


@pytest.fixture(scope="module")
def idle_scrapyd():
    server = start_scrapyd(jobs=0)
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def busy(salt_cli, salt_minion, idle_scrapyd):
    """``busy(*users)``: the real ``salt MINION kingfisher.busy`` for those users' tmux sessions alone."""

    def run(*users):
        return salt_cli.run("kingfisher.busy", "postgres=never", f"users={','.join(users)}",
                            f"url={idle_scrapyd.url}", f"username={idle_scrapyd.username}",
                            f"password={idle_scrapyd.password}", minion_tgt=MINION)

    return run


SLEEP = ["sleep", "600"]


def sleeping(users, name, state=None):
    """Waits until ``name`` runs ``sleep 600`` (in ``state``, when given)."""
    wait_for(lambda: [pid for pid, now, argv in users.processes(name) if argv == SLEEP and state in (None, now)],
             timeout=15, what=f"{name}'s sleep 600")


def at_prompt(users, name, session, mark):
    """Has the pane's shell run one command typed at its prompt, so it has read its start-up files."""
    users.tmux(name, "send-keys", "-t", session, f"touch ~/{mark}", "Enter")
    wait_for(lambda: (pathlib.Path(pwd.getpwnam(name).pw_dir) / mark).exists(), timeout=15,
             what=f"{name}'s shell to take a command")


def command_under_sh(users):
    # The login shell useradd gives on Debian: dash stays in front and forks the command.
    name = users.make("/bin/sh")
    users.tmux(name, "new-session", "-d", "-s", "crawl", "sleep 600")
    sleeping(users, name)
    return name, "runs 'sleep 600' (for "


def command_then_a_shell(users):
    name = users.make("/bin/bash")
    users.tmux(name, "new-session", "-d", "-s", "crawl", "sleep 600; bash")
    sleeping(users, name)
    return name, "runs 'sleep 600' (for "


def background_job(users):
    name = users.make("/bin/bash")
    users.tmux(name, "new-session", "-d", "-s", "crawl")
    users.tmux(name, "send-keys", "-t", "crawl", "sleep 600 &", "Enter")
    sleeping(users, name)
    at_prompt(users, name, "crawl", "back")
    return name, "runs 'sleep 600' in the background (for "


def stopped_job(users):
    name = users.make("/bin/bash")
    users.tmux(name, "new-session", "-d", "-s", "crawl")
    users.tmux(name, "send-keys", "-t", "crawl", "sleep 600", "Enter")
    sleeping(users, name)
    users.tmux(name, "send-keys", "-t", "crawl", "C-z")
    sleeping(users, name, state="T")
    return name, "runs 'sleep 600' in the background, stopped (Ctrl-Z) (for "


def script_at_a_prompt(users):
    # ./crawl.sh runs as "/bin/bash ./crawl.sh": a shell, whose work is the program the script runs.
    name = users.make("/bin/bash")
    entry = pwd.getpwnam(name)
    script = pathlib.Path(entry.pw_dir) / "crawl.sh"
    script.write_text("#!/bin/bash\nsleep 600\n")
    script.chmod(0o755)
    os.chown(script, entry.pw_uid, entry.pw_gid)
    users.tmux(name, "new-session", "-d", "-s", "crawl")
    users.tmux(name, "send-keys", "-t", "crawl", "./crawl.sh", "Enter")
    sleeping(users, name)
    return name, "runs 'sleep 600' (for "


def left_the_session(users):
    name = users.make("/bin/bash")
    users.tmux(name, "new-session", "-d", "-s", "crawl")
    users.tmux(name, "send-keys", "-t", "crawl", "setsid sleep 600", "Enter")
    sleeping(users, name)
    at_prompt(users, name, "crawl", "back")
    return name, "runs 'sleep 600' outside the pane's session (for "


@pytest.mark.parametrize("start", [command_under_sh, command_then_a_shell, background_job, stopped_job,
                                   script_at_a_prompt, left_the_session])
def test_work_under_a_shell_is_busy_naming_session_owner_and_command(busy, login_users, start):
    name, doing = start(login_users)
    ret = busy(name)
    assert ret.returncode == 1, ret
    assert ret.data["busy"] is True and ret.data["sources"]["tmux"]["status"] == "busy"
    assert [reason for reason in ret.data["reasons"] if name in reason] == [
        reason for reason in ret.data["reasons"] if reason.startswith(f"tmux session 'crawl' of {name} {doing}")
    ] != [], ret.data["reasons"]


def test_tmux_sessions_shows_the_command_a_dash_pane_runs(salt_cli, salt_minion, login_users):
    name, _ = command_under_sh(login_users)
    ret = salt_cli.run("kingfisher.tmux_sessions", f"users={name}", minion_tgt=MINION)
    assert ret.returncode == 0, ret
    (session,) = ret.data["sessions"]
    (pane,) = session["panes"]
    assert session["idle"] is False and pane["idle"] is False
    assert (pane["command"], pane["cmdline"]) == ("sleep", "sleep 600")


def bare_shell(shell):
    def start(users):
        name = users.make(shell)
        users.tmux(name, "new-session", "-d", "-s", "notes")
        at_prompt(users, name, "notes", "ready")
        return name

    start.__name__ = f"bare_{shell.rsplit('/', 1)[1]}"
    return start


def ended_background_job(users):
    name = users.make("/bin/bash")
    users.tmux(name, "new-session", "-d", "-s", "notes")
    users.tmux(name, "send-keys", "-t", "notes", "sleep 1 &", "Enter")
    sleeping_one = ["sleep", "1"]
    wait_for(lambda: [pid for pid, _, argv in users.processes(name) if argv == sleeping_one], timeout=15,
             what="the background job")
    wait_for(lambda: not [pid for pid, _, argv in users.processes(name) if argv == sleeping_one], timeout=15,
             what="the background job to end")
    at_prompt(users, name, "notes", "ready")
    return name


@pytest.mark.parametrize("start", [bare_shell("/bin/bash"), bare_shell("/bin/sh"), ended_background_job],
                         ids=["bash", "sh", "ended-background-job"])
def test_an_interactive_shell_at_its_prompt_is_idle(busy, login_users, start):
    name = start(login_users)
    ret = busy(name)
    assert ret.returncode == 0, ret
    assert ret.data["busy"] is False and ret.data["reasons"] == []
    (session,) = ret.data["sources"]["tmux"]["sessions"]
    assert session["idle"] is True and session["panes"][0]["idle"] is True


@pytest.mark.skipif(not shutil.which("screen"), reason="needs screen (apt install screen)")
def test_a_screen_session_and_work_outside_tmux_are_warnings_not_reasons(busy, login_users):
    name = login_users.make("/bin/bash")
    run_as(name, "screen", "-dmS", "crawl", "sleep", "600")
    # Started over SSH with nohup, say: in no tmux pane and no screen.
    loose = subprocess.Popen([RUNUSER, "-u", name, "--", "setsid", "sleep", "700"], env=user_env(name), cwd="/",
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: {tuple(argv) for _, _, argv in login_users.processes(name)} >= {
            ("sleep", "600"), ("sleep", "700")}, timeout=15, what="both sleeps")
        ret = busy(name)
    finally:
        login_users.remove_all()
        loose.wait(timeout=10)
    assert ret.returncode == 0, ret
    assert ret.data["busy"] is False and ret.data["reasons"] == []
    screen, outside = ret.data["warnings"]
    assert screen.startswith(f"{name} has a screen session ('SCREEN -dmS crawl sleep 600', pid "), screen
    assert screen.endswith(f"), which is not checked: look at it (screen -ls as {name}) before a restart.")
    assert outside.startswith(f"{name} runs 'sleep 700' (pid "), outside
    assert outside.endswith(f") outside tmux, which is not checked: look at it (ps -u {name}) before a restart.")
