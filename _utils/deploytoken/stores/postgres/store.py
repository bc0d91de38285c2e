"""
The shared token store: a PostgreSQL database that every master and operator reaches. This module holds
the store interface and joins the pieces: the ``deploytoken:postgres:`` block (``settings``), the
connections, one transaction each, retried when a connection drops (``connection``), the tables in their
own schema (``schema``), and the line of waiters that wakes on a release (``waiting_line``).
"""

from psycopg import sql

from deploytoken import model
from deploytoken.stores.postgres import connection, schema
from deploytoken.stores.postgres import settings as postgres_settings
from deploytoken.stores.postgres import waiting_line

_HOLDING_COLUMNS = ("holder", "login", "caller", "claim", "since", "reason")


class PostgresStore:
    backend = "postgres"
    account_email = None  # only a person's own Google account has one

    def __init__(self, section):
        self.settings = postgres_settings.parse(section)
        self.location = self.settings.location
        self.database = connection.Database(self.settings)
        self.line = waiting_line.WaitingLine(self.database)

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.section("postgres"))

    def _table(self, name):
        return self.settings.table(name)

    # -- the store interface ---------------------------------------------------------------

    @property
    def identity(self):
        """``{"id", "name"}``: the id made with the schema, and where it lives."""
        store_id = self.database.query(
            lambda conn: conn.execute(
                sql.SQL("SELECT value FROM {} WHERE key = 'store_id'").format(self._table("meta"))
            ).fetchone()[0]
        )
        name = f"PostgreSQL {self.settings.schema}@{self.settings.address}/{self.settings.dbname}"
        return {"id": f"postgres:{store_id}", "name": name}

    def read(self):
        """The current holding, or None when nobody holds the token."""
        return self.database.query(self._current)

    # acquire() writes a waiter's ``waited`` row in the transaction that gives it the token.
    writes_wait_with_acquire = True

    def acquire(self, holding, waited=None):
        """Write ``holding`` if nobody holds the token, and with it the history row ``waited`` when given;
        return whoever holds it afterwards.

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
                    if waited is not None:
                        self._insert_history(conn, waited)
                    return holding
                current = self._current(conn)
                if current is not None:  # else it was released between the two statements: try again
                    return current

        return self.database.change("acquire", work)

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
            self.line.notify(conn)
            return row

        return self.database.change("release", work)

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

        return self.database.change("history append", work)

    def history(self, limit):
        """The latest ``limit`` history rows, newest first."""
        rows = self.database.query(
            lambda conn: conn.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY seq DESC LIMIT %s").format(
                    schema.columns(model.HistoryRow.COLUMNS), self._table("history")
                ),
                (limit,),
            ).fetchall()
        )
        return [model.HistoryRow(*found) for found in rows]

    def overrides(self, now):
        """The override rows still running at ``now`` without a cancellation row, oldest first."""
        rows = self.database.query(
            lambda conn: conn.execute(
                sql.SQL(
                    "SELECT {} FROM {} h WHERE kind = 'override'"
                    " AND until > %s AND NOT EXISTS (SELECT 1 FROM {} c WHERE c.claim = h.claim || '.cancel')"
                    " ORDER BY seq"
                ).format(schema.columns(model.HistoryRow.COLUMNS), self._table("history"), self._table("history")),
                (model.isoformat(now),),
            ).fetchall()
        )
        return [model.HistoryRow(*found) for found in rows]

    def flush(self):
        """Nothing is ever kept aside: a release commits with its history row."""
        return 0

    # -- the waiting line (waiting_line.WaitingLine) ---------------------------------------

    def enqueue(self, who):
        return self.line.enqueue(who)

    def ahead(self, ticket):
        return self.line.ahead(ticket)

    def dequeue(self, ticket):
        self.line.dequeue(ticket)

    def waiting(self):
        return self.line.waiting()

    def wait(self, seconds):
        self.line.wait(seconds, self.read)

    # -- the token row and the history rows --------------------------------------------------

    def _current(self, conn):
        found = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE id = 1").format(schema.columns(_HOLDING_COLUMNS), self._table("token"))
        ).fetchone()
        return model.Holding(*found) if found else None

    def _history_row(self, conn, claim):
        found = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE claim = %s").format(
                schema.columns(model.HistoryRow.COLUMNS), self._table("history")
            ),
            (claim,),
        ).fetchone()
        return model.HistoryRow(*found) if found else None

    def _insert_history(self, conn, row):
        inserted = conn.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (claim) DO NOTHING RETURNING seq").format(
                self._table("history"),
                schema.columns(model.HistoryRow.COLUMNS),
                sql.SQL(", ").join(sql.Placeholder() for _ in model.HistoryRow.COLUMNS),
            ),
            [getattr(row, column) for column in model.HistoryRow.COLUMNS],
        ).fetchone()
        return inserted is not None
