"""Many processes at once against one SQLite store: one winner, clean refusals, nothing corrupted."""

import multiprocessing
import sqlite3

import pytest

import deploytoken_sqlite
import deploytoken_token as token

PROCESSES = 50
ROUNDS = 20
PEOPLE = {}


def _acquire(path, login, barrier, results):
    barrier.wait()
    try:
        ret = token.acquire(deploytoken_sqlite.SqliteStore(path), login, PEOPLE, reason=f"by {login}")
        results.put(("won" if ret.get("changed") else "refused", login, ret.get("retcode"), ret["message"]))
    except Exception as exc:  # every outcome must reach the parent, errors included
        results.put(("error", login, None, repr(exc)))


def _release(path, login, claim, force, barrier, results):
    barrier.wait()
    try:
        store = deploytoken_sqlite.SqliteStore(path)
        ret = token.release(store, login, PEOPLE, claim=claim, force=force, reason="race" if force else "")
        results.put(("released" if ret.get("released") else "refused", login, ret.get("retcode"), ret["message"]))
    except Exception as exc:
        results.put(("error", login, None, repr(exc)))


def _race(target, argument_lists):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(argument_lists))
    results = context.Queue()
    children = [context.Process(target=target, args=(*args, barrier, results)) for args in argument_lists]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(30)
    return outcomes


def _integrity(path):
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return db.execute("SELECT count(*) FROM token").fetchone()[0], db.execute(
            "SELECT count(*), count(DISTINCT claim) FROM history"
        ).fetchone()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_acquires_end_with_exactly_one_holder(tmp_path, round_):
    path = str(tmp_path / "token.sqlite")
    outcomes = _race(_acquire, [(path, f"user{i}") for i in range(PROCESSES)])
    winners = [o for o in outcomes if o[0] == "won"]
    refusals = [o for o in outcomes if o[0] == "refused"]
    assert len(winners) == 1, outcomes
    assert len(refusals) == PROCESSES - 1, [o for o in outcomes if o[0] == "error"]
    winner = winners[0][1]
    assert all(o[2] == 1 and o[3].startswith(f"Deploy token is held by {winner} since") for o in refusals)
    status = token.status(deploytoken_sqlite.SqliteStore(path))
    assert status["login"] == winner and status["reason"] == f"by {winner}"
    assert _integrity(path) == (1, (0, 0))


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_stale_releases_never_end_the_newer_claim(tmp_path, round_):
    path = str(tmp_path / "token.sqlite")
    store = deploytoken_sqlite.SqliteStore(path)
    old = token.acquire(store, "alice", PEOPLE)
    token.release(store, "alice", PEOPLE)
    new = token.acquire(store, "bob", PEOPLE)
    # Half replay alice's old claim as a forced release, half are bob's own duplicated release.
    args = [(path, "alice", old["claim"], True) for _ in range(PROCESSES // 2)]
    args += [(path, "bob", new["claim"], False) for _ in range(PROCESSES // 2)]
    outcomes = _race(_release, args)
    assert not [o for o in outcomes if o[0] == "error"], outcomes
    released = [o for o in outcomes if o[0] == "released"]
    assert len(released) == 1 and released[0][1] == "bob", outcomes
    stale = [o for o in outcomes if o[1] == "alice"]
    assert all(o[0] == "refused" and f"Claim {old['claim']} has already ended" in o[3] for o in stale)
    assert _integrity(path) == (0, (2, 2))
    claims = [row["claim"] for row in token.history(store)]
    assert claims == [new["claim"], old["claim"]]
