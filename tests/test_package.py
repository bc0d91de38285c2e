"""
deploytoken as a Salt user installs it: a wheel built from this checkout, installed with pip into a fresh
virtualenv together with one Salt release (pip resolves everything else from pyproject.toml's ranges),
and a real salt-master and salt-minion of that virtualenv that find our modules only through the package's
``salt.loader`` entry point: the file root holds two small state files and nothing is synced.

Each Salt release in ``SALT_RELEASES`` gets its own virtualenv, master and minion (module scope, one
pytest-xdist worker per release: see ``BY_PARAMETER`` in conftest.py). The errors of the core are checked
through the runner, a state and the ext_pillar with the probe of ``tests/caught_errors.py``.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib

import pytest
import yaml

import caught_errors
from guard_helpers import GUARDED
from kingfisher_fixtures import free_port, wait_for
from ssh_fixtures import operator_venv

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parent.parent
# The release the rest of the suite runs (requirements-test.txt), and those of tests/package-salts.txt.
TESTED_SALT = re.search(r"^salt==(\S+)$", (REPO / "requirements-test.txt").read_text(), re.M).group(1)
OTHER_SALTS = [line for line in (REPO / "tests" / "package-salts.txt").read_text().split("\n")
               if line and not line.startswith("#")]
SALT_RELEASES = (TESTED_SALT, *OTHER_SALTS)
# Every wheel those virtualenvs need, fetched by scripts/test before the tests: a test fetches nothing.
WHEELHOUSE = pathlib.Path(sys.prefix) / "wheelhouse"
MINION = "pkg-minion"
PEOPLE = {"alice": "Alice Smith", "bob": "Bob Jones"}
START_TIMEOUT = 120


@pytest.fixture(scope="session")
def wheel():
    """The wheel pip builds from a copy of the checkout's top-level files and the folders pyproject.toml
    packages (so the build's ``build/`` and ``*.egg-info`` never land in the checkout)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="dt-wheel-", dir="/tmp"))
    source = work / "source"
    source.mkdir()
    for path in REPO.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, source / path.name)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    for folder in project["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # Built by the suite's own setuptools (requirements-test.txt), with no index.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(work / "dist"), str(source)], check=True, capture_output=True, text=True)
    (found,) = (work / "dist").glob("deploytoken-*.whl")
    yield found
    shutil.rmtree(work, ignore_errors=True)


class PackageSalt:
    """A virtualenv with the wheel and one Salt release, and a master and minion of its own in ``root``."""

    def __init__(self, release, root):
        self.release = release
        self.root = root
        self.venv = root / "venv"
        self.conf = root / "conf"
        self.file_root = root / "srv" / "salt"
        self.marker = root / "deployed"
        self.daemons = []

    @property
    def master_cachedir(self):
        return self.root / "var" / "cache" / "salt" / "master"

    @property
    def store(self):
        """Where ``backend: sqlite`` keeps the token by default: the master's cachedir."""
        return self.master_cachedir / "deploytoken.sqlite"

    def install(self, wheel):
        if self.release == TESTED_SALT:
            # The suite's own Salt and libraries, seen through a .pth, and the wheel installed beside them:
            # pip's resolution of the ranges is what the other releases show.
            operator_venv(self.venv, wheel,
                          programs=("salt-master", "salt-minion", "salt-key", "salt", "salt-run", "salt-call"))
            return
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(self.venv)], check=True, capture_output=True)
        # No .pyc compile of all of Salt: each process compiles what it imports, once.
        done = subprocess.run(
            [str(self.venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile",
             "--disable-pip-version-check", "--no-index", "--find-links", str(WHEELHOUSE), str(wheel),
             f"salt=={self.release}"],
            capture_output=True, text=True, timeout=900, env=self.env())
        assert done.returncode == 0, done.stderr

    def configure(self):
        publish, ret = free_port(), free_port()
        while ret == publish:
            ret = free_port()
        self.file_root.mkdir(parents=True)
        (self.file_root / "deploy.sls").write_text(GUARDED.format(marker=self.marker))
        (self.file_root / "caught.sls").write_text(caught_errors.PROBE_SLS)
        common = {"root_dir": str(self.root), "user": "root", "log_level_logfile": "info"}
        self.master_config = dict(
            common,
            id="pkg-master",
            interface="127.0.0.1",
            publish_port=publish,
            ret_port=ret,
            worker_threads=2,
            file_roots={"base": [str(self.file_root)]},
            deploytoken={"backend": "sqlite", "people": PEOPLE},
            **caught_errors.MASTER_PROBES,
        )
        minion = dict(
            common,
            id=MINION,
            master="127.0.0.1",
            master_port=ret,
            publish_port=publish,
            acceptance_wait_time=1,
            pillar_mask_output=False,  # Salt 3008 masks pillar.items' values; 3007 has no such mask
            # tmux of a user who runs none: a busy check that answers at once, whatever else runs here.
            kingfisher={"scrapyd": False, "postgres": False, "tmux": {"users": ["nobody"]}},
            deploytoken={"store_memory": str(self.root / "store-memory.json")},
            **caught_errors.MINION_PROBES,
        )
        self.write_config(self.conf, "master", self.master_config)
        self.write_config(self.conf, "minion", minion)
        self.minion_config = minion

    @staticmethod
    def write_config(folder, name, config):
        folder.mkdir(exist_ok=True)
        (folder / name).write_text(yaml.safe_dump(config))
        return folder

    def start(self):
        for daemon in ("salt-master", "salt-minion"):
            with open(self.root / f"{daemon}.out", "w") as out:
                self.daemons.append(subprocess.Popen(
                    [str(self.venv / "bin" / daemon), "-c", str(self.conf), "-l", "quiet"], cwd=self.root,
                    env=self.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        pending = self.root / "etc" / "salt" / "pki" / "master" / "minions_pre" / MINION
        log = self.root / "var" / "log" / "salt" / "minion"
        try:
            wait_for(pending.exists, START_TIMEOUT, "the minion's key")
            accepted = self.run("salt-key", "-y", "-a", MINION)
            assert accepted.returncode == 0, accepted
            wait_for(lambda: log.exists() and "ready to receive requests" in log.read_text(), START_TIMEOUT,
                     "the minion to connect")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; the daemons said: {self.said()}") from None

    def said(self):
        """The end of what the daemons printed and logged."""
        found = [self.root / f"{daemon}.out" for daemon in ("salt-master", "salt-minion")]
        found += [self.root / "var" / "log" / "salt" / side for side in ("master", "minion")]
        return "".join(f"\n--- {path.name}:\n{path.read_text()[-2000:]}" for path in found if path.exists())

    def stop(self):
        for daemon in self.daemons:
            with_group(daemon, signal.SIGTERM)
        deadline = time.monotonic() + 3  # a minion may take 15 s to stop, and nothing of it is kept
        for daemon in self.daemons:
            try:
                daemon.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            with_group(daemon, signal.SIGKILL)  # the group: the daemon's worker processes too
            daemon.wait()

    def env(self, user=None):
        """The environment of the virtualenv's commands: none of the test process's Python settings."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("PYTHON") and key not in ("VIRTUAL_ENV", "SUDO_USER")}
        if user:
            env["SUDO_USER"] = user  # as if run through sudo by this person
        return env

    def run(self, command, *args, user=None, conf=None):
        return subprocess.run([str(self.venv / "bin" / command), "-c", str(conf or self.conf), *args],
                              cwd=self.root, env=self.env(user), capture_output=True, text=True, timeout=180)

    def json(self, command, *args, user=None, conf=None):
        """``(exit status, parsed --out=json)``; for ``salt``, the minion's part."""
        done = self.run(command, *args, "--out=json", user=user, conf=conf)
        assert done.stdout.strip(), done
        data = json.loads(done.stdout)
        return done.returncode, data[MINION] if command == "salt" else data

    def apply(self, sls, user):
        return self.json("salt", MINION, "state.apply", sls, user=user)


def with_group(process, sig):
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def scratch_folder():
    """A memory file system where there is room: a virtualenv is 16,000 files, which a busy disk took 24 s
    to delete (0.3 s from /dev/shm). A short path either way: Salt's unix sockets live under it."""
    try:
        room = os.statvfs("/dev/shm")
        if room.f_bavail * room.f_frsize > 2 * 2**30:
            return "/dev/shm"
    except OSError:
        pass
    return "/tmp"


@pytest.fixture(scope="module", params=SALT_RELEASES, ids=lambda release: f"salt-{release}")
def package_salt(request, wheel):
    root = pathlib.Path(tempfile.mkdtemp(prefix="dt-pkg-", dir=scratch_folder()))
    salt = PackageSalt(request.param, root)
    try:
        salt.install(wheel)
        salt.configure()
        salt.start()
        yield salt
    finally:
        salt.stop()
        shutil.rmtree(root, ignore_errors=True)


def guard_comment(states):
    return caught_errors.state_comment(states, "deploytoken")[1]


def test_runner_answers_from_the_installed_package(package_salt):
    status, data = package_salt.json("salt-run", "deploytoken.status")
    assert status == 0, data
    assert (data["held"], data["backend"], data["store"], data["ext_pillar"]) == (
        False, "sqlite", str(package_salt.store), True)


def test_a_master_on_sqlite_imports_neither_psycopg_nor_google(package_salt):
    status, pillar = package_salt.json("salt", MINION, "pillar.items")
    assert status == 0, pillar
    assert pillar["deploytoken"]["held"] is False and pillar["deploytoken"]["error"] is None, pillar
    report = pillar["caughtprobe"]  # from the master worker that compiled this pillar
    assert report["imported"] == [] and report["copies"] == {}, report

    status, data = package_salt.json("salt-run", "caughtprobe.through", "deploytoken.status")
    assert status == 0 and data["answer"]["held"] is False, data
    assert data["report"]["imported"] == [] and data["report"]["copies"] == {}, data  # the salt-run process


def test_kingfisher_busy_answers_from_the_installed_package(package_salt):
    status, data = package_salt.json("salt", MINION, "kingfisher.busy")
    assert status == 0, data
    assert data["busy"] is False, data
    assert data["sources"]["tmux"]["status"] == "idle", data
    assert data["summary"].startswith("Not busy: checked tmux;"), data


def test_guarded_apply_passes_for_the_holder_only(package_salt):
    salt = package_salt
    status, took = salt.json("salt-run", "deploytoken.acquire", "reason=package smoke test", user="alice")
    assert status == 0 and took["acquired"] and took["login"] == "alice", took
    try:
        status, states = salt.apply("deploy", "alice")
        assert status == 0, states
        assert "Alice Smith (alice) holds the deploy token" in guard_comment(states)
        assert salt.marker.read_text().strip() == "deployed"
        salt.marker.unlink()

        status, states = salt.apply("deploy", "bob")
        assert status == 1, states
        assert guard_comment(states).startswith("Deploy token is held by Alice Smith (alice)"), states
        assert not salt.marker.exists()
    finally:
        status, gave = salt.json("salt-run", "deploytoken.release", "note=done", user="alice")
        assert status == 0, gave

    status, states = salt.apply("deploy", "alice")
    assert status == 1, states
    assert guard_comment(states).startswith("Nobody holds the deploy token"), states
    assert not salt.marker.exists()


def test_every_change_meets_the_token_through_the_installed_executor(package_salt):
    """The minion's config as examples/minion.d/deploytoken.conf says, the executor loaded from the package."""
    salt = package_salt
    conf = salt.write_config(salt.root / "executor-conf", "minion",
                             dict(salt.minion_config, module_executors=["deploytoken", "direct_call"]))
    touched = salt.root / "touched"
    status, took = salt.json("salt-run", "deploytoken.acquire", "reason=package executor test", user="alice")
    assert status == 0 and took["acquired"], took
    try:
        bob = salt.run("salt-call", "--out=json", "cmd.run", f"touch {touched}", user="bob", conf=conf)
        assert bob.returncode != 0 and "cmd.run was not run: " in bob.stderr, bob
        assert "so Bob Jones (bob) may not deploy" in bob.stderr and not touched.exists(), bob
        ping = salt.run("salt-call", "--out=json", "test.ping", user="bob", conf=conf)
        assert ping.returncode == 0, ping
        alice = salt.run("salt-call", "--out=json", "cmd.run", f"touch {touched}", user="alice", conf=conf)
        assert alice.returncode == 0 and touched.exists(), alice
    finally:
        status, gave = salt.json("salt-run", "deploytoken.release", "note=done", user="alice")
        assert status == 0, gave


def test_core_errors_are_caught_as_their_own_classes(package_salt):
    salt = package_salt
    status, data = salt.json("salt-run", *caught_errors.RUNNER_INPUT)
    assert status == 0 and data["answer"]["retcode"] == 2, data
    said = caught_errors.caught(data["report"], caught_errors.INPUT_ERROR, caught_errors.RUNNER_INPUT_SENTENCE)
    assert data["answer"]["error"] == said

    status, states = salt.apply("caught", "alice")
    result, comment = caught_errors.state_comment(states, "kingfisher")
    assert (status, result) == (1, False) and comment.startswith(caught_errors.NO_SUCH_SOURCE), states
    caught_errors.caught(caught_errors.state_report(states), caught_errors.KINGFISHER_INPUT_ERROR,
                         caught_errors.NO_SUCH_SOURCE)

    bad = dict(salt.master_config, deploytoken=dict(salt.master_config["deploytoken"], **caught_errors.BAD_SETTINGS))
    bad_conf = salt.write_config(salt.root / "bad-conf", "master", bad)
    status, pillar = salt.json("salt-run", "pillar.show_pillar", MINION, conf=bad_conf)
    said = caught_errors.caught(pillar["caughtprobe"], caught_errors.INPUT_ERROR, caught_errors.BAD_SETTINGS_SENTENCE)
    assert pillar["deploytoken"]["error"] == said, pillar

    with caught_errors.unreadable_store(salt.store, salt.master_cachedir):
        folder = f"The token store {salt.store} is a folder"
        status, data = salt.json("salt-run", "caughtprobe.through", "deploytoken.status")
        assert status == 0 and data["answer"]["retcode"] == 2, data
        caught_errors.caught(data["report"], caught_errors.STORE_ERROR, folder)
        assert folder in data["answer"]["error"], data

        status, pillar = salt.json("salt", MINION, "pillar.items")
        assert status == 0, pillar
        said = caught_errors.caught(pillar["caughtprobe"], caught_errors.STORE_ERROR, folder)
        assert pillar["deploytoken"]["error"] == said, pillar

        status, states = salt.apply("deploy", "alice")
        assert status == 1 and guard_comment(states).startswith("The deploy token cannot be read"), states
        assert folder in guard_comment(states)
        assert not salt.marker.exists()


def test_nothing_was_synced_and_the_file_root_holds_state_files_only(package_salt):
    assert sorted(os.listdir(package_salt.file_root)) == ["caught.sls", "deploy.sls"]
    for side in ("master", "minion"):
        extmods = package_salt.root / "var" / "cache" / "salt" / side / "extmods"
        synced = [str(path) for path in extmods.rglob("*.py")] if extmods.exists() else []
        assert synced == [], synced
