"""
The PostgreSQL store's tables, in a schema of their own (``deploytoken`` unless told otherwise): created on
first use with a version number, upgraded from version 1 once; a schema that is someone else's, or newer
than this code, is refused by name and never altered.
"""

import uuid

import psycopg
from psycopg import sql

from deploytoken import model

# 2: history rows have a kind and an override its until (its planned end, once kept in released).
SCHEMA_VERSION = "2"
APPLICATION = "deploytoken"

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


def prepare(conn, settings):
    """Create the tables on first use; refuse a schema that is not ours, or newer, untouched."""
    _check_owner(conn, settings, "schema")
    meta = _meta(conn, settings)
    if meta is None:
        # Several masters may find an empty database at once: create the tables once, under a lock
        # that ends with this transaction.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"deploytoken schema {settings.schema}",))
        meta = _meta(conn, settings)
        if meta is None:
            for statement in _TABLES.split(";"):
                if statement.strip():
                    conn.execute(sql.SQL(statement).format(schema=sql.Identifier(settings.schema)))
            conn.execute(
                sql.SQL("INSERT INTO {} VALUES ('application', %s), ('schema_version', %s), ('store_id', %s)")
                .format(settings.table("meta")),
                (APPLICATION, SCHEMA_VERSION, str(uuid.uuid4())),
            )
            meta = _meta(conn, settings)
    where = f"The schema {settings.schema} in database {settings.dbname} at {settings.address}"
    if meta.get("application") != APPLICATION or not {"token", "history", "waiters"} <= meta["tables"]:
        raise model.StoreError(
            f"{where} is not a deploy token store; it was left untouched: set deploytoken:postgres:schema "
            "to another name."
        )
    if meta.get("schema_version") == "1":
        _check_owner(conn, settings, "tables")
        meta = _upgrade(conn, settings)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise model.StoreError(
            f"{where} has deploy token schema version {meta.get('schema_version')!r}, this code knows "
            f"{SCHEMA_VERSION!r}; it was left untouched: upgrade deploytoken on this master."
        )
    _check_owner(conn, settings, "tables")


def columns(names):
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


def _upgrade(conn, settings):
    """Schema 1 to 2, once (under the lock of the schema's creation): each history row gets its kind, and
    an override its until (its planned end, which schema 1 kept in released) and no released (its actual
    end is known when the history is read). Returns the meta rows afterwards."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"deploytoken schema {settings.schema}",))
    if _meta(conn, settings).get("schema_version") == "1":
        history = settings.table("history")
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN kind text, ADD COLUMN until text,"
                             " ALTER COLUMN released DROP NOT NULL").format(history))
        old = model.HistoryRow.COLUMNS[:-2]
        rows = conn.execute(sql.SQL("SELECT seq, {} FROM {}").format(columns(old), history)).fetchall()
        for seq, *values in rows:
            upgraded = model.HistoryRow(*values)
            conn.execute(sql.SQL("UPDATE {} SET kind = %s, until = %s, released = %s, duration = %s"
                                 " WHERE seq = %s").format(history),
                         (upgraded.kind, upgraded.until, upgraded.released, upgraded.duration, seq))
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN kind SET NOT NULL").format(history))
        conn.execute(sql.SQL("UPDATE {} SET value = %s WHERE key = 'schema_version'").format(settings.table("meta")),
                     (SCHEMA_VERSION,))
    return _meta(conn, settings)


def _check_owner(conn, settings, what):
    """The schema (``what="schema"``, when it exists) or each of its tables must belong to the store's own
    role: the owner of either can rewrite the token or hand it around, whatever was granted."""
    if what == "schema":
        rows = conn.execute(
            "SELECT n.nspname, pg_get_userbyid(n.nspowner), current_user FROM pg_namespace n"
            " WHERE n.nspname = %s", (settings.schema,)).fetchall()
    else:
        rows = conn.execute(
            "SELECT n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner), current_user FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
            " AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY 1", (settings.schema,)).fetchall()
    for name, owner, role in rows:
        if owner != role:
            kind, alter = ("schema", "SCHEMA") if what == "schema" else ("table", "TABLE")
            raise model.StoreError(
                f"The {kind} {name} in database {settings.dbname} at {settings.address} belongs to the role {owner}, "
                f"not to the store's role {role}, who alone may own the token; it was left untouched: ask its "
                f"owner to run ALTER {alter} {name} OWNER TO {role}."
            )


def _meta(conn, settings):
    """None for a missing or empty schema, else its meta rows and ``tables`` (the names of its tables)."""
    tables = {
        name
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            (settings.schema,),
        )
    }
    if not tables:
        return None
    meta = {"tables": tables}
    if "meta" in tables:
        try:
            with conn.transaction():
                meta.update(conn.execute(sql.SQL("SELECT key, value FROM {}").format(settings.table("meta"))))
        except (psycopg.errors.UndefinedColumn, psycopg.errors.DataError, ValueError):
            pass  # a table named meta of another shape: refused by the caller as foreign
    return meta
