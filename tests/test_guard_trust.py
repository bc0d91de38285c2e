"""The guard believes only the master, asked afresh: token data given with pillar= on the command line or a
replayed snapshot counts for nothing, through the real salt CLI against the real master and minion."""

import concurrent.futures
import json
import pathlib
import time

import pytest
import salt.crypt

from guard_helpers import GUARDED, MINION
from test_guard_states import apply_as, call_as, guard_of

pytestmark = pytest.mark.daemons


def with_pillar(data):
    return "pillar=" + json.dumps(data)


ALICE_HOLDS = "Deploy token is held by Alice Smith (alice) since "


def test_a_spoofed_holder_on_the_command_line_counts_for_nothing(salt_cli, token, guarded):
    """The guard asks the master for a fresh compile: the job's pillar is not read at all."""
    sls, marker = guarded
    token.take("alice")
    spoof = {"deploytoken": {"held": True, "login": "bob", "holder": "Bob Jones", "error": None}}
    ret = apply_as(salt_cli, "bob", sls, with_pillar(spoof))
    assert ret.returncode == 1
    assert guard_of(ret)["comment"].startswith(ALICE_HOLDS)
    assert not marker.exists()


def test_the_holder_passes_with_other_pillar_on_the_command_line(salt_cli, token, guarded):
    sls, marker = guarded
    token.take("alice")
    ret = apply_as(salt_cli, "alice", sls, with_pillar({"other": 1}))
    assert ret.returncode == 0, ret
    assert marker.exists()


@pytest.mark.parametrize("made_for", [MINION, "kingfisher-other"])
def test_a_replayed_snapshot_is_blocked_at_once_after_the_token_changed_hands(
        salt_cli, salt_minion, salt_run, token, guarded, made_for):
    """Bob saves his signed pillar while he holds the token, releases, Alice takes it: his genuine, fresh
    snapshot passes neither with salt nor with salt-call."""
    sls, marker = guarded
    token.take("bob")
    snapshot = salt_run.run("pillar.show_pillar", made_for).data["deploytoken"]
    assert snapshot["signature"] and snapshot["login"] == "bob"
    assert salt_run.run("deploytoken.release", env={"SUDO_USER": "bob"}).returncode == 0
    token.take("alice")
    replayed = with_pillar({"deploytoken": snapshot})
    for ret in (apply_as(salt_cli, "bob", sls, replayed), call_as(salt_minion, "bob", sls, replayed)):
        assert ret.returncode == 1
        assert guard_of(ret)["comment"].startswith(ALICE_HOLDS), ret
    assert not marker.exists()


def test_salt_call_local_has_no_master_to_ask_and_blocks(salt_minion, token):
    token.take("alice")
    ret = salt_minion.salt_call_cli(timeout=120).run("--local", "state.single", "deploytoken.held", "name=guard",
                                                     env={"SUDO_USER": "alice"})
    assert ret.returncode == 1
    assert guard_of(ret)["comment"] == (
        "The deploy token guard failed, so nothing may deploy: this run has no master to ask who holds the deploy "
        "token (salt-call --local?); run it through the master, or with salt-call without --local.")


def test_the_guard_follows_a_rotated_master_key(salt_factories, master_overrides, sls_dir, tmp_path):
    """A master of its own (the shared one keeps its key): new master key, the minion re-authenticates,
    and the holder still passes while others are still stopped."""
    overrides = dict(master_overrides, deploytoken=dict(master_overrides["deploytoken"],
                                                        sqlite={"path": str(tmp_path / "token.sqlite")}))
    master = salt_factories.salt_master_daemon("dt-rotating", overrides=overrides)
    minion = master.salt_minion_daemon("dt-rotated", overrides={
        "deploytoken": {"store_memory": str(tmp_path / "memory.json")}})
    marker = tmp_path / "deployed"
    (sls_dir / "dtrotate.sls").write_text(GUARDED.format(marker=marker))
    cli = master.salt_cli(timeout=120)
    try:
        with master.started(), minion.started():
            assert master.salt_run_cli(timeout=120).run("saltutil.sync_all").returncode == 0
            assert cli.run("saltutil.sync_all", minion_tgt="dt-rotated").returncode == 0
            taken = master.salt_run_cli(timeout=120).run("deploytoken.acquire", env={"SUDO_USER": "alice"})
            assert taken.returncode == 0, taken
        pki = pathlib.Path(master.config["pki_dir"])
        old = (pki / "master.pub").read_text()
        # Salt 3008 keeps the master's key as <master id>.pem (master.pem links to it): rotate that one.
        for name in ("dt-rotating.pem", "dt-rotating.pub"):
            (pki / name).unlink()
        salt.crypt.write_keys(str(pki), "dt-rotating", 2048)
        # The minion trusts the new key only once its copy of the old one is gone, as after a real rotation.
        (pathlib.Path(minion.config["pki_dir"]) / "minion_master.pub").unlink()
        with master.started(), minion.started():
            passed = cli.run("state.apply", "dtrotate", minion_tgt="dt-rotated", env={"SUDO_USER": "alice"})
            assert passed.returncode == 0, guard_of(passed)["comment"]
            assert marker.exists()
            assert (pathlib.Path(minion.config["pki_dir"]) / "minion_master.pub").read_text() != old
            blocked = cli.run("state.apply", "dtrotate", minion_tgt="dt-rotated", env={"SUDO_USER": "bob"})
            assert blocked.returncode == 1
            assert guard_of(blocked)["comment"].startswith("Deploy token is held by Alice Smith (alice) since ")
    finally:
        (sls_dir / "dtrotate.sls").unlink(missing_ok=True)


# ---- the job's own pillar: taken only when the master compiled it for this very job ------------------

FRESH = "asking the master for a fresh pillar: "


class MinionLog:
    """The guard's INFO lines the minion logs during a block of the test (its log is read from where it was)."""

    def __init__(self, minion):
        self.path = pathlib.Path(minion.config["log_file"])
        self.start = self.path.stat().st_size

    def guard_lines(self, count=1, wait=10):
        """The guard's lines logged since, once there are ``count`` of them (the log is written a moment after
        the job returns)."""
        deadline = time.monotonic() + wait
        while True:
            with open(self.path, "rb") as handle:
                handle.seek(self.start)
                lines = [line for line in handle.read().decode(errors="replace").splitlines()
                         if "deploytoken.held" in line and ("own pillar" in line or FRESH in line)]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines


def test_a_plain_state_apply_takes_the_pillar_the_master_compiled_for_it(salt_cli, salt_minion, token, guarded):
    """No second pillar round trip: the job's own pillar was compiled by the master for this job, with no
    pillar= on its command line."""
    sls, marker = guarded
    token.take("alice")
    log = MinionLog(salt_minion)
    ret = apply_as(salt_cli, "alice", sls, "test=False")
    assert ret.returncode == 0, ret
    (line,) = log.guard_lines()
    assert "the token data comes from job " in line and "'s own pillar, compiled by the master for it" in line
    log = MinionLog(salt_minion)
    assert call_as(salt_minion, "alice", sls).returncode == 0
    (line,) = log.guard_lines()
    assert "own pillar, compiled by the master for it" in line, line


@pytest.fixture
def snapshot_of_bob(salt_run, token):
    """Bob's own signed pillar from when he held the token, replayed after Alice took it."""
    token.take("bob")
    snapshot = salt_run.run("pillar.show_pillar", MINION).data["deploytoken"]
    assert snapshot["signature"] and snapshot["login"] == "bob"
    assert salt_run.run("deploytoken.release", env={"SUDO_USER": "bob"}).returncode == 0
    token.take("alice")
    return with_pillar({"deploytoken": snapshot})


def guard_answer(data):
    """The guard's state return in a job's answer: keyed as a state run answers, or the bare one state.low
    returns."""
    if isinstance(data, dict) and "comment" in data:
        return data
    (state,) = [value for key, value in data.items() if key.startswith("deploytoken_|")]
    return state


def every_function(sls_dir, sls):
    """Each function of Salt's state module that runs states and takes pillar=: its arguments, and why the guard
    must not take the job's own pillar (what the minion logs)."""
    held = '{"guard": {"deploytoken": ["held"]}}'
    low = '{"state": "deploytoken", "fun": "held", "name": "guard", "__id__": "guard"}'
    apply = "the job was given pillar="
    return [
        (("state.apply", sls), apply),
        (("state.sls", sls), apply),
        (("state.highstate",), apply),
        (("state.top", "dttop.sls"), apply),
        (("state.sls_id", "deploy token held", sls), "state.sls_id is not one of "),
        (("state.high", held), "state.high is not one of "),
        (("state.low", low), "state.low is not one of "),
        (("state.template", str(sls_dir / f"{sls}.sls")), "state.template is not one of "),
        (("state.template_str", "guard:\n  deploytoken.held: []\n"), "state.template_str is not one of "),
        (("state.request", sls), "state.request is not one of "),  # in test mode
        (("state.run_request",), "state.run_request is not one of "),  # runs the request's pillar=
    ]


def test_a_replayed_snapshot_is_blocked_on_every_function_that_takes_pillar(
        salt_cli, salt_minion, snapshot_of_bob, guarded, write_sls, sls_dir):
    sls, marker = guarded
    write_sls("dttop", f"base:\n  '{MINION}':\n    - {sls}\n")
    write_sls("top", f"base:\n  '{MINION}':\n    - {sls}\n")
    try:
        for args, why in every_function(sls_dir, sls):
            log = MinionLog(salt_minion)
            run_args = args if args[0] == "state.run_request" else (*args, snapshot_of_bob)
            ret = salt_cli.run(*run_args, minion_tgt=MINION, env={"SUDO_USER": "bob"})
            assert guard_answer(ret.data)["comment"].startswith(ALICE_HOLDS), (args, ret)
            assert ret.returncode == (0 if args[0] == "state.request" else 1), (args, ret)
            (line,) = log.guard_lines()
            assert FRESH + why in line, (args, line)
            assert not marker.exists(), args
        # state.single hands its keyword arguments to the state too, and the guard takes none: Salt refuses.
        ret = salt_cli.run("state.single", "deploytoken.held", "name=guard", snapshot_of_bob, minion_tgt=MINION,
                           env={"SUDO_USER": "bob"})
        assert ret.returncode == 1
        assert "'pillar' is an invalid keyword argument for 'deploytoken.held'" in ret.data, ret
    finally:
        salt_cli.run("state.clear_request", minion_tgt=MINION)


def test_salt_call_with_a_replayed_snapshot_asks_the_master(salt_minion, snapshot_of_bob, guarded):
    sls, marker = guarded
    log = MinionLog(salt_minion)
    ret = call_as(salt_minion, "bob", sls, snapshot_of_bob)
    assert ret.returncode == 1
    assert guard_of(ret)["comment"].startswith(ALICE_HOLDS)
    (line,) = log.guard_lines()
    assert FRESH + "the job was given pillar=" in line, line
    assert not marker.exists()


def test_a_token_taken_by_someone_else_while_a_slow_job_renders_is_seen_by_its_guard(
        salt_cli, salt_run, write_sls, marker_dir, token):
    """The job's own pillar is taken as of its start for at most OWN_PILLAR_AGE seconds: a job whose state files
    take 7 s to render asks the master afresh, and sees that Bob took the token meanwhile."""
    marker = marker_dir / "deployed"
    sls = write_sls("dtslow", "{% set _ = salt['test.sleep'](7) %}\n" + GUARDED.format(marker=marker))
    token.take("alice")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(apply_as, salt_cli, "alice", sls)
        time.sleep(3)
        forced = salt_run.run("deploytoken.release", "force=True", "reason=urgent", env={"SUDO_USER": "bob"})
        assert forced.returncode == 0, forced
        token.take("bob")
        ret = running.result(timeout=120)
    assert ret.returncode == 1
    assert guard_of(ret)["comment"].startswith("Deploy token is held by Bob Jones (bob) since "), ret
    assert not marker.exists()
