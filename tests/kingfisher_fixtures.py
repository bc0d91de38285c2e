"""
Real services for the Kingfisher busy checks: Scrapyd, tmux servers of real users, PostgreSQL.

Every fixture starts the real program and removes everything it made, even when a test fails.
The minion runs as root and reads nothing from these fixtures' config: tests pass the addresses
below as explicit arguments (``url=``, ``username=``, ``password=``, ``socket_dir=``, ``port=``,
``users=``) to the ``kingfisher.*`` functions.

Fixtures (stable names; other test modules may use them):

``scrapyd_busy`` (session) -> ``ScrapydServer``
    A Scrapyd on 127.0.0.1 with basic auth, ``max_proc = 1``, ``poll_interval = 0.5``, project
    ``dtkproject`` and spider ``sleeper``: one job running (``.running`` job id, ``.pid`` its crawl
    process) and one pending (``.pending``). Also ``.url``, ``.username``, ``.password``,
    ``.listjobs()``. Do not stop it; use ``make_scrapyd`` for a server a test may kill.

``make_scrapyd`` (function) -> ``make(jobs=0) -> ScrapydServer``
    Starts a fresh Scrapyd with ``jobs`` scheduled (the first runs, the others wait). ``.kill()``
    kills the daemon and leaves its crawl process orphaned, as a crash would. All are removed after
    the test, orphans included.

``tmux_users`` (function; its servers are made once per session) -> ``dict``
    Real users created with useradd (home in /home, names ``dtk<role><the test process id>``), each
    with a real tmux server started with runuser:
    ``{"idle": ("dtkidle1234", "notes"), "sleep": ("dtksleep1234", "crawl"), "other": ("dtkother1234",
    "report"), "stale": ("dtkstale1234", None)}`` (role -> (user, session name)). The idle user runs an
    idle bash, the sleep user runs ``sleep 3600``, the other user runs ``sleep 3600`` on
    ``tmux -L other``, and the stale user has only a stale socket file ``/tmp/tmux-UID/default``.
    Users, homes, servers and sockets are removed at the end of the session.

``hostile_user`` (session) -> ``str``
    A real unprivileged user (``dtkevil<the test process id>``) with no tmux server, for attacks on the tmux
    check. ``listen_as(user, path)`` (a context manager) has that user's own process bind and listen
    on the unix socket ``path`` (any bytes but NUL) until the block ends.

``login_users`` (function) -> ``Users``
    ``.make(shell)``: a fresh real user with that login shell (``/bin/sh`` is dash, what ``useradd`` gives
    by default on Debian; ``/bin/bash``), named ``dtkp<4 digits of this run><n>``; ``.tmux(name, *args)``
    runs tmux as that user with its own login shell as tmux's default shell; ``.processes(name)`` its
    processes as ``(pid, state, argv)``. Each user, its processes, its tmux folder and its screen folder
    are removed after the test.

``pg_cluster`` (session) -> ``PgCluster``
    A PostgreSQL 15 cluster run by the ``postgres`` system user from a temp dir: ``.socket_dir``,
    ``.port`` (TCP on 127.0.0.1), trust authentication for local and 127.0.0.1 connections, login
    roles ``alice`` and ``bob``, and ``dtkmonitor`` without ``pg_read_all_stats``. ``.connect(user=,
    tcp=False)`` gives a psycopg connection.

``pg_query`` (function) -> ``start(sql, user="postgres", tcp=False, idle_in_transaction=False) -> pid``
    Starts ``sql`` on a new connection without waiting for it (so ``SELECT pg_sleep(600)`` keeps
    running) and returns the backend pid once the query is active. With ``idle_in_transaction`` it
    runs ``sql`` inside a transaction left open. Every backend it started is terminated afterwards.
"""

import contextlib
import dataclasses
import io
import os
import pathlib
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import zipfile

import psycopg
import pytest
import requests

SPIDER_SOURCE = pathlib.Path(__file__).resolve().parent / "spider"
SCRAPYD_PROJECT = "dtkproject"
SCRAPYD_USER = "dtk-scrapyd"
SCRAPYD_PASSWORD = "dtk-secret-not-real"
# Scrapyd's crawl processes inherit this variable, so teardown finds them even after Scrapyd died.
SCRAPYD_MARK = "DTK_SCRAPYD_ROOT"
PG_BIN = pathlib.Path("/usr/lib/postgresql/15/bin")
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout=30, what="a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


# Scrapyd


def build_egg():
    """The spider project as an egg (a zip with EGG-INFO), which is what addversion.json takes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as egg:
        for path in sorted(SPIDER_SOURCE.rglob("*.py")):
            egg.write(path, path.relative_to(SPIDER_SOURCE).as_posix())
        egg.writestr("EGG-INFO/PKG-INFO", "Metadata-Version: 1.0\nName: dtkspider\nVersion: 1.0\n")
        egg.writestr("EGG-INFO/entry_points.txt", "[scrapy]\nsettings = dtkspider.settings\n")
        egg.writestr("EGG-INFO/top_level.txt", "dtkspider\n")
    return buffer.getvalue()


def processes_with_environ(name, value):
    """Pids of processes whose environment holds ``name=value``."""
    wanted = f"{name}={value}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if wanted in handle.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


@dataclasses.dataclass
class ScrapydServer:
    root: pathlib.Path
    port: int
    process: subprocess.Popen
    username: str = SCRAPYD_USER
    password: str = SCRAPYD_PASSWORD
    project: str = SCRAPYD_PROJECT
    running: str | None = None
    pending: str | None = None
    pid: int | None = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def call(self, endpoint, method="GET", **kwargs):
        response = requests.request(
            method, f"{self.url}/{endpoint}", auth=(self.username, self.password), timeout=10, **kwargs
        )
        response.raise_for_status()
        data = response.json()
        assert data["status"] == "ok", data
        return data

    def listjobs(self):
        return self.call("listjobs.json", params={"project": self.project})

    # A day: the session-wide Scrapyd's first crawl must still be the one running at the end of any run.
    def schedule(self, seconds=86400):
        data = {"project": self.project, "spider": "sleeper", "seconds": str(seconds)}
        return self.call("schedule.json", method="POST", data=data)["jobid"]

    def kill(self):
        """Kill the daemon like a crash would: its crawl processes keep running, orphaned."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def cleanup(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in processes_with_environ(SCRAPYD_MARK, str(self.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The next test's busy check lists every crawl on the machine: leave none of ours behind.
        wait_for(lambda: not processes_with_environ(SCRAPYD_MARK, str(self.root)), timeout=15,
                 what="this Scrapyd's crawl processes to end")
        shutil.rmtree(self.root, ignore_errors=True)


def start_scrapyd(jobs=0):
    """A Scrapyd with the spider project deployed and ``jobs`` crawls scheduled (max_proc 1)."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="dtk-scrapyd-", dir="/tmp"))
    port = free_port()
    (root / "scrapyd.conf").write_text(
        "[scrapyd]\n"
        "bind_address = 127.0.0.1\n"
        f"http_port = {port}\n"
        f"username = {SCRAPYD_USER}\n"
        f"password = {SCRAPYD_PASSWORD}\n"
        "max_proc = 1\n"
        "poll_interval = 0.5\n"
        f"eggs_dir = {root}/eggs\n"
        f"logs_dir = {root}/logs\n"
        f"dbs_dir = {root}/dbs\n"
    )
    env = dict(os.environ, **{SCRAPYD_MARK: str(root)})
    with open(root / "scrapyd.out", "wb") as log:
        # Scrapyd reads scrapyd.conf from its working directory.
        process = subprocess.Popen(
            [sys.executable, "-m", "scrapyd", "--pidfile", str(root / "twistd.pid")],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ScrapydServer(root=root, port=port, process=process)
    try:

        def ready():
            with contextlib.suppress(requests.RequestException, AssertionError):
                return server.call("daemonstatus.json")
            return None

        wait_for(ready, what="Scrapyd to answer")
        server.call("addversion.json", method="POST", data={"project": server.project, "version": "1"},
                    files={"egg": ("dtkspider.egg", build_egg())})
        ids = [server.schedule() for _ in range(jobs)]
        if ids:
            server.running, server.pending = ids[0], (ids[1] if len(ids) > 1 else None)

            def started():
                running = server.listjobs()["running"]
                return running[0]["pid"] if running and running[0].get("pid") else None

            server.pid = wait_for(started, what="the first crawl to run")
    except BaseException:
        server.cleanup()
        raise
    return server


@pytest.fixture(scope="session")
def scrapyd_busy():
    server = start_scrapyd(jobs=2)
    yield server
    server.cleanup()


@pytest.fixture
def make_scrapyd():
    servers = []

    def make(jobs=0):
        server = start_scrapyd(jobs=jobs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.cleanup()


# tmux servers of real users


# A suffix per test process (each pytest-xdist worker is one), so two workers, or two suites running at once on
# one machine, never share a user: the whole pid, which no other live process has.
RUN = str(os.getpid())
TMUX_USERS = {
    "idle": (f"dtkidle{RUN}", "notes"),
    "sleep": (f"dtksleep{RUN}", "crawl"),
    "other": (f"dtkother{RUN}", "report"),
    "stale": (f"dtkstale{RUN}", None),
}


def user_env(name):
    entry = pwd.getpwnam(name)
    return {
        "HOME": entry.pw_dir,
        "USER": name,
        "LOGNAME": name,
        "SHELL": entry.pw_shell,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }


def create_user(name):
    remove_user(name)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    return pwd.getpwnam(name).pw_uid


def run_as(name, *args):
    """Run a program as a test user: argument list, no shell, from the user's home."""
    entry = pwd.getpwnam(name)
    subprocess.run([RUNUSER, "-u", name, "--", *args], check=True, env=user_env(name), cwd=entry.pw_dir,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def remove_user(name):
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                os.kill(int(entry), signal.SIGKILL)
    # Only the folder tmux made for this very user: a folder of that name owned by anyone else is not ours.
    with contextlib.suppress(OSError):
        folder = os.lstat(f"/tmp/tmux-{uid}")
        if stat.S_ISDIR(folder.st_mode) and folder.st_uid == uid:
            shutil.rmtree(f"/tmp/tmux-{uid}", ignore_errors=True)
    for _ in range(50):
        if subprocess.run(["userdel", "--remove", name], capture_output=True).returncode in (0, 6):
            break
        time.sleep(0.1)  # userdel refuses while the user's last processes are still exiting
    shutil.rmtree(f"/home/{name}", ignore_errors=True)


def make_stale_socket(name):
    """A tmux socket file with no server behind it, as a killed tmux leaves behind."""
    uid = pwd.getpwnam(name).pw_uid
    gid = pwd.getpwnam(name).pw_gid
    directory = pathlib.Path(f"/tmp/tmux-{uid}")
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chown(directory, uid, gid)
    path = directory / "default"
    # A run that was killed leaves its users' tmux folders behind, and a new user may get the same uid.
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    os.chown(path, uid, gid)
    return path


@pytest.fixture(scope="session")
def tmux_servers():
    try:
        for role, (name, session) in TMUX_USERS.items():
            create_user(name)
            if role == "idle":
                run_as(name, "tmux", "new-session", "-d", "-s", session)
            elif role == "sleep":
                run_as(name, "tmux", "new-session", "-d", "-s", session, "sleep", "3600")
            elif role == "other":
                run_as(name, "tmux", "-L", "other", "new-session", "-d", "-s", session, "sleep", "3600")
            else:
                make_stale_socket(name)
        yield dict(TMUX_USERS)
    finally:
        for name, _ in TMUX_USERS.values():
            remove_user(name)


@pytest.fixture
def tmux_users(tmux_servers):
    """The session's tmux servers, checked before each test that uses them: a server the busy check cannot
    see fails here, with what the machine shows of it, rather than as a wrong answer further on."""
    missing = [(name, session) for role, (name, session) in tmux_servers.items()
               if session and not _session_seen(name, session)]
    assert not missing, "tmux servers of the test users are not seen:\n" + "\n".join(
        _what_the_machine_shows(name) for name, _ in missing)
    return tmux_servers


def _session_seen(name, session):
    from deploytoken.kingfisher import tmux as kf_tmux

    report = kf_tmux.sessions(kf_tmux.Settings(users=(name,)))
    return any(found["name"] == session for found in report["sessions"])


def _what_the_machine_shows(name):
    """Evidence for a tmux server that cannot be seen: its folder, the listening sockets, the user's processes."""
    uid = pwd.getpwnam(name).pw_uid
    folder = f"/tmp/tmux-{uid}"
    try:
        listing = {entry: oct(os.lstat(os.path.join(folder, entry)).st_mode) for entry in os.listdir(folder)}
        owner = os.lstat(folder).st_uid
    except OSError as exc:
        listing, owner = str(exc), None
    with open("/proc/net/unix", errors="replace") as handle:
        listening = [line.split()[-1] for line in handle if f"tmux-{uid}/" in line]
    processes = subprocess.run(["ps", "-u", str(uid), "-o", "pid,ppid,etime,args"], capture_output=True,
                               text=True).stdout
    return (f"- {name} (uid {uid}): {folder} owned by {owner}: {listing}; in /proc/net/unix: {listening}; "
            f"processes:\n{processes}")


@pytest.fixture(scope="session")
def hostile_user():
    name = f"dtkevil{RUN}"
    create_user(name)
    yield name
    remove_user(name)


class Users:
    """Users of one test, with a login shell each; see ``login_users``."""

    def __init__(self):
        self.names = []

    def make(self, shell):
        name = f"dtkp{RUN}{len(self.names)}"
        self.names.append(name)
        self._remove(name)
        subprocess.run(["useradd", "--create-home", "--shell", shell, name], check=True, capture_output=True)
        return name

    def tmux(self, name, *args):
        run_as(name, "tmux", *args)

    def processes(self, name):
        """``[(pid, state, argv)]`` of ``name``'s processes now."""
        uid = pwd.getpwnam(name).pw_uid
        found = []
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                    with open(f"/proc/{entry}/stat") as handle:
                        state = handle.read().rsplit(")", 1)[1].split()[0]
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        argv = [arg.decode() for arg in handle.read().split(b"\0") if arg]
                    found.append((int(entry), state, argv))
        return found

    @staticmethod
    def _remove(name):
        # Only this user's processes and folders: every one of them was made by the test that made the user.
        remove_user(name)
        shutil.rmtree(f"/run/screen/S-{name}", ignore_errors=True)

    def remove_all(self):
        for name in self.names:
            self._remove(name)


@pytest.fixture
def login_users():
    users = Users()
    try:
        yield users
    finally:
        users.remove_all()


# The system Python: the test user can run it (the test's own interpreter may sit in a private tree).
LISTENER = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
print("ready", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def listen_as(name, path):
    """``name``'s own process listening on the unix socket ``path`` while the block runs."""
    listener = subprocess.Popen(
        [RUNUSER, "-u", name, "--", "/usr/bin/python3", "-c", LISTENER, path], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=user_env(name), cwd="/",
    )
    try:
        assert listener.stdout.readline().strip() == "ready", f"{name} could not listen on {path!r}"
        yield
    finally:
        listener.stdin.close()
        listener.wait(timeout=10)


# A salt-ssh target's own Python, which has neither requests nor psycopg


def lean_python(tmp_path, code):
    """Run ``code`` with this Python's packages but requests and psycopg, and our _utils first on the path."""
    lean = tmp_path / "site-packages"
    lean.mkdir(exist_ok=True)
    site = pathlib.Path(requests.__file__).parent.parent
    for entry in site.iterdir():
        if not entry.name.lower().startswith(("requests", "psycopg")) and not (lean / entry.name).exists():
            (lean / entry.name).symlink_to(entry)
    utils = pathlib.Path(__file__).resolve().parent.parent / "_utils"
    done = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path[:0] = [{str(lean)!r}, {str(utils)!r}]\n{code}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


# PostgreSQL


@dataclasses.dataclass
class PgCluster:
    root: pathlib.Path
    port: int

    @property
    def socket_dir(self):
        return str(self.root)

    @property
    def data(self):
        return self.root / "data"

    def connect(self, user="postgres", tcp=False, **kwargs):
        host = "127.0.0.1" if tcp else self.socket_dir
        return psycopg.connect(host=host, port=self.port, user=user, dbname="postgres", **kwargs)

    def pg_ctl(self, *args):
        subprocess.run([RUNUSER, "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args],
                       check=True, capture_output=True, cwd="/")

    def stop(self):
        with contextlib.suppress(subprocess.CalledProcessError):
            self.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(max_connections=100):
    """A throwaway cluster owned by the postgres system user (PostgreSQL refuses to run as root)."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="dtk-pg-", dir="/tmp"))
    os.chown(root, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    cluster = PgCluster(root=root, port=free_port())
    try:
        subprocess.run([RUNUSER, "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(cluster.data),
                        "-A", "trust", "-U", "postgres", "--no-sync"], check=True, capture_output=True, cwd="/")
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {cluster.port}\n"
                       f"unix_socket_directories = '{root}'\nmax_connections = {max_connections}\n"
                       "fsync = off\n")
        cluster.pg_ctl("start", "-w", "-l", str(root / "log"))
        with cluster.connect(autocommit=True) as conn:
            for role in ("alice", "bob", "dtkmonitor"):
                conn.execute(f"CREATE ROLE {role} LOGIN")
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = start_postgres()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_query(pg_cluster):
    connections = []
    pids = []

    def start(sql, user="postgres", tcp=False, idle_in_transaction=False):
        conn = pg_cluster.connect(user=user, tcp=tcp, autocommit=not idle_in_transaction)
        connections.append(conn)
        pid = conn.info.backend_pid
        pids.append(pid)
        if idle_in_transaction:
            conn.execute(sql)
            return pid
        # Send without waiting for the answer, so the query keeps running while the test goes on.
        conn.pgconn.send_query(sql.encode())
        with pg_cluster.connect(autocommit=True) as admin:
            wait_for(lambda: admin.execute("SELECT state = 'active' FROM pg_stat_activity WHERE pid = %s",
                                           (pid,)).fetchone()[0], what="the query to start")
        return pid

    yield start
    with pg_cluster.connect(autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    for conn in connections:
        with contextlib.suppress(Exception):
            conn.close()
