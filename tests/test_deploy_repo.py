"""
The team's deploy repository as committed in ``examples/deploy-repo``, cloned by two real operators into
their own homes and used as docs/salt-ssh.md says, as themselves (no sudo), with the Salt in which deploytoken
is installed (``operator_bin``), against a real sshd on 127.0.0.1 with ``ExposeAuthInfo yes``, a real
PostgreSQL store, a real Scrapyd and a real user's tmux session.

The team's repository is the committed example, copied; only the values a team fills in are changed,
each by an exact replacement of the example's text that must occur exactly once (``fill_in``): the
target's host and port in the roster (and this machine's PATH, see ``team_repo``), the store's DSN and
the operators' logins and public keys in the master config, and the server's Scrapyd address and
credentials and PostgreSQL socket and port in the pillar. It holds no copy of the modules: they come from
the installed package. It is committed and pushed to a bare origin, and each operator clones it with git as
themselves.
"""

import contextlib
import json
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile

import pytest

from conftest import REPO
from deploytoken import model
from deploytoken import settings as token_settings
from deploytoken.procedure import repos
from kingfisher_fixtures import RUNUSER
from pg_fixtures import STORE_ROLE, store_cluster
from ssh_fixtures import SYSTEM_PATH
from test_setup_cli import CONSENT

EXAMPLE = REPO / "examples" / "deploy-repo"
TARGET = "kingfisher-main"
# What the example's kingfisher.sls writes on the server, and the file in which the server remembers its store.
DEPLOYED = pathlib.Path("/var/lib/kingfisher-deploy/deployed")
# The team's other state files include no guard; this one deploys the branch a pillar= names.
APP = pathlib.Path("/var/lib/kingfisher-deploy/app")
APP_SLS = f"""\
the app:
  file.managed:
    - name: {APP}
    - makedirs: True
    - contents: "{{{{ pillar.get('python_apps', {{}}).get('myapp', {{}}).get('git', {{}}).get('branch', 'main') }}}}"
"""
TOUCHED = pathlib.Path("/var/lib/kingfisher-deploy/touched")
MEMORY = pathlib.Path("/var/lib/deploytoken/store.json")
# The example's people, whose logins and keys each clone replaces with those of the real operators.
ALICE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICmGteilzUkK1ja0zpuEw9YVy/nZGvXw6Rk0r7sdw3gj alice@laptop"
BOB_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIt4GCiwH7px7Gvuwo819WGlVeF3oGCwfI9k4audIqBO bob@laptop"


def fill_in(path, values):
    """Replace each of the example's placeholder texts in ``path`` by the value this machine needs."""
    text = path.read_text()
    for placeholder, value in values.items():
        assert text.count(placeholder) == 1, f"{placeholder!r} should occur once in {path}"
        text = text.replace(placeholder, value)
    path.write_text(text)


@pytest.fixture(scope="module")
def team_store():
    cluster = store_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def server_files():
    """The example deploys on this machine (the target): what it writes there is removed afterwards, and a
    store this machine remembered before is put back."""
    saved = MEMORY.read_bytes() if MEMORY.exists() else None
    made = not MEMORY.parent.exists()
    DEPLOYED.unlink(missing_ok=True)
    MEMORY.unlink(missing_ok=True)
    yield
    shutil.rmtree(DEPLOYED.parent, ignore_errors=True)
    MEMORY.unlink(missing_ok=True)
    if saved is not None:
        MEMORY.write_bytes(saved)
    elif made:
        shutil.rmtree(MEMORY.parent, ignore_errors=True)


def git(*args, cwd=None, user=None):
    command = ["git", "-c", "user.name=Team", "-c", "user.email=team@example.org", *args]
    home = pwd.getpwnam(user).pw_dir if user else "/nonexistent"
    return subprocess.run([RUNUSER, "-u", user, "--", *command] if user else command, cwd=cwd, check=True,
                          capture_output=True, text=True, env={"PATH": SYSTEM_PATH, "HOME": home}).stdout


@pytest.fixture
def team_repo(operators, sshd, team_store, make_scrapyd, pg_cluster):
    """The team's deploy repository: the example with the team's values filled in, committed once and
    pushed to a bare origin the operators clone from."""
    ada, ben = operators["ada"], operators["ben"]
    scrapyd = make_scrapyd(jobs=0)
    root = pathlib.Path(tempfile.mkdtemp(prefix="dtkteam-", dir="/tmp"))
    try:
        work = root / "work"
        shutil.copytree(EXAMPLE, work)
        fill_in(work / "salt-config" / "roster", {
            "host: kingfisher.example.org": "host: 127.0.0.1", "port: 22": f"port: {sshd.port}",
            # This server's own quirk: root's ~/.bashrc puts a pyenv shim first, which salt-ssh's shim cannot
            # run, so its entry names the system's PATH (as a team with such a server would).
            "  user: root\n": f"  user: root\n  set_path: {SYSTEM_PATH}\n"})
        fill_in(work / "salt-config" / "master", {
            "host=db.example.org port=5432 dbname=deploytoken user=deploytoken sslmode=verify-full":
                f"host=127.0.0.1 port={team_store.port} dbname=postgres user={STORE_ROLE}",
            "    alice:\n": f"    {ada.login}:\n", ALICE_KEY: ada.public,
            "    bob:\n": f"    {ben.login}:\n", BOB_KEY: ben.public,
        })
        fill_in(work / "pillar" / "kingfisher.sls", {
            "url: http://localhost:6800": f"url: {scrapyd.url}",
            "username: kingfisher": f"username: {scrapyd.username}",
            "password: change-me": f"password: {scrapyd.password}",
            "socket_dir: /var/run/postgresql": f"socket_dir: {pg_cluster.socket_dir}",
            "port: 5432": f"port: {pg_cluster.port}",
        })
        (work / "salt" / "app.sls").write_text(APP_SLS)
        git("init", "-q", "-b", "main", cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "Our deploy repository", cwd=work)
        git("clone", "-q", "--bare", str(work), str(root / "origin.git"))
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        yield root / "origin.git"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def clones(operators, sshd, team_repo, server_files):
    """ada's and ben's own clones of the team's repository, in their homes: ``{role: folder}``."""
    made = {}
    try:
        for op in (operators["ada"], operators["ben"]):
            home = pathlib.Path(pwd.getpwnam(op.login).pw_dir)
            # The origin stands for the team's remote; here it is a folder of another user, which git
            # reads only once the person says it may.
            git("config", "--global", "--add", "safe.directory", str(team_repo), user=op.login)
            git("clone", "-q", str(team_repo), str(home / "deploy"), user=op.login)
            made[op.role] = home / "deploy"
            # As after the person's first ssh to the server: its host key is known. The key is theirs (the
            # fixture made it as root).
            (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts.read_text())
            subprocess.run(["chown", "-R", f"{op.login}:", str(home / ".ssh")], check=True)
        yield made
    finally:
        for clone in made.values():
            shutil.rmtree(clone, ignore_errors=True)


def run(operator_bin, op, clone, program, *args):
    """``program`` as ``op`` (no sudo), from the top folder of their clone, as docs/salt-ssh.md says."""
    done = subprocess.run(
        [RUNUSER, "-u", op.login, "--", str(operator_bin / program), "--out=json", "--log-level=quiet", *args],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=clone,
        env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": pwd.getpwnam(op.login).pw_dir},
    )
    with contextlib.suppress(ValueError):
        return done.returncode, json.loads(done.stdout), done
    return done.returncode, None, done


def guard_of(data):
    (found,) = [value for key, value in data[TARGET].items() if key.startswith("deploytoken_|")]
    return found


def kingfisher_guard(data, state_id):
    (found,) = [value for key, value in data[TARGET].items() if key.startswith(f"kingfisher_|-{state_id}_|-")]
    return found


def test_relative_roots_stand_for_the_deploy_repository_salt_run_runs_in(git_world, tmp_path):
    top = git_world.clone(git_world.origin()).working_tree_dir
    opts = {"file_roots": {"base": ["salt/"]}, "pillar_roots": {"base": ["pillar/"]}}
    assert repos.default_paths(token_settings.from_opts(opts), opts, cwd=top) == [top]
    assert repos.default_paths(token_settings.from_opts(opts), opts, cwd=os.path.join(top, "salt")) == [top]
    with pytest.raises(model.InputError, match="^No repositories to update: set deploytoken: repos:"):
        repos.default_paths(token_settings.from_opts(opts), opts, cwd=str(tmp_path))


def test_the_example_repository_takes_two_operators_through_the_procedure(
    operator_bin, operators, clones, tmux_users
):
    ada, ben = operators["ada"], operators["ben"]

    def as_(op, program, *args):
        return run(operator_bin, op, clones[op.role], program, *args)

    for op in (ada, ben):  # nothing to sync: the runner, the ext_pillar and the server's modules are the package's
        code, data, done = as_(op, "salt-run", "deploytoken.doctor")
        assert code == 0, "\n".join(data["findings"]) if data else done
        assert all(line.startswith("ok: ") for line in data["findings"])

    sleeper, session = tmux_users["sleep"]
    code, stopped, done = as_(ada, "salt-run", "deploytoken.setup", f"targets={TARGET}", "reason=new spider")
    assert code == 1, done.stdout
    assert stopped["token"] is None
    assert stopped["message"].startswith("Setup stopped: Kingfisher is busy.\n")
    assert f"tmux session '{session}' of {sleeper} runs 'sleep 3600' (for " in stopped["message"]

    code, agreed, done = as_(ada, "salt-run", "deploytoken.setup", f"targets={TARGET}", "reason=new spider",
                             f"consent={CONSENT}")
    assert code == 0, done.stdout + done.stderr[-2000:]
    assert agreed["token"]["holder"] == "Alice Smith"

    # Every change needs the token, not only a highstate: each of ben's is refused before it runs, with the
    # guard's sentence, whether or not the state file includes the guard.
    DEPLOYED.parent.mkdir(parents=True, exist_ok=True)
    APP.write_text("before")
    for args in (("state.apply",), ("state.sls", "app"), ("state.sls_id", "the app", "app"),
                 ("cmd.run", f"touch {TOUCHED}"), ("file.remove", str(APP)), ("file.touch", str(TOUCHED))):
        code, blocked, done = as_(ben, "salt-ssh", TARGET, *args)
        assert code != 0, done.stdout
        said = json.dumps(blocked) if blocked else done.stdout
        # salt-ssh runs a state run on the server as state.pkg, the state files compiled on ben's machine.
        assert f"{'state.pkg' if args[0].startswith('state.') else args[0]} was not run: " in said, said
        assert f"held by Alice Smith ({ada.login}) since " in said, said
        assert f"so Bob Jones ({ben.login}) may not deploy" in said, said
    assert not DEPLOYED.exists() and not TOUCHED.exists() and APP.read_text() == "before"
    # Reading stays open to him.
    code, pong, done = as_(ben, "salt-ssh", TARGET, "test.ping")
    assert code == 0 and pong[TARGET] is True, done.stdout + done.stderr[-2000:]
    code, found, done = as_(ben, "salt-ssh", TARGET, "file.file_exists", str(DEPLOYED))
    assert code == 0 and found[TARGET] is False, done.stdout + done.stderr[-2000:]
    code, tried, done = as_(ben, "salt-ssh", TARGET, "state.apply", "test=True")
    assert code == 0, done.stdout + done.stderr[-2000:]
    code, grains, done = as_(ben, "salt-ssh", TARGET, "grains.item", "os")
    assert code == 0 and "os" in grains[TARGET], done.stdout + done.stderr[-2000:]
    code, sessions, done = as_(ben, "salt-ssh", TARGET, "kingfisher.tmux_sessions", f"users={sleeper}")
    assert code == 0 and sessions[TARGET]["sessions"][0]["name"] == session, done.stdout + done.stderr[-2000:]
    assert not DEPLOYED.exists()

    code, deployed, done = as_(ada, "salt-ssh", TARGET, "state.apply")
    assert code == 0, done.stdout + done.stderr[-2000:]
    assert guard_of(deployed)["comment"].startswith(f"Alice Smith ({ada.login}) holds the deploy token, since ")
    # The example's Kingfisher guards ran (the stand-in state would change) and passed loudly on the consent.
    assert kingfisher_guard(deployed, "no tmux work interrupted")["comment"].startswith("CONSENT: PASSED although ")
    assert DEPLOYED.read_text().strip() == "deployed"
    branch = '{"python_apps": {"myapp": {"git": {"branch": "BRANCH_NAME"}}}}'
    code, done_app, done = as_(ada, "salt-ssh", TARGET, "state.sls", "app", f"pillar={branch}")
    assert code == 0, done.stdout + done.stderr[-2000:]
    assert APP.read_text().strip() == "BRANCH_NAME"
    code, touched, done = as_(ada, "salt-ssh", TARGET, "cmd.run", f"touch {TOUCHED}")
    assert code == 0 and TOUCHED.exists(), done.stdout + done.stderr[-2000:]

    code, released, done = as_(ada, "salt-run", "deploytoken.cleanup", "note=deployed the new spider")
    assert code == 0, done.stdout + done.stderr[-2000:]
    code, rows, done = as_(ben, "salt-run", "deploytoken.history", "limit=10")
    assert code == 0, done.stdout + done.stderr[-2000:]
    # The setup that the busy server stopped has its row too.
    assert [(row["kind"], row["holder"], row["reason"], row["note"][:34]) for row in rows] == [
        ("holding", "Alice Smith", f"new spider [consent: {CONSENT}]", "deployed the new spider"),
        ("setup_stopped", "Alice Smith", "new spider", "Setup stopped: Kingfisher is busy.")]

    # A plain acquire checks nothing, but the example's guards stop a deployment over the busy server.
    DEPLOYED.unlink()
    code, _, done = as_(ada, "salt-run", "deploytoken.acquire", "reason=quick fix")
    assert code == 0, done.stdout + done.stderr[-2000:]
    code, guarded, done = as_(ada, "salt-ssh", TARGET, "state.apply")
    assert code != 0 and not DEPLOYED.exists(), done.stdout
    stopped = kingfisher_guard(guarded, "no tmux work interrupted")
    assert stopped["result"] is False and f"tmux session '{session}' of {sleeper}" in stopped["comment"], stopped
    assert kingfisher_guard(guarded, "no crawls interrupted")["result"] is True  # this Scrapyd runs no job
    code, _, done = as_(ada, "salt-run", "deploytoken.release", "note=stopped by the guard")
    assert code == 0, done.stdout + done.stderr[-2000:]
    # With nobody holding the token, nobody changes the server.
    TOUCHED.unlink()
    code, refused, done = as_(ada, "salt-ssh", TARGET, "cmd.run", f"touch {TOUCHED}")
    assert code != 0 and not TOUCHED.exists(), done.stdout
    assert "cmd.run was not run: " in json.dumps(refused) and "nobody holds the deploy token" in json.dumps(refused)

    # The report's default file, in the clone where salt-run runs, is one git ignores.
    code, written, done = as_(ada, "salt-run", "deploytoken.report")
    assert code == 0, done.stdout + done.stderr[-2000:]
    assert os.path.realpath(written["path"]) == os.path.realpath(clones["ada"] / "deploytoken-report.html")
    status = git("status", "--porcelain", "--ignored", cwd=clones["ada"], user=ada.login)
    assert "!! deploytoken-report.html" in status and "?? " not in status, status
