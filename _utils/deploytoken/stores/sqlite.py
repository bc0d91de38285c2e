"""
The embedded token store: one SQLite file on the master.

Every change runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent ``salt-run`` processes are
serialised by SQLite's own lock, and a release commits together with its history row.

Waiters stand in line in the ``waiters`` table, in the order they joined. Each row names a lock file
in the folder ``<store>.line`` that its waiter holds (``flock``) for as long as it waits: the kernel
lets go of it when the waiter dies, however it dies, so a row whose lock is free no longer counts
(and the next waiter to join removes it). A waiter touches its lock file at least every
``model.WAITER_HEARTBEAT`` seconds; one left untouched for ``model.WAITER_STALE`` seconds (a stopped
process still holds its lock) no longer counts either, and a waiter that finds its own place gone that
way joins the line again at its end. Waiters wake when the store file or the line's folder
changes (``deploytoken.filewatch``), so the first in line takes the token as soon as it is released.
"""

import contextlib
import dataclasses
import fcntl
import os
import pwd
import re
import secrets
import socket
import sqlite3
import stat
import time

from deploytoken import files, filewatch, model

# 2: history rows have a kind and an override its until (its planned end, once kept in released).
SCHEMA_VERSION = "2"
APPLICATION = "deploytoken"
BUSY_TIMEOUT = 30

# A store made before the line gets this table when it is first used (older code ignores it).
_WAITERS = """
CREATE TABLE IF NOT EXISTS waiters (
    ticket INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT NOT NULL, since TEXT NOT NULL, lock TEXT NOT NULL
)"""
_HISTORY = """
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    claim TEXT UNIQUE, holder TEXT NOT NULL, login TEXT, caller TEXT, acquired TEXT,
    released TEXT, duration INTEGER, reason TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '', forced_by TEXT, force_reason TEXT, kind TEXT NOT NULL, until TEXT
)"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS token (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL, login TEXT, caller TEXT, claim TEXT NOT NULL, since TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
""" + _HISTORY + ";" + _WAITERS
_LOCK_NAME = re.compile(r"[0-9a-f]{16}")

# Times are written by model.isoformat, so comparing them as text compares them as times.
_ACTIVE_OVERRIDES = (
    "SELECT {columns} FROM history h WHERE kind = 'override'"
    " AND until > ? AND NOT EXISTS (SELECT 1 FROM history c WHERE c.claim = h.claim || '.cancel')"
    " ORDER BY seq"
)
_HOLDING_FIELDS = tuple(field.name for field in dataclasses.fields(model.Holding))


class SqliteStore:
    backend = "sqlite"

    def __init__(self, path):
        if not path or not os.path.isabs(str(path)):
            raise model.InputError(
                f"deploytoken:sqlite:path must be an absolute file path, got {path!r}."
            )
        self.path = str(path)
        self.location = self.path
        self.line_folder = self.path + ".line"
        self._place = None  # (ticket, descriptor of the held lock file, its name) while in the line
        self._who = None  # who stands in the line, to join again after losing the place
        self._watch = None  # while in the line: changes to the store or the line's folder

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.section("sqlite").get("path") or os.path.join(settings.cachedir, "deploytoken.sqlite"))

    @property
    def identity(self):
        """``{"id", "name"}``: a random id made with the store (added once to a store made before ids)."""
        with self._transaction("DEFERRED") as db:
            found = _store_id(db)
        if found is None:
            with self._transaction("IMMEDIATE") as db:
                found = _store_id(db)
                if found is None:
                    found = secrets.token_hex(16)
                    db.execute("INSERT INTO meta VALUES ('store_id', ?)", (found,))
        return {"id": f"sqlite:{found}", "name": f"SQLite store {self.path} on {socket.gethostname()}"}

    account_email = None  # only a person's own Google account has one

    # -- the store interface ---------------------------------------------------------------

    def read(self):
        """The current holding, or None when nobody holds the token."""
        with self._transaction("DEFERRED") as db:
            return self._current(db)

    # acquire() writes a waiter's ``waited`` row in the transaction that gives it the token.
    writes_wait_with_acquire = True

    def acquire(self, holding, waited=None):
        """Write ``holding`` if nobody holds the token, and with it the history row ``waited`` when given;
        return whoever holds it afterwards."""
        with self._transaction("IMMEDIATE") as db:
            current = self._current(db)
            if current is not None:
                return current
            db.execute(
                f"INSERT INTO token (id, {', '.join(_HOLDING_FIELDS)})"
                f" VALUES (1, {', '.join('?' for _ in _HOLDING_FIELDS)})",
                [getattr(holding, field) for field in _HOLDING_FIELDS],
            )
            if waited is not None:
                _insert_history(db, waited, "INSERT OR IGNORE")
            return holding

    def release(self, claim, row):
        """End ``claim`` and append ``row`` to the history, both or neither."""
        with self._transaction("IMMEDIATE") as db:
            current = self._current(db)
            if current is None or current.claim != claim:
                raise model.ClaimConflict(model.claim_ended(claim, current))
            db.execute("DELETE FROM token WHERE id = 1")
            _insert_history(db, row, "INSERT")
            return row

    def history(self, limit):
        with self._transaction("DEFERRED") as db:
            rows = db.execute(
                f"SELECT {', '.join(model.HistoryRow.COLUMNS)} FROM history ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [model.HistoryRow(**dict(row)) for row in rows]

    def flush(self):
        """Nothing is ever kept aside: a release commits with its history row."""
        return 0

    def append_history(self, row):
        """Add ``row`` unless a row with its claim is there already (claims are unique); True if added."""
        with self._transaction("IMMEDIATE") as db:
            return bool(_insert_history(db, row, "INSERT OR IGNORE").rowcount)

    def overrides(self, now):
        """The override rows still running at ``now`` without a cancellation row, oldest first."""
        with self._transaction("DEFERRED") as db:
            rows = db.execute(_ACTIVE_OVERRIDES.format(columns=", ".join(model.HistoryRow.COLUMNS)),
                              (model.isoformat(now),)).fetchall()
        return [model.HistoryRow(**dict(row)) for row in rows]

    # -- the waiting line ------------------------------------------------------------------

    def enqueue(self, who):
        """Join the line of waiters as ``who``; return the ticket. The place lasts while this store object
        holds its lock file: until ``dequeue``, or the waiting process's end."""
        if self._place is not None:
            return self._place[0]
        self._connect().close()  # the store's own sentences for a folder that is missing or open to others
        name = secrets.token_hex(8)
        try:
            files.private_dir(self.line_folder)
            descriptor = os.open(os.path.join(self.line_folder, name),
                                 os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except (OSError, files.ForeignFolder) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc).rstrip(".")
            raise model.StoreError(f"The waiting line's folder {self.line_folder} cannot be used: {reason}.") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            # Watching before joining: any change from now on, a release included, ends the next wait.
            self._watch = filewatch.watch([(self.path, filewatch.CHANGED),
                                           (self.line_folder, filewatch.IN_CLOSE_WRITE | filewatch.IN_DELETE)])
            with self._transaction("IMMEDIATE") as db:
                dead = [(ticket, lock) for ticket, lock in db.execute("SELECT ticket, lock FROM waiters")
                        if not self._alive(lock)]
                db.executemany("DELETE FROM waiters WHERE ticket = ?", [(ticket,) for ticket, _ in dead])
                ticket = db.execute("INSERT INTO waiters (who, since, lock) VALUES (?, ?, ?)",
                                    (str(who), model.isoformat(model.utcnow()), name)).lastrowid
        except BaseException:
            self._leave(descriptor, name)
            raise
        for _, lock in dead:
            self._remove_lock(lock)
        self._place, self._who = (ticket, descriptor, name), who
        return ticket

    def ahead(self, ticket):
        """How many live waiters joined the line before this waiter: 0 means it is its turn. A waiter whose
        place went stale (unseen for ``model.WAITER_STALE`` seconds: it was stopped) joins again at the end."""
        if self._place is None:
            raise model.InputError("ahead() needs a ticket from enqueue() of this store.")
        if not self._keep_place():
            who = self._who
            self.dequeue(ticket)
            self.enqueue(who)
        with self._transaction("DEFERRED") as db:
            mine = self._place[0]
            locks = [lock for (lock,) in db.execute("SELECT lock FROM waiters WHERE ticket < ?", (mine,))]
        return sum(1 for lock in locks if self._alive(lock))

    def _keep_place(self):
        """Mark this waiter's place seen; False when it was lost (stale, or removed by another waiter)."""
        ticket, descriptor, _ = self._place
        if time.time() - os.fstat(descriptor).st_mtime > model.WAITER_STALE:
            return False
        with self._transaction("DEFERRED") as db:
            if db.execute("SELECT 1 FROM waiters WHERE ticket = ?", (ticket,)).fetchone() is None:
                return False
        os.utime(descriptor)
        return True

    def dequeue(self, ticket):
        """Leave the line (after taking the token or giving up); the change wakes the next waiter."""
        place, self._place = self._place, None
        if place is None:
            return
        try:
            with self._transaction("IMMEDIATE") as db:
                db.execute("DELETE FROM waiters WHERE ticket = ?", (place[0],))
        except model.StoreError:
            pass  # the row no longer counts once its lock is let go below: the next waiter removes it
        finally:
            self._leave(place[1], place[2])

    def waiting(self):
        """The live waiters in arrival order: ``[{"who", "since", "ticket"}]``."""
        with self._transaction("DEFERRED") as db:
            rows = db.execute("SELECT who, since, ticket, lock FROM waiters ORDER BY ticket").fetchall()
        return [{"who": who, "since": since, "ticket": ticket} for who, since, ticket, lock in rows
                if self._alive(lock)]

    def wait(self, seconds):
        """Return as soon as the token may have changed hands (the store or the line changed), or after
        ``seconds``. In the line the watch has been on since joining, so no release is missed between two
        calls; outside it, a watch is opened for this call only. Without inotify: after ``seconds``."""
        if self._place is not None:
            deadline = time.monotonic() + seconds
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or time.time() - os.fstat(self._place[1]).st_mtime > model.WAITER_STALE:
                    return  # a place gone stale is seen to by ahead()
                os.utime(self._place[1])
                step = min(left, model.WAITER_HEARTBEAT)
                if self._watch is None:
                    time.sleep(step)
                elif self._watch.wait(step):
                    return
        watch = filewatch.watch([(self.path, filewatch.CHANGED)])
        if watch is None:
            time.sleep(seconds)
            return
        try:
            # A release just before the watch began woke nobody here: wait only while the token is still held.
            if self.read() is not None:
                watch.wait(seconds)
        finally:
            watch.close()

    def _alive(self, lock):
        """Whether the waiter of lock file ``lock`` still holds it (a shared lock cannot be had) and touched it
        within ``model.WAITER_STALE`` seconds."""
        if not isinstance(lock, str) or not _LOCK_NAME.fullmatch(lock):
            return False
        try:
            descriptor = os.open(os.path.join(self.line_folder, lock), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if time.time() - os.fstat(descriptor).st_mtime > model.WAITER_STALE:
                return False
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(descriptor)

    def _remove_lock(self, lock):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.line_folder, lock))

    def _leave(self, descriptor, lock):
        self._remove_lock(lock)
        os.close(descriptor)
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    # -- plumbing --------------------------------------------------------------------------

    def _current(self, db):
        row = db.execute(f"SELECT {', '.join(_HOLDING_FIELDS)} FROM token WHERE id = 1").fetchone()
        return model.Holding(**dict(row)) if row else None

    def _transaction(self, mode):
        return _Transaction(self, mode)

    def _connect(self):
        directory = os.path.dirname(self.path)
        try:
            os.stat(directory)
        except FileNotFoundError:
            raise model.StoreError(
                f"The token store's folder {directory} does not exist: create it, or set "
                "deploytoken:sqlite:path to a file in an existing folder."
            ) from None
        except PermissionError:
            raise model.StoreError(
                f"The token store's folder {directory} cannot be reached by this user: check the modes of "
                "its parent folders."
            ) from None
        if os.path.isdir(self.path):
            raise model.StoreError(f"The token store {self.path} is a folder, not a file: fix deploytoken:sqlite:path.")
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            raise model.StoreError(
                f"The token store {self.path} is on a read-only file system, so the token cannot be written: "
                "remount it read-write, or set deploytoken:sqlite:path to a file on a writable one."
            )
        if os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.W_OK):
            raise model.StoreError(
                f"The token store {self.path} cannot be read and written by this user: check its owner and mode."
            )
        _check_private(self.path, directory)
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as exc:
            raise model.StoreError(f"The token store {self.path} cannot be opened: {exc}.") from exc
        db.row_factory = sqlite3.Row
        return db

    def _check_schema(self, db):
        """Create the tables in a new file; refuse a file that is some other database."""
        tables = _tables(db)
        if not tables:
            # Several processes may find the same new file: create it under the write lock, once.
            db.execute("BEGIN IMMEDIATE")
            try:
                if not _tables(db):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(
                        "INSERT INTO meta VALUES ('application', ?), ('schema', ?), ('store_id', ?)",
                        (APPLICATION, SCHEMA_VERSION, secrets.token_hex(16)),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            tables = _tables(db)
        meta = dict(db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        if meta.get("application") != APPLICATION or not {"token", "history"} <= tables:
            raise model.StoreError(
                f"The file {self.path} is a SQLite database but not a deploy token store; it was left "
                "untouched: point deploytoken:sqlite:path at another file."
            )
        if meta.get("schema") == "1":
            self._upgrade(db)
        elif meta.get("schema") != SCHEMA_VERSION:
            raise model.StoreError(
                f"The token store {self.path} has schema version {meta.get('schema')!r}, this code "
                f"knows {SCHEMA_VERSION!r}: upgrade deploytoken on the master."
            )
        if "waiters" not in tables:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(_WAITERS)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _upgrade(self, db):
        """Schema 1 to 2, once, under the write lock: each history row gets its kind, and an override its
        until (its planned end, which schema 1 kept in released) and no released (its actual end is known
        when the history is read). SQLite cannot drop NOT NULL from released: the table is made anew."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "1":
                db.execute("ALTER TABLE history RENAME TO history_1")
                db.execute(_HISTORY)
                old = model.HistoryRow.COLUMNS[:-2]
                for row in db.execute(f"SELECT seq, {', '.join(old)} FROM history_1 ORDER BY seq").fetchall():
                    upgraded = model.HistoryRow(**{column: row[column] for column in old})
                    db.execute(f"INSERT INTO history (seq, {', '.join(model.HistoryRow.COLUMNS)}) VALUES (?, "
                               f"{', '.join('?' for _ in model.HistoryRow.COLUMNS)})",
                               [row["seq"], *(getattr(upgraded, column) for column in model.HistoryRow.COLUMNS)])
                db.execute("DROP TABLE history_1")
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _check_private(path, directory):
    """Only the master's user may read or write the store: it holds every reason and note, and a reader
    holding a transaction open would stall every acquire and release. SQLite gives its journal and WAL
    files the mode of the store, so a new store is created 0600. Whoever owns the folder, the store or its
    journal could swap or rewrite them whatever their modes (a planted hot journal is rolled back into the
    store), so each must be this user's or root's."""
    me = _login(os.geteuid())
    _check_owner(directory, "The token store's folder", f"chown {me} {directory}")
    for companion in ("", "-journal", "-wal", "-shm"):
        _check_owner(path + companion, "The token store" if not companion else "The token store's journal",
                     f"chown {me} {path + companion}", follow=not companion)
    if os.stat(directory).st_mode & 0o022:
        raise model.StoreError(
            f"The token store's folder {directory} can be written by other users, who could replace the store "
            f"or its journal: run chmod go-w {directory}, or set deploytoken:sqlite:path to a file in a folder "
            "only the master's user can write."
        )
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise model.StoreError(f"The token store {path} cannot be created: {exc.strerror}.") from None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise model.StoreError(
            f"The token store {path} can be read by other users (mode {mode:04o}), who could read every "
            f"reason and note or stall the store: run chmod 600 {path}."
        )


def _check_owner(path, what, fix, follow=True):
    """A file that does not exist passes: another process's commit may delete its journal at any moment."""
    try:
        info = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return
    if info.st_uid not in (os.geteuid(), 0):
        raise model.StoreError(
            f"{what} {path} belongs to {_login(info.st_uid)}, not to the master's user ({_login(os.geteuid())}) or "
            f"root, so its owner could rewrite the token: run {fix}, or set deploytoken:sqlite:path to a file in "
            "a folder of the master's user."
        )


def _login(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _store_id(db):
    row = db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
    return row[0] if row else None


def _insert_history(db, row, verb):
    columns = model.HistoryRow.COLUMNS
    return db.execute(
        f"{verb} INTO history ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
        [getattr(row, column) for column in columns],
    )


def _tables(db):
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


class _Transaction:
    """``with`` block: one SQLite transaction, every SQLite error turned into a StoreError."""

    def __init__(self, store, mode):
        self.store = store
        self.mode = mode
        self.db = None

    def __enter__(self):
        try:
            self.db = self.store._connect()
            self.store._check_schema(self.db)
            self.db.execute(f"BEGIN {self.mode}")
        except sqlite3.Error as exc:
            self._close()
            raise _store_error(self.store.path, exc) from exc
        except BaseException:
            self._close()
            raise
        return self.db

    def __exit__(self, exc_type, exc, traceback):
        try:
            if exc_type is None:
                self.db.execute("COMMIT")
            elif self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as error:
            raise _store_error(self.store.path, error) from error
        finally:
            self._close()
        if isinstance(exc, sqlite3.Error):
            raise _store_error(self.store.path, exc) from exc
        return False

    def _close(self):
        if self.db is not None:
            self.db.close()
            self.db = None


def _store_error(path, exc):
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "encrypted" in text
    ):
        return model.StoreError(
            f"The token store {path} is damaged or not a SQLite file ({text}); it was left untouched: "
            "restore it from a backup or move it aside to start a new one."
        )
    if "readonly" in text or "read-only" in text:
        return model.StoreError(
            f"The token store {path} cannot be written ({text}): the file or its folder is read-only (a read-only "
            "file system, an immutable file, or a folder the master's user cannot write); nothing was changed."
        )
    if "locked" in text or "busy" in text:
        return model.StoreError(
            f"The token store {path} stayed locked by another process for {BUSY_TIMEOUT} s ({text}); try again."
        )
    return model.StoreError(f"The token store {path} could not be used: {text}.")
