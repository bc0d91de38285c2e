"""
The PostgreSQL token store on a real PostgreSQL 15 cluster: its settings, its schema, the behaviour
every store shares, and what only it does (the waiting line, LISTEN hand-off, migration).
The faults (restarts, killed backends) are in ``test_postgres_faults.py``.
"""

import os
import signal
import socket
import time

import pytest

import racing
from conftest import PEOPLE
from deploytoken import commands as token
from deploytoken import model
from deploytoken.stores import migrate
from deploytoken.stores import sqlite as sqlite_store
from deploytoken.stores.postgres import schema as pg_schema
from deploytoken.stores.postgres import waiting_line as pg_line
from kingfisher_fixtures import free_port, wait_for
from pg_fixtures import PASSWORD_ROLE, PG_PASSWORD, postgres_settings, postgres_store, waiters


def holding(login="alice", claim="c1"):
    return model.Holding(holder=PEOPLE[login], login=login, caller=login, claim=claim,
                         since="2026-01-01T00:00:00Z", reason="upgrade")


def row(claim, holder="Alice Smith", released="2026-01-01T01:00:00Z"):
    return model.HistoryRow(claim, holder, "alice", "alice", "2026-01-01T00:00:00Z", released, 3600, "r", "n")


# ---- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, sentence",
    [
        ({"dsn": "host=db password=secret"}, "deploytoken:postgres must not hold the password"),
        ({"dsn": "postgresql://u:secret@db/x"}, "deploytoken:postgres must not hold the password"),
        ({"password": "secret"}, "deploytoken:postgres must not hold the password"),
        ({"dsn": "host=db secret"}, "deploytoken:postgres:dsn is not a libpq connection string"),
        ({"hots": "db"}, "deploytoken:postgres:hots is not a setting"),
        ({"schema": "Deploy; DROP"}, "deploytoken:postgres:schema must be a plain lower-case name"),
        ({"lock_timeout": "soon"}, "deploytoken:postgres:lock_timeout must be a number of seconds"),
        ({"connect_timeout": 0}, "deploytoken:postgres:connect_timeout must be a number of seconds, at least 1"),
        ({"password_file": "relative/pw"}, "deploytoken:postgres:password_file must be an absolute path"),
    ],
)
def test_bad_settings_are_refused_in_one_sentence(section, sentence):
    with pytest.raises(model.InputError, match=sentence) as raised:
        postgres_store(section)
    assert "secret" not in str(raised.value)


def test_password_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "pw"
    path.write_text(PG_PASSWORD + "\n")
    path.chmod(0o644)
    with pytest.raises(model.InputError, match=f"The password file {path} can be read by other users"):
        postgres_store({"password_file": str(path)})


def test_password_from_a_private_file_logs_in_over_tcp(pg_store_cluster, pg_section, tmp_path):
    path = tmp_path / "pw"
    path.write_text(PG_PASSWORD + "\n")
    path.chmod(0o600)
    section = dict(pg_section, host="127.0.0.1", user=PASSWORD_ROLE, password_file=str(path))
    store = postgres_store(section)
    assert store.acquire(holding()) == holding()
    path.write_text("wrong\n")
    with pytest.raises(model.StoreError, match=f"at 127.0.0.1:{pg_store_cluster.port} .*cannot be reached: "
                                               "the server refused this role .*password authentication failed"):
        postgres_store(section).read()


def test_dsn_and_keys_combine_and_name_the_store(pg_store_cluster, pg_section):
    section = {"dsn": f"host={pg_store_cluster.socket_dir} dbname=postgres connect_timeout=3",
               "port": pg_store_cluster.port,
               "user": pg_section["user"], "schema": pg_section["schema"]}
    store = postgres_store(section)
    assert store.read() is None
    address = f"{pg_store_cluster.socket_dir}:{pg_store_cluster.port}"
    assert store.identity["name"] == f"PostgreSQL {pg_section['schema']}@{address}/postgres"
    assert store.location == f"postgresql://{address}/postgres (schema {pg_section['schema']})"
    assert "connect_timeout=3" in store.settings.conninfo


def test_database_down_is_one_sentence_naming_host_and_port():
    port = free_port()
    store = postgres_store({"host": "127.0.0.1", "port": port, "dbname": "x", "user": "x", "connect_timeout": 2})
    started = time.monotonic()
    for action in (store.read, lambda: store.acquire(holding()), lambda: store.history(3)):
        with pytest.raises(model.StoreError, match=rf"^The PostgreSQL token store at 127.0.0.1:{port} \(database x\) "
                                                   r"cannot be reached: the server refused the connection \(nothing "):
            action()
    assert time.monotonic() - started < 10


def test_a_host_that_does_not_resolve_and_a_server_that_never_answers_are_named():
    unknown = postgres_store({"host": "nonexistent.invalid", "dbname": "x", "user": "x", "connect_timeout": 2})
    with pytest.raises(model.StoreError, match=r"^The PostgreSQL token store at nonexistent\.invalid:5432 \(database "
                                               r"x\) cannot be reached: the host name cannot be resolved \(DNS\) "):
        unknown.read()
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never answers
        port = silent.getsockname()[1]
        store = postgres_store({"host": "127.0.0.1", "port": port, "dbname": "x", "user": "x", "connect_timeout": 2})
        with pytest.raises(model.StoreError, match="cannot be reached: the server did not answer within the connect "
                                                   "timeout "):
            store.read()


# ---- schema -----------------------------------------------------------------------------------


def test_schema_is_created_on_first_use_with_its_version(pg_store_cluster, pg_section):
    store = postgres_store(pg_section)
    identity = store.identity
    with pg_store_cluster.connect() as conn:
        meta = dict(conn.execute(f"SELECT key, value FROM {pg_section['schema']}.meta"))
        tables = {name for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (pg_section["schema"],))}
    assert meta["application"] == "deploytoken" and meta["schema_version"] == pg_schema.SCHEMA_VERSION
    assert tables == {"meta", "token", "history", "waiters"}
    assert identity["id"] == f"postgres:{meta['store_id']}"
    assert postgres_store(pg_section).identity == identity


def test_an_empty_schema_made_by_the_database_owner_is_used(pg_store_cluster, pg_section):
    with pg_store_cluster.connect(autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {pg_section['schema']} AUTHORIZATION {pg_section['user']}")
    store = postgres_store(pg_section)
    assert store.acquire(holding()) == holding()


def _snapshot(cluster, schema):
    with cluster.connect() as conn:
        return conn.execute(
            "SELECT c.relname, (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s ORDER BY 1", (schema,)
        ).fetchall()


def test_a_foreign_schema_is_refused_by_name_and_left_untouched(pg_store_cluster, pg_section):
    schema = pg_section["schema"]
    with pg_store_cluster.connect(autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {pg_section['user']}")
        conn.execute(f"CREATE TABLE {schema}.invoices (id int)")
        conn.execute(f"CREATE TABLE {schema}.meta (id int, payload jsonb)")
    before = _snapshot(pg_store_cluster, schema)
    for action in (lambda store: store.read(), lambda store: store.acquire(holding())):
        with pytest.raises(model.StoreError, match=f"^The schema {schema} in database postgres at .* is not a deploy "
                                                   "token store; it was left untouched"):
            action(postgres_store(pg_section))
    assert _snapshot(pg_store_cluster, schema) == before


def test_a_newer_schema_is_refused_by_name_and_left_untouched(pg_store_cluster, pg_section):
    schema = pg_section["schema"]
    postgres_store(pg_section).acquire(holding())
    with pg_store_cluster.connect(autocommit=True) as conn:
        conn.execute(f"UPDATE {schema}.meta SET value = '3' WHERE key = 'schema_version'")
    before = _snapshot(pg_store_cluster, schema)
    with pytest.raises(model.StoreError, match=f"The schema {schema} .* has deploy token schema version '3', this "
                                               "code knows '2'; it was left untouched: upgrade deploytoken"):
        postgres_store(pg_section).release("c1", row("c1"))
    assert _snapshot(pg_store_cluster, schema) == before
    with pg_store_cluster.connect() as conn:
        assert conn.execute(f"SELECT claim FROM {schema}.token").fetchall() == [("c1",)]


def test_a_role_without_create_rights_is_told_what_to_ask_for(pg_store_cluster, pg_section):
    store = postgres_store(dict(pg_section, user="bob"))
    with pytest.raises(model.StoreError, match="refused this role: permission denied for database postgres. Ask its "
                                               f"owner to run CREATE SCHEMA {pg_section['schema']} AUTHORIZATION"):
        store.read()


# ---- history rows from elsewhere --------------------------------------------------------------


def test_append_history_is_idempotent_by_claim(pg_section):
    store = postgres_store(pg_section)
    assert store.append_history(row("a")) is True
    assert store.append_history(row("a", holder="Someone Else")) is False
    typed = row(None, holder="Dan")
    assert store.append_history(typed) is True and store.append_history(typed) is False
    assert [(r.claim, r.holder) for r in store.history(10)] == [(None, "Dan"), ("a", "Alice Smith")]


# ---- migration --------------------------------------------------------------------------------


def test_migrate_copies_holder_and_history_once(tmp_path, pg_section):
    sqlite = sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))
    claims = []
    for login in ("alice", "bob"):
        claims.append(token.acquire(sqlite, login, PEOPLE)["claim"])
        token.release(sqlite, login, PEOPLE, note=f"by {login}")
    held = token.acquire(sqlite, "carol", PEOPLE, reason="moving")["claim"]
    target = postgres_store(pg_section)
    assert migrate.migrate(sqlite, target) == {"history_rows": 2, "holder": held}
    assert migrate.migrate(sqlite, postgres_store(pg_section)) == {"history_rows": 0, "holder": held}
    assert [r.to_dict() for r in target.history(10)] == [r.to_dict() for r in sqlite.history(10)]
    assert target.read() == sqlite.read()
    refused = token.acquire(target, "alice", PEOPLE)
    assert refused["retcode"] == 1 and "Carol Díaz (carol)" in refused["message"]


def test_migrate_does_not_replace_another_holder(tmp_path, pg_section):
    sqlite = sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))
    token.acquire(sqlite, "alice", PEOPLE)
    target = postgres_store(pg_section)
    other = token.acquire(target, "bob", PEOPLE)["claim"]
    with pytest.raises(model.StoreError, match=f"is already held by Bob Jones under claim {other}; 0 history row"):
        migrate.migrate(sqlite, target)
    assert target.read().claim == other
    with pytest.raises(model.InputError, match="is already the store in use"):
        migrate.migrate(target, postgres_store(pg_section))


# ---- waiting: the line and LISTEN -------------------------------------------------------------


def test_ten_waiters_are_served_in_arrival_order(pg_section):
    store = postgres_store(pg_section)
    token.acquire(store, "alice", PEOPLE)
    logins = [f"w{i}" for i in range(10)]
    with waiters(pg_section, logins) as race:
        line = store.waiting()
        assert [entry["who"] for entry in line] == logins
        assert all(model.parse_time(entry["since"]) for entry in line)
        token.release(store, "alice", PEOPLE)
        served = [login for login, _ in racing.returned(race.collect())]
    assert served == logins
    rows = store.history(40)
    assert [r.login for r in rows if r.kind == model.HOLDING][::-1] == ["alice", *logins]
    assert sorted(r.login for r in rows if r.kind == model.WAITED) == logins  # each wait, for the report
    assert store.waiting() == [] and store.read() is None


def test_a_killed_waiter_leaves_the_line(pg_store_cluster, pg_section):
    store = postgres_store(pg_section)
    token.acquire(store, "alice", PEOPLE)
    with waiters(pg_section, ["w0", "w1", "w2"]) as race:
        os.kill(race.processes[0].pid, signal.SIGKILL)
        race.processes[0].join(10)
        wait_for(lambda: [entry["who"] for entry in store.waiting()] == ["w1", "w2"], what="w0 to leave the line")
        token.release(store, "alice", PEOPLE)
        served = [login for login, _ in racing.returned(race.collect(2))]
    assert served == ["w1", "w2"]
    later = postgres_store(pg_section)
    later.enqueue("later")  # the next waiter to join prunes the dead row
    with pg_store_cluster.connect() as conn:
        assert conn.execute(f"SELECT who FROM {pg_section['schema']}.waiters").fetchall() == [("later",)]


def test_a_waiter_that_stops_marking_its_row_loses_its_turn(pg_store_cluster, pg_section):
    # Behind a connection pooler a dead waiter's backend may live on: its row then goes stale instead.
    first, second = postgres_store(pg_section), postgres_store(pg_section)
    tickets = [first.enqueue("First"), second.enqueue("Second")]
    assert second.ahead(tickets[1]) == 1
    with pg_store_cluster.connect() as conn:
        conn.execute(f"UPDATE {pg_section['schema']}.waiters SET seen = now() - interval '1 minute' WHERE ticket = %s",
                     (tickets[0],))
    assert second.ahead(tickets[1]) == 0 and [entry["who"] for entry in second.waiting()] == ["Second"]
    # Back (it was stopped), the first one has lost its turn: it joins again at the end of the line.
    assert first.ahead(tickets[0]) == 1 and second.ahead(tickets[1]) == 0
    assert [entry["who"] for entry in second.waiting()] == ["Second", "First"]
    first.dequeue(tickets[0])
    second.dequeue(tickets[1])


def test_a_waiter_marks_its_row_while_it_waits(pg_store_cluster, pg_section):
    store = postgres_store(pg_section)
    token.acquire(store, "alice", PEOPLE)
    ticket = store.enqueue("Bob Jones")
    query = f"SELECT seen FROM {pg_section['schema']}.waiters WHERE ticket = %s"
    with pg_store_cluster.connect(autocommit=True) as conn:
        before = conn.execute(query, (ticket,)).fetchone()[0]
        started = time.monotonic()
        store.wait(pg_line.HEARTBEAT_SECONDS + 1)
        assert time.monotonic() - started >= pg_line.HEARTBEAT_SECONDS + 1
        assert conn.execute(query, (ticket,)).fetchone()[0] > before
    store.dequeue(ticket)


def test_wait_returns_at_the_release_not_at_the_timeout(pg_section):
    store = postgres_store(pg_section)
    taken = token.acquire(store, "alice", PEOPLE)
    with racing.started(racing.release_later, [(postgres_settings(pg_section), "alice", PEOPLE, 1)], barrier=False):
        started = time.monotonic()
        postgres_store(pg_section).wait(30)
        assert time.monotonic() - started < 15
    assert store.read() is None and store.history(1)[0].claim == taken["claim"]
    started = time.monotonic()
    store.wait(30)  # free already: no wait at all
    assert time.monotonic() - started < 5


def test_a_release_wakes_only_the_first_in_line(pg_section):
    """The others would only wake to find themselves still behind, each with its queries: a line of a hundred
    would cost a hundred wake-ups per hand-off. The one who is first next is woken when the first leaves."""
    token.acquire(postgres_store(pg_section), "alice", PEOPLE)
    first, second = postgres_store(pg_section), postgres_store(pg_section)
    tickets = [first.enqueue("First"), second.enqueue("Second")]
    with racing.started(racing.release_later, [(postgres_settings(pg_section), "alice", PEOPLE, 1)], barrier=False):
        started = time.monotonic()
        second.wait(4)
        assert time.monotonic() - started >= 4  # the release was not for it
        started = time.monotonic()
        first.wait(30)  # its notification waited in its session
        assert time.monotonic() - started < 5
    first.dequeue(tickets[0])
    started = time.monotonic()
    second.wait(30)
    assert time.monotonic() - started < 5
    second.dequeue(tickets[1])


def test_a_listening_waiter_does_not_block_a_release(pg_store_cluster, pg_section):
    store = postgres_store(pg_section)
    token.acquire(store, "alice", PEOPLE)
    waiter = postgres_store(pg_section)
    ticket = waiter.enqueue("Bob Jones")
    with pg_store_cluster.connect() as conn:
        states = conn.execute("SELECT state FROM pg_stat_activity WHERE usename = %s", (pg_section["user"],)).fetchall()
    assert states == [("idle",)]
    assert token.release(postgres_store(pg_section), "alice", PEOPLE)["released"]
    waiter.dequeue(ticket)
    assert store.waiting() == []
