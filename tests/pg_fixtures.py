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
    ``waiters(section, logins)`` starts processes that wait in the store's line, in a known order.
"""

import contextlib
import itertools
import os

import pytest

import racing
from conftest import PEOPLE
from deploytoken import settings as token_settings
from deploytoken import stores as token_stores
from kingfisher_fixtures import start_postgres, wait_for

STORE_ROLE = "dtkstore"
PASSWORD_ROLE = "dtkpw"
PG_PASSWORD = "dtk-pg-password-not-real"
_schemas = itertools.count(1)


def postgres_settings(section, people=PEOPLE, **extra):
    """The settings of the PostgreSQL store for ``section`` (with ``extra`` keys changed)."""
    return token_settings.Settings(
        cachedir="/nonexistent", backend="postgres", sections={"postgres": dict(section, **extra)}, people=people
    )


def postgres_store(section, people=PEOPLE, **extra):
    """The PostgreSQL store for ``section`` (with ``extra`` keys changed), opened as the runner opens it."""
    return token_stores.open_store(postgres_settings(section, people, **extra))


@contextlib.contextmanager
def waiters(section, logins):
    """One process per login waiting in the line (``racing.take_in_turn``), each started once the one before
    stands in it; yields the ``racing.Race``, whose outcomes are ``(login, when it held the token)``."""
    settings = postgres_settings(section)
    with racing.started(racing.take_in_turn, barrier=False) as race:
        for login in logins:
            race.start(racing.take_in_turn, settings, login, PEOPLE)
            wait_for(lambda: len(postgres_store(section).waiting()) == len(race.processes), what=f"{login} in the line")
        yield race


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
