"""
salt-ssh as the team uses it: a real sshd on 127.0.0.1 (the target, logged in to as root), and real
operator accounts, each with their own SSH key and their own Salt configuration, who run ``sudo
salt-ssh`` (real sudo) from "their own machine" (this one).

Fixtures (stable names):

``sshd`` (session) -> ``Sshd``
    A private sshd with ``ExposeAuthInfo yes``: ``.port``, ``.authorize(public_key_line)``.

``operators`` (session) -> ``{"ada": Operator, "ben": Operator, "cy": Operator}``
    Real users (``dtkop<role><the test process id>``) with an ed25519 key each; ada and ben are authorized on the
    sshd and listed in ``deploytoken: people:`` with their keys; cy's key is authorized on the sshd but
    belongs to nobody in ``people``. ``Operator.login``, ``.key`` (private key path), ``.public``.

``operator_bin`` (session) -> the ``bin`` folder of the operators' own Salt
    A virtualenv with ``salt-run`` and ``salt-ssh`` into which pip installed deploytoken from this checkout,
    as docs/salt-ssh.md tells an operator to: Salt finds the runner and the ext_pillar through the package's
    entry point, and salt-ssh's thin carries the package to the targets. ``operator_venv(path, package)``
    makes one (``package=None``: Salt alone).

``ssh_world`` (session) -> ``SshWorld``
    Writes one Salt configuration per operator (``.configure(op, deploytoken={...})``, the ext_pillar on,
    ``sls_dir`` the only file root: no ``_modules``, ``_states`` or ``_utils`` anywhere) and runs the real CLIs
    of ``operator_bin`` as that operator through sudo: ``.salt_ssh(op, *args)``, ``.salt_run(op, *args)`` ->
    ``Ran`` (returncode, stdout, stderr, data parsed from ``--out=json``). ``.memory`` is the target's file of
    the store it obeys; ``.thin`` the target's thin_dir.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import salt
import yaml

from conftest import REPO
from kingfisher_fixtures import RUN, RUNUSER, create_user, free_port, remove_user, wait_for

SSHD = "/usr/sbin/sshd"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ROLES = {"ada": "Ada Lovelace", "ben": "Ben Okafor", "cy": None}
# What pip does not need from a checkout to build the package (and what a build leaves in one).
NOT_BUILT = shutil.ignore_patterns(".venv", ".git", ".local", "__pycache__", "build", "dist", "*.egg-info")


@dataclasses.dataclass
class Sshd:
    root: pathlib.Path
    port: int
    process: subprocess.Popen = None

    @property
    def known_hosts(self):
        """A known_hosts file with this sshd's host key, so salt-ssh checks the host as it should."""
        path = self.root / "known_hosts"
        if not path.exists():
            key = (self.root / "host_key.pub").read_text().split()
            path.write_text(f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n")
        return path

    @property
    def authorized(self):
        return self.root / "authorized_keys"

    def authorize(self, line):
        with open(self.authorized, "a") as handle:
            handle.write(line.strip() + "\n")


@dataclasses.dataclass
class Operator:
    role: str
    login: str
    key: pathlib.Path
    public: str
    name: str | None


@dataclasses.dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str

    @property
    def data(self):
        return json.loads(self.stdout)


@pytest.fixture(scope="session")
def sshd():
    if not os.path.exists(SSHD):
        pytest.fail("sshd is missing: install openssh-server (.ci/run does)")
    root = pathlib.Path(tempfile.mkdtemp(prefix="dtsshd-", dir="/tmp"))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True)
    server = Sshd(root=root, port=free_port())
    server.authorized.touch(mode=0o600)
    (root / "sshd_config").write_text(
        f"Port {server.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {server.authorized}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nExposeAuthInfo yes\n"
        "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
    )
    log = open(root / "sshd.log", "w")
    server.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log)
    try:
        wait_for(lambda: f"listening on 127.0.0.1 port {server.port}" in (root / "sshd.log").read_text(),
                 timeout=20, what="sshd to listen")
        yield server
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def operators(sshd):
    made = {}
    sudoers = pathlib.Path(f"/etc/sudoers.d/dtkop{RUN}")
    try:
        for role, name in ROLES.items():
            login = f"dtkop{role}{RUN}"
            create_user(login)
            home = pathlib.Path(pwd.getpwnam(login).pw_dir)
            (home / ".ssh").mkdir(mode=0o700)
            key = home / ".ssh" / "id_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{login}@laptop", "-f", str(key)],
                           check=True)
            made[role] = Operator(role, login, key, (home / ".ssh" / "id_ed25519.pub").read_text().strip(), name)
            sshd.authorize(made[role].public)
        sudoers.write_text("".join(f"{op.login} ALL=(root) NOPASSWD: ALL\n" for op in made.values()))
        sudoers.chmod(0o440)
        yield made
    finally:
        sudoers.unlink(missing_ok=True)
        for op in made.values():
            remove_user(op.login)


def operator_venv(path, package, programs=("salt-run", "salt-ssh")):
    """An operator's Salt at ``path``: a virtualenv of the system's Python (the suite's own virtualenv lives
    where the operators cannot read it) that sees the packages already installed for the suite, with
    ``programs`` (Salt's commands), and ``package`` (a folder or wheel pip can install, or None) installed into it by
    pip, without its dependencies (they are the suite's). Returns its ``bin`` folder."""
    path.mkdir(mode=0o755)
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    pathlib.Path(purelib, "suite.pth").write_text(f"{pathlib.Path(salt.__file__).parent.parent}\n")
    for program in programs:
        script = path / "bin" / program
        function = "salt_main" if program == "salt" else program.replace("-", "_")
        script.write_text(f"#!{python}\nimport sys\nimport salt.scripts\nsys.exit(salt.scripts.{function}())\n")
        script.chmod(0o755)
    if package:
        # The suite's own setuptools builds it (no build isolation): a test fetches nothing from an index.
        done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                               "--no-deps", "--no-build-isolation", "--no-index", str(package)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    return path / "bin"


@pytest.fixture(scope="session")
def operator_bin():
    """The operators' Salt with deploytoken installed by pip from a copy of this checkout (what an operator
    installs; the copy keeps the build's leftovers out of the checkout)."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="dtkvenv-", dir="/tmp"))
    try:
        root.chmod(0o755)
        shutil.copytree(REPO, root / "checkout", ignore=NOT_BUILT)
        yield operator_venv(root / "venv", package=root / "checkout")
    finally:
        shutil.rmtree(root, ignore_errors=True)


class SshWorld:
    def __init__(self, root, sshd, operators, sls_dir, bin):
        self.root = root
        self.sshd = sshd
        self.operators = operators
        self.sls_dir = sls_dir
        self.bin = bin
        self.memory = root / "target" / "deploytoken-store.json"
        self.memory.parent.mkdir()
        self.thin = root / "thin"

    def people(self):
        return {
            op.login: {"name": op.name, "ssh_keys": [op.public]} for op in self.operators.values() if op.name
        }

    def confdir(self, op):
        return self.root / op.login

    def configure(self, op, deploytoken):
        """Write ``op``'s own Salt configuration with these deploytoken settings. Nothing is synced: the
        modules come from the package installed in ``bin``."""
        conf = self.confdir(op)
        for sub in ("cache/proc", "pki", "sock", "log", "pillar"):
            (conf / sub).mkdir(parents=True, exist_ok=True)
        self.use_key(op, op.key)
        master = {
            "root_dir": str(conf),
            "cachedir": str(conf / "cache"),
            "pki_dir": str(conf / "pki"),
            "sock_dir": str(conf / "sock"),
            "log_file": str(conf / "log" / "master"),
            "ssh_log_file": str(conf / "log" / "ssh"),
            "log_level_logfile": "info",
            "roster_file": str(conf / "roster"),
            "known_hosts_file": str(self.sshd.known_hosts),
            "file_roots": {"base": [str(self.sls_dir)]},
            "pillar_roots": {"base": [str(conf / "pillar")]},
            "ext_pillar": [{"deploytoken": {}}],
            "deploytoken": dict(deploytoken, people=self.people()),
        }
        (conf / "master").write_text(yaml.safe_dump(master))

    def use_key(self, op, key):
        roster = {
            "kf": {
                "host": "127.0.0.1",
                "port": self.sshd.port,
                "user": "root",
                "priv": str(key),
                "thin_dir": str(self.thin),
                "set_path": SYSTEM_PATH,
                "minion_opts": {"deploytoken": {"store_memory": str(self.memory)}},
            }
        }
        (self.confdir(op) / "roster").write_text(yaml.safe_dump(roster))

    @contextlib.contextmanager
    def logging_in_with(self, op, key):
        """Inside the block ``op`` logs in to the target with ``key`` (someone else's)."""
        self.use_key(op, key)
        try:
            yield
        finally:
            self.use_key(op, op.key)

    def _run(self, op, program, args, timeout=180, check=False, as_root=False):
        """``program`` as ``op`` through real sudo (``as_root``: at a root shell, no sudo at all)."""
        command = [str(self.bin / program), "-c", str(self.confdir(op)), "--out=json", "--log-level=quiet", *args]
        if not as_root:
            command = [RUNUSER, "-u", op.login, "--", "sudo", "-n", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd="/", env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": "/root"})
        ran = Ran(done.returncode, done.stdout, done.stderr)
        if check:
            assert ran.returncode == 0, ran
        return ran

    def salt_ssh(self, op, *args, **kwargs):
        return self._run(op, "salt-ssh", ["kf", *args], **kwargs)

    def salt_run(self, op, *args, **kwargs):
        return self._run(op, "salt-run", list(args), **kwargs)

    def forget_memory(self):
        self.memory.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def ssh_world(sshd, operators, sls_dir, operator_bin):
    root = pathlib.Path(tempfile.mkdtemp(prefix="dtssh-", dir="/tmp"))
    try:
        yield SshWorld(root, sshd, operators, sls_dir, operator_bin)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def guard_of(data):
    """The deploytoken.held state's return from ``salt-ssh --out=json state.apply``."""
    (found,) = [value for key, value in data["kf"].items() if key.startswith("deploytoken_|")]
    return found


def wait_gone(path, timeout=10):
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
