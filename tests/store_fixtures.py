"""
The one table of token stores the tests run against: every backend in ``deploytoken_stores.BACKENDS``
must have an entry in ``STORES`` below, or the ``backend`` fixture fails (a store without one would
otherwise pass the conformance suite without ever being run).

``backend`` (function, one param per backend) -> ``Backend``
    ``.settings`` (picklable: racers open their own store with it), ``.open()`` (a new store object on
    the same token store, as another runner would open it), ``.damage(store)`` and ``.holder_count()``.
"""

import dataclasses
import sqlite3

import pytest

import deploytoken_settings
import deploytoken_stores
from conftest import PEOPLE
from google_fixtures import google_settings
from pg_fixtures import postgres_settings


@dataclasses.dataclass
class Backend:
    settings: deploytoken_settings.Settings
    damage: object  # (store) -> (the name the refusal gives, () -> a snapshot of what was damaged)
    holder_count: object  # () -> how many holders the backing store shows (never more than one)

    def open(self):
        return deploytoken_stores.open_store(self.settings)


def sqlite_backend(request, tmp_path):
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

    return Backend(settings, damage, holder_count)


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

    return Backend(postgres_settings(section), damage, holder_count)


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

    return Backend(google_settings(config), damage, holder_count)


STORES = {"sqlite": sqlite_backend, "google": google_backend, "postgres": postgres_backend}
# Stores on a service the tests start need root (tests/conftest.py TIERS); the others are plain Python.
TIER = {"postgres": "functional"}


@pytest.fixture(params=[pytest.param(name, marks=getattr(pytest.mark, TIER.get(name, "unit")))
                        for name in deploytoken_stores.BACKENDS])
def backend(request, tmp_path):
    make = STORES.get(request.param)
    if make is None:
        pytest.fail(f"The store {request.param!r} has no entry in tests/store_fixtures.py STORES: add one.")
    return make(request, tmp_path)
