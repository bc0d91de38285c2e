"""
The PostgreSQL store's connections: each read or change is one transaction on a new connection, with the
time limits of the settings, and the schema is made ready by the first one (``schema.prepare``).

- Every change takes its lock through the data itself (``INSERT ... ON CONFLICT`` on the one token row,
  ``DELETE ... WHERE claim``), so it is safe behind PgBouncer in transaction pooling: no session-level
  advisory lock, no session settings.
- A connection that drops during a change (a server restart, a killed backend, a COMMIT whose answer
  was lost) is not a guess: the change is run again on a new connection, and finds its own claim id if the
  first COMMIT did happen. Acquire and release are idempotent by claim for that reason.
- Any other database error becomes one ``StoreError`` sentence naming the server.
"""

import time

import psycopg

from deploytoken import model, network
from deploytoken.stores.postgres import schema

# How long a change keeps reconnecting after its connection dropped (a restart takes a few seconds).
RECONNECT_SECONDS = 30


class _ConnectionLost(Exception):
    """The connection dropped during a transaction: whether its COMMIT happened is unknown."""


class Database:
    """The database of one store (``settings.Settings``), reached through a new connection each time."""

    def __init__(self, settings):
        self.settings = settings
        self.ready = False  # the schema was found (or made) ready by a transaction of this store

    def connect(self, autocommit=False):
        try:
            return psycopg.connect(self.settings.conninfo, autocommit=autocommit)
        except psycopg.Error as exc:
            raise model.StoreError(
                f"The PostgreSQL token store at {self.settings.address} (database {self.settings.dbname}) cannot "
                f"be reached: {network.postgres_cause(_first_line(exc))}."
            ) from None

    def transaction(self, retrying=False):
        return _Transaction(self, retrying)

    def query(self, work):
        """``work(conn)`` in one transaction that changes nothing: a dropped connection is just an error."""
        try:
            with self.transaction() as conn:
                return work(conn)
        except _ConnectionLost as lost:
            raise self.error("reading", lost) from None

    def change(self, action, work):
        """Run ``work(conn, retrying)`` in one transaction. If the connection drops on the way, whether the
        COMMIT happened is unknown: reconnect and run it again with ``retrying`` set, so it can look for its
        own claim, for at most RECONNECT_SECONDS."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        retrying = False
        while True:
            try:
                with self.transaction(retrying) as conn:
                    return work(conn, retrying)
            except _ConnectionLost as lost:
                if time.monotonic() > deadline:
                    raise model.StoreError(
                        f"The PostgreSQL token store at {self.settings.address} dropped the connection during the "
                        f"{action} and did not come back within {RECONNECT_SECONDS} s ({lost}); whether the {action} "
                        "happened is unknown: look with salt-run deploytoken.status before trying again."
                    ) from None
                retrying = True
                time.sleep(0.2)

    def error(self, action, exc=None):
        """The StoreError of a failure while ``action`` (``"reading"``), with the first line of ``exc``."""
        reason = f": {_first_line(exc)}" if exc is not None else ""
        return model.StoreError(
            f"The PostgreSQL token store at {self.settings.address} (database {self.settings.dbname}) failed "
            f"while {action}{reason}."
        )


class _Transaction:
    """``with`` block: one transaction on a new connection, with the store's time limits; a dropped
    connection becomes ``_ConnectionLost``, any other database error one StoreError sentence."""

    def __init__(self, database, retrying):
        self.database = database
        self.retrying = retrying
        self.conn = None

    def __enter__(self):
        try:
            self.conn = self.database.connect()
        except model.StoreError as exc:
            if self.retrying:
                raise _ConnectionLost(str(exc)) from None
            raise
        try:
            self.conn.execute(self.database.settings.limits)
            if not self.database.ready:
                schema.prepare(self.conn, self.database.settings)
        except BaseException as exc:
            self.__exit__(type(exc), exc, None)
            raise
        return self.conn

    def __exit__(self, exc_type, exc, traceback):
        conn = self.conn
        try:
            if exc_type is None:
                conn.commit()
            elif not conn.closed:
                conn.rollback()
        except psycopg.Error as error:
            exc = error
        lost = conn.closed  # the server went away (before closing it ourselves, which looks the same)
        conn.close()
        if exc is None:
            self.database.ready = True
            return False
        if not isinstance(exc, psycopg.Error):
            return False
        if lost:
            raise _ConnectionLost(_first_line(exc)) from None
        raise _database_error(self.database.settings, exc) from None


def _database_error(settings, exc):
    where = f"The PostgreSQL token store at {settings.address} (database {settings.dbname})"
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return model.StoreError(f"{where} stayed locked by another session beyond lock_timeout; try again.")
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return model.StoreError(f"{where} did not answer within statement_timeout; try again.")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return model.StoreError(
            f"{where} refused this role: {_first_line(exc)}. Ask its owner to run CREATE SCHEMA {settings.schema} "
            "AUTHORIZATION <the role of deploytoken:postgres:user>."
        )
    return model.StoreError(f"{where} could not be used: {_first_line(exc)}.")


def _first_line(exc):
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__).rstrip(".")
