"""tmux_sessions against real tmux servers of real test users (see kingfisher_fixtures.tmux_users)."""

import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile

import pytest

from deploytoken.kingfisher import tmux as kf_tmux
from deploytoken.kingfisher.errors import InputError
from kingfisher_fixtures import listen_as, run_as

AUTO = kf_tmux.Settings.parse({})


def only(*users):
    return kf_tmux.Settings.parse({"users": ",".join(users)})


@pytest.fixture
def shared_dir():
    """A directory other users can read: the tmux client runs as the server's owner."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="dtk-bin-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def by_owner(report, owner):
    return [session for session in report["sessions"] if session["owner"] == owner]


def test_sessions_of_every_user_are_found_with_commands(tmux_users):
    report = kf_tmux.sessions(AUTO)
    idle_user, idle_name = tmux_users["idle"]
    sleep_user, sleep_name = tmux_users["sleep"]
    other_user, other_name = tmux_users["other"]
    assert idle_user in report["checked"] and "root" in report["checked"]

    (idle,) = by_owner(report, idle_user)
    assert idle["name"] == idle_name and idle["idle"] is True
    assert idle["panes"][0]["command"] == "bash" and idle["panes"][0]["idle"] is True

    (sleeping,) = by_owner(report, sleep_user)
    pane = sleeping["panes"][0]
    assert sleeping["name"] == sleep_name and sleeping["idle"] is False
    assert pane["command"] == "sleep" and pane["cmdline"] == "sleep 3600" and pane["idle"] is False
    assert pane["running_for"] >= 0 and sleeping["attached"] == 0
    assert sleeping["created"] and sleeping["last_activity"]

    (other,) = by_owner(report, other_user)
    assert other["name"] == other_name and other["socket"].endswith("/other")
    assert other["panes"][0]["cmdline"] == "sleep 3600"


def test_stale_socket_is_reported_as_stale(tmux_users):
    stale_user, _ = tmux_users["stale"]
    report = kf_tmux.sessions(AUTO)
    assert [stale["owner"] for stale in report["stale"] if stale["owner"] == stale_user] == [stale_user]
    assert by_owner(report, stale_user) == []
    assert report["errors"] == []


def test_users_argument_limits_the_report(tmux_users):
    sleep_user, _ = tmux_users["sleep"]
    report = kf_tmux.sessions(only(sleep_user))
    assert {session["owner"] for session in report["sessions"]} == {sleep_user}
    assert report["stale"] == [] and report["checked"] == [sleep_user]


def test_user_without_server_is_simply_absent(tmux_users):
    # nobody never runs a tmux server; the users that do (tmux_users) are not asked about.
    report = kf_tmux.sessions(only("nobody"))
    assert report["checked"] == ["nobody"]
    assert report["sessions"] == [] and report["stale"] == [] and report["errors"] == []


@pytest.mark.parametrize("users", ["alice;rm -rf /", ["bob", "$(touch /tmp/x)"], [], 42])
def test_bad_users_argument_is_refused(users):
    with pytest.raises(InputError, match="not a valid user name|must be 'auto' or a list"):
        kf_tmux.Settings.parse({"users": users})


def test_home_entry_with_shell_metacharacters_is_skipped_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = ["dtk$(touch dtk-pwned)", "dtk;touch dtk-pwned"]
    try:
        for name in odd:
            os.mkdir(f"/home/{name}")
        names, warnings = kf_tmux.home_users()
        report = kf_tmux.sessions(AUTO)
    finally:
        for name in odd:
            shutil.rmtree(f"/home/{name}", ignore_errors=True)
    for name in odd:
        assert f"Skipped /home/{name}: {name!r} is not a valid user name." in warnings
        assert f"Skipped /home/{name}: {name!r} is not a valid user name." in report["warnings"]
        assert name not in names and name not in report["checked"]
    assert not any(path.name == "dtk-pwned" for path in pathlib.Path("/").glob("*/dtk-pwned"))
    assert not (tmp_path / "dtk-pwned").exists()


def test_a_server_that_cannot_be_read_is_an_error(tmux_users, shared_dir):
    sleep_user, _ = tmux_users["sleep"]
    broken = shared_dir / "tmux"
    broken.write_text("#!/bin/sh\necho 'no server running' >&2\nexit 1\n")
    broken.chmod(0o755)
    report = kf_tmux.sessions(only(sleep_user), tmux=str(broken))
    assert report["sessions"] == []
    (error,) = report["errors"]
    assert error["owner"] == sleep_user and error["error"] == "tmux failed: no server running."


def test_discovery_creates_no_directory(tmux_users):
    before = sorted(entry for entry in os.listdir("/tmp") if entry.startswith("tmux-"))
    kf_tmux.sessions(AUTO)
    assert sorted(entry for entry in os.listdir("/tmp") if entry.startswith("tmux-")) == before
    assert shutil.which("tmux")


# Attacks on the check by a local user (issue: a user could make root's client connect to their socket)


@pytest.fixture
def spy(shared_dir):
    """A tmux stand-in that writes down who ran it and with which socket, then fails."""
    calls = shared_dir / "calls"
    calls.touch()
    calls.chmod(0o666)
    tmux = shared_dir / "tmux"
    tmux.write_text(f'#!/bin/sh\necho "$(/usr/bin/id -un) $2" >> {calls}\necho "no server running" >&2\nexit 1\n')
    tmux.chmod(0o755)
    return tmux, calls


@pytest.fixture
def evil_dir(hostile_user):
    """The hostile user's own ``/tmp/tmux-UID``, made by that user as tmux makes it (0700)."""
    path = pathlib.Path(f"/tmp/tmux-{pwd.getpwnam(hostile_user).pw_uid}")
    shutil.rmtree(path, ignore_errors=True)
    run_as(hostile_user, "mkdir", "-m", "0700", str(path))
    yield path
    for leftover in (path, path.with_name(path.name + ".old")):
        shutil.rmtree(leftover, ignore_errors=True)


def skipped(report, path, why):
    return f"Skipped the tmux socket {str(path)!r}: {why}, so it was not queried." in report["warnings"]


def test_socket_replaced_by_a_symlink_is_a_warning_and_never_queried(hostile_user, evil_dir, spy):
    tmux, calls = spy
    path = evil_dir / "default"
    with listen_as(hostile_user, str(path)):
        run_as(hostile_user, "ln", "-sf", "/etc/passwd", str(path))
        assert str(path) in kf_tmux.listening_sockets()
        report = kf_tmux.sessions(only(hostile_user), tmux=str(tmux))
    assert skipped(report, path, "it is a symbolic link, not a socket")
    assert report["sessions"] == [] and report["errors"] == [] and report["stale"] == []
    assert calls.read_text() == "", "no tmux client ran, as root or anyone"


def test_socket_of_another_owner_in_a_users_directory_is_never_queried(hostile_user, evil_dir, spy):
    tmux, calls = spy
    path = evil_dir / "default"
    # A root-owned server in a directory the user controls: the user could swap it at any time.
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        report = kf_tmux.sessions(only("root", hostile_user), tmux=str(tmux))
    assert skipped(report, path, f"it belongs to root but its directory belongs to {hostile_user}")
    assert calls.read_text() == ""


def test_socket_in_a_directory_open_to_others_is_never_queried(hostile_user, evil_dir, spy):
    tmux, calls = spy
    path = evil_dir / "default"
    run_as(hostile_user, "chmod", "0777", str(evil_dir))
    with listen_as(hostile_user, str(path)):
        report = kf_tmux.sessions(only(hostile_user), tmux=str(tmux))
    assert skipped(report, path, "other users can enter or change its directory (mode 0777)")
    assert calls.read_text() == ""


def test_client_talks_to_the_server_that_was_checked_even_if_the_path_is_swapped(hostile_user, evil_dir):
    run_as(hostile_user, "tmux", "new-session", "-d", "-s", "checked", "sleep", "3600")
    path = str(evil_dir / "default")
    server = kf_tmux.open_server(path)
    try:
        # Between the check and the connection the user swaps the directory for one of their making.
        run_as(hostile_user, "mv", str(evil_dir), f"{evil_dir}.old")
        run_as(hostile_user, "mkdir", "-m", "0700", str(evil_dir))
        run_as(hostile_user, "ln", "-s", "/etc/passwd", path)
        answer = kf_tmux.query(server)
    finally:
        os.close(server.dir_fd)
        subprocess.run(["pkill", "-KILL", "-u", hostile_user], check=False)
    assert answer.startswith("checked" + kf_tmux.SEP)


def test_client_runs_as_the_owner_through_the_checked_directory(tmux_users, spy):
    tmux, calls = spy
    sleep_user, _ = tmux_users["sleep"]
    kf_tmux.sessions(only(sleep_user), tmux=str(tmux))
    (call,) = calls.read_text().splitlines()
    user, socket_path = call.split(" ", 1)
    assert user == sleep_user and socket_path.startswith("/proc/self/fd/") and socket_path.endswith("/default")


def test_client_runs_as_the_owner_without_setpriv_too(tmux_users, spy, monkeypatch):
    tmux, calls = spy
    sleep_user, _ = tmux_users["sleep"]
    monkeypatch.setenv("PATH", str(tmux.parent))
    kf_tmux.sessions(only(sleep_user), tmux=str(tmux))
    assert calls.read_text().split(" ", 1)[0] == sleep_user


def test_forged_line_in_proc_net_unix_is_checked_like_any_socket(hostile_user, evil_dir, spy):
    tmux, calls = spy
    forged = evil_dir / "forged"
    run_as(hostile_user, "ln", "-s", "/etc/passwd", str(forged))
    # A path holding a line break writes a second, forged line into /proc/net/unix.
    base = pathlib.Path(tempfile.mkdtemp(prefix="dtke-", dir="/tmp"))
    base.chmod(0o755)
    folder = base / f"a\n0000: 00000002 00000000 00010000 0001 01 1 {evil_dir}"
    try:
        os.chown(base, pwd.getpwnam(hostile_user).pw_uid, -1)
        run_as(hostile_user, "mkdir", "-p", str(folder))
        with listen_as(hostile_user, str(folder / "forged")):
            assert str(forged) in kf_tmux.listening_sockets()
            report = kf_tmux.sessions(only(hostile_user), tmux=str(tmux))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert skipped(report, forged, "it is a symbolic link, not a socket")
    assert report["sessions"] == [] and report["errors"] == [] and calls.read_text() == ""
