"""Every change needs the token: the ``deploytoken`` executor on a real minion, through the real ``salt`` and
``salt-call``. The minion here is configured as docs/guards.md says (``module_executors: [deploytoken,
direct_call]``), and its state files do not include the guard: a run meets the token all the same."""

import importlib.util
import pathlib
import re
import shutil
import tempfile

import pytest
import salt.config
from salt.exceptions import CommandExecutionError

from conftest import REPO
from deploytoken.guard import changes

pytestmark = pytest.mark.daemons

GUARDED_ID = "collect-guarded"
# The team's other state files: none of them includes deploytoken-guard.
APP = """\
the app:
  file.managed:
    - name: {marker}
    - contents: "{{{{ pillar.get('python_apps', {{}}).get('myapp', {{}}).get('git', {{}}).get('branch', 'main') }}}}"

the other:
  file.managed:
    - name: {other}
    - contents: other
"""


@pytest.fixture(scope="module")
def guarded_minion(salt_master, session_dir):
    """A second minion of the shared master with the executor turned on, serving this checkout's modules
    from their folders (a file root needs a sync first, and a sync is itself a change)."""
    overrides = {
        "log_level_logfile": "info",
        "module_executors": ["deploytoken", "direct_call"],
        "module_dirs": [str(REPO / "_modules")],
        "states_dirs": [str(REPO / "_states")],
        "executor_dirs": [str(REPO / "_executors")],
        "utils_dirs": [str(REPO / "_utils")],
        "deploytoken": {"store_memory": str(session_dir / "guarded-store-memory.json"),
                        "reads": ["hashutil.digest"]},
    }
    minion = salt_master.salt_minion_daemon(GUARDED_ID, overrides=overrides)
    with minion.started():
        yield minion


@pytest.fixture
def app(sls_dir, guarded_minion):
    folder = pathlib.Path(tempfile.mkdtemp(prefix="dtx-", dir="/tmp"))
    marker, other = folder / "app", folder / "other"
    path = sls_dir / "dtxapp.sls"
    path.write_text(APP.format(marker=marker, other=other))
    yield "dtxapp", marker, other, folder
    path.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def as_(salt_cli, login, fun, *args):
    return salt_cli.run(fun, *args, minion_tgt=GUARDED_ID, env={"SUDO_USER": login})


def refused(ret, fun):
    """The executor's refusal as ``salt`` shows it: exit 1 and the sentence, nothing run."""
    assert ret.returncode != 0, ret
    text = ret.data if isinstance(ret.data, str) else ret.stdout
    assert f"{fun} was not run: " in text, ret
    return text


def test_a_non_holder_changes_nothing_however_the_change_is_asked_for(salt_cli, token, app):
    sls, marker, other, folder = app
    touched = folder / "touched"
    keep = folder / "keep"
    keep.write_text("keep")
    token.take("alice", reason="upgrade postgres")

    text = refused(as_(salt_cli, "bob", "state.sls", sls), "state.sls")
    assert "deploy token is held by Alice Smith (alice)" in text
    assert "so Bob Jones (bob) may not deploy on collect-guarded" in text
    assert "salt-run deploytoken.acquire wait=True, or ask Alice Smith to run salt-run deploytoken.release" in text
    refused(as_(salt_cli, "bob", "state.sls_id", "the app", sls), "state.sls_id")
    refused(as_(salt_cli, "bob", "state.apply", sls), "state.apply")
    refused(as_(salt_cli, "bob", "cmd.run", f"touch {touched}"), "cmd.run")
    refused(as_(salt_cli, "bob", "file.remove", str(keep)), "file.remove")
    refused(as_(salt_cli, "bob", "file.touch", str(touched)), "file.touch")
    assert not marker.exists() and not other.exists() and not touched.exists()
    assert keep.read_text() == "keep"


def test_the_holder_changes_servers_every_way_including_a_branchs_pillar(salt_cli, token, app):
    sls, marker, other, folder = app
    token.take("alice")

    ret = as_(salt_cli, "alice", "state.sls", sls)
    assert ret.returncode == 0, ret
    assert marker.read_text().strip() == "main" and other.exists()

    pillar = '{"python_apps": {"myapp": {"git": {"branch": "BRANCH_NAME"}}}}'
    ret = as_(salt_cli, "alice", "state.apply", sls, f"pillar={pillar}")
    assert ret.returncode == 0, ret
    assert marker.read_text().strip() == "BRANCH_NAME"

    ret = as_(salt_cli, "alice", "state.sls_id", "the other", sls)
    assert ret.returncode == 0, ret
    ret = as_(salt_cli, "alice", "cmd.run", f"touch {folder / 'touched'}")
    assert ret.returncode == 0, ret
    assert (folder / "touched").exists()


def test_reading_stays_open_to_everyone(salt_cli, token, app):
    sls, marker, other, folder = app
    token.take("alice")
    assert as_(salt_cli, "bob", "test.ping").data is True
    ret = as_(salt_cli, "bob", "grains.item", "os")
    assert ret.returncode == 0 and "os" in ret.data, ret
    ret = as_(salt_cli, "bob", "file.file_exists", str(folder))
    assert ret.returncode == 0 and ret.data is False, ret
    ret = as_(salt_cli, "bob", "kingfisher.tmux_sessions", "users=root")
    assert ret.returncode == 0 and "sessions" in ret.data, ret
    ret = as_(salt_cli, "bob", "state.apply", sls, "test=True")
    assert ret.returncode == 0, ret
    assert all(state["result"] is None for state in ret.data.values()), ret.data
    assert not marker.exists()


def test_with_nobody_holding_every_change_is_refused(salt_cli, token, app):
    sls, marker, other, folder = app
    for login in ("alice", "bob"):
        text = refused(as_(salt_cli, login, "state.sls", sls), "state.sls")
        assert "obody holds the deploy token" in text
        refused(as_(salt_cli, login, "cmd.run", f"touch {folder / 'x'}"), "cmd.run")
    assert not marker.exists() and not (folder / "x").exists()


def test_salt_call_by_a_local_user_without_the_token_is_refused(guarded_minion, token, app):
    sls, marker, other, folder = app
    token.take("alice")
    cli = guarded_minion.salt_call_cli(timeout=120)
    ret = cli.run("cmd.run", f"touch {folder / 'x'}", env={"SUDO_USER": "bob"})
    assert ret.returncode != 0
    assert "cmd.run was not run: " in ret.stderr and "so Bob Jones (bob) may not deploy" in ret.stderr, ret
    ret = cli.run("state.sls", sls, env={"SUDO_USER": "bob"})
    assert ret.returncode != 0 and "state.sls was not run: " in ret.stderr, ret
    assert not marker.exists() and not (folder / "x").exists()
    ret = cli.run("cmd.run", f"touch {folder / 'x'}", env={"SUDO_USER": "alice"})
    assert ret.returncode == 0, ret
    assert (folder / "x").exists()


def test_a_function_in_neither_list_is_refused_with_how_to_open_it(salt_cli, token, guarded_minion):
    token.take("alice")
    text = refused(as_(salt_cli, "bob", "hashutil.base64_encodestring", "x"), "hashutil.base64_encodestring")
    assert ("hashutil.base64_encodestring is not in deploytoken's table of functions, so it counts as a change "
            "(if it only reads, open it with deploytoken:reads in the server's configuration)") in text
    # The minion's configuration opens hashutil.digest.
    ret = as_(salt_cli, "bob", "hashutil.digest", "x")
    assert ret.returncode == 0 and isinstance(ret.data, str), ret


def test_an_override_lets_ad_hoc_changes_through_as_it_lets_the_guard_through(salt_cli, runner, token, app):
    sls, marker, other, folder = app
    token.take("alice")
    made = runner.run("deploytoken.override", "reason=database down, agreed with Alice", f"targets={GUARDED_ID}",
                      "minutes=5", env={"SUDO_USER": "bob"})
    assert made.returncode == 0, made
    try:
        ret = as_(salt_cli, "bob", "cmd.run", f"touch {folder / 'x'}")
        assert ret.returncode == 0 and (folder / "x").exists(), ret
    finally:
        runner.run("deploytoken.override", "cancel=True", "reason=test over", env={"SUDO_USER": "bob"})
        runner.run("deploytoken.flush")
    refused(as_(salt_cli, "bob", "cmd.run", f"touch {folder / 'y'}"), "cmd.run")


def test_the_example_minion_config_turns_the_executor_on(tmp_path):
    (tmp_path / "minion.d").mkdir()
    shutil.copy(REPO / "examples" / "minion.d" / "deploytoken.conf", tmp_path / "minion.d")
    (tmp_path / "minion").write_text("")
    opts = salt.config.minion_config(str(tmp_path / "minion"))
    assert opts["module_executors"] == ["deploytoken", "direct_call"]
    assert changes.Settings.from_opts(opts) == changes.Settings()


ORCH = """\
touch it:
  salt.function:
    - name: cmd.run
    - tgt: {minion}
    - arg:
      - touch {path}
"""


def test_an_orchestration_reaches_the_minion_as_the_person_who_ran_it(salt_run, sls_dir, token, app):
    sls, marker, other, folder = app
    touched = folder / "orchestrated"
    (sls_dir / "dtxorch.sls").write_text(ORCH.format(minion=GUARDED_ID, path=touched))
    try:
        token.take("alice")
        bob = salt_run.run("state.orchestrate", "dtxorch", env={"SUDO_USER": "bob"})
        assert bob.returncode != 0 and not touched.exists(), bob
        assert "cmd.run was not run: " in bob.stdout, bob
        alice = salt_run.run("state.orchestrate", "dtxorch", env={"SUDO_USER": "alice"})
        assert alice.returncode == 0 and touched.exists(), alice
    finally:
        (sls_dir / "dtxorch.sls").unlink()


# The table itself, without daemons


@pytest.mark.parametrize("fun", [
    "test.ping", "grains.item", "pillar.items", "kingfisher.busy", "pkg.list_pkgs", "pkg.list_upgrades",
    "pkg.version", "file.file_exists", "git.revision", "git.current_branch", "state.show_sls", "status.uptime",
    "sys.doc", "saltutil.find_job", "saltutil.refresh_pillar", "state.test",
])
def test_readers_are_open(fun):
    assert changes.kind(fun).change is False


@pytest.mark.parametrize("fun", [
    "state.apply", "state.sls", "state.sls_id", "state.highstate", "state.top", "state.single", "state.low",
    "state.high", "state.template", "state.template_str", "state.pkg", "state.request", "state.run_request",
    "cmd.run", "cmd.script", "file.remove", "file.touch", "file.replace", "file.check_perms", "pkg.install",
    "pkg.upgrade", "pkg.remove", "pkg.purge", "pkg.autoremove", "service.restart", "service.reload",
    "service.stop", "service.disable", "system.reboot", "system.shutdown", "user.add", "group.members",
    "git.pull", "archive.extract", "mount.mount", "cron.set_job", "saltutil.sync_all", "grains.setval",
    "saltutil.kill_job", "pip.install", "nosuchmodule.fun",
])
def test_changers_need_the_token(fun):
    assert changes.kind(fun).change is True


def test_a_state_run_in_test_mode_reads():
    assert changes.kind("state.apply", test=True).change is False
    assert changes.kind("cmd.run", test=True).change is True
    assert changes.test_mode({"test": True}, {}) and changes.test_mode({}, {"test": True})
    assert not changes.test_mode({"test": False}, {"test": True}) and not changes.test_mode({}, {})


def test_the_configuration_opens_and_closes_and_closing_wins():
    settings = changes.Settings.from_opts({"deploytoken": {"reads": ["cmd.run", "hashutil.*"], "changes": ["test.*"]}})
    assert changes.kind("cmd.run", settings).change is False
    assert changes.kind("hashutil.digest", settings).change is False
    assert changes.kind("test.ping", settings).change is True
    both = changes.Settings.from_opts({"deploytoken": {"reads": ["cmd.run"], "changes": ["cmd.run"]}})
    assert changes.kind("cmd.run", both).change is True


@pytest.mark.parametrize("value", [7, [""], [1], {"cmd.run": True}])
def test_a_malformed_list_is_refused_by_name(value):
    with pytest.raises(ValueError, match="deploytoken:reads in this server's configuration must be a list"):
        changes.Settings.from_opts({"deploytoken": {"reads": value}})


def test_the_guide_lists_exactly_the_table_of_readers():
    """docs/guards.md's table of the functions open to everyone is the code's ``READS``, row for row."""
    text = (REPO / "docs" / "guards.md").read_text()
    rows = {}
    for line in text.splitlines():
        found = re.fullmatch(r"\| `(\w+)` \| (.*) \|", line)
        if found:
            rows[found[1]] = tuple(re.findall(r"`([^`]+)`", found[2]))
    assert rows == changes.READS
    (writers,) = [line for line in text.split("\n\n") if "(`deploytoken.guard.changes.WRITERS`)" in line]
    assert re.findall(r"`(\w+)`", writers.split("WRITERS`): ")[1]) == list(changes.WRITERS)


def load_executor():
    """The executor module as Salt loads it, under a name of its own (the runner and states share its basename)."""
    spec = importlib.util.spec_from_file_location("dt_executor_under_test", REPO / "_executors" / "deploytoken.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_salt_ssh_call_without_token_data_is_refused_naming_the_roster_setting(tmp_path):
    executor = load_executor()
    opts = {"id": "kf", "pki_dir": str(tmp_path), "cachedir": str(tmp_path), "pillar": {}}
    with pytest.raises(CommandExecutionError) as raised:
        executor.execute(opts, {"fun": "cmd.run", "jid": "1"}, None, ["touch /x"], {})
    assert str(raised.value).startswith("cmd.run was not run: cmd.run changes the server, and this run carries no "
                                        "deploy token data to check it with. Under salt-ssh, set roster: deploytoken")
    assert executor.execute(opts, {"fun": "test.ping", "jid": "1"}, None, [], {}) is None


def test_a_malformed_table_setting_refuses_every_call_by_name(tmp_path):
    executor = load_executor()
    opts = {"id": "kf", "pki_dir": str(tmp_path), "cachedir": str(tmp_path), "deploytoken": {"reads": 7}}
    with pytest.raises(CommandExecutionError, match=r"^The deploy token check is misconfigured, so test.ping may not "
                                                    r"run: deploytoken:reads in this server's configuration"):
        executor.execute(opts, {"fun": "test.ping"}, None, [], {})
