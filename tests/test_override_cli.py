"""salt-run deploytoken.override on the real master and minion: the targeted minion passes loudly, others
do not, the history keeps who, why, where and until when, cancel and expiry end it, and an unreachable
store keeps the row on the master until it can be written. The first test goes through the real CLIs; the
others call the runner and publish the state runs from this process (``runner``, ``salt_local``)."""

import sqlite3
import time

import pytest

from conftest import hint_prefix
from guard_helpers import MINION, unreadable_store
from test_guard_states import apply_as, guard_of

pytestmark = pytest.mark.daemons

REASON = "database down, agreed with Alice"


@pytest.fixture
def overrides(runner):
    """Every override is cancelled and every spooled row written after the test."""
    yield
    runner.run("deploytoken.override", "cancel=True", "reason=test over", env={"SUDO_USER": "bob"})
    runner.run("deploytoken.flush")


def as_bob(salt_run, *args):
    return salt_run.run(*args, env={"SUDO_USER": "bob"})


def history_row(salt_run, claim):
    rows = salt_run.run("deploytoken.history", "limit=20").data
    return next((row for row in rows if row["claim"] == claim), None)


def test_an_override_lets_the_targeted_minion_through_loudly_and_is_in_the_history(
    salt_run, salt_cli, salt_master, event_listener, token, guarded, overrides
):
    sls, marker = guarded
    token.take("alice")
    start = time.time()
    made = as_bob(salt_run, "deploytoken.override", f"reason={REASON}", f"targets={MINION}", "minutes=30")
    assert made.returncode == 0, made
    assert made.data["message"].startswith(f"OVERRIDE {made.data['id']}: until ")
    assert f"the deploy token guard lets every deployment on {MINION} through" in made.data["message"]
    assert made.data["message"].endswith("The history has its row.")
    (event,) = event_listener.wait_for_events([(salt_master.id, "deploytoken/override")], after_time=start,
                                              timeout=30)
    data = event.data.get("data", event.data)
    assert data["id"] == made.data["id"] and data["by"] == "Bob Jones" and data["reason"] == REASON

    ret = apply_as(salt_cli, "bob", sls)
    assert ret.returncode == 0, ret
    comment = guard_of(ret)["comment"]
    assert comment.startswith(f"OVERRIDE: the deploy token guard PASSED for Bob Jones (bob) on {MINION} without "
                              "checking the token (Alice Smith (alice) since ")
    assert f"override {made.data['id']} by Bob Jones in SQLite store " in comment and f"because: {REASON!r}." in comment
    assert marker.exists()

    row = history_row(salt_run, made.data["id"])
    assert row["holder"] == "Bob Jones" and row["reason"] == REASON and row["kind"] == "override"
    # Running: it has its start and planned end, and no end yet.
    assert (row["acquired"], row["until"], row["released"]) == (made.data["since"], made.data["until"], None)
    assert row["note"] == f"Override of the deploy token guard on {MINION}"
    status = salt_run.run("deploytoken.status").data
    assert [entry["id"] for entry in status["overrides"]] == [made.data["id"]]


def test_an_override_for_other_minions_does_not_let_this_one_through(runner, salt_local, token, guarded, overrides):
    sls, marker = guarded
    token.take("alice")
    assert as_bob(runner, "deploytoken.override", f"reason={REASON}", "targets=kingfisher-*,db1").returncode == 0
    ret = apply_as(salt_local, "bob", sls)
    assert ret.returncode == 1
    assert guard_of(ret)["comment"].startswith("Deploy token is held by Alice Smith (alice) since ")
    assert not marker.exists()


def test_cancel_and_expiry_end_an_override(runner, salt_local, token, guarded, overrides, store_path):
    sls, marker = guarded
    token.take("alice")
    made = as_bob(runner, "deploytoken.override", f"reason={REASON}").data
    cancelled = as_bob(runner, "deploytoken.override", "cancel=True", "reason=database back")
    assert cancelled.returncode == 0 and cancelled.data["message"].startswith("Cancelled 1 override(s)")
    row = history_row(runner, f"{made['id']}.cancel")
    assert (row["forced_by"], row["force_reason"], row["kind"]) == ("Bob Jones", "database back", "override_cancelled")
    assert history_row(runner, made["id"])["released"] == row["released"] == cancelled.data["overrides"][0][
        "cancelled"]["at"]
    assert apply_as(salt_local, "bob", sls).returncode == 1

    made = as_bob(runner, "deploytoken.override", f"reason={REASON}").data
    # Time passes: the override's end moves into the past, as it would after its minutes.
    with sqlite3.connect(store_path) as db:
        db.execute("UPDATE history SET until = '2000-01-01T00:00:00Z' WHERE claim = ?", (made["id"],))
    token.forget()
    assert apply_as(salt_local, "bob", sls).returncode == 1
    assert runner.run("deploytoken.status").data["overrides"] == []
    assert history_row(runner, made["id"])["released"] == "2000-01-01T00:00:00Z"  # expired: its planned end
    assert not marker.exists()


def test_an_override_works_while_the_store_is_down_and_its_row_is_written_later(
    runner, salt_local, token, guarded, overrides, store_path
):
    sls, marker = guarded
    runner.run("deploytoken.status")  # the master has reached its store: it can name it while it is down
    with unreadable_store(store_path):
        token.forget()
        made = as_bob(runner, "deploytoken.override", f"reason={REASON}", f"targets={MINION}")
        assert made.returncode == 0, made
        assert made.data["pending"] == 1 and "kept on this machine" in made.data["message"]
        ret = apply_as(salt_local, "bob", sls)
        assert ret.returncode == 0, guard_of(ret)["comment"]
        assert guard_of(ret)["comment"].startswith("OVERRIDE: ")
        assert "(the token could not be read)" in guard_of(ret)["comment"]
    token.forget()
    flushed = runner.run("deploytoken.flush")
    assert flushed.returncode == 0, flushed
    assert history_row(runner, made.data["id"])["reason"] == REASON


@pytest.mark.parametrize("args, sentence", [
    ((), "An override needs a reason, e.g. salt-run deploytoken.override reason='database down, agreed with Alice' "
         "targets='kingfisher*'."),
    (("reason=x", "minutes=2000"), "An override lasts at most 1440 minutes (one day); got 2000."),
    (("reason=x", "targets=a b"), "targets must be minion ids or globs separated by commas, got 'a b'."),
])
def test_bad_override_input_is_refused_and_changes_nothing(runner, overrides, args, sentence):
    ret = as_bob(runner, "deploytoken.override", *args)
    assert ret.returncode == 2
    assert ret.data == {"error": sentence.replace("salt-run", hint_prefix(runner)), "retcode": 2}
    assert runner.run("deploytoken.status").data["overrides"] == []
