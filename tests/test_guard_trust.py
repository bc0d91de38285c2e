"""The guard believes only the master: token data given with pillar= on the command line, replayed, or
made for another minion is refused, through the real salt CLI against the real master and minion."""

import json
import pathlib
import time

import pytest
import salt.crypt

from conftest import PILLAR_MAX_AGE
from guard_helpers import MINION
from test_guard_states import GUARDED, apply_as, guard_of

pytestmark = pytest.mark.daemons

CHANGED = ("The deploy token data in this run's pillar was changed after the master wrote it (a pillar= on the "
           "command line?), so nothing may deploy.")


@pytest.fixture
def guarded(write_sls, marker_dir):
    marker = marker_dir / "deployed"
    return write_sls("dttrust", GUARDED.format(marker=marker)), marker


def with_pillar(data):
    return "pillar=" + json.dumps(data)


def test_a_spoofed_holder_on_the_command_line_is_refused(salt_cli, token, guarded):
    sls, marker = guarded
    token.take("alice")
    spoof = {"deploytoken": {"held": True, "login": "bob", "holder": "Bob Jones", "error": None}}
    ret = apply_as(salt_cli, "bob", sls, with_pillar(spoof))
    assert ret.returncode == 1
    assert guard_of(ret)["comment"] == CHANGED
    assert not marker.exists()


@pytest.mark.parametrize("key, value", [("login", "bob"), ("holder", "Bob Jones"), ("held", False),
                                        ("error", "x"), ("claim", "0123456789abcdef")])
def test_each_single_key_changed_on_the_command_line_is_refused(salt_cli, token, guarded, key, value):
    sls, marker = guarded
    token.take("alice")
    ret = apply_as(salt_cli, "bob", sls, with_pillar({"deploytoken": {key: value}}))
    assert ret.returncode == 1
    assert guard_of(ret)["comment"] == CHANGED
    assert not marker.exists()


def test_the_holder_passes_with_other_pillar_on_the_command_line(salt_cli, token, guarded):
    sls, marker = guarded
    token.take("alice")
    ret = apply_as(salt_cli, "alice", sls, with_pillar({"other": 1}))
    assert ret.returncode == 0, ret
    assert marker.exists()


def test_a_snapshot_for_another_minion_is_refused(salt_cli, salt_run, token, guarded):
    sls, marker = guarded
    token.take("bob")
    other = salt_run.run("pillar.show_pillar", "kingfisher-other")
    assert other.returncode == 0, other
    ret = apply_as(salt_cli, "bob", sls, with_pillar({"deploytoken": other.data["deploytoken"]}))
    assert ret.returncode == 1
    assert guard_of(ret)["comment"] == (
        f"The deploy token data in this run's pillar was made for 'kingfisher-other', not for {MINION}, so nothing "
        f"may deploy: run the deployment against {MINION} itself."
    )
    assert not marker.exists()


def test_a_replayed_snapshot_is_refused_once_older_than_the_bound(salt_cli, salt_run, token, guarded):
    sls, marker = guarded
    token.take("bob")
    snapshot = salt_run.run("pillar.show_pillar", MINION).data["deploytoken"]
    assert snapshot["signature"] and snapshot["login"] == "bob"
    assert salt_run.run("deploytoken.release", env={"SUDO_USER": "bob"}).returncode == 0
    token.take("alice")
    time.sleep(PILLAR_MAX_AGE + 1)
    ret = apply_as(salt_cli, "bob", sls, with_pillar({"deploytoken": snapshot}))
    assert ret.returncode == 1
    assert guard_of(ret)["comment"].startswith(
        f"The deploy token data in this run's pillar was issued at {snapshot['issued']}, not within 30 s of now"
    )
    assert not marker.exists()


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
