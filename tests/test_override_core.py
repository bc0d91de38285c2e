"""Overrides kept on the master: which minions they cover, their history rows delivered exactly once
(kept while the store cannot take them), cancel, and a damaged file named, against real SQLite stores."""

import datetime

import pytest

import deploytoken_model as model
import deploytoken_override as override
from conftest import PEOPLE
from deploytoken_sqlite import SqliteStore

NOW = datetime.datetime(2026, 11, 26, 14, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture
def path(tmp_path):
    return override.path_of(str(tmp_path / "cache"))


@pytest.fixture
def store(tmp_path):
    return SqliteStore(str(tmp_path / "token.sqlite"))


def test_an_override_covers_its_targets_until_it_ends(path):
    record = override.create(path, "Bob Jones", "bob", "bob", "db down", "kingfisher-*,db1", 30, now=NOW)
    assert record["until"] == "2026-11-26T14:30:00Z" and record["id"].startswith("override-")
    later = NOW + datetime.timedelta(minutes=10)
    assert override.for_minion(path, "kingfisher-main", later)["id"] == record["id"]
    assert override.for_minion(path, "db1", later)["reason"] == "db down"
    assert override.for_minion(path, "web1", later) is None
    assert override.for_minion(path, "db1", NOW + datetime.timedelta(minutes=31)) is None


def test_its_history_row_waits_for_the_store_and_is_written_once(path, store, tmp_path):
    override.create(path, "Bob Jones", "bob", "bob", "db down", "*", 60)
    broken = tmp_path / "broken.sqlite"
    broken.write_text("not a store\n" * 100)
    broken.chmod(0o600)
    assert override.deliver(path, SqliteStore(str(broken)).append_history) == 1
    assert override.deliver(path, store.append_history) == 0
    assert override.deliver(path, store.append_history) == 0
    (row,) = store.history(10)
    assert row.holder == "Bob Jones" and row.reason == "db down" and row.duration == 3600


def test_cancel_ends_every_active_override_with_a_row(path, store):
    made = override.create(path, "Bob Jones", "bob", "bob", "db down", "*", 60)
    (ended,) = override.cancel(path, "Alice Smith", "alice")
    assert ended["id"] == made["id"] and override.active(path) == []
    override.deliver(path, store.append_history)
    assert sorted(row.claim for row in store.history(10)) == [made["id"], f"{made['id']}.cancel"]
    assert override.cancel(path, "Alice Smith", "alice") == []


def test_the_runner_core_refuses_bad_input_and_reports_a_store_that_is_down(path, store, tmp_path):
    cachedir = str(tmp_path / "cache")
    with pytest.raises(model.InputError, match="An override needs a reason"):
        override.run(store, cachedir, "bob", PEOPLE)
    with pytest.raises(model.InputError, match="minutes must be a whole number"):
        override.run(store, cachedir, "bob", PEOPLE, reason="x", minutes="soon")
    events = []
    ret = override.run(store, cachedir, "bob", PEOPLE, reason="db down", targets=["a", "b*"],
                       notify=lambda tag, data: events.append(tag))
    assert ret["targets"] == "a,b*" and ret["pending"] == 0 and events == ["deploytoken/override"]
    assert override.status(cachedir)["overrides"][0]["by"] == "Bob Jones"


def test_a_damaged_overrides_file_is_named_and_left_alone(path):
    override.create(path, "Bob Jones", "bob", "bob", "db down", "*", 60)
    with open(path, "w") as handle:
        handle.write("[{half")
    with pytest.raises(model.StoreError, match=f"The overrides file {path} is damaged"):
        override.for_minion(path, "m1")
    assert open(path).read() == "[{half"
