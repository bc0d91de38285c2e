"""
The PostgreSQL store when the server misbehaves, on a real cluster of the module's own: restarted with
``pg_ctl restart`` while acquires and releases wait on a lock, and a backend killed with
``pg_terminate_backend`` after its COMMIT was done but before the answer reached the client (a
synchronous standby that never comes holds the answer back). Never two holders, never a lost or
doubled history row, every outcome one sentence.
"""

import contextlib

import pytest

import racing
from conftest import PEOPLE
from deploytoken import commands as token
from deploytoken import model
from kingfisher_fixtures import wait_for
from pg_fixtures import drop_schema, postgres_settings, postgres_store, section_for, waiters

# Long enough that the blocked changes are still waiting when the server goes down.
SLOW = {"lock_timeout": 120, "statement_timeout": 120}


@pytest.fixture
def section(pg_fault_cluster):
    found = dict(section_for(pg_fault_cluster), **SLOW)
    postgres_store(found).read()  # the schema exists before the fault
    yield found
    drop_schema(pg_fault_cluster, found["schema"])


def _backends(cluster, section, condition):
    with cluster.connect() as conn:
        return conn.execute(
            f"SELECT pid FROM pg_stat_activity WHERE usename = %s AND {condition}", (section["user"],)
        ).fetchall()


def _state(cluster, section):
    """(the claims in the token table, [(claim, forced_by) of every history row])."""
    schema = section["schema"]
    with cluster.connect() as conn:
        held = [claim for (claim,) in conn.execute(f"SELECT claim FROM {schema}.token")]
        rows = conn.execute(f"SELECT claim, forced_by FROM {schema}.history ORDER BY seq").fetchall()
    return held, rows


def _restart(cluster):
    cluster.pg_ctl("restart", "-m", "fast", "-w", "-l", str(cluster.root / "log"))


@contextlib.contextmanager
def locked(cluster, section, table):
    """Hold ``table`` locked, so changes that need it wait inside their transaction."""
    conn = cluster.connect()
    conn.execute(f"LOCK TABLE {section['schema']}.{table} IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        conn.close()


def test_server_restarted_during_acquires_leaves_exactly_one_holder(pg_fault_cluster, section):
    logins = ["alice", "bob", "carol"]
    settings = postgres_settings(section)
    with locked(pg_fault_cluster, section, "token"):
        with racing.started(racing.acquire, [(settings, login, PEOPLE) for login in logins]) as race:
            wait_for(lambda: len(_backends(pg_fault_cluster, section, "wait_event_type = 'Lock'")) == 3,
                     what="the acquires to wait on the lock")
            _restart(pg_fault_cluster)
            found = racing.returned(race.collect())
    winners = [o for o in found if o[0] == "won"]
    assert len(winners) == 1, found
    refusals = [o for o in found if o[0] == "refused"]
    assert len(refusals) == 2, found
    assert all(o[4].startswith(f"Deploy token is held by {PEOPLE[winners[0][1]]}") for o in refusals)
    assert _state(pg_fault_cluster, section) == ([winners[0][2]], [])


def test_server_restarted_during_releases_writes_one_history_row(pg_fault_cluster, section):
    claim = token.acquire(postgres_store(section), "alice", PEOPLE)["claim"]
    settings = postgres_settings(section)
    args = [(settings, "alice", claim, False, PEOPLE), (settings, "bob", claim, True, PEOPLE)]
    with locked(pg_fault_cluster, section, "history"):
        with racing.started(racing.release, args) as race:
            # Both releases connected and waiting, so the restart cuts both off mid-change.
            wait_for(lambda: len(_backends(pg_fault_cluster, section, "wait_event_type = 'Lock'")) >= 2,
                     what="both releases to wait on a lock")
            _restart(pg_fault_cluster)
            found = racing.returned(race.collect())
    released = [o for o in found if o[0] == "released"]
    refused = [o for o in found if o[0] == "refused"]
    assert len(released) == 1 and len(refused) == 1, found
    assert refused[0][4].startswith(f"Claim {claim} has already ended: nobody holds the deploy token now.")
    held, rows = _state(pg_fault_cluster, section)
    assert held == [] and [row[0] for row in rows] == [claim]
    assert (rows[0][1] is None) == (released[0][1] == "alice")


def _answer_commits(cluster):
    with cluster.connect(autocommit=True) as conn:
        conn.execute("SET synchronous_commit = local")
        conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        conn.execute("SELECT pg_reload_conf()")


@contextlib.contextmanager
def answers_held_back(cluster):
    """Every COMMIT waits for a synchronous standby that never comes: done on the server, not answered."""
    with cluster.connect(autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        _answer_commits(cluster)


def _kill_after_commit(cluster, section):
    """Terminate the backend that waits with its COMMIT done, then let COMMITs be answered again."""
    committed_before = _committed_but_unanswered(cluster)
    ((pid,),) = wait_for(lambda: _backends(cluster, section, "wait_event = 'SyncRep'"), what="a held-back COMMIT")
    with cluster.connect(autocommit=True) as conn:
        conn.execute("SET synchronous_commit = local")
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    wait_for(lambda: _committed_but_unanswered(cluster) > committed_before, what="the server to log the kill")
    _answer_commits(cluster)


def _committed_but_unanswered(cluster):
    """How often the server logged a COMMIT done whose answer it could not send."""
    return (cluster.root / "log").read_text().count("The transaction has already committed locally")


def test_acquire_whose_commit_answer_was_lost_finds_its_claim(pg_fault_cluster, section):
    with answers_held_back(pg_fault_cluster):
        with racing.started(racing.acquire, [(postgres_settings(section), "alice", PEOPLE)]) as race:
            _kill_after_commit(pg_fault_cluster, section)
            ((outcome, login, claim, _, message),) = racing.returned(race.collect())
    assert outcome == "won" and message.startswith(f"You hold the deploy token now (claim {claim})"), message
    assert _state(pg_fault_cluster, section) == ([claim], [])


def test_release_whose_commit_answer_was_lost_reports_the_release_once(pg_fault_cluster, section):
    claim = token.acquire(postgres_store(section), "alice", PEOPLE)["claim"]
    with answers_held_back(pg_fault_cluster):
        with racing.started(racing.release, [(postgres_settings(section), "alice", claim, False, PEOPLE)]) as race:
            _kill_after_commit(pg_fault_cluster, section)
            ((outcome, login, _, _, message),) = racing.returned(race.collect())
    assert outcome == "released" and message.startswith("Released the deploy token at "), message
    assert ", held by Alice Smith for " in message
    assert _state(pg_fault_cluster, section) == ([], [(claim, None)])


def test_server_gone_for_good_during_an_acquire_is_one_sentence(pg_fault_cluster, section):
    with locked(pg_fault_cluster, section, "token"):
        with racing.started(racing.acquire, [(postgres_settings(section), "alice", PEOPLE)]) as race:
            wait_for(lambda: _backends(pg_fault_cluster, section, "wait_event_type = 'Lock'"), what="the lock wait")
            pg_fault_cluster.pg_ctl("stop", "-m", "fast", "-w")
            try:
                ((outcome, message),) = race.collect()
            finally:
                pg_fault_cluster.pg_ctl("start", "-w", "-l", str(pg_fault_cluster.root / "log"))
    assert outcome == "error"
    address = f"{pg_fault_cluster.socket_dir}:{pg_fault_cluster.port}"
    assert message.startswith(f"The PostgreSQL token store at {address} dropped the connection during the acquire "
                              "and did not come back within 30 s")
    assert message.endswith("look with salt-run deploytoken.status before trying again.")
    assert _state(pg_fault_cluster, section) == ([], [])


def test_waiters_keep_their_turn_across_a_restart(pg_fault_cluster, section):
    token.acquire(postgres_store(section), "alice", PEOPLE)
    with waiters(section, ["w0", "w1"]) as race:
        line = [(entry["who"], entry["ticket"]) for entry in postgres_store(section).waiting()]
        _restart(pg_fault_cluster)
        # Each waiter's session dropped with the server: it reconnects and puts its row back, same ticket.
        wait_for(lambda: [(entry["who"], entry["ticket"]) for entry in postgres_store(section).waiting()] == line,
                 what="the waiters back in the line")
        token.release(postgres_store(section), "alice", PEOPLE)
        served = [login for login, _ in racing.returned(race.collect())]
    assert served == ["w0", "w1"]
    held, rows = _state(pg_fault_cluster, section)
    holdings = [claim for claim, _ in rows if not claim.startswith(model.WAIT_PREFIX)]
    assert held == [] and len(holdings) == 3 and len(rows) == 3 + 2  # and each waiter's wait
