"""
One real salt-master and one real salt-minion for the whole test session, with ``file_roots``
pointing at this repository so ``saltutil.sync_all`` brings our extension modules.

Unit tests import the plain-Python core straight from ``_utils/``.
"""

import collections
import itertools
import logging
import os
import pathlib
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import pytest
import yaml
from saltfactories.cli.run import SaltRun

from salt_inprocess import InProcessRun, InProcessSalt

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))
sys.path.insert(0, str(REPO / "tests"))

PEOPLE = {"alice": "Alice Smith", "bob": "Bob Jones", "carol": "Carol Díaz"}
# Fixture modules of the other parts of the suite (real Scrapyd, PostgreSQL, tmux, git, Google fake).
pytest_plugins = [
    "kingfisher_fixtures", "git_fixtures", "guard_helpers", "google_fixtures", "ssh_fixtures", "pg_fixtures",
    "store_fixtures",
]

# What a file root of ours serves (scripts/file-root, as the README sets it up): Salt's extension folders and
# the reactor, never the checkout's .git, .venv or tests (a file root is readable by every minion).
SERVED = ("_modules", "_states", "_runners", "_utils", "_pillar", "_output", "_executors", "_roster", "reactor")
MASTER_ID = "dt-master"
PILLAR_MAX_AGE = 30
MINION_ID = "collect-test"


# The tiers (docs/development.md, "Running the tests"), each test's found from the fixtures it uses unless it is marked:
#   unit: plain Python, as any user, in about a minute;
#   functional: root, and real services the tests start (PostgreSQL, Scrapyd, tmux servers of real users);
#   integration: real Salt daemons and CLIs, salt-ssh through a real sshd.
TIERS = ("unit", "functional", "integration")
INTEGRATION_FIXTURES = {"salt_master", "salt_minion", "salt_factories", "sshd", "ssh_world"}
FUNCTIONAL_FIXTURES = {"pg_cluster", "pg_store_cluster", "pg_fault_cluster", "scrapyd_busy", "make_scrapyd",
                       "tmux_users", "hostile_user", "login_users"}


def pytest_configure(config):
    # Salt sets the root logger to TRACE on import; keep pytest's own capture quiet.
    logging.getLogger().setLevel(logging.WARNING)


_STRESS_COUNTS = collections.Counter()


@pytest.fixture(scope="session")
def stress_counts():
    """A counter the races and drills add their rounds, kills and violations to; printed at the end."""
    return _STRESS_COUNTS


def pytest_terminal_summary(terminalreporter):
    if _STRESS_COUNTS:
        counts = ", ".join(f"{key}: {value}" for key, value in sorted(_STRESS_COUNTS.items()))
        terminalreporter.write_line(f"race and drill counts: {counts}")


# Tests that look at (or change) what the whole machine shares: every user's tmux server, every running
# crawl, the users in /home, /var/lib/deploytoken, salt-ssh's thin in /var/tmp. Another worker's real tmux
# sessions or crawls would make their servers busy, so under pytest-xdist (scripts/test) they all run one
# after another in one worker (``pytest_xdist_make_scheduler`` below); every other test runs beside them.
MACHINE_WIDE = (
    "test_deploy_repo.py", "test_doctor.py", "test_fuzz.py", "test_hardening.py", "test_kingfisher_busy.py",
    "test_kingfisher_cli.py", "test_kingfisher_postgres.py", "test_kingfisher_scrapyd.py",
    "test_kingfisher_panes.py", "test_kingfisher_sources.py", "test_kingfisher_states.py", "test_kingfisher_tmux.py",
    "test_salt_ssh.py", "test_setup_cli.py", "test_setup_core.py",
)


# Files whose tests share a costly module fixture per parameter (a virtualenv and daemons per Salt
# release): each parameter's tests go to one worker together, so the fixture is made once per parameter.
BY_PARAMETER = ("test_package.py",)


def pytest_xdist_make_scheduler(config, log):
    # pytest-xdist's own xdist_group marker cannot be used: it renames the test, which pytest 9 no longer allows.
    from xdist.scheduler import LoadScopeScheduling

    class MachineWideInOneWorker(LoadScopeScheduling):
        """Each test on its own, except the ``MACHINE_WIDE`` files' tests, which go to one worker together,
        and the ``BY_PARAMETER`` files' tests, which go to one worker per parameter."""

        def _split_scope(self, nodeid):
            file = nodeid.split("::")[0].rsplit("/")[-1]
            if file in MACHINE_WIDE:
                return "machine-wide"
            if file in BY_PARAMETER:
                return f"{file}[{nodeid.partition('[')[2]}"
            return nodeid

    return MachineWideInOneWorker(config, log)


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(item.fixturenames)
        found = "integration" if used & INTEGRATION_FIXTURES else "functional" if used & FUNCTIONAL_FIXTURES else "unit"
        # A test marked with a tier (e.g. functional: it needs root) is at least in that tier.
        tier = max([found] + [tier for tier in TIERS if item.get_closest_marker(tier)], key=TIERS.index)
        if not item.get_closest_marker(tier):
            item.add_marker(tier)


def example_master_conf(chat=False):
    """The text of ``examples/master.d/deploytoken.conf``; with ``chat``, its chat lines turned on as the file
    says (a line of ``#`` directly followed by text or by two spaces, not a comment's one space, loses that ``#``)."""
    text = (REPO / "examples" / "master.d" / "deploytoken.conf").read_text()
    return re.sub(r"^#(?=[^ \n]|  )", "", text, flags=re.M) if chat else text


def extension_root(parent):
    """A folder in ``parent`` made by ``scripts/file-root``: links to this repository's Salt folders only."""
    root = pathlib.Path(parent) / "extensions"
    subprocess.run([str(REPO / "scripts" / "file-root"), str(root)], check=True, capture_output=True)
    return str(root)


def as_user(cli, login, *args, **kwargs):
    """Run a salt CLI (salt-run, salt) as ``login`` would through sudo."""
    return cli.run(*args, env={"SUDO_USER": login}, **kwargs)


def hint_prefix(cli):
    """How the runner's hints start for ``cli``: every test master has its own config folder."""
    return f"salt-run -c {shlex.quote(os.path.dirname(cli.config['conf_file']))}"


def pytest_unconfigure(config):
    # Salt queues log records in a deferred handler and prints them at exit, after pytest has closed
    # the streams: drop them so the run ends on pytest's summary.
    from salt._logging.handlers import DeferredStreamHandler

    for handler in logging.root.handlers:
        if isinstance(handler, DeferredStreamHandler):
            handler.sync_with_handlers(())


@pytest.fixture(scope="session")
def salt_factories_config():
    # A short root keeps unix socket paths under the kernel's 108-character limit.
    root = tempfile.mkdtemp(prefix="dt-salt-", dir="/tmp")
    yield {"root_dir": root}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="dt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sls_dir(session_dir):
    """A second file root where tests write their own state files."""
    path = session_dir / "sls"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def store_path(session_dir):
    return session_dir / "deploytoken.sqlite"


@pytest.fixture(scope="session")
def master_overrides(sls_dir, store_path, session_dir):
    return {
        "file_roots": {"base": [extension_root(session_dir), str(sls_dir)]},
        "pillar_roots": {"base": [str(session_dir / "pillar")]},
        # A short bound on the age of token data, so the replay test needs no long wait.
        "deploytoken": {"sqlite": {"path": str(store_path)}, "people": PEOPLE, "pillar_max_age": PILLAR_MAX_AGE},
        "log_level_logfile": "info",
        "ext_pillar": [{"deploytoken": {}}],
    }


@pytest.fixture(scope="session")
def salt_master(salt_factories, master_overrides, session_dir):
    (session_dir / "pillar").mkdir(exist_ok=True)
    master = salt_factories.salt_master_daemon(MASTER_ID, overrides=master_overrides)
    with master.started():
        ret = master.salt_run_cli(timeout=120).run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        yield master


@pytest.fixture(scope="session")
def salt_minion(salt_master, session_dir):
    # The file in which the minion remembers the token store it obeys: private to this test session.
    overrides = {"log_level_logfile": "info", "deploytoken": {"store_memory": str(session_dir / "store-memory.json")}}
    minion = salt_master.salt_minion_daemon(MINION_ID, overrides=overrides)
    with minion.started():
        ret = salt_master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt=MINION_ID)
        assert ret.returncode == 0, ret
        yield minion


@pytest.fixture(scope="session")
def salt_run(salt_master):
    return salt_master.salt_run_cli(timeout=120)


@pytest.fixture(scope="session")
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=120)


@pytest.fixture(scope="session")
def runner(salt_master):
    """The runner functions in this process on the shared master's config (``salt_inprocess``): what a
    ``salt-run`` does, without its seconds of start-up."""
    return InProcessRun(salt_master.config_file)


@pytest.fixture(scope="session")
def salt_local(salt_master, salt_minion):
    """``salt`` in this process (``salt_inprocess``): jobs published to the shared master and minion as a
    person, without the CLI's seconds of start-up. ``.run(fun, *args, minion_tgt=..., env={"SUDO_USER": x})``."""
    return InProcessSalt(salt_master.config_file)


@pytest.fixture(scope="session")
def master_config_with(salt_master, session_dir):
    """``master_config_with(deploytoken={...})``: the path of a copy of the shared master's config whose
    ``deploytoken:`` settings are replaced (same cachedir, sockets and keys, so events still reach the master)."""
    counter = itertools.count()

    def make(deploytoken):
        conf_dir = session_dir / f"conf-{next(counter)}"
        conf_dir.mkdir()
        with open(salt_master.config_file) as handle:
            config = yaml.safe_load(handle)
        config["deploytoken"] = deploytoken
        with open(conf_dir / "master", "w") as handle:
            yaml.safe_dump(config, handle)
        return conf_dir / "master"

    return make


@pytest.fixture(scope="session")
def salt_run_with(salt_master, master_config_with):
    """``salt_run_with(deploytoken={...})``: a real salt-run CLI on ``master_config_with(...)``."""

    def make(deploytoken):
        return SaltRun(
            script_name=salt_master.factories_manager.get_salt_script_path("salt-run"),
            config=dict(salt_master.config, conf_file=str(master_config_with(deploytoken))),
            python_executable=salt_master.python_executable,
            system_service=False,
            timeout=120,
        )

    return make


@pytest.fixture(scope="session")
def runner_with(master_config_with):
    """``runner_with(deploytoken={...})``: the runner in this process on ``master_config_with(...)``."""
    return lambda deploytoken: InProcessRun(master_config_with(deploytoken))


@pytest.fixture
def free_token(store_path):
    """The shared master's token is free before and after the test, whatever the test did."""

    def clear():
        if store_path.exists():
            with sqlite3.connect(store_path) as db:
                db.execute("DELETE FROM token")

    clear()
    yield
    clear()
