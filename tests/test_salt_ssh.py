"""deploytoken.held under salt-ssh: real operators run ``sudo salt-ssh`` with their own key and config
against a real sshd; the guard on the target judges the operator, never the SSH account (root)."""

import json
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

from conftest import REPO
from guard_helpers import GUARDED
from kingfisher_fixtures import wait_for
from ssh_fixtures import SshWorld, guard_of, operator_venv
from test_setup_cli import CONSENT, repos_arg


def without_age(sentence):
    return re.sub(r" \(\d+ (s|min)\)", "", sentence)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    return tmp_path_factory.mktemp("shared") / "deploytoken.sqlite"


@pytest.fixture(scope="module")
def team(ssh_world, operators, shared_store):
    """ada, ben and cy configured on one shared store (the machine everyone uses with sudo)."""
    for op in operators.values():
        ssh_world.configure(op, {"sqlite": {"path": str(shared_store)}})
    return operators


@pytest.fixture
def guarded(ssh_world, sls_dir, tmp_path):
    """``guarded(name)`` writes a guarded sls whose deployment writes ``<tmp>/<name>``; returns (sls, marker)."""
    ssh_world.forget_memory()

    def make(name="deployed"):
        marker = tmp_path / name
        (sls_dir / f"dtssh{name}.sls").write_text(GUARDED.format(marker=marker))
        return f"dtssh{name}", marker

    yield make
    for path in sls_dir.glob("dtssh*.sls"):
        path.unlink()
    ssh_world.forget_memory()


@pytest.fixture
def token(ssh_world, team):
    """``token.take(op)`` / ``token.give(op)`` through the operator's own salt-run (sudo)."""

    class Token:
        def take(self, op, reason="deploy over salt-ssh"):
            ran = ssh_world.salt_run(op, "deploytoken.acquire", f"reason={reason}")
            assert ran.returncode == 0, ran
            return ran.data

        def give(self, op):
            ssh_world.salt_run(op, "deploytoken.release", "note=done")

    tok = Token()
    yield tok
    for op in team.values():
        tok.give(op)


def test_holder_deploys_and_another_operator_is_stopped(ssh_world, team, token, guarded):
    ada, ben = team["ada"], team["ben"]
    sls, marker = guarded()
    token.take(ada, reason="upgrade postgres")

    blocked = ssh_world.salt_ssh(ben, "state.apply", sls)
    assert blocked.returncode != 0
    comment = guard_of(blocked.data)["comment"]
    assert comment.startswith(f"Deploy token is held by Ada Lovelace ({ada.login}) since ")
    assert f'"upgrade postgres", so Ben Okafor ({ben.login}) may not deploy on kf.' in comment
    assert not marker.exists()

    dry = ssh_world.salt_ssh(ben, "state.apply", sls, "test=True")
    assert guard_of(dry.data)["result"] is None
    assert without_age(guard_of(dry.data)["comment"]) == without_age(comment)
    assert not marker.exists()

    passed = ssh_world.salt_ssh(ada, "state.apply", sls)
    assert passed.returncode == 0, passed
    assert guard_of(passed.data)["comment"].startswith(f"Ada Lovelace ({ada.login}) holds the deploy token, since ")
    assert marker.read_text().strip() == "deployed"


def test_the_modules_reach_the_target_from_the_installed_package_in_salt_ssh_thin(ssh_world, team, token, guarded):
    ada = team["ada"]
    roots = yaml.safe_load((ssh_world.confdir(ada) / "master").read_text())["file_roots"]["base"]
    assert not [path for root in roots for path in pathlib.Path(root).glob("_*")], roots  # no _modules, _states...
    sls, marker = guarded()
    token.take(ada)
    passed = ssh_world.salt_ssh(ada, "state.apply", sls)
    assert passed.returncode == 0, passed
    assert guard_of(passed.data)["comment"].startswith(f"Ada Lovelace ({ada.login}) holds the deploy token, since ")
    assert marker.read_text().strip() == "deployed"
    # On the target, the modules are the package's, in the thin with its entry point; none came from a file root.
    thin = ssh_world.thin / "py3"
    for kind in ("modules", "states"):
        for module in (REPO / f"_{kind}").glob("*.py"):
            assert (thin / "deploytoken" / "shells" / kind / module.name).read_bytes() == module.read_bytes()
    entry_points = (thin / "deploytoken.dist-info" / "entry_points.txt").read_text()
    assert "deploytoken = deploytoken.loader:salt_dirs" in entry_points
    extmods = ssh_world.thin / "running_data" / "var" / "cache" / "salt" / "minion" / "extmods"
    assert not list(extmods.rglob("*.py"))


def test_without_the_package_the_target_has_no_guard_and_salt_run_no_runner(
    sshd, operators, sls_dir, guarded, shared_store
):
    """What an operator sees when the Python that runs their salt-ssh lacks deploytoken (docs/salt-ssh.md)."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="dtsshbare-", dir="/tmp"))
    try:
        bare = SshWorld(root, sshd, operators, sls_dir, operator_venv(root / "venv", package=None))
        ada = operators["ada"]
        bare.configure(ada, {"sqlite": {"path": str(shared_store)}})
        sls, marker = guarded()
        ran = bare.salt_ssh(ada, "state.apply", sls)
        assert ran.returncode != 0
        assert guard_of(ran.data)["comment"] == (
            f"State 'deploytoken.held' was not found in SLS '{sls}'\nReason: 'deploytoken.held' is not available.\n")
        assert not marker.exists()
        assert bare.salt_run(ada, "deploytoken.status").data == "'deploytoken.status' is not available."
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_token_data_given_with_pillar_on_the_command_line_blocks(ssh_world, team, token, guarded):
    ada, ben = team["ada"], team["ben"]
    sls, marker = guarded()
    token.take(ada)
    spoof = json.dumps({"deploytoken": {"login": ben.login, "holder": "Ben Okafor"}})
    ran = ssh_world.salt_ssh(ben, "state.apply", sls, f"pillar={spoof}")
    assert ran.returncode != 0
    assert guard_of(ran.data)["comment"] == (
        "The deploy token data in this run's pillar was changed after the master wrote it (a pillar= on the "
        "command line?), so nothing may deploy."
    )
    assert not marker.exists()
    other = ssh_world.salt_ssh(ada, "state.apply", sls, 'pillar={"other": 1}')
    assert other.returncode == 0, other
    assert marker.exists()


def test_nobody_holding_blocks(ssh_world, team, token, guarded):
    sls, marker = guarded()
    ran = ssh_world.salt_ssh(team["ada"], "state.apply", sls)
    assert ran.returncode != 0
    assert guard_of(ran.data)["comment"] == (
        f"Nobody holds the deploy token, so Ada Lovelace ({team['ada'].login}) may not deploy on kf. "
        "Take it first with: salt-run deploytoken.acquire reason='...'"
    )
    assert not marker.exists()


def test_a_token_held_by_root_lets_nobody_else_through(ssh_world, team, token, guarded):
    sls, marker = guarded()
    ada = team["ada"]
    # root at a root shell (no sudo): the holder's login is root, the SSH account on the target.
    held = ssh_world.salt_run(ada, "deploytoken.acquire", "reason=as root", as_root=True)
    assert held.returncode == 0 and held.data["login"] == "root", held
    try:
        ran = ssh_world.salt_ssh(ada, "state.apply", sls)
        assert ran.returncode != 0
        assert "Deploy token is held by root since " in guard_of(ran.data)["comment"]
        assert f"so Ada Lovelace ({ada.login}) may not deploy on kf" in guard_of(ran.data)["comment"]
        assert not marker.exists()
    finally:
        ssh_world.salt_run(ada, "deploytoken.release", "note=done", as_root=True)


@pytest.mark.parametrize("owner", ["cy", "ben"])
def test_a_key_that_is_not_the_operators_blocks(ssh_world, team, token, guarded, operators, owner):
    ada, other = team["ada"], operators[owner]
    sls, marker = guarded()
    token.take(ada)
    with ssh_world.logging_in_with(ada, other.key):
        ran = ssh_world.salt_ssh(ada, "state.apply", sls)
    assert ran.returncode != 0
    comment = guard_of(ran.data)["comment"]
    if owner == "cy":  # a key listed for nobody
        assert comment.startswith("The SSH key that logged in to kf (SHA256:")
        assert f"is not listed for Ada Lovelace ({ada.login}) in deploytoken:people" in comment
    else:
        assert comment.startswith(f"Ada Lovelace ({ada.login}) runs salt-ssh, but the SSH key that logged in to kf "
                                  "belongs to someone else: SHA256:")
        assert f"({other.login}), so Ada Lovelace ({ada.login}) may not deploy" in comment
    assert not marker.exists()


def test_two_private_stores_cannot_both_deploy(ssh_world, team, guarded, tmp_path, shared_store):
    ada, ben = team["ada"], team["ben"]
    stores = {op.role: tmp_path / f"{op.role}.sqlite" for op in (ada, ben)}
    try:
        for op in (ada, ben):
            ssh_world.configure(op, {"sqlite": {"path": str(stores[op.role])}})
            assert ssh_world.salt_run(op, "deploytoken.acquire", "reason=my own token").returncode == 0
        first_sls, first = guarded("first")
        second_sls, second = guarded("second")
        assert ssh_world.salt_ssh(ada, "state.apply", first_sls).returncode == 0
        assert first.read_text().strip() == "deployed"

        ran = ssh_world.salt_ssh(ben, "state.apply", second_sls)
        assert ran.returncode != 0
        comment = guard_of(ran.data)["comment"]
        assert comment.startswith(f"kf obeys the deploy token of SQLite store {stores['ada']} on ")
        assert f"but this run's token comes from SQLite store {stores['ben']} on " in comment
        assert f"remove {ssh_world.memory} on kf first." in comment
        assert not second.exists() and first.read_text().strip() == "deployed"
    finally:
        for op in (ada, ben):
            ssh_world.salt_run(op, "deploytoken.release", "note=done")
            ssh_world.configure(op, {"sqlite": {"path": str(shared_store)}})


def test_overrides_are_shared_through_the_store_and_a_private_one_passes_nowhere(
    ssh_world, team, token, guarded, tmp_path, shared_store
):
    ada, ben = team["ada"], team["ben"]
    sls, marker = guarded()
    token.take(ada)
    assert ssh_world.salt_ssh(ada, "state.apply", sls).returncode == 0  # kf obeys the shared store now
    marker.unlink()

    made = ssh_world.salt_run(ben, "deploytoken.override", "reason=db down", "targets=kf", "minutes=5")
    assert made.returncode == 0, made
    passed = ssh_world.salt_ssh(ben, "state.apply", sls)
    assert passed.returncode == 0, passed
    assert guard_of(passed.data)["comment"].startswith("OVERRIDE: the deploy token guard PASSED for Ben Okafor ")
    marker.unlink()
    # The holder, with a cachedir of her own, sees the override and ends it; the shared history keeps both once.
    listed = ssh_world.salt_run(ada, "deploytoken.status").data["overrides"]
    assert [entry["id"] for entry in listed] == [made.data["id"]]
    ended = ssh_world.salt_run(ada, "deploytoken.override", "cancel=True", "reason=db back")
    assert ended.returncode == 0 and ended.data["message"].startswith(f"Cancelled 1 override(s) ({made.data['id']})")
    rows = [row for row in ssh_world.salt_run(ben, "deploytoken.history", "limit=10").data
            if row["claim"].startswith(made.data["id"])]
    assert [(row["claim"], row["forced_by"], row["force_reason"]) for row in rows] == [
        (f"{made.data['id']}.cancel", "Ada Lovelace", "db back"), (made.data["id"], None, None)]

    private = tmp_path / "ben.sqlite"
    try:
        ssh_world.configure(ben, {"sqlite": {"path": str(private)}})
        mine = ssh_world.salt_run(ben, "deploytoken.override", "reason=x", "targets=kf*", "minutes=1")
        assert mine.returncode == 0, mine
        ran = ssh_world.salt_ssh(ben, "state.apply", sls)
        assert ran.returncode != 0
        assert guard_of(ran.data)["comment"].startswith(f"kf obeys the deploy token of SQLite store {shared_store} ")
        assert not marker.exists()
        assert ssh_world.salt_run(ada, "deploytoken.status").data["overrides"] == []
    finally:
        ssh_world.configure(ben, {"sqlite": {"path": str(shared_store)}})


def test_setup_over_the_roster_checks_kingfisher_like_minions(
    ssh_world, team, token, git_world, make_scrapyd, tmux_users, request
):
    ada = team["ada"]
    clone = git_world.clone(git_world.origin())
    upstream = clone.head.commit.hexsha
    server = make_scrapyd(jobs=0)
    pillar = ssh_world.confdir(ada) / "pillar"
    request.addfinalizer(lambda: [(pillar / name).unlink(missing_ok=True) for name in ("top.sls", "kf.sls")])

    def setup(users, *extra):
        # The server's settings in the operator's pillar, where the team keeps them: busy_args that narrow the
        # check would need a consent.
        (pillar / "top.sls").write_text("base:\n  kf:\n    - kf\n")
        (pillar / "kf.sls").write_text(json.dumps({"kingfisher": {
            "scrapyd": {"url": server.url, "username": server.username, "password": server.password},
            "tmux": {"users": users}, "busy": {"postgres": "never"}}}))
        return ssh_world.salt_run(ada, "deploytoken.setup", "targets=kf", "ssh=True", "reason=new spider",
                                  repos_arg(clone), *extra)

    sleeper, session = tmux_users["sleep"]
    stopped = setup(sleeper)
    assert stopped.returncode == 1, stopped
    assert stopped.data["token"] is None and clone.head.commit.hexsha == upstream
    assert stopped.data["message"].startswith(
        f"Setup stopped: Kingfisher is busy.\nkf: tmux session '{session}' of {sleeper} runs 'sleep 3600' (for ")
    assert server.password not in stopped.stdout

    agreed = setup(sleeper, f"consent={CONSENT}")
    assert agreed.returncode == 0, agreed
    assert agreed.data["kingfisher"]["kf"]["busy"] is True
    assert agreed.data["token"]["holder"] == "Ada Lovelace"
    assert ssh_world.salt_run(ada, "deploytoken.cleanup", "note=spider deployed").returncode == 0
    (row,) = ssh_world.salt_run(ada, "deploytoken.history", "limit=1").data
    assert row["reason"] == f"new spider [consent: {CONSENT}]" and row["note"] == "spider deployed"

    idle, _ = tmux_users["idle"]
    done = setup(idle)
    assert done.returncode == 0, done
    assert done.data["kingfisher"] == {"kf": {
        "busy": False, "answered": True, "reasons": [],
        "summary": "Not busy: checked scrapyd and tmux; skipped postgres (postgres=never)."}}
    assert done.data["token"]["holder"] == "Ada Lovelace" and done.data["done"] is True


def test_salt_ssh_sees_the_command_a_dash_pane_runs_and_refuses_users_twice(
        ssh_world, team, make_scrapyd, login_users):
    ada = team["ada"]
    server = make_scrapyd(jobs=0)
    name = login_users.make("/bin/sh")
    login_users.tmux(name, "new-session", "-d", "-s", "crawl", "sleep 600")
    wait_for(lambda: [argv for _, _, argv in login_users.processes(name) if argv == ["sleep", "600"]],
             what="sleep 600")
    scrapyd = [f"url={server.url}", f"username={server.username}", f"password={server.password}"]
    ran = ssh_world.salt_ssh(ada, "kingfisher.busy", "postgres=never", f"users={name}", *scrapyd)
    assert ran.returncode != 0, ran
    assert [reason for reason in ran.data["kf"]["reasons"] if name in reason][0].startswith(
        f"tmux session 'crawl' of {name} runs 'sleep 600' (for "), ran.data
    twice = ssh_world.salt_ssh(ada, "kingfisher.busy", "postgres=never", f"users={name}", "users=nobody", *scrapyd)
    assert twice.returncode != 0, twice
    assert "kingfisher.busy got users= more than once" in twice.stdout, twice


def test_busy_check_on_a_target_without_psycopg_reads_postgres_with_psql(ssh_world, team, pg_cluster, pg_query):
    ada = team["ada"]
    python = ssh_world.salt_ssh(ada, "grains.get", "pythonexecutable").data["kf"]
    lacks = subprocess.run([python, "-c", "import psycopg"], capture_output=True, text=True, timeout=30)
    assert "No module named 'psycopg'" in lacks.stderr, f"{python} should not have psycopg"
    pid = pg_query("/* alice: reindex */ SELECT pg_sleep(600)", user="alice")
    ran = ssh_world.salt_ssh(ada, "kingfisher.busy", "postgres=always", "threshold=0",
                             f"socket_dir={pg_cluster.socket_dir}", f"port={pg_cluster.port}")
    report = ran.data["kf"]
    postgres = report["sources"]["postgres"]
    assert postgres["status"] == "busy" and postgres["client"] == "psql", report
    assert pid in [query["pid"] for query in postgres["queries"]]
    assert any(reason.startswith(f"PostgreSQL query {pid} of alice (alice: reindex) has been running for ")
               for reason in report["reasons"]), report["reasons"]
