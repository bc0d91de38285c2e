"""The guard believes only the master, asked afresh: token data given with pillar= on the command line or a
replayed snapshot counts for nothing, through the real salt CLI against the real master and minion."""

import json
import pathlib

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
