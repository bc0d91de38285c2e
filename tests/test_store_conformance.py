"""
What every token store must do, run against each backend: SQLite on a file, Google against the loopback
fake through the real client, PostgreSQL on a real cluster (a schema of its own per test). A new backend
gets the whole suite by adding its name to ``BACKENDS`` below and a branch in ``backend``.

Each test opens stores the way the runner does (``deploytoken_stores.open_store``); the races open one
store per process, as separate ``salt-run`` processes would.
"""

import dataclasses
import datetime
import multiprocessing
import os
import sqlite3

import pytest

import deploytoken_model as model
import deploytoken_settings
import deploytoken_stores
import deploytoken_token as token
from conftest import PEOPLE
from google_fixtures import google_store
from pg_fixtures import postgres_store

BACKENDS = ["sqlite", "google", "postgres"]
PROCESSES = 50
# A few rounds prove the point in every run; scripts/stress runs 20 rounds of each race.
ROUNDS = int(os.environ.get("DEPLOYTOKEN_RACE_ROUNDS", "2"))


@dataclasses.dataclass
class Backend:
    """How the suite opens a backend's store and damages it."""

    open: object  # () -> a new store object on the same token store
    damage: object  # (store) -> (the name the refusal gives, () -> a snapshot of what was damaged)
    holder_count: object  # () -> how many holders the backing store shows (never more than one)


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "token.sqlite"
        settings = deploytoken_settings.Settings(cachedir=str(tmp_path), sections={"sqlite": {"path": str(path)}},
                                                 people=PEOPLE)

        def damage(store):
            path.write_bytes(b"this is not a database at all, but somebody's notes" * 100)
            return f"{path} is damaged", path.read_bytes

        def holder_count():
            with sqlite3.connect(path) as db:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                return db.execute("SELECT count(*) FROM token").fetchone()[0]

        return Backend(lambda: deploytoken_stores.open_store(settings), damage, holder_count)
    if request.param == "postgres":
        cluster = request.getfixturevalue("pg_store_cluster")
        section = request.getfixturevalue("pg_section")

        def holder_count():
            with cluster.connect() as conn:
                return conn.execute(f"SELECT count(*) FROM {section['schema']}.token").fetchone()[0]

        def damage(store):
            # The schema's own marker changed: it no longer says it is a deploy token store.
            with cluster.connect() as conn:
                conn.execute(f"UPDATE {section['schema']}.meta SET value = 'payroll' WHERE key = 'application'")

            def snapshot():
                with cluster.connect() as conn:
                    return conn.execute(f"SELECT key, value FROM {section['schema']}.meta ORDER BY key").fetchall()

            return f"The schema {section['schema']} .* is not a deploy token store", snapshot

        return Backend(lambda: postgres_store(section), damage, holder_count)
    fake = request.getfixturevalue("fake_google")
    config = request.getfixturevalue("google_config")

    def damage(store):
        spool = store.sheet.local.path("spool.json")
        with open(spool, "w") as handle:
            handle.write('[{"claim": "lost?", ')
        return f"{spool} is damaged", lambda: open(spool, "rb").read()

    def holder_count():
        return 0 if fake.held_text(config["document_id"]) == "Held by: Nobody\n" else 1

    return Backend(lambda: google_store(config), damage, holder_count)


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


def test_a_waiter_in_line_is_listed_and_leaves_it(backend):
    store = backend.open()
    ticket = store.enqueue("Bob Jones")
    assert store.ahead(ticket) == 0
    waiting = [entry["who"] for entry in backend.open().waiting()]
    assert waiting in ([], ["Bob Jones"])  # a store without a line lists nobody
    store.wait(0.1)
    store.dequeue(ticket)
    assert backend.open().waiting() == []


# ---- races through separate processes --------------------------------------------------------


def _in_children(target, argument_lists):
    """Run ``target(*args, barrier, results)`` in one forked process per argument list; their outcomes.

    The racers are forked by one launcher process, which has no threads: forking them straight from the
    test process (where the fake Google server and Salt's helpers run threads) could copy a lock some
    thread held at that moment into a racer, which then never reaches the barrier."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(argument_lists))
    results = context.Queue()
    launcher = context.Process(target=_launch, args=(target, argument_lists, barrier, results))
    launcher.start()
    try:
        return [results.get(timeout=180) for _ in argument_lists]
    finally:
        launcher.join(60)
        if launcher.is_alive():
            launcher.kill()


def _launch(target, argument_lists, barrier, results):
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=target, args=(*args, barrier, results)) for args in argument_lists]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
        if child.is_alive():
            child.kill()


def _acquire(backend, login, barrier, results):
    store = backend.open()
    barrier.wait()
    try:
        ret = token.acquire(store, login, {}, reason=f"by {login}")
        results.put(("won" if ret.get("changed") else "refused", login, ret.get("retcode"), ret["message"]))
    except Exception as exc:  # every outcome must reach the parent, errors included
        results.put(("error", login, None, repr(exc)))


def _release(backend, login, claim, force, barrier, results):
    store = backend.open()
    barrier.wait()
    try:
        ret = token.release(store, login, {}, claim=claim, force=force, reason="race" if force else "")
        results.put(("released" if ret.get("released") else "refused", login, ret.get("retcode"), ret["message"]))
    except Exception as exc:
        results.put(("error", login, None, repr(exc)))


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_acquires_end_with_exactly_one_holder(backend, round_):
    outcomes = _in_children(_acquire, [(backend, f"user{i}") for i in range(PROCESSES)])
    winners = [o for o in outcomes if o[0] == "won"]
    refusals = [o for o in outcomes if o[0] == "refused"]
    assert len(winners) == 1, outcomes
    assert len(refusals) == PROCESSES - 1, [o for o in outcomes if o[0] == "error"]
    winner = winners[0][1]
    assert all(o[2] == 1 and o[3].startswith(f"Deploy token is held by {winner} since") for o in refusals)
    status = token.status(backend.open())
    assert status["login"] == winner and status["reason"] == f"by {winner}"
    assert backend.holder_count() == 1 and token.history(backend.open()) == []


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_stale_releases_never_end_the_newer_claim(backend, round_):
    store = backend.open()
    old = token.acquire(store, "alice", {})
    token.release(store, "alice", {})
    new = token.acquire(store, "bob", {})
    # Half replay alice's old claim as a forced release, half are bob's own duplicated release.
    args = [(backend, "alice", old["claim"], True) for _ in range(PROCESSES // 2)]
    args += [(backend, "bob", new["claim"], False) for _ in range(PROCESSES // 2)]
    outcomes = _in_children(_release, args)
    assert not [o for o in outcomes if o[0] == "error"], outcomes
    released = [o for o in outcomes if o[0] == "released"]
    assert len(released) == 1 and released[0][1] == "bob", outcomes
    stale = [o for o in outcomes if o[1] == "alice"]
    assert all(o[0] == "refused" and f"Claim {old['claim']} has already ended" in o[3] for o in stale)
    assert backend.holder_count() == 0
    assert [row["claim"] for row in token.history(backend.open())] == [new["claim"], old["claim"]]
