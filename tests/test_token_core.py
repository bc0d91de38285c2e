"""The token core without daemons: input checks, identity, the SQLite store, acquire/release decisions."""

import re
import sqlite3

import pytest

from conftest import PEOPLE
from deploytoken import commands as token
from deploytoken import model
from deploytoken import settings as token_settings
from deploytoken import stores as token_stores
from deploytoken.stores import sqlite as sqlite_store


@pytest.fixture
def store(tmp_path):
    return sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))


def snapshot(path):
    with open(path, "rb") as handle:
        return handle.read()


# ---- identity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user, login", [("root", "root"), ("sudo_alice", "alice"), ("bob", "bob"), ("sudo_", "sudo_"), (None, None)]
)
def test_login_of_salt_user(user, login):
    assert model.login_of(user) == login


def test_people_map_logins_to_display_names():
    assert token.who("alice", None, PEOPLE) == ("alice", "Alice Smith")
    assert token.who("dave", None, PEOPLE) == ("dave", "dave")
    assert token.who("alice", "Bob Jones", PEOPLE) == ("bob", "Bob Jones")
    assert token.who("alice", "Someone Else", PEOPLE) == (None, "Someone Else")


# ---- input checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, sentence",
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("x" * 81, "81 characters long; at most 80"),
        ("Alice\nSmith", "control character or line break"),
        ("Alice\x07", "control character or line break"),
        ("Alice\u2028Smith", "control character or line break"),
        ("Nobody", "cannot be 'Nobody'"),
        ("  nObOdY ", "cannot be 'nObOdY'"),
        ("N\u043ebody", "cannot be 'N\u043ebody': it reads as 'Nobody'"),  # Cyrillic o
        ("Nobod\u0301y", "cannot be 'Nobod\u0301y': it reads as 'Nobody'"),  # combining acute accent
        ("Nobody.", "cannot be 'Nobody.': it reads as 'Nobody'"),
        ("N0b0dy", "cannot be 'N0b0dy': it reads as 'Nobody'"),
        ("No body", "cannot be 'No body': it reads as 'Nobody'"),
        ("\uff2e\uff4f\uff42\uff4f\uff44\uff59", "it reads as 'Nobody'"),  # fullwidth letters
        ("Alice \u0410lice", "mixes scripts with letters that look alike"),  # Cyrillic A among Latin letters
        (42, "must be text"),
    ],
)
def test_bad_names_refused_and_store_unchanged(store, name, sentence):
    sentence = re.escape(sentence)
    token.acquire(store, "bob", PEOPLE, reason="before")
    before = snapshot(store.path)
    with pytest.raises(model.InputError, match=sentence):
        token.acquire(store, "alice", PEOPLE, name=name)
    with pytest.raises(model.InputError, match=sentence):
        token.release(store, "alice", PEOPLE, name=name)
    assert snapshot(store.path) == before


@pytest.mark.parametrize(
    "kwargs, sentence",
    [
        ({"timeout": "soon"}, "timeout must be a number of seconds, at least 0 and at most 86400; got 'soon'"),
        ({"timeout": -1}, "timeout must be a number of seconds, at least 0 and at most 86400; got -1"),
        ({"timeout": True}, "timeout must be a number"),
        ({"timeout": "nan"}, "timeout must be a number"),
        ({"timeout": "1e308"}, "timeout must be a number of seconds, at least 0 and at most 86400; got '1e308'"),
        ({"timeout": 86401}, "at most 86400; got 86401"),
        ({"interval": 0}, "interval must be a number of seconds, at least 0.1 and at most 3600; got 0"),
        ({"interval": 3601}, "interval must be a number of seconds, at least 0.1 and at most 3600; got 3601"),
        ({"wait": "maybe"}, "wait must be True or False, got 'maybe'"),
        ({"reason": "two\nlines"}, "reason must be a single line"),
        ({"reason": "r" * 501}, "reason is 501 characters long"),
    ],
)
def test_bad_acquire_arguments_refused_and_store_unchanged(store, kwargs, sentence):
    token.acquire(store, "bob", PEOPLE, reason="before")
    before = snapshot(store.path)
    with pytest.raises(model.InputError, match=sentence):
        token.acquire(store, "alice", PEOPLE, **kwargs)
    assert snapshot(store.path) == before


@pytest.mark.parametrize("limit", ["ten", -1, 0, 2.5, None, "1e300", 10**29, 10**400, 10001])
def test_bad_history_limit_refused(store, limit):
    with pytest.raises(model.InputError, match="^The limit must be a whole number, at least 1 and at most 10000; got "):
        token.history(store, limit)


def test_a_huge_limit_is_not_echoed_in_full(store):
    with pytest.raises(model.InputError) as caught:
        token.history(store, 10**400)
    assert str(caught.value).endswith("got 1000000000000000000000000000000000000000\u2026.")


@pytest.mark.parametrize("claim", ["nonsense", "3f9c0a1b", "3F9C0A1B2C3D4E5F", "hand-xyz", "3f9c0a1b2c3d4e5f0"])
def test_a_claim_of_the_wrong_shape_is_bad_input(store, claim):
    token.acquire(store, "bob", PEOPLE)
    before = snapshot(store.path)
    with pytest.raises(model.InputError, match=f"^The claim '{claim}' is not a claim id: claims are 16 hex digits"):
        token.release(store, "alice", PEOPLE, force=True, reason="r", claim=claim)
    assert snapshot(store.path) == before


@pytest.mark.parametrize("held", [True, False])
def test_a_claim_that_never_existed_is_named_as_such(store, held):
    ended = token.acquire(store, "alice", PEOPLE)["claim"]
    token.release(store, "alice", PEOPLE)
    if held:
        token.acquire(store, "bob", PEOPLE)
    for claim in ("0123456789abcdef", "hand-0123456789abcdef"):
        ret = token.release(store, "alice", PEOPLE, force=True, reason="r", claim=claim)
        assert ret["retcode"] == 1
        assert ret["message"] == (f"There is no claim {claim}: it is not the current claim and not in the deploy "
                                  "history; see salt-run deploytoken.status. Nothing was changed.")
    stale = token.release(store, "alice", PEOPLE, force=True, reason="r", claim=ended)
    assert stale["retcode"] == 1 and stale["message"].startswith(f"Claim {ended} has already ended: ")


@pytest.mark.parametrize("force", ["maybe", 2])
def test_force_must_be_true_or_false(store, force):
    token.acquire(store, "bob", PEOPLE)
    with pytest.raises(model.InputError, match="^force must be True or False, got "):
        token.release(store, "alice", PEOPLE, force=force, reason="r")
    assert store.read().login == "bob"


def test_force_without_reason_refused_and_store_unchanged(store):
    token.acquire(store, "bob", PEOPLE)
    before = snapshot(store.path)
    with pytest.raises(model.InputError, match="forced release needs a reason"):
        token.release(store, "alice", PEOPLE, force=True)
    assert snapshot(store.path) == before


def test_unknown_backend_refused(tmp_path):
    with pytest.raises(model.InputError, match="Unknown deploytoken:backend 'etcd': use one of sqlite, google"):
        token_stores.open_store(
            token_settings.from_opts({"deploytoken": {"backend": "etcd"}, "cachedir": str(tmp_path)}))


def test_relative_store_path_refused(tmp_path):
    with pytest.raises(model.InputError, match="must be an absolute file path"):
        config = {"deploytoken": {"sqlite": {"path": "token.sqlite"}}, "cachedir": str(tmp_path)}
        token_stores.open_store(token_settings.from_opts(config))


def test_default_store_lives_in_the_cachedir(tmp_path):
    store = token_stores.open_store(token_settings.from_opts({"cachedir": str(tmp_path)}))
    assert store.path == str(tmp_path / "deploytoken.sqlite")


# ---- the store file ---------------------------------------------------------------------------


def test_corrupt_store_file_is_named_and_left_untouched(tmp_path):
    path = tmp_path / "token.sqlite"
    path.write_bytes(b"this is not a database at all, but somebody's notes" * 100)
    path.chmod(0o600)
    before = snapshot(path)
    store = sqlite_store.SqliteStore(str(path))
    for action in (store.read, lambda: token.acquire(store, "alice", PEOPLE), lambda: store.history(5)):
        with pytest.raises(model.StoreError, match=f"The token store {path} is damaged or not a SQLite file"):
            action()
    assert snapshot(path) == before


def test_other_sqlite_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    path.chmod(0o600)
    before = snapshot(path)
    with pytest.raises(model.StoreError, match="is a SQLite database but not a deploy token store"):
        token.acquire(sqlite_store.SqliteStore(str(path)), "alice", PEOPLE)
    assert snapshot(path) == before


def test_store_in_missing_folder_is_refused(tmp_path):
    store = sqlite_store.SqliteStore(str(tmp_path / "nowhere" / "token.sqlite"))
    with pytest.raises(model.StoreError, match="folder .* does not exist"):
        store.read()
    assert not (tmp_path / "nowhere").exists()


def test_store_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(model.StoreError, match="is a folder, not a file"):
        sqlite_store.SqliteStore(str(tmp_path)).read()


# ---- decisions --------------------------------------------------------------------------------


def test_acquire_release_cycle_writes_one_history_row(store):
    taken = token.acquire(store, "alice", PEOPLE, reason="upgrade postgres")
    assert taken["acquired"] and taken["changed"] and taken["holder"] == "Alice Smith"
    assert token.status(store)["claim"] == taken["claim"]
    given = token.release(store, "alice", PEOPLE, note="rebooted")
    assert given["released"] and given["claim"] == taken["claim"]
    (row,) = token.history(store)
    assert row["claim"] == taken["claim"]
    assert row["holder"] == "Alice Smith" and row["login"] == "alice"
    assert row["reason"] == "upgrade postgres" and row["note"] == "rebooted"
    assert row["acquired"] == taken["since"] and row["duration"] >= 0
    assert row["forced_by"] is None
    assert token.status(store)["held"] is False


def test_acquire_is_idempotent_for_the_holder(store):
    first = token.acquire(store, "alice", PEOPLE, reason="one")
    again = token.acquire(store, "alice", PEOPLE, reason="two")
    assert again["acquired"] and not again["changed"] and again["claim"] == first["claim"]
    assert "already hold" in again["message"]
    assert "retcode" not in again


def test_acquire_refused_while_held_by_other(store):
    token.acquire(store, "alice", PEOPLE, reason="upgrade postgres")
    refused = token.acquire(store, "bob", PEOPLE)
    assert refused["retcode"] == 1 and not refused["acquired"]
    assert refused["message"].startswith("Deploy token is held by Alice Smith (alice) since ")
    assert '"upgrade postgres"' in refused["message"]
    assert "salt-run deploytoken.acquire wait=True" in refused["message"]
    assert "ask Alice Smith to run salt-run deploytoken.release" in refused["message"]


def test_wait_gives_up_after_timeout_with_progress(store):
    token.acquire(store, "alice", PEOPLE)
    messages, now = [], [0.0]

    def sleep(seconds):
        now[0] += seconds

    refused = token.acquire(
        store, "bob", PEOPLE, wait=True, timeout=30, interval=10, progress=messages.append,
        sleep=sleep, clock=lambda: now[0],
    )
    assert refused["retcode"] == 1 and refused["message"].startswith("Gave up after waiting 30 s")
    assert len(messages) == 3 and "held by Alice Smith" in messages[0] and "waited 0 s of 30 s" in messages[0]


def test_wait_takes_the_token_once_released(store):
    token.acquire(store, "alice", PEOPLE)

    def sleep(seconds):
        token.release(store, "alice", PEOPLE)

    taken = token.acquire(store, "bob", PEOPLE, wait=True, timeout=60, interval=1, sleep=sleep)
    assert taken["acquired"] and taken["holder"] == "Bob Jones"


def test_release_refused_for_non_holder_and_when_free(store):
    assert token.release(store, "bob", PEOPLE)["message"] == (
        "Nobody holds the deploy token: there is nothing to release."
    )
    token.acquire(store, "alice", PEOPLE)
    refused = token.release(store, "bob", PEOPLE)
    assert refused["retcode"] == 1
    assert refused["message"].startswith("You (Bob Jones) do not hold the deploy token: it is held by Alice Smith")
    assert "force=True claim=" in refused["message"]
    assert token.status(store)["holder"] == "Alice Smith"


def test_force_release_records_who_and_why(store):
    taken = token.acquire(store, "alice", PEOPLE, reason="r1")
    events = []
    forced = token.release(
        store, "bob", PEOPLE, force=True, reason="Alice is away", notify=lambda *event: events.append(event)
    )
    assert forced["released"] and forced["forced_by"] == "Bob Jones (bob)"
    (row,) = token.history(store)
    assert row["claim"] == taken["claim"] and row["force_reason"] == "Alice is away"
    assert events[0][0] == "deploytoken/forced" and events[0][1]["claim"] == taken["claim"]


def test_stale_claim_cannot_end_a_newer_claim(store):
    old = token.acquire(store, "alice", PEOPLE)
    token.release(store, "alice", PEOPLE)
    new = token.acquire(store, "bob", PEOPLE)
    refused = token.release(store, "carol", PEOPLE, force=True, reason="late", claim=old["claim"])
    assert refused["retcode"] == 1 and f"Claim {old['claim']} has already ended" in refused["message"]
    assert token.status(store)["claim"] == new["claim"]
    with pytest.raises(model.ClaimConflict):
        store.release(old["claim"], model.HistoryRow(old["claim"], "x", None, None, None, "now", 0))
    assert token.status(store)["claim"] == new["claim"]


def test_name_given_is_recorded_with_the_real_caller(store):
    taken = token.acquire(store, "alice", PEOPLE, name="Deploy Bot")
    assert taken["holder"] == "Deploy Bot" and taken["caller"] == "alice" and taken["login"] is None
    assert token.acquire(store, "alice", PEOPLE)["changed"] is False  # the caller still counts as holder
    assert token.acquire(store, "bob", PEOPLE)["retcode"] == 1
    assert token.release(store, "bob", PEOPLE, name="Deploy Bot")["released"]
