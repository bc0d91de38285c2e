"""
Fixtures for the PostgreSQL token store, on real PostgreSQL 15 clusters started by the tests
(``kingfisher_fixtures.start_postgres``).

``pg_store_cluster`` (session) -> ``PgCluster``
    A cluster of its own (the stores' races open many connections, and the Kingfisher tests count
    backends on theirs), with the login role ``dtkstore`` allowed to create schemas in ``postgres``,
    and ``dtkpw`` whose password (``PG_PASSWORD``) is checked over TCP (scram-sha-256).

``pg_fault_cluster`` (module) -> ``PgCluster``
    The same, for tests that restart the server or change its settings.

``pg_section`` (function) -> ``dict``
    A ``deploytoken:postgres:`` block on ``pg_store_cluster`` with a schema name of its own; the
    schema is dropped afterwards. ``postgres_store(section, **extra)`` opens it as the runner does;
    ``take_in_turn(store, login)`` is ``acquire wait=True``, in the store's line; ``start_waiters``
    starts processes that do so, in a known order.
"""

import itertools
import multiprocessing
import os
import time

import pytest

import deploytoken_settings
import deploytoken_stores
import deploytoken_token as token
from conftest import PEOPLE
from kingfisher_fixtures import start_postgres, wait_for

STORE_ROLE = "dtkstore"
PASSWORD_ROLE = "dtkpw"
PG_PASSWORD = "dtk-pg-password-not-real"
_schemas = itertools.count(1)


def postgres_store(section, people=PEOPLE, **extra):
    """The PostgreSQL store for ``section`` (with ``extra`` keys changed), opened as the runner opens it."""
    settings = deploytoken_settings.Settings(
        cachedir="/nonexistent", backend="postgres", sections={"postgres": dict(section, **extra)}, people=people
    )
    return deploytoken_stores.open_store(settings)


def take_in_turn(store, login, timeout=120):
    """``acquire wait=True`` as the runner does it: in the store's line, woken by each release."""
    taken = token.acquire(store, login, PEOPLE, wait=True, timeout=timeout, interval=10)
    if not taken.get("acquired"):
        raise TimeoutError(f"{login} never got the token: {taken['message']}")
    return taken


def _waiter(section, login, results):
    store = postgres_store(section)
    take_in_turn(store, login)
    results.put((login, time.time()))
    token.release(store, login, PEOPLE, note="served")


def start_waiters(section, logins):
    """One process per login waiting in line (``take_in_turn``), each started once the previous one stands
    in it; each puts ``(login, time it got the token)`` on the queue returned, then releases it."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    children = []
    for login in logins:
        child = context.Process(target=_waiter, args=(section, login, results))
        child.start()
        children.append(child)
        wait_for(lambda: len(postgres_store(section).waiting()) == len(children), what=f"{login} in the line")
    return children, results


def stop_waiters(children):
    for child in children:
        child.join(60)
        if child.is_alive():
            child.kill()


def store_cluster():
    cluster = start_postgres(max_connections=200)
    try:
        hba = cluster.data / "pg_hba.conf"
        # First match wins: the password role must prove its password over TCP; everything else is trusted.
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with cluster.connect(autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {STORE_ROLE} LOGIN")
            conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PG_PASSWORD}'")
            conn.execute(f"GRANT CREATE ON DATABASE postgres TO {STORE_ROLE}, {PASSWORD_ROLE}")
            conn.execute("SELECT pg_reload_conf()")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def section_for(cluster, schema=None):
    return {
        "host": cluster.socket_dir,
        "port": cluster.port,
        "dbname": "postgres",
        "user": STORE_ROLE,
        "schema": schema or f"dt_{os.getpid()}_{next(_schemas)}",
    }


def drop_schema(cluster, schema):
    with cluster.connect(autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def pg_store_cluster():
    cluster = store_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def pg_fault_cluster():
    cluster = store_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_section(pg_store_cluster):
    section = section_for(pg_store_cluster)
    yield section
    drop_schema(pg_store_cluster, section["schema"])
