"""``salt-run deploytoken.*`` against the shared real salt-master: through the real salt-run CLI where the
CLI is the point (exit status, one JSON document, progress, hints that paste, several processes at once),
and otherwise the runner loaded in this process (``runner``), which does the same work without start-up."""

import concurrent.futures
import json
import os
import pathlib
import shlex
import subprocess
import sys
import threading
import time

import pytest

from conftest import PEOPLE, as_user, hint_prefix

pytestmark = [pytest.mark.daemons, pytest.mark.usefixtures("free_token")]

TIMEOUT_RANGE = "The timeout must be a number of seconds, at least 0 and at most 86400; got "


def in_parallel(salt_master, login, *args):
    """A CLI factory runs one process at a time: each concurrent call gets its own."""
    return as_user(salt_master.salt_run_cli(timeout=120), login, *args)


def test_full_cycle_through_the_cli(salt_run):
    taken = as_user(salt_run, "alice", "deploytoken.acquire", "reason=upgrade postgres")
    assert taken.returncode == 0, taken
    assert taken.data["holder"] == "Alice Smith" and taken.data["login"] == "alice" and taken.data["changed"]

    refused = as_user(salt_run, "bob", "deploytoken.acquire", "reason=my turn")
    assert refused.returncode == 1, refused
    assert refused.data["message"].startswith("Deploy token is held by Alice Smith (alice) since ")
    assert '"upgrade postgres"' in refused.data["message"]

    again = as_user(salt_run, "alice", "deploytoken.acquire")
    assert again.returncode == 0 and again.data["changed"] is False and again.data["claim"] == taken.data["claim"]

    status = as_user(salt_run, "carol", "deploytoken.status")
    assert status.returncode == 0
    assert status.data["holder"] == "Alice Smith" and status.data["claim"] == taken.data["claim"]
    assert status.data["backend"] == "sqlite" and status.data["since"].endswith("Z")
    claim = taken.data["claim"]
    assert status.data["force_command"] == f"{hint_prefix(salt_run)} deploytoken.release force=True claim={claim} " \
        "reason='...'"

    not_holder = as_user(salt_run, "bob", "deploytoken.release")
    assert not_holder.returncode == 1
    assert not_holder.data["message"].startswith("You (Bob Jones) do not hold the deploy token")

    given = as_user(salt_run, "alice", "deploytoken.release", "note=rebooted kingfisher-main")
    assert given.returncode == 0 and given.data["released"], given

    history = as_user(salt_run, "bob", "deploytoken.history", "limit=1")
    assert history.returncode == 0
    (row,) = history.data
    assert row["claim"] == taken.data["claim"] and row["note"] == "rebooted kingfisher-main"
    assert row["holder"] == "Alice Smith" and row["reason"] == "upgrade postgres" and row["duration"] >= 0


def test_force_release_is_recorded(runner):
    taken = as_user(runner, "alice", "deploytoken.acquire")
    forced = as_user(runner, "bob", "deploytoken.release", "force=True", "reason=Alice is on holiday")
    assert forced.returncode == 0, forced
    (row,) = as_user(runner, "bob", "deploytoken.history", "limit=1").data
    assert row["claim"] == taken.data["claim"]
    assert row["forced_by"] == "Bob Jones (bob)" and row["force_reason"] == "Alice is on holiday"
    stale = as_user(runner, "bob", "deploytoken.release", "force=True", f"claim={taken.data['claim']}", "reason=x")
    assert stale.returncode == 1 and "has already ended" in stale.data["message"]


def test_wait_succeeds_when_released_during_the_wait(salt_run, salt_master, event_listener):
    as_user(salt_run, "alice", "deploytoken.acquire")
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        args = ("deploytoken.acquire", "wait=True", "interval=1", "timeout=90")
        waiting = pool.submit(in_parallel, salt_master, "bob", *args)
        progress = event_listener.wait_for_events([(salt_master.id, "salt/run/*/progress")], after_time=start)
        assert progress.found_all_events
        assert "held by Alice Smith" in next(iter(progress)).data["message"]
        released = as_user(salt_run, "alice", "deploytoken.release")
        assert released.returncode == 0
        taken = waiting.result(timeout=120)
    assert taken.returncode == 0, taken
    assert taken.data["holder"] == "Bob Jones"


def test_wait_times_out_with_exit_status_1(runner):
    as_user(runner, "alice", "deploytoken.acquire")
    refused = as_user(runner, "bob", "deploytoken.acquire", "wait=True", "timeout=2", "interval=0.5")
    assert refused.returncode == 1
    assert refused.data["message"].startswith("Gave up after waiting 2 s: the deploy token is still held by Alice")


def test_events_on_the_master_bus(runner, salt_master, event_listener):
    start = time.time()
    taken = as_user(runner, "alice", "deploytoken.acquire", "reason=events")
    as_user(runner, "alice", "deploytoken.release", "note=n1")
    as_user(runner, "alice", "deploytoken.acquire")
    as_user(runner, "bob", "deploytoken.release", "force=True", "reason=r2")
    tags = ["deploytoken/acquired", "deploytoken/released", "deploytoken/forced"]
    events = event_listener.wait_for_events([(salt_master.id, tag) for tag in tags], after_time=start)
    assert events.found_all_events, events.missed
    by_tag = {event.tag: event.data for event in events}
    assert by_tag["deploytoken/acquired"]["claim"] == taken.data["claim"]
    assert by_tag["deploytoken/acquired"]["reason"] == "events"
    assert by_tag["deploytoken/released"]["note"] == "n1" and by_tag["deploytoken/released"]["login"] == "alice"
    assert by_tag["deploytoken/forced"]["forced_by"] == "Bob Jones (bob)"


def test_concurrent_cli_acquires_have_one_winner(salt_master):
    logins = ["alice", "bob", "carol", "dave", "erin", "frank"]
    barrier = threading.Barrier(len(logins))

    def attempt(login):
        barrier.wait()
        return login, in_parallel(salt_master, login, "deploytoken.acquire")

    with concurrent.futures.ThreadPoolExecutor(len(logins)) as pool:
        results = list(pool.map(attempt, logins))
    winners = [login for login, ret in results if ret.returncode == 0]
    assert len(winners) == 1, results
    assert all(ret.returncode == 1 for login, ret in results if login not in winners)


@pytest.mark.parametrize(
    "args, sentence",
    [
        (["name=Nobody"], "The name cannot be 'Nobody'"),
        (["name=Alice\tSmith"], "contains a control character or line break"),
        (["name=" + "x" * 81], "81 characters long; at most 80"),
        (["name=   "], "The name is empty"),
        (["name=N\u043ebody"], "it reads as 'Nobody'"),
        (["name=Nobody."], "it reads as 'Nobody'"),
        (["wait=True", "timeout=soon"], TIMEOUT_RANGE + "'soon'"),
        (["wait=True", "timeout=-5"], TIMEOUT_RANGE + "-5"),
        (["wait=True", "timeout=1e308"], TIMEOUT_RANGE + "'1e308'"),
        (["wait=True", "interval=7200"], "The interval must be a number of seconds, at least 0.1 and at most 3600; "
                                         "got 7200"),
        (["wait=maybe"], "wait must be True or False, got 'maybe'"),
    ],
)
def test_bad_acquire_input_exits_2_and_changes_nothing(runner, store_path, args, sentence):
    as_user(runner, "alice", "deploytoken.acquire", "reason=keep")
    before = store_path.read_bytes()
    ret = as_user(runner, "bob", "deploytoken.acquire", *args)
    assert ret.returncode == 2, ret
    assert sentence in ret.data["error"]
    assert "Traceback" not in ret.stdout + ret.stderr
    assert store_path.read_bytes() == before


@pytest.mark.parametrize("limit", ["ten", "-1", "1e300", "100000000000000000000000000000"])
def test_bad_history_limit_exits_2(runner, limit):
    ret = runner.run("deploytoken.history", f"limit={limit}")
    assert ret.returncode == 2, ret
    assert ret.data["error"].startswith("The limit must be a whole number, at least 1 and at most 10000; got ")
    assert "Traceback" not in ret.stdout + ret.stderr


@pytest.mark.parametrize("args, sentence", [
    (["deploytoken.acquire", "resaon=x"],
     "deploytoken.acquire has no argument resaon: it takes reason, wait, timeout, interval, name, force."),
    (["deploytoken.release", "nte=x"],
     "deploytoken.release has no argument nte: it takes note, name, force, reason, claim."),
    (["deploytoken.cleanup", "nte=x"], "deploytoken.cleanup has no argument nte: it takes note, name."),
    (["deploytoken.status", "verbose=True"], "deploytoken.status has no argument verbose: it takes no arguments."),
    (["deploytoken.history", "5", "6"],
     "deploytoken.history got more arguments than it takes (6): it takes limit, as name=value."),
    (["deploytoken.cleanup", "done", "Alice Smith", "extra"],
     "deploytoken.cleanup got more arguments than it takes ('extra'): it takes note, name, as name=value."),
    (["deploytoken.acquire", "reason=two\nlines"],
     "deploytoken.acquire got 'reason=two\\nlines', which is name=value with a line break in the value: "
     "values must be single lines."),
])
def test_a_mistyped_argument_exits_2_and_changes_nothing(runner, store_path, args, sentence):
    as_user(runner, "alice", "deploytoken.acquire", "reason=keep")
    before = store_path.read_bytes()
    ret = as_user(runner, "alice", *args)
    assert ret.returncode == 2, ret
    assert ret.data == {"error": sentence, "retcode": 2}
    assert store_path.read_bytes() == before


def test_through_the_cli_a_mistyped_argument_or_a_line_break_exits_2(salt_run, store_path):
    # The cases above call the runner in this process; salt-run itself turns the answer into exit status 2.
    as_user(salt_run, "alice", "deploytoken.acquire", "reason=keep")
    before = store_path.read_bytes()
    for args in (["resaon=x"], ["reason=two\nlines"]):
        ret = as_user(salt_run, "alice", "deploytoken.acquire", *args)
        assert ret.returncode == 2 and ret.data["retcode"] == 2, ret
        assert "Traceback" not in ret.stdout + ret.stderr
    assert store_path.read_bytes() == before


def test_the_documentation_still_describes_each_function(salt_run):
    ret = salt_run.run("-d", "deploytoken.acquire")
    assert ret.returncode == 0
    assert "Take the deploy token." in ret.stdout and "salt-run deploytoken.acquire reason=" in ret.stdout


def test_json_output_is_one_document_while_waiting(salt_run):
    as_user(salt_run, "alice", "deploytoken.acquire")
    ret = as_user(salt_run, "bob", "--out=json", "deploytoken.acquire", "wait=True", "timeout=3", "interval=1")
    assert ret.returncode == 1, ret
    assert json.loads(ret.stdout)["message"].startswith("Gave up after waiting 3 s: the deploy token is still held")
    assert "Waiting for the deploy token, held by Alice Smith" in ret.stderr


def test_a_claim_that_never_existed_is_named_as_such(runner):
    as_user(runner, "alice", "deploytoken.acquire")
    never = as_user(runner, "bob", "deploytoken.release", "force=True", "claim=0123456789abcdef", "reason=x")
    assert never.returncode == 1, never
    assert never.data["message"].startswith("There is no claim 0123456789abcdef: it is not the current claim")
    shapeless = as_user(runner, "bob", "deploytoken.release", "force=True", "claim=abc", "reason=x")
    assert shapeless.returncode == 2, shapeless
    assert shapeless.data["error"].startswith("The claim 'abc' is not a claim id")


def test_unknown_backend_exits_2(runner_with):
    ret = runner_with({"backend": "etcd"}).run("deploytoken.status")
    assert ret.returncode == 2
    assert ret.data == {
        "error": "Unknown deploytoken:backend 'etcd': use one of sqlite, google, postgres in the master config.",
        "retcode": 2,
    }


def test_corrupt_store_is_named_and_left_untouched(runner_with, session_dir):
    path = session_dir / "corrupt.sqlite"
    path.write_bytes(b"not a database" * 512)
    path.chmod(0o600)  # a store others could read would be refused for that first
    ret = runner_with({"sqlite": {"path": str(path)}}).run("deploytoken.acquire", env={"SUDO_USER": "alice"})
    assert ret.returncode == 2
    assert ret.data["error"].startswith(f"The token store {path} is damaged or not a SQLite file")
    assert path.read_bytes() == b"not a database" * 512


def test_hints_name_the_config_folder_of_the_call_so_pasting_them_works(salt_run_with, tmp_path):
    cli = salt_run_with({"sqlite": {"path": str(tmp_path / "token.sqlite")}, "people": PEOPLE})
    prefix = hint_prefix(cli)
    assert prefix.startswith("salt-run -c /") and not prefix.startswith("salt-run -c /etc/salt")
    taken = as_user(cli, "alice", "deploytoken.acquire", "reason=paste me")
    assert taken.returncode == 0, taken
    hint = taken.data["message"].split("Give it back with: ", 1)[1]
    assert hint == f"{prefix} deploytoken.release note='...'"
    assert as_user(cli, "bob", "deploytoken.acquire").data["message"].endswith(
        f"Wait with {prefix} deploytoken.acquire wait=True, or ask Alice Smith to run {prefix} deploytoken.release.")
    program, *args = shlex.split(hint)
    pasted = subprocess.run([str(pathlib.Path(sys.executable).parent / program), *args], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, SUDO_USER="alice"))
    assert pasted.returncode == 0, pasted
    assert as_user(cli, "alice", "deploytoken.status").data["held"] is False
