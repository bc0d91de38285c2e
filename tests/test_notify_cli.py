"""Chat notifications end to end: a real salt-master of these tests with the reactor and the reminder
schedule of the example master configuration, the real salt-run CLI, and the loopback webhook receiving
the real posts. Without a master (salt-ssh teams): ``salt-run -c``, a cron-like loop of
``deploytoken.remind`` and the docs' cron line as pasted."""

import concurrent.futures
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest
import yaml

from conftest import PEOPLE, example_master_conf, extension_root
from deploytoken import model
from deploytoken.chat import waiting as waiters
from test_docs_examples import BLOCKS
from webhook_server import Webhook

pytestmark = pytest.mark.daemons

REMIND_AFTER = 2
REMIND_EVERY = 5
REMINDER = "has held the deploy token for"
SALT_RUN = str(pathlib.Path(sys.executable).parent / "salt-run")
# The reactor and the schedule of the example master configuration the docs quote, its chat lines turned on.
EXAMPLE = yaml.safe_load(example_master_conf(chat=True))


@pytest.fixture(scope="module")
def webhook():
    server = Webhook()
    yield server
    server.close()


@pytest.fixture(scope="module")
def url_file(tmp_path_factory, webhook):
    path = tmp_path_factory.mktemp("notify") / "webhook"
    path.write_text(webhook.url + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def chat_master(salt_factories, tmp_path_factory, url_file):
    """A master configured as the example master configuration says: its reactor and its reminder schedule
    (run every second here instead of every 5 minutes)."""
    remind = {key: value for key, value in EXAMPLE["schedule"]["deploytoken-remind"].items() if key != "minutes"}
    folder = tmp_path_factory.mktemp("chat-master")
    overrides = {
        "file_roots": {"base": [extension_root(folder)]},
        "deploytoken": {
            "sqlite": {"path": str(folder / "deploytoken.sqlite")},
            "people": PEOPLE,
            "notify": {"kind": "slack", "url_file": url_file, "timeout": 2, "retries": 1},
            "remind_after": f"{REMIND_AFTER}s",
            "remind_every": f"{REMIND_EVERY}s",
        },
        "ext_pillar": [{"deploytoken": {}}],
        "reactor": EXAMPLE["reactor"],
        "schedule": {"deploytoken-remind": dict(remind, seconds=1)},
        "loop_interval": 1,
        "log_level_logfile": "info",
    }
    master = salt_factories.salt_master_daemon("dt-chat-master", overrides=overrides)
    with master.started():
        ret = master.salt_run_cli(timeout=120).run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        yield master


@pytest.fixture
def salt_run(chat_master, webhook):
    cli = chat_master.salt_run_cli(timeout=120)
    yield cli
    cli.run("deploytoken.release", "force=True", "reason=test cleanup", env={"SUDO_USER": "carol"})
    time.sleep(1)  # let the reactor post the cleanup before the next test counts
    webhook.clear()


def as_user(salt_run, login, *args):
    ret = salt_run.run(*args, env={"SUDO_USER": login})
    assert ret.returncode == 0, ret
    return ret.data


def chat(webhook, count, timeout=30):
    """The first ``count`` messages that are not reminders, waiting for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [text for text in webhook.texts() if REMINDER not in text]
        if len(found) >= count:
            return found
        time.sleep(0.2)
    return [text for text in webhook.texts() if REMINDER not in text]


def test_the_reactor_posts_acquire_release_force_and_override_naming_the_people_waiting(salt_run, webhook, chat_master):
    taken = as_user(salt_run, "alice", "deploytoken.acquire", "reason=upgrade postgres")
    asked = as_user(salt_run, "bob", "deploytoken.notify_me")
    assert asked["waiting"] is True
    as_user(salt_run, "alice", "deploytoken.release", "note=rebooted kingfisher-main")
    again = as_user(salt_run, "bob", "deploytoken.acquire", "reason=new spider")
    as_user(salt_run, "carol", "deploytoken.release", "force=True", "reason=Bob is away")
    override = as_user(salt_run, "carol", "deploytoken.override", "reason=database down", "targets=collect-9")
    as_user(salt_run, "alice", "deploytoken.override", "cancel=True", "reason=database back")
    texts = chat(webhook, 6)
    assert len(texts) == 6, webhook.texts()
    assert texts[0].startswith("The deploy token is held by Alice Smith (alice) since ")
    assert texts[0].endswith(f'"upgrade postgres" (claim {taken["claim"]}).')
    assert texts[1].startswith("Released the deploy token held by Alice Smith for ")
    assert texts[1].endswith('("upgrade postgres"); note: "rebooted kingfisher-main". The deploy token is free. '
                             "Waiting for it: Bob Jones.")
    assert texts[2].endswith(f'"new spider" (claim {again["claim"]}).')
    assert texts[3].startswith('Carol Díaz (carol) forced the release of the deploy token held by Bob Jones for ')
    assert texts[3].endswith(', because: "Bob is away" ("new spider"). The deploy token is free.')
    assert texts[4].startswith(f"OVERRIDE {override['id']} by Carol Díaz: until ")
    assert "the deploy token guard lets every deployment on collect-9 through, whoever holds the token" in texts[4]
    assert texts[5] == (f'Alice Smith cancelled OVERRIDE {override["id"]} on collect-9 ("database back"): the '
                        "deploy token guard checks the deploy token again.")
    time.sleep(2)
    assert len(chat(webhook, 7, timeout=0)) == 6  # one message per event


def test_someone_waiting_with_acquire_wait_is_named_when_the_token_is_released(salt_run, webhook, chat_master):
    as_user(salt_run, "alice", "deploytoken.acquire", "reason=upgrade postgres")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(as_user, chat_master.salt_run_cli(timeout=120), "carol", "deploytoken.acquire",
                              "reason=my turn", "wait=True", "timeout=60", "interval=0.5")
        deadline = time.monotonic() + 30
        while "Carol Díaz" not in waiting_list(chat_master) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Carol Díaz" in waiting_list(chat_master)
        as_user(salt_run, "alice", "deploytoken.release", "note=done")
        taken = waiting.result(timeout=90)
    assert taken["holder"] == "Carol Díaz" and taken["changed"]
    # The reactor posts from a pool of threads: the release and Carol's take come a moment apart, in either order.
    released, carols = sorted(chat(webhook, 3)[1:], key=lambda text: not text.startswith("Released"))
    assert released.endswith('note: "done". The deploy token is free. Waiting for it: Carol Díaz.'), released
    assert carols.startswith("The deploy token is held by Carol Díaz (carol)"), carols
    assert waiting_list(chat_master) == []


def waiting_list(master):
    """The names on the master's list of people waiting."""
    try:
        entries = json.loads((pathlib.Path(master.config["cachedir"]) / "deploytoken" / "waiting.json").read_text())
    except FileNotFoundError:
        return []
    return [entry["name"] for entry in entries]


def test_the_schedule_reminds_once_per_period(salt_run, webhook):
    start = time.monotonic()
    taken = as_user(salt_run, "alice", "deploytoken.acquire", "reason=long upgrade")
    deadline = start + REMIND_AFTER + REMIND_EVERY + 20
    while time.monotonic() < deadline and sum(REMINDER in text for text in webhook.texts()) < 2:
        time.sleep(0.2)
    posts = [post for post in webhook.posts if REMINDER in post["body"]["text"]]
    assert len(posts) == 2, webhook.texts()
    assert posts[0]["at"] - start >= REMIND_AFTER - 1  # the claim's since is rounded down to the second
    held = [int(re.search(r"held the deploy token for (\d+) s", post["body"]["text"]).group(1)) for post in posts]
    assert held[0] >= REMIND_AFTER and held[1] >= REMIND_AFTER + REMIND_EVERY
    assert posts[1]["at"] - posts[0]["at"] >= REMIND_EVERY - 1.5
    assert posts[0]["body"]["text"].startswith("Alice Smith has held the deploy token for ")
    assert f"(long upgrade). Release it with salt-run deploytoken.release note='...', or force with salt-run " \
           f"deploytoken.release force=True claim={taken['claim']} reason='...'" in posts[0]["body"]["text"]
    elapsed = time.monotonic() - start
    assert sum(REMINDER in text for text in webhook.texts()) <= 1 + (elapsed - REMIND_AFTER) // REMIND_EVERY + 1


def test_a_forged_event_is_not_posted(chat_master, webhook, salt_run):
    """A deploytoken/* event that the runner did not seal (anyone's salt-run event.send) reaches the reactor
    but not the chat."""
    sent = chat_master.salt_run_cli(timeout=120).run(
        "event.send", "deploytoken/released", 'data={"holder": "Mallory", "note": "everyone may deploy now"}')
    assert sent.returncode == 0, sent
    time.sleep(4)
    assert not any("Mallory" in text for text in webhook.texts())


def test_a_signed_pillar_resent_as_a_released_event_is_not_posted_and_leaves_the_waiting_list(
        chat_master, webhook, salt_run):
    """The master signs pillar data and chat events with one key, but each for its purpose (and an event
    for its tag): a minion's own signed pillar, fired as deploytoken/released while Alice holds the
    token, is not posted and empties nobody's wait."""
    as_user(salt_run, "alice", "deploytoken.acquire", "reason=upgrade postgres")
    waiters.add(chat_master.config["cachedir"], "bob", "Bob Jones", seconds=600)
    before = waiting_list(chat_master)
    shown = salt_run.run("pillar.show_pillar", "collect-1")
    assert shown.returncode == 0 and shown.data["deploytoken"]["signature"], shown
    texts = len(chat(webhook, 1))
    sent = salt_run.run("event.send", "deploytoken/released", f"data={json.dumps(shown.data['deploytoken'])}")
    assert sent.returncode == 0, sent
    time.sleep(4)  # the reactor's answer is a post that must not come: nothing to poll for
    assert len(chat(webhook, 0, timeout=0)) == texts and "Bob Jones" in before
    assert waiting_list(chat_master) == before
    log_file = pathlib.Path(chat_master.config["log_file"]).read_text(encoding="utf-8", errors="replace")
    assert "The event deploytoken/released was not sealed by this master's runner" in log_file


def test_the_webhook_url_is_not_in_the_masters_log(chat_master, webhook):
    log_file = chat_master.config["log_file"]
    with open(log_file, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    assert "deploytoken" in text and "SECRET" not in text


def test_notify_me_without_a_chat_is_refused_in_one_json_document(salt_run_with):
    no_chat = salt_run_with({"people": PEOPLE})
    ret = no_chat.run("deploytoken.notify_me", env={"SUDO_USER": "bob"})
    assert ret.returncode == 1, ret
    assert ret.data["waiting"] is False and ret.data["message"].startswith("No chat is configured ")
    assert json.loads(ret.stdout) == ret.data


# ---- without a master daemon: salt-run -c and cron ----------------------------------------------


@pytest.fixture(scope="module")
def masterless(tmp_path_factory, url_file):
    """A master configuration used by salt-run alone, as a salt-ssh team's operator has it."""
    root = tmp_path_factory.mktemp("masterless")
    for folder in ("conf", "cache/proc", "pki", "sock", "log"):
        (root / folder).mkdir(parents=True)
    config = {
        "user": "root", "root_dir": str(root), "cachedir": str(root / "cache"), "pki_dir": str(root / "pki"),
        "sock_dir": str(root / "sock"), "log_file": str(root / "log" / "master"), "log_level_logfile": "info",
        "file_roots": {"base": [extension_root(root)]},
        "deploytoken": {"people": PEOPLE, "remind_after": "1s", "remind_every": "1h",
                        "notify": {"kind": "mattermost", "url_file": url_file, "timeout": 2, "retries": 2}},
    }
    (root / "conf" / "master").write_text(yaml.safe_dump(config))

    def run(login, *args):
        done = subprocess.run([SALT_RUN, "-c", str(root / "conf"), "--out=json", "--log-level=quiet", *args],
                              env=dict(os.environ, SUDO_USER=login), capture_output=True, text=True, timeout=120)
        return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None, done.stderr

    assert run("root", "saltutil.sync_all")[0] == 0
    run.log_file, run.conf_dir = config["log_file"], str(root / "conf")
    return run


def test_remind_without_a_master_posts_once_in_ten_runs_and_survives_a_failing_webhook(masterless, webhook):
    webhook.clear()
    status, taken, _ = masterless("alice", "deploytoken.acquire", "reason=upgrade postgres")
    assert status == 0 and taken["changed"], taken
    time.sleep(1.5)
    webhook.answer(500, 429, 500)  # every attempt of the first run fails
    status, failed, stderr = masterless("cron", "deploytoken.remind")
    assert status == 0, stderr
    assert failed["reminded"] is False and failed["message"].endswith(
        "The deploy token is unchanged; the next run tries again.")
    assert [post["status"] for post in webhook.posts] == [500, 429, 500]
    runs = [masterless("cron", "deploytoken.remind") for _ in range(10)]
    assert [run[0] for run in runs] == [0] * 10
    assert [run[1]["reminded"] for run in runs] == [True] + [False] * 9
    assert webhook.texts() == [runs[0][1]["text"]]
    assert webhook.texts()[0].startswith("Alice Smith has held the deploy token for ")
    status, now, _ = masterless("bob", "deploytoken.status")
    assert now["claim"] == taken["claim"] and now["next_reminder"] == runs[0][1]["next_due"]
    assert model.seconds_between(taken["since"], now["next_reminder"]) == 1 + 3600  # the second reminder
    outputs = json.dumps([failed] + [run[1] for run in runs]) + "".join(run[2] for run in runs)
    with open(masterless.log_file, encoding="utf-8", errors="replace") as handle:
        logged = handle.read()
    assert "SECRET" not in outputs and "answered HTTP 500" in logged and "SECRET" not in logged
    assert masterless("alice", "deploytoken.release")[0] == 0


def test_the_cron_line_of_the_docs_reminds_and_prints_nothing(masterless, webhook):
    (line,) = [block.text for block in BLOCKS if block.kind == "cron"]
    words = shlex.split(line.split(None, 5)[5])
    assert words[:3] == ["salt-run", "-c", "~/salt"]  # that operator's folder is this test's
    webhook.clear()
    status, _, _ = masterless("alice", "deploytoken.acquire", "reason=reindex")
    assert status == 0
    time.sleep(1.5)  # remind_after is 1 s
    done = subprocess.run([SALT_RUN, "-c", masterless.conf_dir, *words[3:]], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert "Invalid outputter" not in done.stderr
    assert len(webhook.texts()) == 1 and webhook.texts()[0].startswith("Alice Smith has held the deploy token for ")
    assert masterless("alice", "deploytoken.release")[0] == 0
