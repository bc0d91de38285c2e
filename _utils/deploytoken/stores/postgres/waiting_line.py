"""
The PostgreSQL store's waiting line: waiters stand in a line (one row each, tied to the waiting session's
backend, so a killed waiter's row is ignored and pruned) and ``LISTEN`` for the release, so the first in
line takes the token the moment it is given back. A release (and a waiter leaving the line) names the
ticket of the first live waiter, and only that waiter wakes: a line of a hundred costs one wake-up per
hand-off, not a hundred.
"""

import time

import psycopg
from psycopg import sql

from deploytoken import model
from deploytoken.stores.postgres import connection

# A waiter marks its row as seen at least this often; a row unseen for STALE_SECONDS no longer counts
# (its backend may live on in a connection pooler after the waiter died, or the waiter was stopped), and
# a waiter that finds its own row stale joins the line again at its end.
HEARTBEAT_SECONDS = model.WAITER_HEARTBEAT
STALE_SECONDS = model.WAITER_STALE
_FRESH = f"seen > now() - interval '{STALE_SECONDS} seconds'"
# A waiter's row counts while the backend of its waiting session lives and the waiter keeps marking it
# seen. Another role's backend shows its pid but not its start time, so a missing start time is a match.
_LIVE = (
    f"(w.seen > now() - interval '{STALE_SECONDS} seconds'"
    " AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = w.backend_pid"
    " AND (a.backend_start IS NULL OR a.backend_start = w.backend_start)))"
)


class WaitingLine:
    """The line of one store (``connection.Database``): this process's place in it, and its waiting session."""

    def __init__(self, database):
        self.database = database
        self.settings = database.settings
        self._channel = sql.Identifier(self.settings.schema)
        self._session = None  # the waiting session: LISTENs, and keeps this waiter's row alive
        self._place = None  # (ticket, who, since) while in the line
        self._seen = 0.0  # when this waiter last marked its row seen (time.monotonic)

    def enqueue(self, who):
        """Join the line of waiters as ``who``; return the ticket. The row lives as long as this store's
        waiting session, which also LISTENs for releases (see ``wait``)."""
        if self._place is not None:
            return self._place[0]
        self.database.change("join of the waiting line", self._prune)
        self._place = (None, str(who), model.isoformat(model.utcnow()))
        self._waiting_session()
        return self._place[0]

    def ahead(self, ticket):
        """How many live waiters joined the line before this waiter: 0 means it is its turn. A waiter whose row
        went stale (unseen for ``STALE_SECONDS``: it was stopped) joins again at the end."""
        if self._place is None:
            raise model.InputError("ahead() needs a ticket from enqueue() of this store.")
        conn = self._waiting_session()
        kept = self._session_query(
            conn,
            sql.SQL("UPDATE {} SET seen = now() WHERE ticket = %s AND " + _FRESH + " RETURNING ticket").format(
                self.settings.table("waiters")),
            (self._place[0],),
        ).fetchone()
        if kept is None:
            self._rejoin(conn)
        else:
            self._seen = time.monotonic()
        return self._session_query(
            conn,
            sql.SQL("SELECT count(*) FROM {table} w WHERE ticket < %s AND " + _LIVE).format(
                table=self.settings.table("waiters")),
            (self._place[0],),
        ).fetchone()[0]

    def _rejoin(self, conn):
        """Leave a place gone stale and join the line at its end, in the same session."""
        _, who, _ = self._place
        self._session_query(conn, sql.SQL("DELETE FROM {} WHERE ticket = %s").format(self.settings.table("waiters")),
                            (self._place[0],))
        self._place = (None, who, model.isoformat(model.utcnow()))
        self._place = (self._take_place(conn), who, self._place[2])

    def dequeue(self, ticket):
        """Leave the line (after taking the token or giving up) and wake the waiter who is first now."""
        place, self._place = self._place, None
        ticket = place[0] if place is not None else ticket
        conn, self._session = self._session, None
        if conn is None:
            return
        try:
            conn.execute(
                sql.SQL(
                    "WITH gone AS (DELETE FROM {table} WHERE ticket = %s) SELECT pg_notify(%s, coalesce(("
                    "SELECT min(ticket) FROM {table} w WHERE ticket <> %s AND " + _LIVE + ")::text, 'dequeued'))"
                ).format(table=self.settings.table("waiters")),
                (ticket, self.settings.schema, ticket),
            )
        except psycopg.Error:
            pass  # the row dies with the session closed below: the next waiter prunes it
        finally:
            conn.close()

    def waiting(self):
        """The live waiters in arrival order: ``[{"who", "since", "ticket"}]``."""
        rows = self.database.query(
            lambda conn: conn.execute(
                sql.SQL("SELECT who, since, ticket FROM {} w WHERE " + _LIVE + " ORDER BY ticket").format(
                    self.settings.table("waiters")
                )
            ).fetchall()
        )
        return [{"who": who, "since": since, "ticket": ticket} for who, since, ticket in rows]

    def wait(self, seconds, read):
        """Return as soon as the token may have been given back (a release, or a waiter leaving the line),
        or after ``seconds``. In the line, the waiting session's LISTEN has been on since joining, so no
        release is missed between two calls; outside it, a listener is opened for this call only, and waits
        only while ``read()`` (the store's current holding) says the token is held."""
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
                        kept = conn.execute(
                            sql.SQL("UPDATE {} SET seen = now() WHERE ticket = %s AND " + _FRESH).format(
                                self.settings.table("waiters")
                            ),
                            (self._place[0],),
                        ).rowcount
                        if not kept:
                            return  # a row gone stale (this waiter was stopped): ahead() joins again
                        seen = self._seen = now
                    payload = _next_notification(conn, min(seen + HEARTBEAT_SECONDS, deadline) - now)
                    if payload is not None and _wakes(payload, self._place[0]):
                        return
            except psycopg.Error as exc:
                if not conn.closed:
                    raise self.database.error("waiting for the token", exc) from None
                self._session = None  # the next call reconnects and puts the row back with the same ticket
            return
        conn = self.database.connect(autocommit=True)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(self._channel))
            # A release just before the LISTEN notified nobody here: wait only while the token is still held.
            if read() is not None:
                _first_notification(conn, seconds)
        except psycopg.Error:
            raise self.database.error("waiting for the token") from None
        finally:
            conn.close()

    def notify(self, conn):
        """Tell the waiter who is first in the line (its ticket), or anyone listening when nobody is in it: the
        others would only wake to find themselves still behind, each with a query, a hundred per hand-off."""
        conn.execute(
            sql.SQL(
                "SELECT pg_notify(%s, coalesce((SELECT min(ticket) FROM {} w WHERE " + _LIVE + ")::text, 'released'))"
            ).format(self.settings.table("waiters")),
            (self.settings.schema,),
        )

    def _waiting_session(self):
        """The open waiting session, reconnected (with this waiter's row put back) if it dropped."""
        if self._session is not None and not self._session.closed:
            return self._session
        deadline = time.monotonic() + connection.RECONNECT_SECONDS
        while True:
            try:
                conn = self.database.connect(autocommit=True)
            except model.StoreError:
                if self._place[0] is None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            try:
                self._session_query(conn, self.settings.session_limits)
                self._session_query(conn, sql.SQL("LISTEN {}").format(self._channel))
                ticket, who, since = self._place
                if ticket is not None and time.monotonic() - self._seen > STALE_SECONDS:
                    # Away for longer than a place lasts (stopped): back to the end of the line.
                    self._place = (None, who, model.isoformat(model.utcnow()))
                found = self._take_place(conn)
            except BaseException:
                conn.close()
                raise
            self._place = (found, who, self._place[2])
            self._session = conn
            return conn

    def _take_place(self, conn):
        """Write this waiter's row for the session ``conn``; return its ticket. A new waiter draws a ticket; one
        whose session dropped puts its row back under the same one."""
        ticket, who, since = self._place
        self._seen = time.monotonic()
        return self._session_query(
            conn,
            sql.SQL(
                "INSERT INTO {} (ticket, who, since, backend_pid, backend_start)"
                " SELECT coalesce(%s::bigint, nextval(pg_get_serial_sequence(%s, 'ticket'))), %s, %s,"
                " pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                " ON CONFLICT (ticket) DO UPDATE SET backend_pid = EXCLUDED.backend_pid,"
                " backend_start = EXCLUDED.backend_start, seen = now() RETURNING ticket"
            ).format(self.settings.table("waiters")),
            (ticket, f"{self.settings.schema}.waiters", who, since),
        ).fetchone()[0]

    def _session_query(self, conn, query, params=None):
        try:
            return conn.execute(query, params)
        except psycopg.Error as exc:
            if conn.closed:
                self._session = None
            raise self.database.error("keeping a place in the waiting line", exc) from None

    def _prune(self, conn, retrying):
        conn.execute(sql.SQL("DELETE FROM {} w WHERE NOT " + _LIVE).format(self.settings.table("waiters")))


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
