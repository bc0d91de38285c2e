"""The guard's decision, the publisher lookup, the ext_pillar data and its cross-process cache, in-process."""

import datetime
import os
import pathlib
import subprocess
import sys

import psutil
import pytest
import salt.crypt
import salt.payload

import racing
from conftest import PEOPLE
from deploytoken import cache, model
from deploytoken.guard import held as guard
from deploytoken.guard import pillar as token_pillar
from deploytoken.guard import seal
from deploytoken.stores.sqlite import SqliteStore
from kingfisher_fixtures import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent
NOW = datetime.datetime(2026, 11, 26, 14, 40, tzinfo=datetime.timezone.utc)
ALICE = model.Holding(holder="Alice Smith", login="alice", claim="c1", since="2026-11-26T14:02:00Z", reason="pg")


STAMP = {"minion": "m1", "issued": "2026-11-26T14:39:30Z", "max_age": 300, "ssh_keys": {}, "operator": None,
         "override": None}


def sealed(data, master_key=None, **extra):
    """Token data as the ext_pillar hands it to m1 at NOW (30 s old), sealed."""
    return seal.seal(dict(data, **dict(STAMP, **extra)), master_key)


def pillar(holding=ALICE, **extra):
    return sealed(token_pillar.snapshot(holding, PEOPLE), **extra)


def test_holder_passes():
    ret = guard.decide(pillar(), "alice", "m1", now=NOW)
    assert ret == {
        "result": True,
        "comment": "Alice Smith (alice) holds the deploy token, since 2026-11-26 14:02 UTC (38 min) (claim c1).",
        "override": None,
        "remember": None,
    }


def test_someone_else_is_blocked_with_who_since_why_and_the_command():
    ret = guard.decide(pillar(), "bob", "m1", now=NOW)
    assert ret["result"] is False
    assert ret["comment"] == (
        'Deploy token is held by Alice Smith (alice) since 2026-11-26 14:02 UTC (38 min): "pg", so Bob Jones (bob) '
        "may not deploy on m1. Wait with salt-run deploytoken.acquire wait=True, or ask Alice Smith to run "
        "salt-run deploytoken.release."
    )


def test_test_mode_turns_a_block_into_none_and_keeps_a_pass():
    assert guard.decide(pillar(), "bob", "m1", test=True, now=NOW)["result"] is None
    assert guard.decide(pillar(), "alice", "m1", test=True, now=NOW)["result"] is True


def test_a_login_without_a_display_name_is_shown_as_is():
    ret = guard.decide(pillar(), "dave", "m1", now=NOW)
    assert "so dave may not deploy on m1." in ret["comment"]


@pytest.mark.parametrize(
    "data, login, sentence",
    [
        (pillar(None), "alice", "Nobody holds the deploy token, so Alice Smith (alice) may not deploy on m1. "
         "Take it first with: salt-run deploytoken.acquire reason='...'"),
        (sealed(token_pillar.unreadable("The token store /x is broken.", PEOPLE)), "alice",
         "The deploy token cannot be read, so nobody may deploy: The token store /x is broken. "
         "Check with salt-run deploytoken.status."),
        (None, "alice", "The deploy token cannot be checked: this minion's pillar has no deploytoken data. Add "
         "ext_pillar: [{deploytoken: {}}] to the master config, restart the master, and run "
         "salt-run saltutil.sync_all."),
        (pillar(), None, "The deploy token guard cannot tell who runs this job (a scheduled job or an unknown "
         "publisher), so it may not deploy. Run it with salt, salt-call or salt-ssh as the holder of the token."),
        (pillar(override="db down"), "bob", "The pillar key deploytoken:override is no longer obeyed, so nothing "
         "may deploy: remove it, and ask for an override with salt-run deploytoken.override reason='...' "
         "targets='...', which the history keeps."),
        (dict(pillar(), login="bob"), "bob", "The deploy token data in this run's pillar was changed after the "
         "master wrote it (a pillar= on the command line?), so nothing may deploy."),
        (pillar(minion="m2"), "alice", "The deploy token data in this run's pillar was made for 'm2', not for m1, "
         "so nothing may deploy: run the deployment against m1 itself."),
        (pillar(issued="2026-11-26T14:30:00Z"), "alice", "The deploy token data in this run's pillar was issued at "
         "2026-11-26T14:30:00Z, not within 5 min of now (2026-11-26T14:40:00Z on m1), so nothing may deploy: run "
         "it again, and check that the clocks of both machines are right (and that the master's pillar_cache is "
         "off)."),
    ],
)
def test_blocks_fail_closed_with_one_sentence(data, login, sentence):
    assert guard.decide(data, login, "m1", now=NOW) == {
        "result": False, "comment": sentence, "override": None, "remember": None
    }


TEAM = {"id": "postgres:team", "name": "PostgreSQL deploytoken@db:5432/deploy"}
OVERRIDE = {"id": "o1", "by": "Bob Jones (bob)", "reason": "db down", "until": "2026-11-26T15:00:00Z",
            "targets": "m*", "store": TEAM}


def test_an_override_from_the_runner_passes_loudly_until_it_ends():
    ret = guard.decide(pillar(override=OVERRIDE, store=TEAM), "bob", "m1", now=NOW)
    assert ret["result"] is True and ret["override"] == OVERRIDE
    assert ret["comment"] == (
        "OVERRIDE: the deploy token guard PASSED for Bob Jones (bob) on m1 without checking the token (Alice Smith "
        "(alice) since 2026-11-26 14:02 UTC (38 min): \"pg\"): override o1 by Bob Jones (bob) in PostgreSQL "
        "deploytoken@db:5432/deploy until 2026-11-26 15:00 UTC, because: 'db down'. End it with salt-run "
        "deploytoken.override cancel=True reason='...'."
    )
    assert "would pass" in guard.decide(pillar(override=OVERRIDE), "bob", "m1", test=True, now=NOW)["comment"]
    ended = pillar(override=dict(OVERRIDE, until="2026-11-26T14:39:00Z"))
    assert guard.decide(ended, "bob", "m1", now=NOW)["result"] is False


def test_an_override_passes_only_where_the_server_obeys_its_store():
    private = {"id": "sqlite:bob", "name": "SQLite store /home/bob/token.sqlite on laptop"}
    mine = dict(OVERRIDE, store=private)
    # The server obeys the team's store: an override of a private store, read from that store, does not pass.
    ret = guard.decide(pillar(override=mine, store=private), "bob", "m1", now=NOW, remembered=TEAM)
    assert ret["result"] is False and ret["comment"].startswith("m1 obeys the deploy token of PostgreSQL ")
    # The team's store is down: a private override still spooled on a laptop is refused by its name.
    down = sealed(token_pillar.unreadable("The store is down.", PEOPLE), override=mine)
    ret = guard.decide(down, "bob", "m1", now=NOW, remembered=TEAM)
    assert ret == {"result": False, "override": None, "remember": None, "comment": (
        "Override o1 was made in SQLite store /home/bob/token.sqlite on laptop, but m1 obeys the deploy token of "
        "PostgreSQL deploytoken@db:5432/deploy, so it lets nothing through: ask for the override in the store the "
        "team shares.")}
    # The team's override while the team's store is down: the emergency still works.
    down = sealed(token_pillar.unreadable("The store is down.", PEOPLE), override=OVERRIDE)
    assert guard.decide(down, "bob", "m1", now=NOW, remembered=TEAM)["result"] is True
    # An override that names no store (an earlier version's) lets nothing through.
    bare = {key: value for key, value in OVERRIDE.items() if key != "store"}
    assert guard.decide(pillar(override=bare), "bob", "m1", now=NOW)["comment"].startswith(
        "Override o1 names no token store (it was made by an earlier version), so it lets nothing through")


def test_with_the_masters_key_only_signed_data_is_believed(tmp_path):
    salt.crypt.write_keys(str(tmp_path), "master", 2048)
    private, public = str(tmp_path / "master.pem"), str(tmp_path / "master.pub")
    data = token_pillar.snapshot(ALICE, PEOPLE)
    assert guard.decide(sealed(data, private), "alice", "m1", now=NOW, master_key=public)["result"] is True
    unsigned = guard.decide(sealed(data), "alice", "m1", now=NOW, master_key=public)
    assert unsigned["result"] is False and "is not signed by the master" in unsigned["comment"]
    for key, value in (("login", "bob"), ("holder", "Bob Jones"), ("held", True), ("error", None), ("claim", "c9")):
        honest = token_pillar.snapshot(None, PEOPLE)
        if key == "error":
            honest = token_pillar.unreadable("Google is down.", PEOPLE)
        forged = dict(sealed(honest, private), **{key: value})
        forged["digest"] = seal.seal(forged)["digest"]  # even with a digest made to match
        ret = guard.decide(forged, "bob", "m1", now=NOW, master_key=public)
        assert ret["result"] is False and "was changed after the master wrote it" in ret["comment"], key
    salt.crypt.write_keys(str(tmp_path), "other", 2048)
    other = guard.decide(sealed(data, str(tmp_path / "other.pem")), "alice", "m1", now=NOW, master_key=public)
    assert other["result"] is False and "was changed after the master wrote it" in other["comment"]


def write_proc(directory, name, job):
    with open(directory / name, "wb") as handle:
        salt.payload.dump(job, handle)


def test_job_login_reads_the_publisher_of_this_process(tmp_path, monkeypatch):
    write_proc(tmp_path, "1", {"pid": 11, "user": "sudo_bob", "jid": "1"})
    write_proc(tmp_path, "2", {"pid": 12, "tgt": "salt-call", "jid": "2"})
    write_proc(tmp_path, "3", {"pid": 13, "schedule": "highstate", "jid": "3"})
    (tmp_path / "4").write_bytes(b"\xff half written")
    monkeypatch.setenv("SUDO_USER", "carol")
    assert guard.job_login(str(tmp_path), 11) == "bob"
    assert guard.job_login(str(tmp_path), 12) == "carol"
    assert guard.job_login(str(tmp_path), 13) is None
    assert guard.job_login(str(tmp_path), 99) is None
    assert guard.job_login(str(tmp_path / "missing"), 11) is None


def test_job_login_under_multiprocessing_false_goes_by_the_jid_or_refuses(tmp_path):
    """Every job of a threaded minion has the minion's pid: the jid picks the job, and without one the
    guard does not guess."""
    write_proc(tmp_path, "20261128201500000001", {"pid": 7, "user": "sudo_alice"})
    write_proc(tmp_path, "20261128201500000002", {"pid": 7, "user": "sudo_bob"})
    assert guard.job_login(str(tmp_path), 7, "20261128201500000002") == "bob"
    assert guard.job_login(str(tmp_path), 7, "20261128201500000003") is None
    assert guard.job_login(str(tmp_path), 8, "20261128201500000001") is None  # another process's job
    with pytest.raises(model.DeploytokenError, match=r"^2 jobs run in this minion's process"):
        guard.job_login(str(tmp_path), 7)


def test_pillar_reads_the_store_like_the_runner(tmp_path):
    opts = {"cachedir": str(tmp_path), "deploytoken": {"people": PEOPLE}}
    SqliteStore(str(tmp_path / "deploytoken.sqlite")).acquire(ALICE)
    store = SqliteStore(str(tmp_path / "deploytoken.sqlite"))
    data = token_pillar.pillar(opts, "m1", now=NOW)
    assert data == {"held": True, "people": PEOPLE, "error": None, "holder": "Alice Smith", "login": "alice",
                    "claim": "c1", "since": "2026-11-26T14:02:00Z", "reason": "pg", "store": store.identity,
                    "minion": "m1", "issued": "2026-11-26T14:40:00Z", "max_age": 300, "ssh_keys": {},
                    "operator": None, "override": None, "signature": None, "digest": data["digest"],
                    "consent": None}
    assert seal.intact(data)


def test_pillar_of_an_unreadable_store_carries_the_error(tmp_path):
    (tmp_path / "junk").write_text("not a store\n" * 50)
    opts = {"cachedir": str(tmp_path), "deploytoken": {"sqlite": {"path": str(tmp_path / "junk")}}}
    data = token_pillar.pillar(opts, "m1")
    assert data["held"] is None and str(tmp_path / "junk") in data["error"]


def test_pillar_of_a_postgres_store_that_is_down_names_host_and_port(tmp_path):
    opts = {"cachedir": str(tmp_path), "deploytoken": {"backend": "postgres", "postgres": {
        "host": "127.0.0.1", "port": free_port(), "dbname": "deploytoken", "user": "deploytoken"}}}
    data = token_pillar.pillar(opts, "m1")
    assert data["held"] is None and "127.0.0.1:" in data["error"] and "cannot be reached" in data["error"]
    assert guard.decide(data, "alice", "m1")["comment"].startswith(
        "The deploy token cannot be read, so nobody may deploy: The PostgreSQL token store at 127.0.0.1:")


def test_pillar_of_a_bad_setting_carries_the_sentence(tmp_path):
    data = token_pillar.pillar({"cachedir": str(tmp_path), "deploytoken": {"pillar_cache": "soon"}}, "m1")
    assert data["held"] is None and seal.intact(data)
    assert data["error"].startswith("The deploytoken:pillar_cache must be a number of seconds")


# ---- the cross-process cache ------------------------------------------------------------------


def test_twenty_processes_read_the_store_once(tmp_path):
    path, counter = str(tmp_path / "cache.json"), str(tmp_path / "reads")
    outcomes = racing.run(racing.read_through_cache, [(path, counter)] * 20)
    assert racing.returned(outcomes) == [{"read": True}] * 20
    assert open(counter).read() == "x"


def test_cache_reads_again_once_too_old_and_ignores_a_damaged_file(tmp_path):
    path = str(tmp_path / "cache.json")
    reads = []

    def read():
        reads.append(1)
        return len(reads)

    assert cache.cached(path, 2, read, clock=lambda: 100.0) == 1
    assert cache.cached(path, 2, read, clock=lambda: 101.5) == 1
    assert cache.cached(path, 2, read, clock=lambda: 102.0) == 2
    with open(path, "w") as handle:
        handle.write("{half")
    assert cache.cached(path, 2, read, clock=lambda: 102.1) == 3
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".deploytoken-cache-")]


# ---- salt-ssh: the operator, the key that logged in, the store the server obeys ---------------

SHARED = {"id": "google:doc1", "name": "Google Doc doc1"}
KEYS = {"SHA256:alicekey": "alice", "SHA256:bobkey": "bob"}


def ssh_pillar(holding=ALICE, operator="alice", **extra):
    data = dict(token_pillar.snapshot(holding, PEOPLE), store=SHARED)
    return sealed(data, ssh_keys=KEYS, operator={"login": operator, "host": "laptop"}, **extra)


def test_under_salt_ssh_the_operator_is_the_person_not_the_ssh_account():
    assert guard.decide(ssh_pillar(), "root", "m1", now=NOW)["result"] is True
    ret = guard.decide(ssh_pillar(operator="bob"), "root", "m1", now=NOW)
    assert ret["result"] is False and "so Bob Jones (bob) may not deploy on m1." in ret["comment"]
    rooted = ssh_pillar(model.Holding(holder="root", login="root", claim="c2", since="2026-11-26T14:02:00Z"))
    assert guard.decide(rooted, "root", "m1", now=NOW)["result"] is False


@pytest.mark.parametrize(
    "extra, sentence",
    [
        ({"minion": "m2"}, "The deploy token data in this run's pillar was made for 'm2', not for m1"),
        ({"issued": None}, "The deploy token data in this run's pillar was issued at None"),
    ],
)
def test_token_data_for_another_minion_or_too_old_blocks(extra, sentence):
    ret = guard.decide(ssh_pillar(**extra), "root", "m1", now=NOW)
    assert ret["result"] is False and ret["comment"].startswith(sentence)


def test_the_key_that_logged_in_must_be_the_operators():
    assert guard.decide(ssh_pillar(), "root", "m1", now=NOW, ssh_auth=["SHA256:alicekey"])["result"] is True
    other = guard.decide(ssh_pillar(), "root", "m1", now=NOW, ssh_auth=["SHA256:bobkey"])
    assert other["comment"] == (
        "Alice Smith (alice) runs salt-ssh, but the SSH key that logged in to m1 belongs to someone else: "
        "SHA256:bobkey (bob), so Alice Smith (alice) may not deploy: log in with your own key."
    )
    unknown = guard.decide(ssh_pillar(), "root", "m1", now=NOW, ssh_auth=["SHA256:strange"], test=True)
    assert unknown["result"] is None and unknown["comment"].startswith(
        "The SSH key that logged in to m1 (SHA256:strange) is not listed for Alice Smith (alice) in deploytoken:people"
    )


def test_a_server_obeys_one_store():
    first = guard.decide(ssh_pillar(), "root", "m1", now=NOW)
    assert first["result"] is True and first["remember"] == SHARED
    again = guard.decide(ssh_pillar(), "root", "m1", now=NOW, remembered=dict(SHARED, since="x"))
    assert again["result"] is True and again["remember"] is None
    private = {"id": "sqlite:bob-laptop:/x", "name": "SQLite store /x on bob-laptop"}
    split = guard.decide(ssh_pillar(), "root", "m1", now=NOW, remembered=private, memory="/var/lib/x.json")
    assert split["result"] is False
    assert split["comment"] == (
        "m1 obeys the deploy token of SQLite store /x on bob-laptop, but this run's token comes from Google Doc doc1: "
        "two stores would each hand out their own token, so nobody may deploy this way. Deploy with the store the "
        "team shares (deploytoken:backend google or postgres on every operator's machine), or, if the team moved to "
        "Google Doc doc1 on purpose, remove /var/lib/x.json on m1 first."
    )


def test_the_store_memory_is_in_var_lib_unless_configured():
    assert guard.store_memory({}) == "/var/lib/deploytoken/store.json"
    assert guard.store_memory({"deploytoken": {"store_memory": "/srv/x.json"}}) == "/srv/x.json"


def test_the_remembered_store_is_private_to_root_and_a_damaged_one_blocks(tmp_path):
    path = str(tmp_path / "lib" / "store.json")
    assert guard.remembered_store(path) is None
    guard.remember_store(path, SHARED, "passed")
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert guard.remembered_store(path)["id"] == "google:doc1"
    with open(path, "w") as handle:
        handle.write("{half")
    damaged = guard.remembered_store(path)
    assert guard.decide(ssh_pillar(), "root", "m1", now=NOW, remembered=damaged)["result"] is False


def test_loading_the_guard_loads_no_store_and_no_google_client():
    code = (
        "import sys; sys.path.insert(0, '_utils'); import deploytoken.guard.held; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('googleapiclient', 'google', 'psycopg', 'sqlite3', "
        "'requests', 'confusable_homoglyphs') or m.startswith(('deploytoken.commands', 'deploytoken.stores'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- the job's own pillar: when the guard may take it instead of asking the master ------------

STARTED = NOW.timestamp() - 3  # the job's proc file was written 3 s before NOW
OWN = {"issued": "2026-11-26T14:39:58Z"}  # compiled for the job 1 s after it started, 2 s before NOW


def job(fun="state.apply", *args, **extra):
    return dict({"fun": fun, "arg": list(args), "jid": "20261126143957000001", "pid": 7, "user": "sudo_alice",
                 "written": STARTED}, **extra)


@pytest.mark.parametrize("found", [
    job(), job("state.apply", "guarded"), job("state.sls", "guarded", {"test": True, "__kwarg__": True}),
    job("state.highstate", "saltenv=base"), job("state.top", "top.sls", "test=True"),
    job("state.apply", "guarded", {"exclude": ["x"], "queue": True, "concurrent": True, "__kwarg__": True}),
])
def test_a_state_run_with_no_pillar_argument_takes_its_own_fresh_pillar(found):
    assert guard.own_pillar_problem({}, found, OWN, now=NOW) is None


SNAPSHOT = {"deploytoken": {"login": "bob"}}


@pytest.mark.parametrize("found, problem", [
    (job("state.apply", "guarded", {"pillar": SNAPSHOT, "__kwarg__": True}), "the job was given pillar="),
    (job("state.apply", "guarded", "pillar={}"), "the job was given pillar="),
    (job("state.sls", "guarded", {"pillar": "x", "pillar_enc": "gpg", "__kwarg__": True}),
     "the job was given pillar=, pillar_enc="),
    (job("state.highstate", "pillarenv=other"), "the job was given pillarenv="),
    (job("state.apply", "guarded", "localconfig=/tmp/minion"), "the job was given localconfig="),
    (job("state.apply", {"mods": "guarded"}), "the job has an argument that is neither a word nor a keyword"),
    (job("state.apply", "guarded", arg="guarded"), "the job's arguments are unknown"),
    (job("state.single", "deploytoken.held", "name=guard"), "state.single is not one of state.apply, state.sls, "
     "state.highstate, state.top"),
    (job(["state.apply", "test.ping"], ["guarded"], []), "['state.apply', 'test.ping'] is not one of "),
    (job("state.sls_id"), "state.sls_id is not one of "),
    (job("state.orchestrate"), "state.orchestrate is not one of "),
    (job("state.template_str"), "state.template_str is not one of "),
    (job("state.run_request"), "state.run_request is not one of "),
    (job("state.pkg"), "state.pkg is not one of "),
    (None, "this job's proc file was not found"),
    (job(written=None), "the job's start or the token data's time of issue is unknown"),
    (job(tgt="salt-call"), "this salt-call's command line is unknown"),
])
def test_anything_else_asks_the_master_afresh(found, problem):
    assert guard.own_pillar_problem({}, found, OWN, now=NOW).startswith(problem)


@pytest.mark.parametrize("issued, problem", [
    # A snapshot saved before the job started: Bob's, from when he held the token.
    ("2026-11-26T14:39:54Z", "the token data was issued at 2026-11-26T14:39:54Z, not while this job ran"),
    ("2026-11-26T14:40:03Z", "the token data was issued at 2026-11-26T14:40:03Z, not while this job ran"),
    (None, "the job's start or the token data's time of issue is unknown"),
])
def test_token_data_issued_before_the_job_started_is_not_its_own(issued, problem):
    assert guard.own_pillar_problem({}, job(), {"issued": issued}, now=NOW) == problem


def test_a_job_whose_own_data_grew_old_asks_again():
    started = job(written=NOW.timestamp() - 60)
    assert guard.own_pillar_problem({}, started, {"issued": "2026-11-26T14:39:45Z"}, now=NOW) == (
        "the token data was issued more than 5 s ago")


def test_salt_call_goes_by_its_own_command_line_and_start():
    """salt-call writes no arguments into its proc file and compiles its pillar as it starts: the command line
    it was given (in its opts) and the process's start count."""
    called = job(tgt="salt-call", user=None, fun="state.apply", arg=None, written=None)
    opts = {"__cli": "salt-call", "fun": "state.apply", "arg": ["guarded"]}
    started = datetime.datetime.fromtimestamp(psutil.Process().create_time(), datetime.timezone.utc)
    now = started + datetime.timedelta(seconds=3)
    fresh = {"issued": model.isoformat(started + datetime.timedelta(seconds=1))}
    assert guard.own_pillar_problem(opts, called, fresh, now=now) is None
    replayed = dict(opts, arg=["guarded", "pillar={}"])
    assert guard.own_pillar_problem(replayed, called, fresh, now=now) == "the job was given pillar="
    older = {"issued": model.isoformat(started - datetime.timedelta(seconds=5))}
    assert guard.own_pillar_problem(opts, called, older, now=now).endswith("not while this job ran")
