"""tmux_sessions against real tmux servers of real test users (see kingfisher_fixtures.tmux_users)."""

import os
import pathlib
import shutil
import tempfile

import pytest

import kingfisher_tmux
from kingfisher_errors import InputError


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
    report = kingfisher_tmux.sessions()
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
    report = kingfisher_tmux.sessions()
    assert [stale["owner"] for stale in report["stale"] if stale["owner"] == stale_user] == [stale_user]
    assert by_owner(report, stale_user) == []
    assert report["errors"] == []


def test_users_argument_limits_the_report(tmux_users):
    sleep_user, _ = tmux_users["sleep"]
    report = kingfisher_tmux.sessions(users=sleep_user)
    assert {session["owner"] for session in report["sessions"]} == {sleep_user}
    assert report["stale"] == [] and report["checked"] == [sleep_user]


def test_user_without_server_is_simply_absent(tmux_users):
    report = kingfisher_tmux.sessions(users=["root", "nobody"])
    assert all(session["owner"] in ("root", "nobody") for session in report["sessions"])
    assert report["errors"] == []


@pytest.mark.parametrize("users", ["alice;rm -rf /", ["bob", "$(touch /tmp/x)"], [], 42])
def test_bad_users_argument_is_refused(users):
    with pytest.raises(InputError, match="not a valid user name|must be 'auto' or a list"):
        kingfisher_tmux.sessions(users=users)


def test_home_entry_with_shell_metacharacters_is_skipped_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = ["dtk$(touch dtk-pwned)", "dtk;touch dtk-pwned"]
    try:
        for name in odd:
            os.mkdir(f"/home/{name}")
        names, warnings = kingfisher_tmux.home_users()
        report = kingfisher_tmux.sessions()
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
    report = kingfisher_tmux.sessions(users=sleep_user, tmux=str(broken))
    assert report["sessions"] == []
    (error,) = report["errors"]
    assert error["owner"] == sleep_user and error["error"] == "tmux failed: no server running."


def test_the_client_runs_as_the_server_owner(tmux_users, shared_dir):
    sleep_user, _ = tmux_users["sleep"]
    spy = shared_dir / "tmux"
    spy.write_text("#!/bin/sh\nid -un >&2\nexit 1\n")
    spy.chmod(0o755)
    (error,) = kingfisher_tmux.sessions(users=sleep_user, tmux=str(spy))["errors"]
    assert error["error"] == f"tmux failed: {sleep_user}."


def test_discovery_creates_no_directory(tmux_users):
    before = sorted(entry for entry in os.listdir("/tmp") if entry.startswith("tmux-"))
    kingfisher_tmux.sessions()
    assert sorted(entry for entry in os.listdir("/tmp") if entry.startswith("tmux-")) == before
    assert shutil.which("tmux")
