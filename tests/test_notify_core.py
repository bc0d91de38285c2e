"""Chat notifications and reminders without Salt daemons: real HTTP posts to a loopback webhook, the
real SQLite store, real files in a temporary cachedir."""

import datetime
import io
import logging
import os
import pathlib

import pytest
import salt.crypt

from deploytoken import commands as token
from deploytoken import model
from deploytoken import settings as token_settings
from deploytoken.chat import events, notify, remind, waiting
from deploytoken.guard import seal
from deploytoken.procedure import setup
from deploytoken.stores import sqlite as sqlite_store
from webhook_server import Webhook, dead_port

PEOPLE = {"alice": "Alice Smith", "bob": "Bob Jones", "carol": "Carol Díaz"}
NO_SLEEP = {"sleep": lambda seconds: None}


@pytest.fixture(scope="module")
def hook():
    server = Webhook()
    yield server
    server.close()


@pytest.fixture
def webhook(hook):
    hook.clear()
    return hook


@pytest.fixture
def url_file(tmp_path, webhook):
    path = tmp_path / "webhook"
    path.write_text(webhook.url + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def info_log():
    """Everything logged at INFO and above while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def config(tmp_path, **deploytoken):
    return token_settings.from_opts({"cachedir": str(tmp_path), "deploytoken": dict(people=PEOPLE, **deploytoken)})


@pytest.fixture
def store(tmp_path):
    return sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))


# ---- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("4h", 14400), ("30m", 1800), ("90s", 90), ("1d", 86400),
                                           ("1h30m", 5400), (2, 2), ("2.5s", 2.5)])
def test_durations_read_like_people_write_them(tmp_path, text, seconds):
    found = config(tmp_path, remind_after=text)
    assert found.remind_after == seconds and found.remind_every == seconds


@pytest.mark.parametrize("text", ["4 hours", "h", "-1h", "0s", "4h and a bit", True, "1e999s"])
def test_a_duration_that_is_not_one_is_refused(tmp_path, text):
    with pytest.raises(model.InputError, match="deploytoken:remind_after must be"):
        config(tmp_path, remind_after=text)


@pytest.mark.parametrize("block, words", [
    ("slack", "must be a mapping"),
    ({"kind": "irc", "url_file": "/etc/hook"}, "kind must be one of slack, google_chat, teams, mattermost"),
    ({"kind": "slack"}, "exactly one of url_file"),
    ({"kind": "slack", "url_file": "hook"}, "absolute path"),
    ({"kind": "slack", "url": "http://hooks.example.org/T0SECRET"}, "must be an https:// URL"),
    ({"kind": "slack", "url_file": "/etc/hook", "retries": 50}, "retries is at most 5"),
    ({"kind": "slack", "url_file": "/etc/hook", "timeout": 0}, "timeout must be a number of seconds"),
])
def test_a_wrong_notify_block_is_refused_in_one_sentence(tmp_path, block, words):
    with pytest.raises(model.InputError, match=words) as refused:
        config(tmp_path, notify=block)
    assert "T0SECRET" not in str(refused.value)


def test_the_webhook_url_is_not_in_the_settings_repr(tmp_path):
    found = config(tmp_path, notify={"kind": "Google Chat", "url": "https://chat.example.org/T0SECRET"})
    assert found.notify.kind == "google_chat" and "T0SECRET" not in repr(found)


# ---- posting ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", notify.KINDS)
def test_each_kind_gets_its_own_payload(webhook, url_file, kind):
    posted = notify.post(notify.Webhook(kind=kind, url_file=url_file), "Bob <!channel> @channel & co")
    assert posted == {"posted": True, "attempts": 1, "message": f"Posted to the {kind} webhook in {url_file}."}
    (body,) = [post["body"] for post in webhook.posts]
    if kind == "teams":
        assert body["attachments"][0]["content"]["body"][0]["text"] == "Bob <!channel> @channel & co"
    elif kind == "mattermost":
        assert body == {"text": "Bob <!channel> @\u200bchannel & co"}
    else:
        assert body == {"text": "Bob &lt;!channel&gt; @channel &amp; co"}


def test_a_500_then_a_429_are_retried_until_the_post_goes_through(webhook, url_file, info_log):
    webhook.answer(500, 429, headers={"Retry-After": "1"})
    pauses = []
    posted = notify.post(notify.Webhook(kind="slack", url_file=url_file, retries=2), "hello", sleep=pauses.append)
    assert posted["posted"] and posted["attempts"] == 3
    assert [post["status"] for post in webhook.posts] == [500, 429, 200]
    assert pauses == [1.0, 1.0]
    assert "answered HTTP 500; trying again" in info_log.getvalue()
    assert "SECRET" not in info_log.getvalue()


def test_retries_are_bounded_and_the_message_dropped_with_a_warning(webhook, url_file, info_log):
    webhook.answer(*[503] * 10)
    posted = notify.post(notify.Webhook(kind="slack", url_file=url_file, retries=3), "hello", **NO_SLEEP)
    assert posted["posted"] is False and posted["attempts"] == 4 and len(webhook.posts) == 4
    assert posted["message"] == (f"The chat message was not posted: the slack webhook in {url_file} answered "
                                 "HTTP 503 after 4 attempt(s); it was dropped.")
    assert posted["message"] in info_log.getvalue() and "SECRET" not in info_log.getvalue()


def test_a_refusal_other_than_429_is_not_retried(webhook, url_file):
    webhook.answer(404)
    posted = notify.post(notify.Webhook(kind="slack", url_file=url_file), "hello", **NO_SLEEP)
    assert posted["posted"] is False and posted["attempts"] == 1 and "answered HTTP 404" in posted["message"]


def test_a_webhook_that_is_down_costs_bounded_attempts_and_names_no_url(tmp_path, info_log):
    down = dead_port()
    hook = notify.Webhook(kind="mattermost", url=down, timeout=1, retries=2)
    posted = notify.post(hook, "hello", **NO_SLEEP)
    assert posted["posted"] is False and posted["attempts"] == 3
    assert "the mattermost webhook could not be reached (ConnectionError)" in posted["message"]
    assert "SECRET" not in str(posted) and "SECRET" not in info_log.getvalue()
    assert "T0SECRET" not in repr(hook)


def test_a_url_file_others_can_read_is_not_used(webhook, url_file):
    pathlib.Path(url_file).chmod(0o644)
    refused = notify.post(notify.Webhook(kind="slack", url_file=url_file), "hello")
    assert refused["posted"] is False and webhook.posts == []
    assert refused["message"] == (f"The chat message was not posted: the webhook URL file {url_file} can be read by "
                                  "other users (mode 0644): anyone who reads it can post as us; chmod 600 it; it "
                                  "was dropped.")


def test_a_url_file_that_cannot_be_read_or_holds_no_url_is_one_sentence(tmp_path):
    missing = notify.post(notify.Webhook(kind="slack", url_file=str(tmp_path / "none")), "hello")
    assert missing["message"] == (f"The chat message was not posted: the webhook URL file {tmp_path}/none cannot "
                                  "be read (No such file or directory); it was dropped.")
    clear = tmp_path / "clear"
    clear.write_text("http://hooks.example.org/T0SECRET\n")
    clear.chmod(0o600)
    refused = notify.post(notify.Webhook(kind="slack", url_file=str(clear)), "hello")
    assert refused["message"] == (f"The chat message was not posted: the webhook URL in {clear} must be an https:// "
                                  "URL (http:// only to 127.0.0.1); it was dropped.")


# ---- messages ---------------------------------------------------------------------------------

SINCE = "2026-11-27 05:00:00+00:00"
NOW = datetime.datetime(2026, 11, 27, 10, 12, tzinfo=datetime.timezone.utc)
ROW = {"claim": "3f9c0a1b2c3d4e5f", "holder": "Alice Smith", "login": "alice", "caller": "alice",
       "acquired": "2026-11-27T05:00:00Z", "released": "2026-11-27T05:38:00Z", "duration": 2280,
       "reason": "upgrade postgres", "note": "rebooted kingfisher-main", "forced_by": None, "force_reason": None}


@pytest.mark.parametrize("tag, data, waiters, text", [
    ("deploytoken/acquired", {"holder": "Alice Smith", "login": "alice", "caller": "alice", "claim": "3f9c",
                              "since": "2026-11-27T10:00:00Z", "reason": "upgrade postgres"}, (),
     'The deploy token is held by Alice Smith (alice) since 2026-11-27 10:00 UTC (12 min): "upgrade postgres" '
     "(claim 3f9c)."),
    ("deploytoken/released", ROW, ("Bob Jones", "Carol Díaz"),
     'Released the deploy token held by Alice Smith for 38 min ("upgrade postgres"); note: "rebooted '
     'kingfisher-main". The deploy token is free. Waiting for it: Bob Jones, Carol Díaz.'),
    ("deploytoken/forced", dict(ROW, note="", forced_by="Bob Jones (bob)", force_reason="Alice is away"), (),
     'Bob Jones (bob) forced the release of the deploy token held by Alice Smith for 38 min, because: "Alice is '
     'away" ("upgrade postgres"). The deploy token is free.'),
    ("deploytoken/override", {"id": "override-1a2b", "by": "Bob Jones", "targets": "collect*",
                              "until": "2026-11-27T11:12:00Z", "reason": "database down",
                              "store": {"id": "postgres:1", "name": "PostgreSQL deploytoken@db:5432/deploy"}}, (),
     'OVERRIDE override-1a2b by Bob Jones: until 2026-11-27 11:12 UTC the deploy token guard lets every deployment '
     'on collect* through, whoever holds the token, on servers that obey PostgreSQL deploytoken@db:5432/deploy, '
     'because: "database down".'),
    ("deploytoken/override/cancelled", {"id": "override-1a2b", "by": "Bob Jones", "targets": "collect*",
                                        "cancelled": {"by": "Alice Smith", "at": "2026-11-27T10:30:00Z",
                                                      "reason": "database back"}}, (),
     'Alice Smith cancelled OVERRIDE override-1a2b on collect* ("database back"): the deploy token guard checks '
     'the deploy token again.'),
    ("deploytoken/setup_stopped", {"person": "Carol Díaz", "message": "Setup stopped: Kingfisher is busy. "
                                   "collect-1: bob's tmux session runs scrapy."}, (),
     "Carol Díaz: Setup stopped: Kingfisher is busy. collect-1: bob's tmux session runs scrapy."),
])
def test_one_sentence_per_event(tag, data, waiters, text):
    assert notify.message(tag, data, waiters, now=NOW) == text


def test_setup_stopped_by_a_busy_kingfisher_fires_one_event_naming_whose_work(store, git_world):
    clone = git_world.clone(git_world.origin())
    heard = []
    busy = {"collect-1": {"ret": {"busy": True, "reasons": ["bob's tmux session crawl runs scrapy."]}}}
    stopped = setup.run(store, "carol", PEOPLE, [clone.working_tree_dir], "collect*", "glob", "new spider", None, None,
                        check_busy=lambda *asked: busy, progress=lambda message: None,
                        notify=lambda tag, data: heard.append((tag, data)))
    assert stopped["retcode"] == 1 and store.read() is None
    ((tag, data),) = heard
    assert tag == "deploytoken/setup_stopped" and data["person"] == "Carol Díaz"
    assert data["busy"] == {"collect-1": ["bob's tmux session crawl runs scrapy."]}
    assert notify.message(tag, data) == "Carol Díaz: " + stopped["message"]
    assert stopped["message"].startswith("Setup stopped: Kingfisher is busy.\ncollect-1: bob's tmux session crawl")


def test_an_event_we_do_not_know_has_no_message():
    assert notify.message("deploytoken/something", {}) is None


# ---- the reactor's side: sealed events only, waiting people named --------------------------------


@pytest.fixture(scope="module")
def master_keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    salt.crypt.write_keys(str(folder), "dt-master", 2048)  # Salt 3008 names the key after the master id
    return str(folder / "dt-master.pem"), str(folder / "dt-master.pub")


RELEASED = seal.event_purpose("deploytoken/released")


def test_a_sealed_event_is_posted_and_names_the_people_waiting(tmp_path, webhook, url_file, master_keys):
    found = config(tmp_path, notify={"kind": "slack", "url_file": url_file})
    waiting.add(str(tmp_path), "bob", "Bob Jones")
    waiting.add(str(tmp_path), "carol", "Carol Díaz", seconds=-1)  # gave up waiting already
    waiting.add(str(tmp_path), "alice", "Alice Smith")  # asked, then took the token herself
    waiting.add(str(tmp_path), "dana", "Dana Lee", seconds=600)
    data = dict(seal.seal(ROW, master_keys[0], RELEASED), _stamp="2026-11-27T05:38:00.123456")
    posted = events.announce(found, "deploytoken/released", data, master_keys[0])
    assert posted["posted"], posted
    assert webhook.texts() == [posted["text"]]
    assert posted["text"].endswith("Waiting for it: Bob Jones, Dana Lee.")
    assert waiting.take(str(tmp_path)) == []


def test_an_event_without_the_masters_seal_is_not_posted(tmp_path, webhook, url_file, master_keys):
    """Also without a master key (salt-ssh): a digest alone anyone can compute."""
    found = config(tmp_path, notify={"kind": "slack", "url_file": url_file})
    forged = dict(seal.seal(ROW, master_keys[0], RELEASED), note="everyone may deploy now")
    as_pillar = seal.seal(ROW, master_keys[0])  # a minion's own signed pillar, re-sent as an event
    other_tag = seal.seal(ROW, master_keys[0], seal.event_purpose("deploytoken/acquired"))
    for data in (ROW, forged, dict(seal.seal(ROW), id="collect-1"), "junk", as_pillar, other_tag):
        refused = events.announce(found, "deploytoken/released", data, master_keys[0])
        assert refused == {"posted": False, "message": "The event deploytoken/released was not sealed by this "
                                                       "master's runner; it was not posted."}
    keyless = events.announce(found, "deploytoken/released", seal.seal(ROW), None)
    assert keyless == {"posted": False, "message": "There is no master key to check events with: nothing is posted."}
    assert webhook.posts == []


def test_an_acquired_event_without_a_notify_block_is_not_posted(tmp_path, master_keys):
    taken = seal.seal({"holder": "Bob Jones", "login": "bob", "claim": "1", "since": SINCE}, master_keys[0],
                      seal.event_purpose("deploytoken/acquired"))
    said = events.announce(config(tmp_path), "deploytoken/acquired", taken, master_keys[0])
    assert said["posted"] is False and said["message"] == "No deploytoken:notify block: the message was not posted."
    assert said["text"].startswith("The deploy token is held by Bob Jones (bob) since ")


def test_notify_me_without_a_chat_says_so_and_notes_nobody(tmp_path, store):
    token.acquire(store, "alice", PEOPLE, reason="upgrade")
    asked = waiting.ask(store, config(tmp_path), "bob")
    assert asked == {"waiting": False, "retcode": 1, "message": (
        "No chat is configured (there is no deploytoken:notify block in the master config), so no message can name "
        "you when the deploy token is released; nothing was noted. See who holds it with salt-run "
        "deploytoken.status, or wait in line with salt-run deploytoken.acquire wait=True.")}
    assert waiting.take(str(tmp_path)) == []


def test_notify_me_while_held_and_while_free(tmp_path, store):
    found = config(tmp_path, notify={"kind": "slack", "url_file": str(tmp_path / "webhook")})
    free = waiting.ask(store, found, "bob")
    assert free["waiting"] is False and free["message"].startswith("Nobody holds the deploy token")
    token.acquire(store, "alice", PEOPLE, reason="upgrade")
    asked = waiting.ask(store, found, "bob")
    assert asked["waiting"] and asked["message"].startswith("You (Bob Jones) will be named in the chat message "
                                                            "when the deploy token held by Alice Smith (alice)")
    assert waiting.take(str(tmp_path)) == ["Bob Jones"]


# ---- reminders --------------------------------------------------------------------------------


def held_since(store, seconds, reason="upgrade postgres"):
    since = model.utcnow() - datetime.timedelta(seconds=seconds)
    return store.acquire(model.Holding(holder="Alice Smith", login="alice", caller="alice", claim="c0ffee",
                                       since=model.isoformat(since), reason=reason))


def test_remind_run_ten_times_posts_once_per_period(tmp_path, store, webhook, url_file):
    found = config(tmp_path, remind_after="4h", remind_every="1h", notify={"kind": "slack", "url_file": url_file})
    holding = held_since(store, 5 * 3600 + 12 * 60)
    results = [remind.remind(found, store) for _ in range(10)]
    assert [result["reminded"] for result in results] == [True] + [False] * 9
    assert webhook.texts() == [
        "Alice Smith has held the deploy token for 5 h 12 min (upgrade postgres). Release it with salt-run "
        "deploytoken.release note='...', or force with salt-run deploytoken.release force=True claim=c0ffee "
        "reason='...'"
    ]
    assert results[-1]["message"].startswith("No reminder is due for Alice Smith's claim; the next one is due at ")
    assert results[-1]["next_due"] == model.isoformat(model.parse_time(holding.since) + datetime.timedelta(hours=6))
    later = model.utcnow() + datetime.timedelta(minutes=50)
    assert remind.remind(found, store, now=later)["reminded"] is True
    assert remind.remind(found, store, now=later)["reminded"] is False
    assert len(webhook.texts()) == 2


def test_no_reminder_before_remind_after_or_when_free_or_off(tmp_path, store, webhook, url_file):
    found = config(tmp_path, remind_after="4h", notify={"kind": "slack", "url_file": url_file})
    assert remind.remind(found, store)["message"] == "Nobody holds the deploy token: no reminder is due."
    held_since(store, 3600)
    early = remind.remind(found, store)
    assert early["reminded"] is False and early["next_due"]
    off = remind.remind(config(tmp_path), store)
    assert off["message"] == "Reminders are off: set deploytoken:remind_after (e.g. 4h)."
    assert webhook.posts == []


@pytest.mark.functional  # chown needs root
def test_a_reminder_note_in_a_folder_others_own_is_one_sentence(tmp_path, store):
    (tmp_path / "deploytoken").mkdir()
    os.chown(tmp_path / "deploytoken", 65534, 65534)
    held_since(store, 120)
    with pytest.raises(model.StoreError, match=f"The reminder note {tmp_path}/deploytoken/reminder.json cannot be "
                                               "used: The folder .* is not a folder owned by this user or root."):
        remind.remind(config(tmp_path, remind_after="1m"), store)


def test_a_reminder_that_could_not_be_posted_is_tried_again(tmp_path, store, webhook, url_file):
    found = config(tmp_path, remind_after="1m", notify={"kind": "slack", "url_file": url_file, "retries": 1})
    held_since(store, 120)
    webhook.answer(500, 500)
    failed = remind.remind(found, store)
    assert failed["reminded"] is False and failed["message"].endswith(
        "answered HTTP 500 after 2 attempt(s); it was dropped. The deploy token is unchanged; the next run tries "
        "again.")
    assert "SECRET" not in str(failed)
    assert store.read().claim == "c0ffee"
    assert remind.remind(found, store)["reminded"] is True
    assert len(webhook.texts()) == 1
