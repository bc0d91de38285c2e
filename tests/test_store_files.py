"""The files the stores keep on the master, tried with real modes, a real second process and a real
unprivileged user: the SQLite store, the shared read cache, and the one atomic write."""

import fcntl
import json
import multiprocessing
import os
import pwd
import shutil
import sqlite3
import stat
import tempfile
import time

import pytest

from conftest import PEOPLE
from deploytoken import cache
from deploytoken import commands as token
from deploytoken import files, model
from deploytoken.stores import sqlite as sqlite_store

# Other users are played by forked processes switched to nobody: root only.
pytestmark = pytest.mark.functional


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def as_nobody(action, *args):
    """``action(*args)`` in a forked process switched to the user nobody; what it returned or raised."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def child():
        os.setgid(pwd.getpwnam("nobody").pw_gid)
        os.setuid(pwd.getpwnam("nobody").pw_uid)
        try:
            queue.put(action(*args))
        except Exception as exc:  # the parent checks what went wrong
            queue.put(f"{type(exc).__name__}: {exc}")

    process = context.Process(target=child)
    process.start()
    process.join(30)
    return queue.get(timeout=5)


# ---- the SQLite store -------------------------------------------------------------------------


def test_new_store_and_its_journal_and_wal_are_private(tmp_path):
    path = tmp_path / "token.sqlite"
    token.acquire(sqlite_store.SqliteStore(str(path)), "alice", PEOPLE)
    assert mode(path) == 0o600
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM token")
    assert mode(f"{path}-journal") == 0o600
    db.execute("ROLLBACK")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("DELETE FROM token")
    assert mode(f"{path}-wal") == 0o600 and mode(f"{path}-shm") == 0o600
    db.close()


def test_a_journal_that_vanishes_while_its_owner_is_checked_is_no_error(tmp_path):
    # Every commit of another process creates and deletes the rollback journal, so the journal seen a
    # moment ago may be gone when its owner is read (CI met this with twenty waiters on one store).
    missing = str(tmp_path / "token.sqlite-journal")
    sqlite_store._check_owner(missing, "The token store's journal", "chown root " + missing, follow=False)


def _read_store(path):
    try:
        sqlite_store.SqliteStore(path).read()
        return "read"
    except model.StoreError as exc:
        return str(exc)


def test_unreadable_store_file_is_named(tmp_path):
    path = tmp_path / "token.sqlite"
    token.acquire(sqlite_store.SqliteStore(str(path)), "alice", PEOPLE)
    with open(path, "rb") as handle:
        before = handle.read()
    assert as_nobody(_read_store, str(path)) == (
        f"The token store's folder {tmp_path} cannot be reached by this user: check the modes of its parent folders."
    )
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        os.chmod(folder, 0o755)
        shutil.copy(path, folder)
        copy = os.path.join(folder, "token.sqlite")
        os.chmod(copy, 0o600)
        assert as_nobody(_read_store, copy) == (
            f"The token store {copy} cannot be read and written by this user: check its owner and mode."
        )
    with open(path, "rb") as handle:
        assert handle.read() == before


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o606])
def test_store_others_can_read_is_refused_with_path_and_fix(tmp_path, file_mode):
    path = tmp_path / "token.sqlite"
    token.acquire(sqlite_store.SqliteStore(str(path)), "alice", PEOPLE)
    path.chmod(file_mode)
    with pytest.raises(model.StoreError, match=(
        f"^The token store {path} can be read by other users \\(mode 0{file_mode:o}\\), who could read every "
        f"reason and note or stall the store: run chmod 600 {path}\\.$"
    )):
        sqlite_store.SqliteStore(str(path)).read()
    path.chmod(0o600)
    assert sqlite_store.SqliteStore(str(path)).read().login == "alice"


@pytest.mark.parametrize("folder_mode", [0o777, 0o1777, 0o775])
def test_store_in_a_folder_others_can_write_is_refused(tmp_path, folder_mode):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(folder_mode)
    with pytest.raises(model.StoreError, match=f"^The token store's folder {folder} can be written by other users"):
        token.acquire(sqlite_store.SqliteStore(str(folder / "token.sqlite")), "alice", PEOPLE)
    assert os.listdir(folder) == []


def test_sqlite_identity_is_made_with_the_store_and_added_once_to_an_older_one(tmp_path):
    path = tmp_path / "token.sqlite"
    store = sqlite_store.SqliteStore(str(path))
    identity = store.identity
    assert identity["id"].startswith("sqlite:") and len(identity["id"]) == len("sqlite:") + 32
    assert identity["name"] == f"SQLite store {path} on {os.uname().nodename}"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0] == identity["id"][7:]
        db.execute("DELETE FROM meta WHERE key = 'store_id'")  # a store made before ids existed
    added = sqlite_store.SqliteStore(str(path)).identity
    assert added["id"] != identity["id"]
    assert sqlite_store.SqliteStore(str(path)).identity == added


# ---- the read cache ---------------------------------------------------------------------------


def _hold_lock(path, ready, done):
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o600)) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        ready.set()
        done.wait(60)


def test_a_lock_held_by_another_process_delays_a_read_by_at_most_the_wait(tmp_path):
    path = str(tmp_path / "pillar.json")
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(path + ".lock", ready, done))
    holder.start()
    try:
        assert ready.wait(10)
        start = time.monotonic()
        assert cache.cached(path, 30, lambda: {"held": False}, lock_wait=1) == {"held": False}
        assert 1 <= time.monotonic() - start < 3
    finally:
        done.set()
        holder.join(10)
    assert cache.cached(path, 30, lambda: {"held": True}) == {"held": True}
    assert cache.cached(path, 30, lambda: {"held": "not read"}) == {"held": True}


def _open_for_lock(path):
    with open(path) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return "locked"


def test_an_unprivileged_user_cannot_take_the_cache_lock():
    # A master cachedir others may enter (0755), so only the lock file's own mode keeps them out.
    folder = tempfile.mkdtemp(prefix="dt-cache-", dir="/tmp")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "pillar.json")
    assert as_nobody(os.listdir, folder) == []
    with open(path + ".lock", "w"):
        pass
    os.chmod(path + ".lock", 0o644)  # left readable by an older version
    assert cache.cached(path, 30, lambda: {"held": False}) == {"held": False}
    assert mode(path + ".lock") == 0o600 and mode(path) == 0o600
    assert as_nobody(_open_for_lock, path + ".lock").startswith("PermissionError")
    shutil.rmtree(folder)


def test_a_cache_folder_others_can_write_is_repaired_or_not_used(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir()
    ours.chmod(0o777)
    assert cache.cached(str(ours / "pillar.json"), 30, lambda: 1) == 1
    assert mode(ours) == 0o755 and (ours / "pillar.json").exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    theirs.chmod(0o777)
    os.chown(theirs, pwd.getpwnam("nobody").pw_uid, -1)
    reads = []
    for _ in range(2):
        assert cache.cached(str(theirs / "pillar.json"), 30, lambda: reads.append(1) or 2) == 2
    assert reads == [1, 1] and os.listdir(theirs) == []


# ---- the atomic write -------------------------------------------------------------------------


def test_atomic_write_is_private_and_leaves_nothing_behind_on_failure(tmp_path):
    path = str(tmp_path / "state.json")
    files.write_json(path, {"claims": []})
    assert mode(path) == 0o600
    with pytest.raises(TypeError):
        files.write_json(path, {"claims": object()})
    assert os.listdir(tmp_path) == ["state.json"]
    with open(path) as handle:
        assert json.load(handle) == {"claims": []}
