"""
The shared token store: a PostgreSQL database that every master and operator reaches.

- Its tables live in their own schema (``deploytoken`` unless told otherwise), created on first use with
  a version number; a schema that is someone else's, or newer than this code, is refused by name and
  never altered.
- Every change is one transaction that takes its lock through the data itself (``INSERT ... ON
  CONFLICT`` on the one token row, ``DELETE ... WHERE claim``), so it is safe behind PgBouncer in
  transaction pooling: no session-level advisory lock, no session settings.
- A connection that drops during a change (a server restart, a killed backend, a COMMIT whose answer
  was lost) is not a guess: the store reconnects and runs the change again, which finds its own claim
  id if the first COMMIT did happen. Acquire and release are idempotent by claim for that reason.
- Waiters stand in a line (one row each, tied to the waiting session's backend, so a killed waiter's
  row is ignored and pruned) and ``LISTEN`` for the release, so the first in line takes the token the
  moment it is given back. A release (and a waiter leaving the line) names the ticket of the first live
  waiter, and only that waiter wakes: a line of a hundred costs one wake-up per hand-off, not a hundred.
"""

import os
import re
import stat
import time
import uuid

import psycopg
from psycopg import conninfo, sql

from deploytoken import model, network

# 2: history rows have a kind and an override its until (its planned end, once kept in released).
SCHEMA_VERSION = "2"
APPLICATION = "deploytoken"
DEFAULT_SCHEMA = "deploytoken"
TIMEOUTS = {"connect_timeout": 5, "statement_timeout": 10, "lock_timeout": 5}
# How long a change keeps reconnecting after its connection dropped (a restart takes a few seconds).
RECONNECT_SECONDS = 30
# A waiter marks its row as seen at least this often; a row unseen for STALE_SECONDS no longer counts
# (its backend may live on in a connection pooler after the waiter died).
HEARTBEAT_SECONDS = 5
STALE_SECONDS = 30
# libpq keys a deploytoken:postgres block may give one by one instead of (or on top of) ``dsn``.
CONNECTION_KEYS = (
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "passfile",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "application_name",
    "target_session_attrs",
)
OWN_KEYS = ("dsn", "schema", "password_file", *TIMEOUTS)
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_HOLDING_COLUMNS = ("holder", "login", "caller", "claim", "since", "reason")
_TABLES = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE {schema}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE {schema}.token (
    id integer PRIMARY KEY CHECK (id = 1),
    holder text NOT NULL, login text, caller text, claim text NOT NULL, since text NOT NULL,
    reason text NOT NULL DEFAULT ''
);
CREATE TABLE {schema}.history (
    seq bigserial PRIMARY KEY,
    claim text UNIQUE, holder text NOT NULL, login text, caller text, acquired text,
    released text, duration integer, reason text NOT NULL DEFAULT '',
    note text NOT NULL DEFAULT '', forced_by text, force_reason text, kind text NOT NULL, until text
);
CREATE TABLE {schema}.waiters (
    ticket bigserial PRIMARY KEY, who text NOT NULL, since text NOT NULL,
    backend_pid integer NOT NULL, backend_start timestamptz, seen timestamptz NOT NULL DEFAULT now()
);
"""
# A waiter's row counts while the backend of its waiting session lives and the waiter keeps marking it
# seen. Another role's backend shows its pid but not its start time, so a missing start time is a match.
_LIVE = (
    f"(w.seen > now() - interval '{STALE_SECONDS} seconds'"
    " AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = w.backend_pid"
    " AND (a.backend_start IS NULL OR a.backend_start = w.backend_start)))"
)


class _ConnectionLost(Exception):
    """The connection dropped during a transaction: whether its COMMIT happened is unknown."""


class PostgresStore:
    backend = "postgres"
    account_email = None  # only a person's own Google account has one

    def __init__(self, section):
        unknown = sorted(set(section) - set(CONNECTION_KEYS) - set(OWN_KEYS) - {"password"})
        if unknown:
            raise model.InputError(
                f"deploytoken:postgres:{unknown[0]} is not a setting: use dsn, or {', '.join(CONNECTION_KEYS)}, "
                f"and {', '.join(OWN_KEYS[1:])}."
            )
        params = _dsn(section.get("dsn"))
        for key in CONNECTION_KEYS:
            if section.get(key) is not None:
                params[key] = str(section[key])
        if "password" in params or "password" in section:
            raise model.InputError(
                "deploytoken:postgres must not hold the password (the master config is read by too many): "
                "name a file readable only by the master's user with deploytoken:postgres:password_file, or "
                "use PGPASSFILE or PGPASSWORD."
            )
        password_file = section.get("password_file")
        if password_file is not None:
            params["password"] = _read_password(password_file)
        self.schema = section.get("schema", DEFAULT_SCHEMA)
        if not isinstance(self.schema, str) or not SCHEMA_NAME.fullmatch(self.schema):
            raise model.InputError(
                f"deploytoken:postgres:schema must be a plain lower-case name (letters, digits, _), got "
                f"{self.schema!r}."
            )
        # connect_timeout may also come in the dsn.
        timeouts = {
            key: model.check_seconds(section.get(key, params.get(key, default)), f"deploytoken:postgres:{key}", 1)
            for key, default in TIMEOUTS.items()
        }
        # libpq takes whole seconds; the server takes milliseconds, set per transaction (PgBouncer-safe).
        params["connect_timeout"] = str(int(-(-timeouts["connect_timeout"] // 1)))
        limits = (
            f"{{}} statement_timeout = {int(timeouts['statement_timeout'] * 1000)};"
            f" {{}} lock_timeout = {int(timeouts['lock_timeout'] * 1000)}"
        )
        self._limits = limits.format("SET LOCAL", "SET LOCAL")
        self._session_limits = limits.format("SET", "SET")
        self._conninfo = conninfo.make_conninfo(**params)
        host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "/var/run/postgresql"
        port = params.get("port") or os.environ.get("PGPORT") or "5432"
        self.dbname = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "postgres"
        self.address = f"{host}:{port}"
        self.location = f"postgresql://{self.address}/{self.dbname} (schema {self.schema})"
        self._channel = sql.Identifier(self.schema)
        self._ready = False
        self._session = None  # the waiting session: LISTENs, and keeps this waiter's row alive
        self._place = None  # (ticket, who, since) while in the line

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.section("postgres"))

    def _table(self, name):
        return sql.Identifier(self.schema, name)

    # -- the store interface ---------------------------------------------------------------

    @property
    def identity(self):
        """``{"id", "name"}``: the id made with the schema, and where it lives."""
        store_id = self._query(
            lambda conn: conn.execute(
                sql.SQL("SELECT value FROM {} WHERE key = 'store_id'").format(self._table("meta"))
            ).fetchone()[0]
        )
        return {"id": f"postgres:{store_id}", "name": f"PostgreSQL {self.schema}@{self.address}/{self.dbname}"}

    def read(self):
        """The current holding, or None when nobody holds the token."""
        return self._query(self._current)

    def acquire(self, holding):
        """Write ``holding`` if nobody holds the token; return whoever holds it afterwards.

        Run again after a lost connection, it finds its own claim if the first COMMIT happened."""

        def work(conn, retrying):
            while True:
                inserted = conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, holder, login, caller, claim, since, reason)"
                        " VALUES (1, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id"
                    ).format(self._table("token")),
                    [getattr(holding, column) for column in _HOLDING_COLUMNS],
                ).fetchone()
                if inserted:
                    return holding
                current = self._current(conn)
                if current is not None:  # else it was released between the two statements: try again
                    return current

        return self._change("acquire", work)

    def release(self, claim, row):
        """End ``claim`` and append ``row`` to the history in one transaction, and wake the waiters."""

        def work(conn, retrying):
            gone = conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = 1 AND claim = %s RETURNING id").format(self._table("token")),
                (claim,),
            ).fetchone()
            if gone is None:
                # After a lost connection our own row in the history is the proof the first COMMIT happened.
                if retrying and self._history_row(conn, claim) == row:
                    return row
                raise model.ClaimConflict(model.claim_ended(claim, self._current(conn)))
            self._insert_history(conn, row)
            self._notify(conn)
            return row

        return self._change("release", work)

    def append_history(self, row):
        """Add ``row`` to the history unless a row with its claim is there already; True if it was added.

        A row without a claim id (typed by hand elsewhere) counts as there when holder and times match."""

        def work(conn, retrying):
            if row.claim is None:
                found = conn.execute(
                    sql.SQL(
                        "SELECT 1 FROM {} WHERE claim IS NULL AND holder = %s AND released = %s"
                        " AND acquired IS NOT DISTINCT FROM %s"
                    ).format(self._table("history")),
                    (row.holder, row.released, row.acquired),
                ).fetchone()
                if found:
                    return False
            return self._insert_history(conn, row)

        return self._change("history append", work)

    def history(self, limit):
        """The latest ``limit`` history rows, newest first."""
        rows = self._query(
            lambda conn: conn.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY seq DESC LIMIT %s").format(
                    _columns(model.HistoryRow.COLUMNS), self._table("history")
                ),
                (limit,),
            ).fetchall()
        )
        return [model.HistoryRow(*found) for found in rows]

    def overrides(self, now):
        """The override rows still running at ``now`` without a cancellation row, oldest first."""
        rows = self._query(
            lambda conn: conn.execute(
                sql.SQL(
                    "SELECT {} FROM {} h WHERE kind = 'override'"
                    " AND until > %s AND NOT EXISTS (SELECT 1 FROM {} c WHERE c.claim = h.claim || '.cancel')"
                    " ORDER BY seq"
                ).format(_columns(model.HistoryRow.COLUMNS), self._table("history"), self._table("history")),
                (model.isoformat(now),),
            ).fetchall()
        )
        return [model.HistoryRow(*found) for found in rows]

    def flush(self):
        """Nothing is ever kept aside: a release commits with its history row."""
        return 0

    # -- the waiting line ------------------------------------------------------------------

    def enqueue(self, who):
        """Join the line of waiters as ``who``; return the ticket. The row lives as long as this store's
        waiting session, which also LISTENs for releases (see ``wait``)."""
        if self._place is not None:
            return self._place[0]
        self._change("join of the waiting line", self._prune)
        self._place = (None, str(who), model.isoformat(model.utcnow()))
        self._waiting_session()
        return self._place[0]

    def ahead(self, ticket):
        """How many live waiters joined the line before ``ticket``: 0 means it is this waiter's turn."""
        if self._place is None:
            raise model.InputError("ahead() needs a ticket from enqueue() of this store.")
        conn = self._waiting_session()
        return self._session_query(
            conn,
            sql.SQL(
                "WITH me AS (UPDATE {table} SET seen = now() WHERE ticket = %s)"
                " SELECT count(*) FROM {table} w WHERE ticket < %s AND " + _LIVE
            ).format(table=self._table("waiters")),
            (ticket, ticket),
        ).fetchone()[0]

    def dequeue(self, ticket):
        """Leave the line (after taking the token or giving up) and wake the waiter who is first now."""
        self._place = None
        conn, self._session = self._session, None
        if conn is None:
            return
        try:
            conn.execute(
                sql.SQL(
                    "WITH gone AS (DELETE FROM {table} WHERE ticket = %s) SELECT pg_notify(%s, coalesce(("
                    "SELECT min(ticket) FROM {table} w WHERE ticket <> %s AND " + _LIVE + ")::text, 'dequeued'))"
                ).format(table=self._table("waiters")),
                (ticket, self.schema, ticket),
            )
        except psycopg.Error:
            pass  # the row dies with the session closed below: the next waiter prunes it
        finally:
            conn.close()

    def waiting(self):
        """The live waiters in arrival order: ``[{"who", "since", "ticket"}]``."""
        rows = self._query(
            lambda conn: conn.execute(
                sql.SQL("SELECT who, since, ticket FROM {} w WHERE " + _LIVE + " ORDER BY ticket").format(
                    self._table("waiters")
                )
            ).fetchall()
        )
        return [{"who": who, "since": since, "ticket": ticket} for who, since, ticket in rows]

    def wait(self, seconds):
        """Return as soon as the token may have been given back (a release, or a waiter leaving the line),
        or after ``seconds``. In the line, the waiting session's LISTEN has been on since joining, so no
        release is missed between two calls; outside it, a listener is opened for this call only."""
        if self._place is not None:
            deadline = time.monotonic() + seconds
            conn = self._waiting_session()
            seen = time.monotonic()
            try:
                while True:
                    now = time.monotonic()
                    if now >= deadline:
                        return
                    if now - seen >= HEARTBEAT_SECONDS:
                        conn.execute(
                            sql.SQL("UPDATE {} SET seen = now() WHERE ticket = %s").format(self._table("waiters")),
                            (self._place[0],),
                        )
                        seen = now
                    payload = _next_notification(conn, min(seen + HEARTBEAT_SECONDS, deadline) - now)
                    if payload is not None and _wakes(payload, self._place[0]):
                        return
            except psycopg.Error as exc:
                if not conn.closed:
                    raise self._store_error("waiting for the token", exc) from None
                self._session = None  # the next call reconnects and puts the row back with the same ticket
            return
        conn = self._connect(autocommit=True)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(self._channel))
            # A release just before the LISTEN notified nobody here: wait only while the token is still held.
            if self.read() is not None:
                _first_notification(conn, seconds)
        except psycopg.Error:
            raise self._store_error("waiting for the token") from None
        finally:
            conn.close()

    def _waiting_session(self):
        """The open waiting session, reconnected (with this waiter's row put back) if it dropped."""
        if self._session is not None and not self._session.closed:
            return self._session
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            try:
                conn = self._connect(autocommit=True)
            except model.StoreError:
                if self._place[0] is None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            try:
                self._session_query(conn, self._session_limits)
                self._session_query(conn, sql.SQL("LISTEN {}").format(self._channel))
                ticket, who, since = self._place
                # A new waiter draws a ticket; one whose session dropped puts its row back under the same one.
                found = self._session_query(
                    conn,
                    sql.SQL(
                        "INSERT INTO {} (ticket, who, since, backend_pid, backend_start)"
                        " SELECT coalesce(%s::bigint, nextval(pg_get_serial_sequence(%s, 'ticket'))), %s, %s,"
                        " pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                        " ON CONFLICT (ticket) DO UPDATE SET backend_pid = EXCLUDED.backend_pid,"
                        " backend_start = EXCLUDED.backend_start, seen = now() RETURNING ticket"
                    ).format(self._table("waiters")),
                    (ticket, f"{self.schema}.waiters", who, since),
                ).fetchone()
            except BaseException:
                conn.close()
                raise
            self._place = (found[0], who, since)
            self._session = conn
            return conn

    def _session_query(self, conn, query, params=None):
        try:
            return conn.execute(query, params)
        except psycopg.Error as exc:
            if conn.closed:
                self._session = None
            raise self._store_error("keeping a place in the waiting line", exc) from None

    def _prune(self, conn, retrying):
        conn.execute(sql.SQL("DELETE FROM {} w WHERE NOT " + _LIVE).format(self._table("waiters")))

    # -- plumbing --------------------------------------------------------------------------

    def _current(self, conn):
        found = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE id = 1").format(_columns(_HOLDING_COLUMNS), self._table("token"))
        ).fetchone()
        return model.Holding(*found) if found else None

    def _history_row(self, conn, claim):
        found = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE claim = %s").format(
                _columns(model.HistoryRow.COLUMNS), self._table("history")
            ),
            (claim,),
        ).fetchone()
        return model.HistoryRow(*found) if found else None

    def _insert_history(self, conn, row):
        inserted = conn.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (claim) DO NOTHING RETURNING seq").format(
                self._table("history"),
                _columns(model.HistoryRow.COLUMNS),
                sql.SQL(", ").join(sql.Placeholder() for _ in model.HistoryRow.COLUMNS),
            ),
            [getattr(row, column) for column in model.HistoryRow.COLUMNS],
        ).fetchone()
        return inserted is not None

    def _notify(self, conn):
        """Tell the waiter who is first in the line (its ticket), or anyone listening when nobody is in it: the
        others would only wake to find themselves still behind, each with a query, a hundred per hand-off."""
        conn.execute(
            sql.SQL(
                "SELECT pg_notify(%s, coalesce((SELECT min(ticket) FROM {} w WHERE " + _LIVE + ")::text, 'released'))"
            ).format(self._table("waiters")),
            (self.schema,),
        )

    def _connect(self, autocommit=False):
        try:
            return psycopg.connect(self._conninfo, autocommit=autocommit)
        except psycopg.Error as exc:
            raise model.StoreError(
                f"The PostgreSQL token store at {self.address} (database {self.dbname}) cannot be reached: "
                f"{network.postgres_cause(_first_line(exc))}."
            ) from None

    def _transaction(self, retrying=False):
        return _Transaction(self, retrying)

    def _query(self, work):
        """``work(conn)`` in one transaction that changes nothing: a dropped connection is just an error."""
        try:
            with self._transaction() as conn:
                return work(conn)
        except _ConnectionLost as lost:
            raise self._store_error("reading", lost) from None

    def _change(self, action, work):
        """Run ``work(conn, retrying)`` in one transaction. If the connection drops on the way, whether the
        COMMIT happened is unknown: reconnect and run it again with ``retrying`` set, so it can look for its
        own claim, for at most RECONNECT_SECONDS."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        retrying = False
        while True:
            try:
                with self._transaction(retrying) as conn:
                    return work(conn, retrying)
            except _ConnectionLost as lost:
                if time.monotonic() > deadline:
                    raise model.StoreError(
                        f"The PostgreSQL token store at {self.address} dropped the connection during the {action} "
                        f"and did not come back within {RECONNECT_SECONDS} s ({lost}); whether the {action} "
                        "happened is unknown: look with salt-run deploytoken.status before trying again."
                    ) from None
                retrying = True
                time.sleep(0.2)

    def _prepare(self, conn):
        """Create the tables on first use; refuse a schema that is not ours, or newer, untouched."""
        self._check_owner(conn, "schema")
        meta = self._meta(conn)
        if meta is None:
            # Several masters may find an empty database at once: create the tables once, under a lock
            # that ends with this transaction.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"deploytoken schema {self.schema}",))
            meta = self._meta(conn)
            if meta is None:
                for statement in _TABLES.split(";"):
                    if statement.strip():
                        conn.execute(sql.SQL(statement).format(schema=sql.Identifier(self.schema)))
                conn.execute(
                    sql.SQL("INSERT INTO {} VALUES ('application', %s), ('schema_version', %s), ('store_id', %s)")
                    .format(self._table("meta")),
                    (APPLICATION, SCHEMA_VERSION, str(uuid.uuid4())),
                )
                meta = self._meta(conn)
        where = f"The schema {self.schema} in database {self.dbname} at {self.address}"
        if meta.get("application") != APPLICATION or not {"token", "history", "waiters"} <= meta["tables"]:
            raise model.StoreError(
                f"{where} is not a deploy token store; it was left untouched: set deploytoken:postgres:schema "
                "to another name."
            )
        if meta.get("schema_version") == "1":
            self._check_owner(conn, "tables")
            meta = self._upgrade(conn)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise model.StoreError(
                f"{where} has deploy token schema version {meta.get('schema_version')!r}, this code knows "
                f"{SCHEMA_VERSION!r}; it was left untouched: upgrade deploytoken on this master."
            )
        self._check_owner(conn, "tables")

    def _upgrade(self, conn):
        """Schema 1 to 2, once (under the lock of the schema's creation): each history row gets its kind, and
        an override its until (its planned end, which schema 1 kept in released) and no released (its actual
        end is known when the history is read). Returns the meta rows afterwards."""
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"deploytoken schema {self.schema}",))
        if self._meta(conn).get("schema_version") == "1":
            history = self._table("history")
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN kind text, ADD COLUMN until text,"
                                 " ALTER COLUMN released DROP NOT NULL").format(history))
            old = model.HistoryRow.COLUMNS[:-2]
            rows = conn.execute(sql.SQL("SELECT seq, {} FROM {}").format(_columns(old), history)).fetchall()
            for seq, *values in rows:
                upgraded = model.HistoryRow(*values)
                conn.execute(sql.SQL("UPDATE {} SET kind = %s, until = %s, released = %s, duration = %s"
                                     " WHERE seq = %s").format(history),
                             (upgraded.kind, upgraded.until, upgraded.released, upgraded.duration, seq))
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN kind SET NOT NULL").format(history))
            conn.execute(sql.SQL("UPDATE {} SET value = %s WHERE key = 'schema_version'").format(self._table("meta")),
                         (SCHEMA_VERSION,))
        return self._meta(conn)

    def _check_owner(self, conn, what):
        """The schema (``what="schema"``, when it exists) or each of its tables must belong to the store's own
        role: the owner of either can rewrite the token or hand it around, whatever was granted."""
        if what == "schema":
            rows = conn.execute(
                "SELECT n.nspname, pg_get_userbyid(n.nspowner), current_user FROM pg_namespace n"
                " WHERE n.nspname = %s", (self.schema,)).fetchall()
        else:
            rows = conn.execute(
                "SELECT n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner), current_user FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
                " AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY 1", (self.schema,)).fetchall()
        for name, owner, role in rows:
            if owner != role:
                kind, alter = ("schema", "SCHEMA") if what == "schema" else ("table", "TABLE")
                raise model.StoreError(
                    f"The {kind} {name} in database {self.dbname} at {self.address} belongs to the role {owner}, not "
                    f"to the store's role {role}, who alone may own the token; it was left untouched: ask its "
                    f"owner to run ALTER {alter} {name} OWNER TO {role}."
                )

    def _meta(self, conn):
        """None for a missing or empty schema, else its meta rows and ``tables`` (the names of its tables)."""
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
                (self.schema,),
            )
        }
        if not tables:
            return None
        meta = {"tables": tables}
        if "meta" in tables:
            try:
                with conn.transaction():
                    meta.update(conn.execute(sql.SQL("SELECT key, value FROM {}").format(self._table("meta"))))
            except (psycopg.errors.UndefinedColumn, psycopg.errors.DataError, ValueError):
                pass  # a table named meta of another shape: refused by the caller as foreign
        return meta

    def _store_error(self, action, exc=None):
        reason = f": {_first_line(exc)}" if exc is not None else ""
        return model.StoreError(
            f"The PostgreSQL token store at {self.address} (database {self.dbname}) failed while {action}{reason}."
        )


class _Transaction:
    """``with`` block: one transaction on a new connection, with the store's time limits; a dropped
    connection becomes ``_ConnectionLost``, any other database error one StoreError sentence."""

    def __init__(self, store, retrying):
        self.store = store
        self.retrying = retrying
        self.conn = None

    def __enter__(self):
        try:
            self.conn = self.store._connect()
        except model.StoreError as exc:
            if self.retrying:
                raise _ConnectionLost(str(exc)) from None
            raise
        try:
            self.conn.execute(self.store._limits)
            if not self.store._ready:
                self.store._prepare(self.conn)
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
            self.store._ready = True
            return False
        if not isinstance(exc, psycopg.Error):
            return False
        if lost:
            raise _ConnectionLost(_first_line(exc)) from None
        raise _database_error(self.store, exc) from None


def _database_error(store, exc):
    where = f"The PostgreSQL token store at {store.address} (database {store.dbname})"
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return model.StoreError(f"{where} stayed locked by another session beyond lock_timeout; try again.")
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return model.StoreError(f"{where} did not answer within statement_timeout; try again.")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return model.StoreError(
            f"{where} refused this role: {_first_line(exc)}. Ask its owner to run CREATE SCHEMA {store.schema} "
            "AUTHORIZATION <the role of deploytoken:postgres:user>."
        )
    return model.StoreError(f"{where} could not be used: {_first_line(exc)}.")


def _dsn(dsn):
    if dsn is None:
        return {}
    if not isinstance(dsn, str):
        raise model.InputError("deploytoken:postgres:dsn must be a libpq connection string.")
    try:
        return conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # Not quoted back: the string may hold a password.
        raise model.InputError(
            "deploytoken:postgres:dsn is not a libpq connection string: write it as \"host=... dbname=... "
            'user=..." or "postgresql://user@host:port/dbname".'
        ) from None


def _read_password(path):
    if not isinstance(path, str) or not os.path.isabs(path):
        raise model.InputError(f"deploytoken:postgres:password_file must be an absolute path, got {path!r}.")
    try:
        with open(path, encoding="utf-8") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            if mode & 0o077:
                raise model.InputError(
                    f"The password file {path} can be read by other users (mode {mode:04o}): run chmod 600 {path}."
                )
            password = handle.readline().rstrip("\r\n")
    except OSError as exc:
        raise model.InputError(f"The password file {path} cannot be read: {exc.strerror}.") from None
    if not password:
        raise model.InputError(f"The password file {path} is empty: write the password on its first line.")
    return password


def _first_notification(conn, seconds):
    """Whether a notification came within ``seconds``."""
    return _next_notification(conn, seconds) is not None


def _next_notification(conn, seconds):
    """The payload of the first notification within ``seconds``, or None."""
    for notification in conn.notifies(timeout=max(0.0, seconds), stop_after=1):
        return notification.payload
    return None


def _wakes(payload, ticket):
    """Whether a notification is for the waiter holding ``ticket``: one naming a ticket is for that waiter
    alone; any other (``released``, ``dequeued``, from an earlier version too) is for every waiter."""
    return not payload.isdigit() or int(payload) == ticket


def _columns(names):
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


def _first_line(exc):
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__).rstrip(".")
