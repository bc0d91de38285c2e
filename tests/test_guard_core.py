"""The guard's decision, the publisher lookup, the ext_pillar data and its cross-process cache, in-process."""

import datetime
import multiprocessing
import os

import pytest
import salt.payload

import deploytoken_cache
import deploytoken_guard as guard
import deploytoken_model as model
from deploytoken_sqlite import SqliteStore

PEOPLE = {"alice": "Alice Smith", "bob": "Bob Jones"}
NOW = datetime.datetime(2026, 11, 26, 14, 40, tzinfo=datetime.timezone.utc)
ALICE = model.Holding(holder="Alice Smith", login="alice", claim="c1", since="2026-11-26T14:02:00Z", reason="pg")


def pillar(holding=ALICE, **extra):
    return dict(guard.snapshot(holding, PEOPLE), **extra)


def test_holder_passes():
    ret = guard.decide(pillar(), "alice", "m1", now=NOW)
    assert ret == {
        "result": True,
        "comment": "Alice Smith (alice) holds the deploy token, since 2026-11-26 14:02 UTC (38 min) (claim c1).",
        "override": None,
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
        (guard.unreadable("The token store /x is broken.", PEOPLE), "alice",
         "The deploy token cannot be read, so nobody may deploy: The token store /x is broken. "
         "Check with salt-run deploytoken.status."),
        (None, "alice", "The deploy token cannot be checked: this minion's pillar has no deploytoken data. Add "
         "ext_pillar: [{deploytoken: {}}] to the master config, restart the master, and run "
         "salt-run saltutil.sync_all."),
        (pillar(), None, "The deploy token guard cannot tell who runs this job (a scheduled job or an unknown "
         "publisher), so it may not deploy. Run it with salt, salt-call or salt-ssh as the holder of the token."),
        (pillar(override=["x"]), "bob", "The deploy token override must give a reason as one line of text, e.g. "
         "deploytoken: override: 'database down, agreed with Alice'; nothing was deployed."),
        (pillar(override="a\nb"), "bob", "The deploy token override must give a reason as one line of text, e.g. "
         "deploytoken: override: 'database down, agreed with Alice'; nothing was deployed."),
    ],
)
def test_blocks_fail_closed_with_one_sentence(data, login, sentence):
    assert guard.decide(data, login, "m1", now=NOW) == {"result": False, "comment": sentence, "override": None}


def test_override_passes_loudly_with_the_event_data():
    ret = guard.decide(pillar(override="db down"), "bob", "m1", now=NOW)
    assert ret["result"] is True
    assert ret["comment"] == (
        "OVERRIDE: the deploy token guard PASSED for Bob Jones (bob) on m1 without checking the token (Alice Smith "
        "(alice) since 2026-11-26 14:02 UTC (38 min): \"pg\"), because: 'db down'. Remove deploytoken:override "
        "from the pillar once done."
    )
    assert ret["override"] == {"login": "bob", "person": "Bob Jones (bob)", "minion": "m1", "reason": "db down",
                               "holder": "Alice Smith"}
    dry = guard.decide(pillar(override="db down"), "bob", "m1", test=True, now=NOW)
    assert dry["result"] is True and dry["override"] is None and "would pass" in dry["comment"]


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


def test_pillar_reads_the_store_like_the_runner(tmp_path):
    opts = {"cachedir": str(tmp_path), "deploytoken": {"people": PEOPLE}}
    SqliteStore(str(tmp_path / "deploytoken.sqlite")).acquire(ALICE)
    data = guard.pillar(opts)
    assert data == {"held": True, "people": PEOPLE, "error": None, "holder": "Alice Smith", "login": "alice",
                    "claim": "c1", "since": "2026-11-26T14:02:00Z", "reason": "pg"}


def test_pillar_of_an_unreadable_store_carries_the_error(tmp_path):
    (tmp_path / "junk").write_text("not a store\n" * 50)
    opts = {"cachedir": str(tmp_path), "deploytoken": {"sqlite": {"path": str(tmp_path / "junk")}}}
    data = guard.pillar(opts)
    assert data["held"] is None and str(tmp_path / "junk") in data["error"]


def test_pillar_refuses_a_bad_cache_setting(tmp_path):
    with pytest.raises(model.InputError, match="deploytoken:pillar_cache must be a number of seconds"):
        guard.pillar({"cachedir": str(tmp_path), "deploytoken": {"pillar_cache": "soon"}})


# ---- the cross-process cache ------------------------------------------------------------------


def _count_read(counter):
    with open(counter, "a") as handle:
        handle.write("x")
    return {"read": True}


def _compile(path, counter, barrier):
    barrier.wait()
    assert deploytoken_cache.cached(path, 30, lambda: _count_read(counter)) == {"read": True}


def test_twenty_processes_read_the_store_once(tmp_path):
    path, counter = str(tmp_path / "cache.json"), str(tmp_path / "reads")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(20)
    workers = [context.Process(target=_compile, args=(path, counter, barrier)) for _ in range(20)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert [worker.exitcode for worker in workers] == [0] * 20
    assert open(counter).read() == "x"


def test_cache_reads_again_once_too_old_and_ignores_a_damaged_file(tmp_path):
    path = str(tmp_path / "cache.json")
    reads = []

    def read():
        reads.append(1)
        return len(reads)

    assert deploytoken_cache.cached(path, 2, read, clock=lambda: 100.0) == 1
    assert deploytoken_cache.cached(path, 2, read, clock=lambda: 101.5) == 1
    assert deploytoken_cache.cached(path, 2, read, clock=lambda: 102.0) == 2
    with open(path, "w") as handle:
        handle.write("{half")
    assert deploytoken_cache.cached(path, 2, read, clock=lambda: 102.1) == 3
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".deploytoken-cache-")]
