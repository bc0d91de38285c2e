"""
What every token store must do, run against each backend: SQLite on a file, Google against the loopback
fake through the real client, PostgreSQL on a real cluster (a schema of its own per test). A new backend
gets the whole suite with one entry in ``tests/store_fixtures.py`` (the fixture ``backend`` fails for a
backend that has none).

Each test opens stores the way the runner does (``token_stores.open_store``); the races open one
store per process (``tests/racing.py``), as separate ``salt-run`` processes would.
"""

import datetime
import os

import pytest

import racing
from conftest import PEOPLE
from deploytoken import commands as token
from deploytoken import model
from deploytoken import stores as token_stores
from deploytoken.stores import noline

# One round of 20 racers proves the point in every run; scripts/stress runs 20 rounds of 50 racers.
PROCESSES = int(os.environ.get("DEPLOYTOKEN_RACE_PROCESSES", "20"))
ROUNDS = int(os.environ.get("DEPLOYTOKEN_RACE_ROUNDS", "1"))


def holding(login="alice", claim="c1"):
    return model.Holding(holder=PEOPLE[login], login=login, caller=login, claim=claim,
                         since="2026-01-01T00:00:00Z", reason="upgrade")


def test_acquire_takes_a_free_token_and_read_returns_it(backend):
    store = backend.open()
    assert store.read() is None
    assert store.acquire(holding()) == holding()
    assert backend.open().read() == holding()
    assert backend.holder_count() == 1


def test_acquire_is_idempotent_for_the_holder(backend):
    store = backend.open()
    first = token.acquire(store, "alice", PEOPLE, reason="one")
    again = token.acquire(backend.open(), "alice", PEOPLE, reason="two")
    assert again["acquired"] and not again["changed"] and again["claim"] == first["claim"]
    assert "retcode" not in again


def test_acquire_refused_naming_the_holder(backend):
    store = backend.open()
    token.acquire(store, "alice", PEOPLE, reason="upgrade postgres")
    assert store.acquire(holding("bob", "c2")).claim != "c2"
    refused = token.acquire(backend.open(), "bob", PEOPLE)
    assert refused["retcode"] == 1 and not refused["acquired"]
    assert refused["message"].startswith("Deploy token is held by Alice Smith (alice) since ")
    assert '"upgrade postgres"' in refused["message"]
    assert backend.open().read().holder == "Alice Smith"


def test_release_frees_the_token_and_writes_one_history_row(backend):
    store = backend.open()
    taken = token.acquire(store, "alice", PEOPLE, reason="upgrade postgres")
    given = token.release(backend.open(), "alice", PEOPLE, note="rebooted")
    assert given["released"] and given["claim"] == taken["claim"]
    assert backend.open().read() is None and backend.holder_count() == 0
    (row,) = token.history(store)
    assert row["claim"] == taken["claim"] and row["holder"] == "Alice Smith" and row["login"] == "alice"
    assert row["reason"] == "upgrade postgres" and row["note"] == "rebooted"
    assert row["acquired"] == taken["since"] and row["duration"] >= 0 and row["forced_by"] is None
    assert store.flush() == 0


def test_force_release_is_recorded_with_who_and_why(backend):
    taken = token.acquire(backend.open(), "alice", PEOPLE, reason="r1")
    forced = token.release(backend.open(), "bob", PEOPLE, force=True, reason="Alice is away")
    assert forced["released"] and forced["forced_by"] == "Bob Jones (bob)"
    (row,) = token.history(backend.open())
    assert row["claim"] == taken["claim"] and row["forced_by"] == "Bob Jones (bob)"
    assert row["force_reason"] == "Alice is away"


def test_stale_claim_cannot_end_a_newer_claim(backend):
    store = backend.open()
    old = token.acquire(store, "alice", PEOPLE)
    token.release(store, "alice", PEOPLE)
    new = token.acquire(store, "bob", PEOPLE)
    refused = token.release(backend.open(), "carol", PEOPLE, force=True, reason="late", claim=old["claim"])
    assert refused["retcode"] == 1 and f"Claim {old['claim']} has already ended" in refused["message"]
    stale = model.HistoryRow(old["claim"], "x", None, None, None, "2026-01-01T00:00:00Z", 0)
    with pytest.raises(model.ClaimConflict, match=f"Claim {old['claim']} has already ended"):
        backend.open().release(old["claim"], stale)
    assert backend.open().read().claim == new["claim"]
    assert [row["claim"] for row in token.history(store)] == [old["claim"]]


def test_history_is_newest_first_and_limited(backend):
    store = backend.open()
    claims = []
    for login in ("alice", "bob", "carol"):
        claims.append(token.acquire(store, login, PEOPLE)["claim"])
        token.release(store, login, PEOPLE, note=f"by {login}")
    assert [row["claim"] for row in token.history(backend.open(), 2)] == claims[::-1][:2]
    assert [row["note"] for row in token.history(backend.open(), 10)] == ["by carol", "by bob", "by alice"]


def test_damaged_store_is_refused_by_its_name_and_left_untouched(backend):
    store = backend.open()
    token.acquire(store, "alice", PEOPLE)
    named, snapshot = backend.damage(store)
    before = snapshot()
    for action in (lambda: token.acquire(backend.open(), "bob", PEOPLE),
                   lambda: token.release(backend.open(), "alice", PEOPLE),
                   lambda: backend.open().history(5)):
        with pytest.raises(model.StoreError, match=named):
            action()
    assert snapshot() == before


def test_identity_is_made_with_the_store_and_stays(backend):
    identity = backend.open().identity
    assert set(identity) == {"id", "name"} and all(isinstance(value, str) and value for value in identity.values())
    token.acquire(backend.open(), "alice", PEOPLE)
    assert backend.open().identity == identity


def test_a_history_row_of_its_own_is_appended_once(backend):
    row = model.HistoryRow(claim="override-0123456789abcdef", holder="Bob Jones", login="bob", caller="bob",
                           acquired="2026-01-01T00:00:00Z", released="2026-01-01T01:00:00Z", duration=3600,
                           reason="database down", note="Override of the deploy token guard on *")
    store = backend.open()
    assert store.append_history(row) is True
    backend.open().append_history(row)
    assert [entry["claim"] for entry in token.history(backend.open())] == [row.claim]
    assert token.status(backend.open())["held"] is False


def override_row(claim, released, note="Override of the deploy token guard on kingfisher*"):
    return model.HistoryRow(claim=claim, holder="Bob Jones", login="bob", caller="bob",
                            acquired="2026-01-01T00:00:00Z", released=released, duration=None,
                            reason="database down", note=note)


def test_overrides_are_the_running_override_rows_without_a_cancellation(backend):
    now = datetime.datetime(2026, 1, 1, 0, 30, tzinfo=datetime.timezone.utc)
    running, ended, cancelled = (f"override-{n:016x}" for n in (1, 2, 3))
    store = backend.open()
    for row in (override_row(running, "2026-01-01T01:00:00Z"), override_row(ended, "2026-01-01T00:20:00Z"),
                override_row(cancelled, "2026-01-01T01:00:00Z"),
                override_row(f"{cancelled}.cancel", "2026-01-01T00:10:00Z", note="cancelled"),
                model.HistoryRow(claim="0123456789abcdef", holder="Alice Smith", login="alice", caller="alice",
                                 acquired="2026-01-01T00:00:00Z", released="2026-01-01T02:00:00Z", duration=7200)):
        assert store.append_history(row) is True
    # Another store object (another master or operator) on the same store sees the same overrides.
    assert backend.open().overrides(now) == [override_row(running, "2026-01-01T01:00:00Z")]
    assert backend.open().overrides(now + datetime.timedelta(hours=1)) == []


OVERRIDE_NOTE = "Override of the deploy token guard on "
# Rows as the code before history kinds wrote them: no kind, and an override's planned end as released.
OLD_ROWS = [
    ("0123456789abcdef", "Alice Smith", "alice", "alice", "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z", 3600,
     "upgrade", "done", None, None),
    ("fedcba9876543210", "Bob Jones", "bob", "bob", "2026-01-02T10:00:00Z", "2026-01-02T10:30:00Z", 1800, "", "",
     "Carol Díaz (carol)", "Bob is away"),
    ("override-00000000000000aa", "Carol Díaz", "carol", "carol", "2026-01-03T10:00:00Z", "2026-01-03T11:00:00Z",
     3600, "db down", OVERRIDE_NOTE + "*", None, None),
    ("override-00000000000000aa.cancel", "Carol Díaz", "carol", "alice", "2026-01-03T10:00:00Z",
     "2026-01-03T10:20:00Z", 1200, "db down", "cancelled", "Alice Smith", "db back"),
    ("override-00000000000000bb", "Carol Díaz", "carol", "carol", "2026-01-04T10:00:00Z", "2999-01-01T00:00:00Z",
     None, "long", OVERRIDE_NOTE + "db1", None, None),
]


def test_a_store_written_before_history_kinds_reads_with_kinds_and_true_times(backend):
    settings = backend.old(OLD_ROWS)
    rows = token.history(token_stores.open_store(settings))
    assert [row["kind"] for row in rows] == ["override", "override_cancelled", "override", "forced", "holding"]
    running, _, cancelled = rows[:3]
    assert (running["acquired"], running["until"], running["released"]) == (
        "2026-01-04T10:00:00Z", "2999-01-01T00:00:00Z", None)
    assert (cancelled["until"], cancelled["released"], cancelled["duration"]) == (
        "2026-01-03T11:00:00Z", "2026-01-03T10:20:00Z", 1200)
    store = token_stores.open_store(settings)
    assert [row.claim for row in store.overrides(model.utcnow())] == ["override-00000000000000bb"]
    # It takes new rows: a holding, and an override whose end is not known yet.
    token.acquire(store, "alice", PEOPLE)
    token.release(store, "alice", PEOPLE, note="new")
    assert store.append_history(model.HistoryRow(
        claim="override-00000000000000cc", holder="Bob Jones", login="bob", caller="bob",
        acquired="2026-02-01T10:00:00Z", released=None, duration=None, note=OVERRIDE_NOTE + "*",
        kind=model.OVERRIDE, until="2999-02-01T00:00:00Z")) is True
    rows = token.history(token_stores.open_store(settings), 3)
    assert [(row["kind"], row["until"], row["released"]) for row in rows[:2]] == [
        ("override", "2999-02-01T00:00:00Z", None), ("holding", None, rows[1]["released"])]
    assert rows[1]["released"] and rows[2]["claim"] == "override-00000000000000bb"


def test_each_row_says_what_it_is_and_no_time_is_in_the_future(backend):
    store = backend.open()
    token.acquire(store, "alice", PEOPLE)
    given = token.release(store, "alice", PEOPLE)
    token.acquire(store, "alice", PEOPLE)
    token.release(store, "bob", PEOPLE, force=True, reason="away")
    now = model.isoformat(model.utcnow())
    assert store.append_history(model.HistoryRow(
        claim="override-00000000000000dd", holder="Bob Jones", login="bob", caller="bob", acquired=now,
        released=None, duration=None, note=OVERRIDE_NOTE + "*", kind=model.OVERRIDE, until="2999-01-01T00:00:00Z"))
    rows = token.history(backend.open())
    assert [row["kind"] for row in rows] == ["override", "forced", "holding"]
    assert rows[2]["released"] == given["released"] and rows[2]["duration"] == given["duration"]
    assert all((row["released"] or "") <= model.isoformat(model.utcnow()) for row in rows)
    assert rows[0]["released"] is None and rows[0]["until"] == "2999-01-01T00:00:00Z"


def test_a_waiter_in_line_is_listed_and_leaves_it(backend):
    store = backend.open()
    ticket = store.enqueue("Bob Jones")
    assert store.ahead(ticket) == 0
    waiting = [entry["who"] for entry in backend.open().waiting()]
    # A store without a line (noline.NoWaitingLine) lists nobody; every other lists Bob.
    assert waiting == ([] if isinstance(store, noline.NoWaitingLine) else ["Bob Jones"])
    store.wait(0.1)
    store.dequeue(ticket)
    assert backend.open().waiting() == []


# ---- races through separate processes --------------------------------------------------------


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_acquires_end_with_exactly_one_holder(backend, round_, stress_counts):
    outcomes = racing.returned(racing.run(racing.acquire, [(backend.settings, f"user{i}") for i in range(PROCESSES)]))
    winners = [o for o in outcomes if o[0] == "won"]
    refusals = [o for o in outcomes if o[0] == "refused"]
    stress_counts["race rounds"] += 1
    stress_counts["violations"] += len(winners) != 1 or backend.holder_count() != 1
    assert len(winners) == 1 and len(refusals) == PROCESSES - 1, outcomes
    winner = winners[0][1]
    assert all(o[3] == 1 and o[4].startswith(f"Deploy token is held by {winner} since") for o in refusals)
    status = token.status(backend.open())
    assert status["login"] == winner and status["reason"] == f"by {winner}"
    assert backend.holder_count() == 1 and token.history(backend.open()) == []


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_stale_releases_never_end_the_newer_claim(backend, round_, stress_counts):
    store = backend.open()
    old = token.acquire(store, "alice", {})
    token.release(store, "alice", {})
    new = token.acquire(store, "bob", {})
    # Half replay alice's old claim as a forced release, half are bob's own duplicated release.
    args = [(backend.settings, "alice", old["claim"], True) for _ in range(PROCESSES // 2)]
    args += [(backend.settings, "bob", new["claim"], False) for _ in range(PROCESSES // 2)]
    outcomes = racing.returned(racing.run(racing.release, args))
    released = [o for o in outcomes if o[0] == "released"]
    claims = [row["claim"] for row in token.history(backend.open())]
    stress_counts["race rounds"] += 1
    stress_counts["violations"] += len(released) != 1 or claims != [new["claim"], old["claim"]]
    assert len(released) == 1 and released[0][1] == "bob", outcomes
    stale = [o for o in outcomes if o[1] == "alice"]
    assert all(o[0] == "refused" and f"Claim {old['claim']} has already ended" in o[4] for o in stale)
    assert backend.holder_count() == 0
    assert claims == [new["claim"], old["claim"]]
