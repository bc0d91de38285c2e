"""The guard believes only the master: token data given with pillar= on the command line, replayed, or
made for another minion is refused, through the real salt CLI against the real master and minion."""

import json
import time

import pytest

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
