"""deploytoken.held and the deploytoken ext_pillar on the real master and minion: the first tests through
the real salt and salt-call, the rest with jobs published from this process (``salt_local``), the same
job to the same minion without the CLI's start-up."""


import pytest

from guard_helpers import MINION, unreadable_store

pytestmark = pytest.mark.daemons


def apply_as(salt_cli, login, sls, *args):
    return salt_cli.run("state.apply", sls, *args, minion_tgt=MINION, env={"SUDO_USER": login})


def call_as(salt_minion, login, sls, *args):
    return salt_minion.salt_call_cli(timeout=120).run("state.apply", sls, *args, env={"SUDO_USER": login})


def guard_of(ret):
    (state,) = [value for key, value in ret.data.items() if key.startswith("deploytoken_|")]
    return state


def test_holder_deploys_and_others_are_stopped_at_the_guard(salt_cli, salt_minion, token, guarded):
    sls, marker = guarded
    token.take("alice", reason="upgrade postgres")

    bob = apply_as(salt_cli, "bob", sls)
    assert bob.returncode == 1
    comment = guard_of(bob)["comment"]
    assert comment.startswith("Deploy token is held by Alice Smith (alice) since ")
    assert '"upgrade postgres", so Bob Jones (bob) may not deploy on collect-test.' in comment
    assert "salt-run deploytoken.acquire wait=True, or ask Alice Smith to run salt-run deploytoken.release" in comment
    assert not marker.exists()

    alice = apply_as(salt_cli, "alice", sls)
    assert alice.returncode == 0, alice
    assert guard_of(alice)["comment"].startswith("Alice Smith (alice) holds the deploy token, since ")
    assert marker.read_text().strip() == "deployed"


def test_salt_call_checks_the_caller(salt_minion, token, guarded):
    sls, marker = guarded
    token.take("alice")

    bob = call_as(salt_minion, "bob", sls)
    assert bob.returncode == 1
    assert "so Bob Jones (bob) may not deploy on collect-test" in guard_of(bob)["comment"]
    assert not marker.exists()

    alice = call_as(salt_minion, "alice", sls)
    assert alice.returncode == 0, alice
    assert marker.exists()


def test_nobody_holding_blocks(salt_local, token, guarded):
    sls, marker = guarded
    ret = apply_as(salt_local, "alice", sls)
    assert ret.returncode == 1
    assert guard_of(ret)["comment"] == (
        "Nobody holds the deploy token, so Alice Smith (alice) may not deploy on collect-test. "
        "Take it first with: salt-run deploytoken.acquire reason='...'"
    )
    assert not marker.exists()


def test_unreadable_store_blocks(salt_local, token, guarded, store_path):
    sls, marker = guarded
    token.take("alice")
    with unreadable_store(store_path):
        token.forget()
        ret = apply_as(salt_local, "alice", sls)
    token.forget()
    assert ret.returncode == 1
    comment = guard_of(ret)["comment"]
    assert comment.startswith("The deploy token cannot be read, so nobody may deploy: ")
    assert str(store_path) in comment and comment.endswith("Check with salt-run deploytoken.status.")
    assert not marker.exists()


def test_pillar_follows_the_holder_between_two_runs(salt_local, runner, token, guarded):
    sls, marker = guarded
    token.take("alice")
    assert apply_as(salt_local, "alice", sls).returncode == 0
    marker.unlink()

    # No refresh_pillar and no waiting: the runner drops the ext_pillar's read cache when it changes the holder.
    released = runner.run("deploytoken.release", env={"SUDO_USER": "alice"})
    assert released.returncode == 0, released
    taken = runner.run("deploytoken.acquire", env={"SUDO_USER": "bob"})
    assert taken.returncode == 0, taken

    ret = apply_as(salt_local, "alice", sls)
    assert ret.returncode == 1
    assert guard_of(ret)["comment"].startswith("Deploy token is held by Bob Jones (bob) since ")
    assert not marker.exists()


def test_test_mode_reports_without_blocking(salt_local, token, guarded):
    sls, marker = guarded
    token.take("alice")
    blocked = guard_of(apply_as(salt_local, "bob", sls, "test=True"))
    assert blocked["result"] is None
    assert blocked["comment"].startswith("Deploy token is held by Alice Smith (alice) since ")
    passing = guard_of(apply_as(salt_local, "alice", sls, "test=True"))
    assert passing["result"] is True and passing["comment"].startswith("Alice Smith (alice) holds the deploy token")
    assert not marker.exists()


def test_the_old_pillar_override_is_refused_by_name(salt_local, token, guarded, pillar_sls):
    sls, marker = guarded
    pillar_sls("deploytoken:\n  override: database down, agreed with Alice\n")
    ret = apply_as(salt_local, "bob", sls)
    assert ret.returncode == 1
    assert guard_of(ret)["comment"] == (
        "The pillar key deploytoken:override is no longer obeyed, so nothing may deploy: remove it, and ask for an "
        "override with salt-run deploytoken.override reason='...' targets='...', which the history keeps."
    )
    assert not marker.exists()


def test_status_says_the_ext_pillar_is_configured(runner):
    ret = runner.run("deploytoken.status")
    assert ret.returncode == 0 and ret.data["ext_pillar"] is True
