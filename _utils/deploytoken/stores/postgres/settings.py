"""
The ``deploytoken:postgres:`` block, checked once: the libpq connection string it makes (``dsn`` and the
keys given one by one), the password read from ``password_file``, the schema's name and the time limits.
"""

import dataclasses
import os
import re
import stat

import psycopg
from psycopg import conninfo, sql

from deploytoken import model

DEFAULT_SCHEMA = "deploytoken"
TIMEOUTS = {"connect_timeout": 5, "statement_timeout": 10, "lock_timeout": 5}
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


@dataclasses.dataclass(frozen=True)
class Settings:
    conninfo: str = dataclasses.field(repr=False)  # for psycopg.connect: may hold the password_file's password
    schema: str
    address: str  # host:port, as people name the server
    dbname: str
    limits: str  # the server's time limits of one transaction
    session_limits: str  # the same for a whole session (the waiting line's)

    @property
    def location(self):
        return f"postgresql://{self.address}/{self.dbname} (schema {self.schema})"

    def table(self, name):
        return sql.Identifier(self.schema, name)


def parse(section):
    """The ``Settings`` of a ``deploytoken:postgres:`` block; InputError with one sentence if not usable."""
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
    schema = section.get("schema", DEFAULT_SCHEMA)
    if not isinstance(schema, str) or not SCHEMA_NAME.fullmatch(schema):
        raise model.InputError(
            f"deploytoken:postgres:schema must be a plain lower-case name (letters, digits, _), got {schema!r}."
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
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "/var/run/postgresql"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    return Settings(
        conninfo=conninfo.make_conninfo(**params),
        schema=schema,
        address=f"{host}:{port}",
        dbname=params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "postgres",
        limits=limits.format("SET LOCAL", "SET LOCAL"),
        session_limits=limits.format("SET", "SET"),
    )


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
