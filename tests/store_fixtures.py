"""
The one table of token stores the tests run against: every backend in ``token_stores.BACKENDS``
must have an entry in ``STORES`` below, or the ``backend`` fixture fails (a store without one would
otherwise pass the conformance suite without ever being run).

``backend`` (function, one param per backend) -> ``Backend``
    ``.settings`` (picklable: racers open their own store with it), ``.open()`` (a new store object on
    the same token store, as another runner would open it), ``.damage(store)``, ``.holder_count()`` and
    ``.old(rows)``: a store as the code before history kinds wrote it, holding ``rows`` (eleven cells each).
"""

import dataclasses
import os
import sqlite3

import pytest

from conftest import PEOPLE
from deploytoken import settings as token_settings
from deploytoken import stores as token_stores
from google_fixtures import google_settings
from pg_fixtures import STORE_ROLE, postgres_settings

# The tables as the code before history kinds made them (schema version 1), to test the upgrade on.
SCHEMA_1 = """
CREATE TABLE {schema}meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE {schema}token (
    id integer PRIMARY KEY CHECK (id = 1),
    holder text NOT NULL, login text, caller text, claim text NOT NULL, since text NOT NULL,
    reason text NOT NULL DEFAULT ''
);
CREATE TABLE {schema}history (
    seq {serial} PRIMARY KEY,
    claim text UNIQUE, holder text NOT NULL, login text, caller text, acquired text,
    released text NOT NULL, duration integer, reason text NOT NULL DEFAULT '',
    note text NOT NULL DEFAULT '', forced_by text, force_reason text
);
CREATE TABLE {schema}waiters (
    ticket {serial} PRIMARY KEY, who text NOT NULL, since text NOT NULL{waiter}
)
"""
OLD_INSERT = "INSERT INTO {schema}history (claim, holder, login, caller, acquired, released, duration, reason, note," \
             " forced_by, force_reason) VALUES ({marks})"


@dataclasses.dataclass
class Backend:
    settings: token_settings.Settings
    damage: object  # (store) -> (the name the refusal gives, () -> a snapshot of what was damaged)
    holder_count: object  # () -> how many holders the backing store shows (never more than one)
    old: object  # (rows) -> the settings of a store in the layout before history kinds, holding rows

    def open(self):
        return token_stores.open_store(self.settings)


def sqlite_backend(request, tmp_path):
    path = tmp_path / "token.sqlite"
    settings = token_settings.Settings(cachedir=str(tmp_path), sections={"sqlite": {"path": str(path)}},
                                       people=PEOPLE)

    def damage(store):
        path.write_bytes(b"this is not a database at all, but somebody's notes" * 100)
        return f"{path} is damaged", path.read_bytes

    def holder_count():
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            return db.execute("SELECT count(*) FROM token").fetchone()[0]

    def old(rows):
        with sqlite3.connect(path) as db:
            db.executescript(SCHEMA_1.format(schema="", serial="INTEGER", waiter=", lock TEXT NOT NULL"))
            db.execute("INSERT INTO meta VALUES ('application', 'deploytoken'), ('schema', '1'), ('store_id', 'x')")
            db.executemany(OLD_INSERT.format(schema="", marks=", ".join("?" * 11)), rows)
        os.chmod(path, 0o600)
        return settings

    return Backend(settings, damage, holder_count, old)


def postgres_backend(request, tmp_path):
    cluster = request.getfixturevalue("pg_store_cluster")
    section = request.getfixturevalue("pg_section")
    schema = section["schema"]

    def damage(store):
        # The schema's own marker changed: it no longer says it is a deploy token store.
        with cluster.connect() as conn:
            conn.execute(f"UPDATE {schema}.meta SET value = 'payroll' WHERE key = 'application'")

        def snapshot():
            with cluster.connect() as conn:
                return conn.execute(f"SELECT key, value FROM {schema}.meta ORDER BY key").fetchall()

        return f"The schema {schema} .* is not a deploy token store", snapshot

    def holder_count():
        with cluster.connect() as conn:
            return conn.execute(f"SELECT count(*) FROM {schema}.token").fetchone()[0]

    def old(rows):
        with cluster.connect() as conn:
            conn.execute(f"SET ROLE {STORE_ROLE}")
            conn.execute(f"CREATE SCHEMA {schema}")
            for statement in SCHEMA_1.format(schema=f"{schema}.", serial="bigserial", waiter=(
                    ", backend_pid integer NOT NULL, backend_start timestamptz, seen timestamptz NOT NULL DEFAULT now()"
            )).split(";"):
                conn.execute(statement)
            conn.execute(f"INSERT INTO {schema}.meta VALUES ('application', 'deploytoken'), ('schema_version', '1'),"
                         " ('store_id', 'x')")
            conn.cursor().executemany(OLD_INSERT.format(schema=f"{schema}.", marks=", ".join(["%s"] * 11)), rows)
        return postgres_settings(section)

    return Backend(postgres_settings(section), damage, holder_count, old)


def google_backend(request, tmp_path):
    fake = request.getfixturevalue("fake_google")
    config = request.getfixturevalue("google_config")

    def damage(store):
        spool = store.sheet.local.path("spool.json")
        with open(spool, "w") as handle:
            handle.write('[{"claim": "lost?", ')
        return f"{spool} is damaged", lambda: open(spool, "rb").read()

    def holder_count():
        return 0 if fake.held_text(config["document_id"]) == "Held by: Nobody\n" else 1

    def old(rows):
        fake.add_sheet(config["spreadsheet_id"], [[str(cell) if cell is not None else "" for cell in row]
                                                  for row in rows])
        return google_settings(dict(config, history_range="'Deploy history'!A:K"))

    return Backend(google_settings(config), damage, holder_count, old)


STORES = {"sqlite": sqlite_backend, "google": google_backend, "postgres": postgres_backend}
# Stores on a service the tests start need root (tests/conftest.py TIERS); the others are plain Python.
TIER = {"postgres": "functional"}


@pytest.fixture(params=[pytest.param(name, marks=getattr(pytest.mark, TIER.get(name, "unit")))
                        for name in token_stores.BACKENDS])
def backend(request, tmp_path):
    make = STORES.get(request.param)
    if make is None:
        pytest.fail(f"The store {request.param!r} has no entry in tests/store_fixtures.py STORES: add one.")
    return make(request, tmp_path)
