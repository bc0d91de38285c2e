"""
What a person typing odd input, or a local user on a shared server, could still reach: each attack or
slip of the second adversarial review, against the real component (salt-run and salt-call on
configurations of their own, real files and users, a real PostgreSQL cluster, real tmux).
"""

import fcntl
import json
import multiprocessing
import os
import pathlib
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import MINION_ID, PEOPLE, REPO
from deploytoken import cache
from deploytoken import commands as token
from deploytoken import model
from deploytoken import settings as token_settings
from deploytoken.guard import held as guard
from deploytoken.guard import pillar as token_pillar
from deploytoken.guard import seal
from deploytoken.kingfisher import tmux
from deploytoken.stores import sqlite as sqlite_store
from kingfisher_fixtures import listen_as, run_as, wait_for
from pg_fixtures import PASSWORD_ROLE, STORE_ROLE, postgres_store
from test_store_files import as_nobody

BIN = pathlib.Path(sys.executable).parent
NOBODY = pwd.getpwnam("nobody")
# Other users, folders of others and real tmux servers: root only.
pytestmark = pytest.mark.functional


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# ---- salt-run: what its own parsing hid -------------------------------------------------------


@pytest.fixture(scope="module")
def runner_conf(tmp_path_factory):
    """A master configuration of its own, no daemon, synced from a file root that holds only our runner
    and _utils, with a SQLite store in its cachedir."""
    root = tmp_path_factory.mktemp("runner")
    for folder in ("cache/proc", "conf", "roots"):
        (root / folder).mkdir(parents=True)
    for folder in ("_runners", "_utils"):
        (root / "roots" / folder).symlink_to(REPO / folder)
    config = {
        "root_dir": str(root), "cachedir": str(root / "cache"), "pki_dir": str(root / "pki"),
        "sock_dir": str(root / "sock"), "log_file": str(root / "master.log"),
        "file_roots": {"base": [str(root / "roots")]}, "pillar_roots": {"base": []},
        "deploytoken": {"people": PEOPLE},
    }
    (root / "conf" / "master").write_text(json.dumps(config))
    status, _, stderr = salt_run(root, "saltutil.sync_all")
    assert status == 0, stderr
    return root


def salt_run(root, *args):
    done = subprocess.run([str(BIN / "salt-run"), "-c", str(root / "conf"), "--out=json", *args],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, SUDO_USER="alice"))
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None, done.stderr


def holder(root):
    return sqlite_store.SqliteStore(str(root / "cache" / "deploytoken.sqlite")).read()


@pytest.mark.parametrize("args, sentence", [
    (["reason=a", "reason=b"], "deploytoken.acquire got reason more than once: give each argument once."),
    (["reason=x\n"], "deploytoken.acquire got 'reason=x\\n', which is name=value with a line break in the value: "
                     "values must be single lines."),
])
def test_acquire_refuses_what_salt_run_would_hide(runner_conf, args, sentence):
    status, answer, _ = salt_run(runner_conf, "deploytoken.acquire", *args)
    assert (status, answer) == (2, {"error": sentence, "retcode": 2})
    assert holder(runner_conf) is None


def test_setup_refuses_busy_args_without_targets(runner_conf, git_world):
    clone = git_world.clone(git_world.origin())
    status, answer, _ = salt_run(runner_conf, "deploytoken.setup", "reason=x", 'busy_args={"postgres": "always"}',
                                 f"repos={json.dumps([clone.working_dir])}")
    assert (status, answer["error"]) == (2, "busy_args are passed to kingfisher.busy on the targets, but no targets "
                                            "were given: add targets='collect*', or leave busy_args out.")
    assert holder(runner_conf) is None


def test_setup_checks_busy_args_before_fetching_anything(runner_conf, git_world):
    clone = git_world.clone(git_world.origin())
    fetched = pathlib.Path(clone.git_dir) / "FETCH_HEAD"
    status, answer, stderr = salt_run(runner_conf, "deploytoken.setup", "targets=collect-test", "reason=x",
                                      'busy_args={"postgres": "sometimes"}', f"repos={json.dumps([clone.working_dir])}")
    assert (status, answer["error"]) == (2, "busy_args: postgres must be one of auto, always or never; got "
                                            "'sometimes'.")
    assert "Step 1" not in stderr and not fetched.exists()


def test_an_override_of_1e300_minutes_is_not_echoed_in_full_and_cancel_takes_no_minutes(runner_conf):
    status, answer, _ = salt_run(runner_conf, "deploytoken.override", "reason=db down", "minutes=1e300")
    assert status == 2 and len(answer["error"]) < 120 and answer["error"].startswith(
        "An override lasts at most 1440 minutes (one day); got 1000000000")
    status, answer, _ = salt_run(runner_conf, "deploytoken.override", "cancel=True", "reason=db back", "minutes=0")
    assert (status, answer["error"]) == (2, "cancel=True ends every running override (or the one id= names): "
                                            "targets and minutes are for a new override, so leave them out.")


# ---- salt-call: one sentence, no usage text --------------------------------------------------


def test_a_kingfisher_error_is_one_sentence_on_stderr_and_nothing_on_stdout(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "minion").write_text(json.dumps({
        "id": "dt-hardening", "root_dir": str(tmp_path), "cachedir": str(tmp_path / "cache"),
        "pki_dir": str(tmp_path / "pki"), "sock_dir": str(tmp_path / "sock"), "log_file": str(tmp_path / "log"),
        "file_client": "local", "module_dirs": [str(REPO / "_modules")], "utils_dirs": [str(REPO / "_utils")],
        "file_roots": {"base": []}, "pillar_roots": {"base": []},
    }))
    done = subprocess.run([str(BIN / "salt-call"), "-c", str(tmp_path / "conf"), "--out=json", "kingfisher.busy",
                           "postgres=sometimes"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    assert "Error running 'kingfisher.busy': postgres must be one of auto, always or never; got 'sometimes'.\n" in (
        done.stderr)
    assert "Usage" not in done.stderr and "'sometimes'.." not in done.stderr


# ---- the quick start -------------------------------------------------------------------------


def test_quickstart_keeps_salts_job_cache_private(tmp_path):
    copy = tmp_path / "checkout"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", ".local", "__pycache__"))
    # The requirements are already in this virtualenv, so the script's pip install has nothing to do.
    (copy / ".venv").symlink_to(BIN.parent)
    done = subprocess.run(["bash", "scripts/quickstart"], cwd=copy, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    local = copy / ".local"
    for folder in (local, local / "cache", local / "conf", local / "pki"):
        assert mode(folder) == 0o700, folder
    assert mode(local / "conf" / "master") == 0o600
    assert as_nobody(os.listdir, str(local / "cache")).startswith("PermissionError")


# ---- ownership, not only modes ---------------------------------------------------------------


def test_a_store_in_another_users_folder_is_refused(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o755)
    os.chown(folder, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(model.StoreError) as caught:
        sqlite_store.SqliteStore(str(folder / "token.sqlite")).read()
    assert str(caught.value) == (
        f"The token store's folder {folder} belongs to nobody, not to the master's user (root) or root, so its owner "
        f"could rewrite the token: run chown root {folder}, or set deploytoken:sqlite:path to a file in a folder of "
        "the master's user.")
    assert os.listdir(folder) == []


def test_a_store_or_journal_planted_by_another_user_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "token.sqlite"
    token.acquire(sqlite_store.SqliteStore(str(path)), "alice", PEOPLE)
    for planted, what in ((path, "The token store"), (pathlib.Path(f"{path}-journal"), "The token store's journal")):
        planted.touch()
        os.chown(planted, NOBODY.pw_uid, -1)
        before = planted.read_bytes()
        with pytest.raises(model.StoreError, match=f"^{what} {planted} belongs to nobody, not to the master's user"):
            sqlite_store.SqliteStore(str(path)).read()
        assert planted.read_bytes() == before
        os.chown(planted, 0, -1)
        if planted != path:
            planted.unlink()
    assert sqlite_store.SqliteStore(str(path)).read().holder == "Alice Smith"


def test_a_postgres_schema_of_another_role_is_refused(pg_store_cluster, pg_section):
    schema = pg_section["schema"]
    with pg_store_cluster.connect(autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {PASSWORD_ROLE}")
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {STORE_ROLE}")
    with pytest.raises(model.StoreError) as caught:
        postgres_store(pg_section).read()
    assert f"The schema {schema} in database postgres at " in str(caught.value)
    assert str(caught.value).endswith(
        f" belongs to the role {PASSWORD_ROLE}, not to the store's role {STORE_ROLE}, who alone may own the token; it "
        f"was left untouched: ask its owner to run ALTER SCHEMA {schema} OWNER TO {STORE_ROLE}.")
    with pg_store_cluster.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)).fetchone() == (0,)


def test_a_postgres_table_of_another_role_is_refused(pg_store_cluster, pg_section):
    schema = pg_section["schema"]
    postgres_store(pg_section).read()
    with pg_store_cluster.connect(autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {schema}.token OWNER TO {PASSWORD_ROLE}")
    with pytest.raises(model.StoreError, match=f"^The table {schema}.token in database postgres at .* belongs to the "
                                               f"role {PASSWORD_ROLE}, not to the store's role {STORE_ROLE}"):
        postgres_store(pg_section).read()


# ---- the read cache's lock -------------------------------------------------------------------


def _hold_open(path, ready, done):
    os.setgid(NOBODY.pw_gid)
    os.setuid(NOBODY.pw_uid)
    with open(path) as handle:  # readable, as an older version left it
        fcntl.flock(handle, fcntl.LOCK_SH)
        ready.set()
        done.wait(60)


def test_a_leftover_readable_lock_held_by_a_local_user_is_replaced_not_waited_for():
    folder = tempfile.mkdtemp(prefix="dt-cache-", dir="/tmp")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "pillar.json")
    with open(path + ".lock", "w"):
        pass
    os.chmod(path + ".lock", 0o644)
    old = os.stat(path + ".lock").st_ino
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold_open, args=(path + ".lock", ready, done))
    holder.start()
    try:
        assert ready.wait(10)
        start = time.monotonic()
        assert cache.cached(path, 30, lambda: {"held": False}) == {"held": False}
        assert time.monotonic() - start < 2
        assert os.stat(path + ".lock").st_ino != old and mode(path + ".lock") == 0o600
    finally:
        done.set()
        holder.join(10)
        shutil.rmtree(folder)


# ---- tmux: forged lines and linked folders ---------------------------------------------------


def test_a_forged_proc_net_unix_line_leaves_another_users_stale_socket_stale(tmux_users, hostile_user):
    stale_user, _ = tmux_users["stale"]
    stale = f"/tmp/tmux-{pwd.getpwnam(stale_user).pw_uid}/default"
    base = pathlib.Path(tempfile.mkdtemp(prefix="dtke-", dir="/tmp"))
    base.chmod(0o755)
    # A path holding a line break writes a second line into /proc/net/unix: a "listening" stale socket.
    folder = base / f"a\n0000: 00000002 00000000 00010000 0001 01 1 {os.path.dirname(stale)}"
    try:
        os.chown(base, pwd.getpwnam(hostile_user).pw_uid, -1)
        run_as(hostile_user, "mkdir", "-p", str(folder))
        with listen_as(hostile_user, str(folder / "default")):
            assert stale in tmux.listening_sockets()
            report = tmux.sessions(tmux.Settings.parse({"users": stale_user}))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert report["errors"] == [] and report["stale"] == [{"socket": stale, "owner": stale_user}]
    assert tmux.reasons(report) == []


def test_a_tmux_folder_linked_to_roots_private_folder_is_not_listed(hostile_user):
    private = pathlib.Path(tempfile.mkdtemp(prefix="dt-root-"))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(private / "root-secret-name"))
    link = pathlib.Path(f"/tmp/tmux-{pwd.getpwnam(hostile_user).pw_uid}")
    shutil.rmtree(link, ignore_errors=True)
    try:
        run_as(hostile_user, "ln", "-s", str(private), str(link))
        assert stat.S_ISLNK(os.lstat(link).st_mode)
        report = tmux.sessions(tmux.Settings.parse({}))
    finally:
        link.unlink(missing_ok=True)
        shutil.rmtree(private, ignore_errors=True)
    assert "root-secret-name" not in json.dumps(report)


# ---- kingfisher.busy said "not busy" too early (issue 28) -----------------------------------------------


def kingfisher_busy(salt_cli, server, *args):
    return salt_cli.run("kingfisher.busy", "postgres=never", f"url={server.url}", f"username={server.username}",
                        f"password={server.password}", *args, minion_tgt=MINION_ID)


@pytest.mark.parametrize("deleted", ["socket", "folder"])
def test_a_tmux_server_whose_socket_was_deleted_is_busy_not_skipped(
        salt_cli, salt_minion, make_scrapyd, login_users, deleted):
    server = make_scrapyd(jobs=0)
    name = login_users.make("/bin/bash")
    login_users.tmux(name, "new-session", "-d", "-s", "crawl", "sleep 3600")
    folder = pathlib.Path(f"/tmp/tmux-{pwd.getpwnam(name).pw_uid}")
    wait_for(lambda: [argv for _, _, argv in login_users.processes(name) if argv == ["sleep", "3600"]],
             what="sleep 3600")
    # What clearing /tmp does; the server goes on and still listens on the deleted path.
    if deleted == "socket":
        (folder / "default").unlink()
    else:
        shutil.rmtree(folder)
    assert str(folder / "default") in tmux.listening_sockets()
    ret = kingfisher_busy(salt_cli, server, f"users={name}")
    assert ret.returncode == 1, ret
    (server_pid,) = [pid for pid, _, argv in login_users.processes(name) if argv and argv[0] == "tmux"]
    (reason,) = ret.data["reasons"]
    lost = f"its socket {folder}/default was deleted" if deleted == "socket" else (
        f"its socket {folder}/default and its folder {folder} were deleted")
    assert reason.startswith(f"The tmux server of {name} (pid {server_pid}) runs 'sleep 3600' (for "), reason
    mend = f"kill -USR1 {server_pid}" if deleted == "socket" else f"mkdir -m 700 {folder}; kill -USR1 {server_pid}"
    assert reason.endswith(f", but {lost}, so its sessions cannot be named and it counts as busy. {name} can bring "
                           f"it back with: {mend}."), reason


@pytest.mark.parametrize("cli", ["salt", "salt-call", "api"])
def test_a_user_with_no_account_or_users_given_twice_is_refused(salt_cli, salt_minion, salt_local, make_scrapyd,
                                                                login_users, cli):
    server = make_scrapyd(jobs=0)
    name = login_users.make("/bin/bash")
    login_users.tmux(name, "new-session", "-d", "-s", "crawl", "sleep 3600")
    scrapyd = [f"url={server.url}", f"username={server.username}", f"password={server.password}"]

    def run(*args):
        if cli == "salt":
            return kingfisher_busy(salt_cli, server, *args)
        if cli == "api":  # a job published with its words as typed, as salt-api and LocalClient callers do
            return salt_local.run("kingfisher.busy", "postgres=never", *scrapyd, *args, minion_tgt=MINION_ID)
        return salt_minion.salt_call_cli(timeout=120).run("kingfisher.busy", "postgres=never", *scrapyd, *args)

    unknown = run("users=dtk-no-such-account")
    assert unknown.returncode == 1, unknown
    assert ("There is no user account 'dtk-no-such-account' on this server, so its tmux sessions cannot be "
            "checked: give the names of accounts (users=alice,bob) or users=auto.") in unknown.stdout + unknown.stderr
    assert run(f"users={name},nobody").returncode == 1, "the session is seen"
    if cli == "salt":
        # The salt command folds users=a users=b into one keyword before it publishes the job: no minion
        # ever sees the first (docs/kingfisher.md says so).
        return
    twice = run(f"users={name}", "users=nobody")
    assert twice.returncode == 1, twice
    assert ("kingfisher.busy got users= more than once, and Salt would keep only the last: give each argument "
            "once (users=alice,bob for several users).") in twice.stdout + twice.stderr
    zero = run(f"users={name}", "port=055434")
    assert zero.returncode == 1, zero
    assert ("kingfisher.busy got port=055434, a number with a leading 0, which Salt may read as another number: "
            "give it as 55434.") in zero.stdout + zero.stderr


# ---- the Kingfisher consent --------------------------------------------------------------------


def test_a_consent_counts_only_from_the_token_data_of_the_claim_it_was_given_with(tmp_path):
    store = sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))
    token.take(store, token.request("alice", PEOPLE, reason="new spider", consent="Dana Lee: fine"))
    assert store.read().reason == "new spider [consent: Dana Lee: fine]"
    settings = token_settings.Settings(cachedir=str(tmp_path), sections={}, people=PEOPLE)
    data = token_pillar.stamp(token_pillar.snapshot(store.read(), PEOPLE), settings, "m1", False)
    sealed = seal.seal(data)
    assert guard.consent(sealed, "m1") == "Dana Lee: fine"
    assert guard.consent(sealed, "m2") is None  # made for another minion
    assert guard.consent(dict(sealed, consent="Eve: typed"), "m1") is None  # changed after the seal
    assert guard.consent(seal.seal(dict(data, issued="2020-01-01T00:00:00Z")), "m1") is None  # replayed
    token.release(store, "alice", PEOPLE, note="done")
    data = token_pillar.stamp(token_pillar.snapshot(store.read(), PEOPLE), settings, "m1", False)
    assert guard.consent(seal.seal(data), "m1") is None  # the next holder starts without one


def test_only_setup_writes_a_consent_mark(tmp_path):
    store = sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))
    with pytest.raises(model.InputError, match=r"^The reason may not hold '\[consent:': a consent is given with "
                                               "salt-run deploytoken.setup consent="):
        token.acquire(store, "bob", PEOPLE, reason="quick fix [consent: Dana Lee: fine]")
    assert store.read() is None


# ---- the third review ---------------------------------------------------------------------------


def local_minion(root, pillar=None):
    """A minion configuration of its own for salt-call --local: our modules and states, no master, no master's
    public key; ``pillar`` as its local pillar."""
    for folder in ("conf", "pillar"):
        (root / folder).mkdir(exist_ok=True)
    (root / "conf" / "minion").write_text(json.dumps({
        "id": "dt-local", "root_dir": str(root), "cachedir": str(root / "cache"), "pki_dir": str(root / "pki"),
        "sock_dir": str(root / "sock"), "log_file": str(root / "log"), "file_client": "local",
        "module_dirs": [str(REPO / "_modules")], "states_dirs": [str(REPO / "_states")],
        "utils_dirs": [str(REPO / "_utils")], "file_roots": {"base": []},
        "pillar_roots": {"base": [str(root / "pillar")]},
    }))
    (root / "pillar" / "top.sls").write_text("base:\n  '*':\n    - dt\n")
    (root / "pillar" / "dt.sls").write_text(json.dumps(pillar or {}))
    return root / "conf"


def test_salt_call_local_without_the_masters_key_does_not_trust_a_self_made_pillar(tmp_path):
    settings = token_settings.Settings(cachedir=str(tmp_path), sections={}, people=PEOPLE)
    holding = model.Holding(holder="Alice Smith", login="alice", caller="alice", claim="0123456789abcdef",
                            since=model.isoformat(model.utcnow()), reason="self-made")
    made = seal.seal(token_pillar.stamp(token_pillar.snapshot(holding, PEOPLE), settings, "dt-local", False))
    conf = local_minion(tmp_path, {"deploytoken": made})
    done = subprocess.run([str(BIN / "salt-call"), "-c", str(conf), "--local", "--out=json", "state.single",
                           "deploytoken.held", "name=guard"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, SUDO_USER="alice"))
    assert done.returncode == 1, done.stdout + done.stderr
    (state,) = json.loads(done.stdout)["local"].values()
    assert state["result"] is False
    assert state["comment"] == (
        f"The deploy token guard failed, so nothing may deploy: this minion has no master's public key "
        f"({tmp_path / 'pki' / 'minion_master.pub'}), so the token data cannot be checked (salt-call --local, or -c "
        "with another configuration?); run it through the master, or with salt-call and the minion's own "
        "configuration.")


def report_run(root, path, **env):
    done = subprocess.run([str(BIN / "salt-run"), "-c", str(root / "conf"), "--out=json", "deploytoken.report",
                           f"path={path}"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, SUDO_USER="alice", **env))
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None, done.stderr


def test_a_report_is_not_written_through_another_users_link_into_a_root_only_folder(runner_conf, tmp_path):
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    link = tmp_path / "bobs-reports"
    link.symlink_to(private)
    os.lchown(link, NOBODY.pw_uid, NOBODY.pw_gid)
    status, answer, stderr = report_run(runner_conf, link / "r.html", SUDO_UID=str(pwd.getpwnam("daemon").pw_uid))
    assert (status, answer) == (2, {"retcode": 2, "error": (
        f"{link} belongs to nobody, not to you or root, so the report is not written through it (its owner could "
        "lead it elsewhere): give path= a file in a folder of yours.")}), stderr
    assert os.listdir(private) == []


def test_a_report_name_too_long_or_a_full_disk_is_one_sentence(runner_conf, tmp_path):
    name = "r" * 300 + ".html"
    status, answer, stderr = report_run(runner_conf, tmp_path / name)
    assert status == 2 and "Traceback" not in stderr
    assert answer["error"] == (f"The file name '{'r' * 39}… is longer than 255 bytes, which no folder takes: give "
                               "path= a shorter name."), answer
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(full)], check=True)
    try:
        (full / "filler").write_bytes(b"x" * 4096)
        status, answer, stderr = report_run(runner_conf, full / "r.html")
        assert status == 2 and "Traceback" not in stderr, stderr
        assert answer["error"] == (f"The report cannot be written to {full / 'r.html'}: No space left on device (the "
                                   "disk is full); nothing was written."), answer
        assert os.listdir(full) == ["filler"]
    finally:
        subprocess.run(["umount", str(full)], check=True)


@pytest.mark.parametrize("targets, sentence", [
    ("targets=", "targets is empty, so the override would cover no server: give minion ids or globs separated by "
                 "commas, e.g. targets='kingfisher*,db1' or targets=L@db1,db2, or leave targets out to cover every "
                 "minion."),
    ("targets= ", "targets is empty, so the override would cover no server: give minion ids or globs separated by "
                  "commas, e.g. targets='kingfisher*,db1' or targets=L@db1,db2, or leave targets out to cover every "
                  "minion."),
    ("targets=G@os:Debian", "targets 'G@os:Debian' would match no minion: the guard knows a server by its minion id "
                            "only, so give minion ids or globs separated by commas, e.g. targets='kingfisher*,db1' or "
                            "targets=L@db1,db2."),
    ("targets=db1,,db2", "targets 'db1,,db2' holds an empty name between commas: give minion ids or globs separated "
                         "by commas, e.g. targets='kingfisher*,db1' or targets=L@db1,db2."),
])
def test_an_override_that_would_cover_nothing_or_everything_by_mistake_is_refused(runner_conf, targets, sentence):
    status, answer, _ = salt_run(runner_conf, "deploytoken.override", "reason=db down", targets)
    assert (status, answer) == (2, {"error": sentence, "retcode": 2})
    status, answer, _ = salt_run(runner_conf, "deploytoken.status")
    assert answer["overrides"] == []


def test_an_override_on_a_list_covers_exactly_those_minions(runner_conf):
    status, made, _ = salt_run(runner_conf, "deploytoken.override", "reason=db down", "targets=L@db1,db2",
                               "minutes=5")
    try:
        assert status == 0 and made["targets"] == "L@db1,db2", made
        opts = {"cachedir": str(runner_conf / "cache"), "deploytoken": {"people": PEOPLE}}
        covered = {minion: token_pillar.pillar(opts, minion)["override"] is not None
                   for minion in ("db1", "db2", "db", "db12", "L@db1")}
        assert covered == {"db1": True, "db2": True, "db": False, "db12": False, "L@db1": False}
    finally:
        salt_run(runner_conf, "deploytoken.override", "cancel=True", "reason=db back")


def test_a_store_on_a_read_only_file_system_says_so(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(folder)], check=True)
    try:
        path = folder / "token.sqlite"
        token.acquire(sqlite_store.SqliteStore(str(path)), "alice", PEOPLE)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        with pytest.raises(model.StoreError) as caught:
            token.release(sqlite_store.SqliteStore(str(path)), "alice", PEOPLE)
        assert str(caught.value) == (
            f"The token store {path} is on a read-only file system, so the token cannot be written: remount it "
            "read-write, or set deploytoken:sqlite:path to a file on a writable one.")
    finally:
        subprocess.run(["umount", str(folder)], check=True)
