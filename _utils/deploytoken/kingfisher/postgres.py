"""
What a PostgreSQL restart would interrupt, read from pg_stat_activity: client transactions older than
the threshold (a long statement, a migration of short statements run in one transaction, a session
left "idle in transaction" holding its changes and locks) and replication connections of any age
(a pg_basebackup, a standby).

Root cannot log in as ``postgres`` by peer authentication, so the query runs in a forked child
switched to the ``postgres`` system user (``runas``) that connects over the local socket, which is
what a person does with ``sudo -u postgres psql``. Forking (rather than starting a program as that
user) needs no file the postgres user can read, and runs no shell; the child sends its answer back
as JSON through a pipe. Values reach SQL only as query parameters.

A Python without psycopg (a salt-ssh target has only Salt's thin) asks the server's own ``psql``
instead, run as ``runas`` with ``runuser`` (an argument list, no shell, a clean environment). The
server then builds the whole answer as one JSON value, so no query text, role or address can be
mistaken for a separator; the threshold reaches SQL as a psql variable.

A role without superuser or ``pg_read_all_stats`` sees other sessions as ``<insufficient
privilege>`` and would find no long query at all; that is an error here, never "none".
"""

import dataclasses
import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys

from deploytoken import model, network
from deploytoken.kingfisher.errors import InputError, SourceError
from deploytoken.model import human_duration as duration

TIMEOUT = 30
QUERY_START = 200
LEADING_COMMENT = re.compile(r"^\s*(?:/\*(.*?)\*/|--([^\n]*))", re.S)
# Where psql and runuser are looked for: the system's own folders, never the caller's PATH.
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

SQL_ALLOWED = (
    "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')"
    " FROM pg_roles WHERE rolname = current_user"
)
# The age of the transaction (or of a replication connection, which has none) and of the current statement.
AGE = "EXTRACT(EPOCH FROM now() - coalesce(xact_start, backend_start))::float8"
COLUMNS = (
    f"pid, usename, host(client_addr), application_name, {AGE}, query, state, backend_type,"
    " EXTRACT(EPOCH FROM now() - query_start)::float8"
)
# What a restart would interrupt: a client's transaction older than the threshold (a long statement, a
# migration of short statements, or one left open "idle in transaction" holding its locks), and any
# replication connection (a pg_basebackup, a standby), whatever its age. Parallel workers serve a client
# backend already counted.
LONG = (
    " FROM pg_stat_activity"
    " WHERE pid <> pg_backend_pid() AND (backend_type = 'walsender' OR (backend_type = 'client backend'"
    " AND xact_start < now() - make_interval(secs => {threshold})))"
)
ORDER = "coalesce(xact_start, backend_start)"
SQL_LONG = f"SELECT {COLUMNS}{LONG.format(threshold='%s')} ORDER BY {ORDER}"
# The same question for psql, answered as one JSON value; :'threshold' is psql's quoted variable.
LONG_PSQL = LONG.format(threshold=":'threshold'")
SQL_LONG_JSON = (
    f"SELECT json_build_object('allowed', ({SQL_ALLOWED}), 'rows', (SELECT coalesce(json_agg("
    f"json_build_array({COLUMNS}) ORDER BY {ORDER}), '[]'){LONG_PSQL}))"
)


def check_threshold(threshold):
    """The threshold in seconds as a float (0 or more), or InputError."""
    try:
        return model.check_seconds(threshold, "threshold")
    except model.InputError:
        raise InputError(
            f"The threshold must be a number of seconds, 0 or more; got {model.shown(threshold)}.") from None


def check_port(port):
    try:
        value = int(port)
    except (TypeError, ValueError):
        value = 0
    if isinstance(port, bool) or not 0 < value < 65536 or str(value) != str(port).strip():
        raise InputError(f"The PostgreSQL port must be a number from 1 to 65535; got {model.shown(port)}.")
    return value


def check_runas(runas):
    """The system user to switch to when running as root ("" for none); InputError when there is no such user."""
    runas = "" if runas is None else str(runas)
    if runas and os.geteuid() == 0:
        try:
            pwd.getpwnam(runas)
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            raise InputError(f"There is no system user {model.shown(runas)} to connect to PostgreSQL as.") from None
    return runas


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to reach PostgreSQL and what counts as long (``kingfisher:postgres:*``)."""

    threshold: float = 3600
    socket_dir: str = "/var/run/postgresql"
    port: int = 5432
    user: str = "postgres"
    runas: str = "postgres"

    @classmethod
    def parse(cls, raw):
        given = cls(**raw)
        return cls(threshold=check_threshold(given.threshold), socket_dir=str(given.socket_dir),
                   port=check_port(given.port), user=str(given.user), runas=check_runas(given.runas))


def leading_comment(query):
    """The comment a person put at the start of a query (``/* ... */`` or ``-- ...``), without markers."""
    match = LEADING_COMMENT.match(query or "")
    if not match:
        return None
    return (match.group(1) if match.group(1) is not None else match.group(2)).strip()


def _kind(state, backend_type, query_seconds, threshold):
    if backend_type == "walsender":
        return "replication"
    if state and state.startswith("idle in transaction"):
        return "idle in transaction"
    if state == "active" and query_seconds is not None and query_seconds >= threshold:
        return "query"
    return "transaction"


def report(rows, threshold=0):
    """
    pg_stat_activity rows (pid, usename, client_addr, application_name, seconds, query, state,
    backend_type, query seconds) as dicts; ``duration`` is the transaction's age (a replication
    connection's), ``kind`` one of query, transaction, idle in transaction, replication.
    """
    return [
        {
            "pid": pid,
            "usename": usename,
            "client_addr": client_addr,
            "application_name": application_name,
            "duration": int(seconds),
            "query_duration": None if query_seconds is None else int(query_seconds),
            "state": state,
            "kind": _kind(state, backend_type, query_seconds, threshold),
            "comment": leading_comment(query),
            "query": " ".join((query or "").split())[:QUERY_START],
        }
        for pid, usename, client_addr, application_name, seconds, query, state, backend_type, query_seconds in rows
    ]


def _psycopg():
    """psycopg, or None where this Python lacks it (the target's own Python under salt-ssh: the server's psql
    is asked instead). Imported when PostgreSQL is read, not with this module: the runner on the master loads
    the Kingfisher sources for their settings and sentences, and needs no PostgreSQL client for that."""
    try:
        import psycopg
    except ImportError:
        return None
    return psycopg


def _fetch(params):
    """Connect and read; the answer is plain JSON-able data, errors included, so a child can send it."""
    psycopg = _psycopg()
    try:
        with psycopg.connect(host=params["host"], port=params["port"], user=params["user"],
                             dbname=params["dbname"], connect_timeout=10, autocommit=True) as conn:
            if not conn.execute(SQL_ALLOWED).fetchone()[0]:
                return {"privilege": False}
            return {"rows": [list(row) for row in conn.execute(SQL_LONG, (params["threshold"],))]}
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        return {"error": lines[0] if lines else type(exc).__name__}


def _fetch_as(params, runas):
    """``_fetch`` in a forked child switched to the system user ``runas`` (when we are root)."""
    if not runas or os.geteuid() != 0:
        return _fetch(params)
    entry = pwd.getpwnam(runas)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to runas, answer through the pipe, never return
        status = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            try:
                answer = _fetch(params)
            except Exception as exc:  # noqa: BLE001 - any failure must reach the parent as a sentence
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write_fd, "w") as out:
                json.dump(answer, out)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        ready = select.select([pipe], [], [], TIMEOUT)[0]
        text = pipe.read() if ready else None
    if text is None:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if text is None:
        raise SourceError(f"PostgreSQL did not answer within {TIMEOUT} seconds.")
    try:
        return json.loads(text)
    except ValueError:
        raise SourceError(f"PostgreSQL could not be queried as the {runas} user.") from None


def _program(name):
    found = shutil.which(name, path=SYSTEM_PATH)
    if not found:
        raise SourceError(
            f"PostgreSQL cannot be read: the Python package psycopg cannot be imported by {sys.executable} and "
            f"there is no {name} program in {SYSTEM_PATH}; install python3-psycopg or postgresql-client."
        )
    return found


def _fetch_psql(params, runas):
    """What ``_fetch_as`` answers, from the server's own ``psql`` (run as ``runas`` when we are root)."""
    command = [_program("psql"), "--no-psqlrc", "--no-password", "--quiet", "--no-align", "--tuples-only",
               "--set=ON_ERROR_STOP=1", f"--set=threshold={params['threshold']}", f"--host={params['host']}",
               f"--port={params['port']}", f"--username={params['user']}", f"--dbname={params['dbname']}"]
    if runas and os.geteuid() == 0:
        command = [_program("runuser"), "-u", runas, "--", *command]
    try:
        done = subprocess.run(command, input=SQL_LONG_JSON, capture_output=True, text=True, timeout=TIMEOUT,
                              cwd="/", env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "PGCONNECT_TIMEOUT": "10"})
    except subprocess.TimeoutExpired:
        raise SourceError(f"PostgreSQL did not answer within {TIMEOUT} seconds.") from None
    if done.returncode != 0:
        lines = [line.removeprefix("psql: error: ") for line in done.stderr.strip().splitlines()]
        return {"error": lines[0] if lines else f"psql failed with exit status {done.returncode}"}
    try:
        answer = json.loads(done.stdout)
        return {"rows": answer["rows"]} if answer["allowed"] else {"privilege": False}
    except (ValueError, TypeError, KeyError):
        raise SourceError(f"psql answered something that is not the expected JSON: {done.stdout[:80]!r}") from None


def long_queries(settings, dbname="postgres"):
    """
    ``{"threshold", "client", "queries": [...]}``: client transactions older than ``settings.threshold``
    seconds (running a statement or idle in transaction) and replication connections, read with psycopg,
    or with the server's psql (``client``) when psycopg cannot be imported.
    """
    params = {"host": settings.socket_dir, "port": settings.port, "user": settings.user, "dbname": dbname,
              "threshold": settings.threshold}
    if _psycopg() is None:  # imported here, before _fetch_as forks, so the child finds it loaded
        client, answer = "psql", _fetch_psql(params, settings.runas)
    else:
        client, answer = "psycopg", _fetch_as(params, settings.runas)
    where = f"PostgreSQL at {settings.socket_dir} port {settings.port}"
    if "error" in answer:
        raise SourceError(f"{where} cannot be queried: {network.postgres_cause(answer['error'])}")
    if answer.get("privilege") is False:
        raise SourceError(
            f"Role {settings.user!r} cannot see other sessions' queries in {where} (it needs superuser or "
            "pg_read_all_stats), so long queries cannot be ruled out."
        )
    return {"threshold": settings.threshold, "client": client,
            "queries": report(answer["rows"], settings.threshold)}


def reasons(report):
    """One sentence per long query, transaction or replication connection, naming its role, client and
    leading comment."""
    found = []
    for query in report.get("queries", []):
        owner = f"{query['usename']}" + (f" from {query['client_addr']}" if query["client_addr"] else "")
        note = f" ({query['comment']})" if query["comment"] else ""
        text = query["query"][:80]
        kind = query.get("kind", "query")
        age = duration(query["duration"])
        if kind == "query":
            found.append(f"PostgreSQL query {query['pid']} of {owner}{note} has been running for "
                         f"{duration(query.get('query_duration', query['duration']))}: {text}")
        elif kind == "transaction":
            found.append(f"PostgreSQL transaction {query['pid']} of {owner}{note} has been open for {age}, "
                         f"now running: {text}")
        elif kind == "idle in transaction":
            found.append(f"PostgreSQL session {query['pid']} of {owner}{note} has left a transaction open for "
                         f"{age} ({query['state']}), a restart would roll it back; its last statement: {text}")
        else:
            client = f" ({query['application_name']})" if query["application_name"] else ""
            found.append(f"PostgreSQL replication connection {query['pid']} of {owner}{client} has been open for "
                         f"{age}; a restart would break it.")
    return found
