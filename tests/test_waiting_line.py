"""
The fair line on the embedded store: a plain acquire never takes a free token from the people in line,
waiters are served in the order they joined, a killed waiter leaves the line, and a waiter wakes at
the release instead of at its next try (real processes on a real SQLite file; the CLI test through the
real salt-run and master).
"""

import concurrent.futures
import os
import re
import signal
import statistics

import pytest

import racing
from conftest import PEOPLE, as_user
from deploytoken import commands as token
from deploytoken import model
from deploytoken import settings as token_settings
from deploytoken.stores import sqlite as sqlite_store
from kingfisher_fixtures import wait_for

WAITERS = 20


@pytest.fixture
def store_file(tmp_path):
    return str(tmp_path / "token.sqlite")


def gap(start, end):
    """Seconds from one of our ISO 8601 times to another."""
    return (model.parse_time(end) - model.parse_time(start)).total_seconds()


def sqlite_settings(path):
    return token_settings.Settings(cachedir=os.path.dirname(path), sections={"sqlite": {"path": path}},
                                   people=PEOPLE)


def seconds_blurred(message):
    """``message`` without the age of a time it names, which may have passed a second boundary meanwhile."""
    return re.sub(r"\(\d+ s\)", "(N s)", message)


def test_a_plain_acquire_while_people_wait_is_refused_naming_the_first(store_file):
    store = sqlite_store.SqliteStore(store_file)
    bob = sqlite_store.SqliteStore(store_file)
    ticket = bob.enqueue("Bob Jones")
    since = model.since_text(store.waiting()[0]["since"])
    refused = token.acquire(store, "carol", PEOPLE, reason="my turn")
    assert refused["retcode"] == 1 and refused["acquired"] is False and store.read() is None
    assert seconds_blurred(refused["message"]) == seconds_blurred(
        f"The deploy token is free, but Bob Jones has waited for it since {since}. Join the line with salt-run "
        "deploytoken.acquire wait=True, or take it ahead of the line with salt-run deploytoken.acquire force=True "
        "reason='...'")
    assert [entry["who"] for entry in refused["waiting"]] == ["Bob Jones"]
    with pytest.raises(model.InputError, match=r"^Taking the token ahead of the people waiting needs a reason"):
        token.acquire(store, "carol", PEOPLE, force=True)
    with pytest.raises(model.InputError, match=r"^force=True takes a free token at once, ahead of the people"):
        token.acquire(store, "carol", PEOPLE, force=True, wait=True, reason="hotfix")
    taken = token.acquire(store, "carol", PEOPLE, force=True, reason="hotfix, agreed with Bob")
    assert taken["changed"] and taken["holder"] == "Carol Díaz" and taken["reason"] == "hotfix, agreed with Bob"
    held = token.acquire(sqlite_store.SqliteStore(store_file), "alice", PEOPLE)
    assert held["retcode"] == 1 and seconds_blurred(held["message"]).endswith(seconds_blurred(
        f"In line already: Bob Jones has waited for it since {model.since_text(store.waiting()[0]['since'])}."))
    bob.dequeue(ticket)
    assert store.waiting() == []


def test_someone_already_in_line_who_asks_again_is_told_so_not_to_wait(store_file):
    store = sqlite_store.SqliteStore(store_file)
    token.acquire(store, "alice", PEOPLE, reason="upgrade postgres")
    carol = sqlite_store.SqliteStore(store_file)
    bob = sqlite_store.SqliteStore(store_file)
    first, second = carol.enqueue("Carol Díaz"), bob.enqueue("Bob Jones")
    since = model.since_text(store.waiting()[1]["since"])
    again = token.acquire(sqlite_store.SqliteStore(store_file), "bob", PEOPLE)
    assert again["retcode"] == 1 and again["acquired"] is False
    assert "Wait with" not in again["message"]
    assert seconds_blurred(again["message"]).endswith(seconds_blurred(
        f"and you are already waiting for it in line (number 2 of 2, since {since}): that salt-run "
        "deploytoken.acquire wait=True takes the token when it is your turn."))
    assert again["message"].startswith("The deploy token is held by Alice Smith (alice) since ")
    carol.dequeue(first), bob.dequeue(second)


def test_a_wait_that_led_to_a_holding_ends_when_the_holding_began(store_file):
    store = sqlite_store.SqliteStore(store_file)
    token.acquire(store, "alice", PEOPLE)
    messages = []

    def release_later(seconds):  # the real store's sleep, after alice gives the token back a little later
        if len(messages) > 1:
            token.release(sqlite_store.SqliteStore(store_file), "alice", PEOPLE)
        store.wait(min(seconds, 0.5))

    taken = token.acquire(store, "bob", PEOPLE, wait=True, timeout=30, interval=1, progress=messages.append,
                          sleep=release_later)
    assert taken["changed"], taken
    # Joining the line wakes the waiter at once; the same report is not printed twice in a row.
    assert all(before != after for before, after in zip(messages, messages[1:])), messages
    (waited,) = [row for row in store.history(5) if row.kind == model.WAITED]
    assert waited.released == taken["since"] and waited.note == "took the token"
    assert waited.duration == int(gap(waited.acquired, waited.released))


def test_twenty_concurrent_waiters_are_served_in_the_order_they_joined(store_file):
    store = sqlite_store.SqliteStore(store_file)
    token.acquire(store, "alice", PEOPLE)
    logins = [f"w{i:02d}" for i in range(WAITERS)]
    settings = sqlite_settings(store_file)
    outcomes = racing.returned(racing.run(racing.serve_line, [(settings, "releaser", "alice", PEOPLE, WAITERS)] +
                                          [(settings, "waiter", login, PEOPLE, WAITERS) for login in logins]))
    (line,) = [o[1] for o in outcomes if o[0] == "line"]
    assert sorted(line) == logins
    rows = store.history(2 * WAITERS + 1)
    assert [row.login for row in rows if row.kind == model.HOLDING][::-1] == ["alice", *line], "nobody cut in"
    waits = [row for row in rows if row.kind == model.WAITED]  # each wait in the line, for the report
    assert sorted(row.login for row in waits) == logins and {row.note for row in waits} == {"took the token"}
    assert all(row.duration >= 0 and row.acquired <= row.released for row in waits)
    # From one waiter holding the token to the next holding it: its release, the wake-up and the acquire.
    times = [o[2] for o in sorted(outcomes, key=lambda o: o[2])]
    hand_offs = [after - before for before, after in zip(times, times[1:])]
    print(f"SQLite hand-offs, {WAITERS} waiters: median {statistics.median(hand_offs):.3f} s, "
          f"max {max(hand_offs):.3f} s")
    # Woken, not polling: a waiter that only tried again after its 30 s interval would take that long. The
    # figure against the 0.5 s goal is benchmarks/token_store.py's; a loaded machine must not fail the test.
    assert statistics.median(hand_offs) < 5
    assert store.waiting() == [] and store.read() is None


def test_a_killed_waiter_leaves_the_line_at_once(store_file):
    store = sqlite_store.SqliteStore(store_file)
    token.acquire(store, "alice", PEOPLE)
    with racing.started(racing.take_in_turn, barrier=False) as race:
        for login in ("w0", "w1", "w2"):
            race.start(racing.take_in_turn, sqlite_settings(store_file), login, PEOPLE)
            wait_for(lambda: len(store.waiting()) == len(race.processes), what=f"{login} in the line")
        dead_lock = set(os.listdir(store_file + ".line"))
        os.kill(race.processes[0].pid, signal.SIGKILL)
        race.processes[0].join(10)
        assert [entry["who"] for entry in store.waiting()] == ["w1", "w2"], "no wait: its lock went with it"
        token.release(store, "alice", PEOPLE)
        served = [login for login, _ in racing.returned(race.collect(2))]
    assert served == ["w1", "w2"]
    later = sqlite_store.SqliteStore(store_file)
    ticket = later.enqueue("later")  # the next waiter to join removes the dead row and its lock file
    assert not dead_lock & set(os.listdir(store_file + ".line")) - {later._place[2]}
    assert [entry["who"] for entry in later.waiting()] == ["later"]
    later.dequeue(ticket)


@pytest.mark.daemons
@pytest.mark.usefixtures("free_token")
def test_a_waiter_holds_the_token_within_a_second_of_the_release_through_the_cli(salt_run, salt_master):
    as_user(salt_run, "alice", "deploytoken.acquire", "reason=upgrade")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # interval=30: a waiter that only tried again after its interval would take 30 s.
        waiting = pool.submit(as_user, salt_master.salt_run_cli(timeout=120), "bob", "deploytoken.acquire",
                              "wait=True", "interval=30", "timeout=90")
        try:
            wait_for(lambda: [entry["who"] for entry in as_user(salt_run, "carol", "deploytoken.status")
                              .data["waiting"]] == ["Bob Jones"], timeout=60, what="bob in the line")
            released = as_user(salt_run, "alice", "deploytoken.release")
            assert released.returncode == 0, released
            taken = waiting.result(timeout=60)
        finally:
            as_user(salt_run, "bob", "deploytoken.release")
    assert taken.returncode == 0 and taken.data["holder"] == "Bob Jones", taken
    (row,) = [row for row in as_user(salt_run, "carol", "deploytoken.history", "limit=5").data
              if row["claim"] == released.data["claim"]]
    # Times are kept to the second: a hand-off within a second shows as 0 or 1.
    assert gap(row["released"], taken.data["since"]) <= 1
