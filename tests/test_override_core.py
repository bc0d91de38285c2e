"""Overrides kept in the token store: two operators (two cachedirs) on one SQLite store see, use and cancel
the same overrides; rows a store that is down cannot take wait in a spool and are written once; the file of
earlier versions is delivered and obeyed no more; bad input is refused."""

import json

import pytest

from conftest import PEOPLE
from deploytoken import model
from deploytoken.guard import overrides as override
from deploytoken.guard import pillar as token_pillar
from deploytoken.stores.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path):
    return SqliteStore(str(tmp_path / "token.sqlite"))


@pytest.fixture
def laptops(tmp_path):
    """The cachedirs of two operators (or masters)."""
    return str(tmp_path / "ada"), str(tmp_path / "ben")


def make(store, cachedir, caller="bob", targets="kingfisher*", reason="db down"):
    return override.run(store, cachedir, caller, PEOPLE, reason=reason, targets=targets)


def test_an_override_made_by_one_operator_is_seen_and_cancelled_by_another(store, laptops, tmp_path):
    ada, ben = laptops
    events = []
    made = override.run(store, ada, "bob", PEOPLE, reason="db down", targets=["kingfisher*", "db1"],
                        notify=lambda tag, data: events.append(tag))
    assert made["message"].startswith(f"OVERRIDE {made['id']}: until ")
    assert (f"the deploy token guard lets every deployment on kingfisher*,db1 through, whoever holds the token, on "
            f"servers that obey {store.identity['name']}, because: 'db down'.") in made["message"]
    assert made["pending"] == 0 and made["store"] == store.identity and events == ["deploytoken/override"]

    other = SqliteStore(store.path)  # the other operator's own store object on the shared file
    (listed,) = override.status(other, ben)["overrides"]
    assert listed == {key: made[key] for key in override.PUBLIC} and listed["by"] == "Bob Jones"

    with pytest.raises(model.InputError, match="Cancelling an override needs a reason too"):
        override.run(other, ben, "alice", PEOPLE, cancel_all=True)
    ended = override.run(other, ben, "alice", PEOPLE, cancel_all=True, reason="db back",
                         notify=lambda tag, data: events.append(tag))
    assert ended["message"].startswith(f"Cancelled 1 override(s) ({made['id']}): the guard checks the deploy token")
    assert ended["overrides"][0]["cancelled"]["by"] == "Alice Smith"
    assert events[-1] == "deploytoken/override/cancelled"
    assert override.status(store, ada)["overrides"] == []
    cancel_row, row = store.history(10)
    assert row.claim == made["id"] and row.note == "Override of the deploy token guard on kingfisher*,db1"
    assert (cancel_row.claim, cancel_row.forced_by, cancel_row.force_reason) == (
        f"{made['id']}.cancel", "Alice Smith", "db back")
    again = override.run(store, ada, "bob", PEOPLE, cancel_all=True, reason="db back")
    assert again == {"changed": False, "overrides": [], "message": "No override is running: nothing to cancel."}
    assert len(store.history(10)) == 2


def test_cancel_with_an_id_ends_only_that_override(store, laptops):
    ada, ben = laptops
    first, second = make(store, ada), make(store, ada, targets="db1")
    with pytest.raises(model.InputError, match="No running override has the id 'override-nope'"):
        override.run(store, ben, "alice", PEOPLE, cancel_all=True, reason="x", override_id="override-nope")
    override.run(store, ben, "alice", PEOPLE, cancel_all=True, reason="db1 done", override_id=second["id"])
    assert [entry["id"] for entry in override.status(store, ben)["overrides"]] == [first["id"]]


def test_the_pillar_of_any_machine_on_the_store_carries_the_override_for_its_minions(store, laptops):
    ada, ben = laptops
    made = make(store, ada)
    opts = {"cachedir": ben, "deploytoken": {"people": PEOPLE, "sqlite": {"path": store.path}}}
    data = token_pillar.pillar(opts, "kingfisher-main")
    assert data["override"] == {key: made[key] for key in override.PUBLIC}
    assert "overrides" not in data
    assert token_pillar.pillar(dict(opts, cachedir=ada), "web1")["override"] is None


def test_a_store_that_is_down_keeps_the_row_and_writes_it_once_later(store, laptops, tmp_path):
    ada, _ = laptops
    override.status(store, ada)  # this machine has reached the store once: it knows its identity
    saved = tmp_path / "saved.sqlite"
    (tmp_path / "token.sqlite").rename(saved)
    (tmp_path / "token.sqlite").write_text("not a store\n" * 100)
    made = make(store, ada)
    assert made["pending"] == 1 and "kept on this machine" in made["message"]
    assert made["store"]["id"] == SqliteStore(str(saved)).identity["id"]
    # Meanwhile the pillar made here carries the override, naming the store it is for.
    opts = {"cachedir": ada, "deploytoken": {"people": PEOPLE, "sqlite": {"path": store.path}}}
    data = token_pillar.pillar(opts, "kingfisher-main")
    assert data["error"] and data["override"]["id"] == made["id"] and data["override"]["store"] == made["store"]
    assert override.status(store, ada) == {"overrides": [{key: made[key] for key in override.PUBLIC}],
                                           "overrides_pending": 1}

    (tmp_path / "token.sqlite").unlink()
    saved.rename(tmp_path / "token.sqlite")
    assert override.deliver(ada, store) == 0
    assert override.deliver(ada, store) == 0
    (row,) = store.history(10)
    assert row.claim == made["id"] and row.holder == "Bob Jones" and row.kind == "override"
    # Its end is known when the history is read: until then the row holds its start and planned end only.
    assert (row.acquired, row.until, row.released) == (made["since"], made["until"], None)


def test_an_override_cannot_be_made_for_a_store_never_reached(store, tmp_path):
    (tmp_path / "token.sqlite").write_text("not a store\n" * 100)
    with pytest.raises(model.StoreError, match="This machine never reached that store before, so an override "
                                               "cannot name the store it is for"):
        make(store, str(tmp_path / "cache"))


def test_the_overrides_file_of_earlier_versions_is_delivered_and_obeyed_no_more(store, tmp_path):
    cachedir = str(tmp_path / "cache")
    legacy = tmp_path / "cache" / "deploytoken" / "overrides.json"
    legacy.parent.mkdir(parents=True)
    row = model.HistoryRow(claim="override-00000000000000aa", holder="Bob Jones", login="bob", caller="bob",
                           acquired="2026-01-01T00:00:00Z", released="2999-01-01T00:00:00Z", duration=None,
                           reason="old", note="Override of the deploy token guard on *")
    legacy.write_text(json.dumps([{"id": row.claim, "targets": "*", "until": row.released, "cancelled": None,
                                   "pending": [row.to_dict()]}]))
    opts = {"cachedir": cachedir, "deploytoken": {"people": PEOPLE, "sqlite": {"path": store.path}}}
    assert token_pillar.pillar(opts, "m1")["override"] is None
    assert override.deliver(cachedir, store) == 0
    assert not legacy.exists() and store.history(10) == [row]


def test_bad_input_is_refused_and_a_damaged_spool_is_named(store, tmp_path):
    cachedir = str(tmp_path / "cache")
    with pytest.raises(model.InputError, match="An override needs a reason"):
        override.run(store, cachedir, "bob", PEOPLE)
    with pytest.raises(model.InputError, match="minutes must be a whole number"):
        override.run(store, cachedir, "bob", PEOPLE, reason="x", minutes="soon")
    with pytest.raises(model.InputError, match="id= names the override to cancel: add cancel=True."):
        override.run(store, cachedir, "bob", PEOPLE, reason="x", override_id="override-1")
    assert store.history(10) == []
    path = override.spool_path(cachedir)
    override.status(store, cachedir)  # notes the store's identity: the spool file exists
    with open(path, "w") as handle:
        handle.write("{half")
    with pytest.raises(model.StoreError, match=f"The file {path} is damaged"):
        override.status(store, cachedir)
    assert open(path).read() == "{half"
