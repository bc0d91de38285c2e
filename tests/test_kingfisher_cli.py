"""``salt collect-test kingfisher.*`` through the real salt CLI, master and minion (running as root)."""

import json
import os
import subprocess
import time

import pytest

from conftest import MINION_ID as MINION

pytestmark = pytest.mark.daemons


@pytest.fixture(scope="module")
def salt(salt_cli, salt_minion):
    def run(function, *args):
        return salt_cli.run(function, *args, minion_tgt=MINION)

    return run


def scrapyd_args(server):
    return [f"url={server.url}", f"username={server.username}", f"password={server.password}"]


def pg_args(cluster):
    return [f"socket_dir={cluster.socket_dir}", f"port={cluster.port}"]


def test_busy_names_every_owner_and_exits_1(salt, scrapyd_busy, tmux_users, pg_cluster, pg_query):
    pid = pg_query("/* alice: reindex */ SELECT pg_sleep(600)", user="alice", tcp=True)
    time.sleep(1.2)
    users = ",".join(user for user, _ in tmux_users.values())
    ret = salt("kingfisher.busy", "postgres=always", "threshold=1", f"users={users}",
               *scrapyd_args(scrapyd_busy), *pg_args(pg_cluster))
    assert ret.returncode == 1, ret
    report = ret.data
    assert report["busy"] is True and "result" not in report
    reasons = "\n".join(report["reasons"])
    assert f"Scrapyd job {scrapyd_busy.running} of spider sleeper (project dtkproject) has been running" in reasons
    assert f"Scrapyd job {scrapyd_busy.pending} of spider sleeper (project dtkproject) is waiting to run." in reasons
    sleep_user, sleep_session = tmux_users["sleep"]
    assert f"tmux session '{sleep_session}' of {sleep_user} runs 'sleep 3600'" in reasons
    assert f"PostgreSQL query {pid} of alice from 127.0.0.1 (alice: reindex) has been running" in reasons
    idle_user, _ = tmux_users["idle"]
    assert idle_user not in reasons, "an idle shell is not a reason"
    sources = report["sources"]
    assert {name: source["status"] for name, source in sources.items()} == {
        "scrapyd": "busy", "tmux": "busy", "postgres": "busy"}
    assert scrapyd_busy.password not in ret.stdout


def test_busy_without_out_is_the_verdict_and_one_line_per_reason(salt_master, salt_minion, scrapyd_busy,
                                                                 make_scrapyd, tmux_users):
    script = salt_master.factories_manager.get_salt_script_path("salt")
    conf_dir = os.path.dirname(salt_master.config_file)
    sleep_user, sleep_session = tmux_users["sleep"]

    def said(server, user, *out):
        return subprocess.run([salt_master.python_executable, script, "-c", conf_dir, *out, MINION, "kingfisher.busy",
                               "postgres=never", f"users={user}", *scrapyd_args(server)],
                              capture_output=True, text=True, timeout=120)

    busy = said(scrapyd_busy, sleep_user)
    lines = busy.stdout.splitlines()
    verdict = "checked scrapyd and tmux; skipped postgres (postgres=never)."
    assert busy.returncode == 1 and lines[0] == f"{MINION}: Busy: {verdict}", busy
    assert len(lines) == 4, lines  # one line per reason: the running job, the pending one, the tmux session
    assert lines[1].startswith(f"    Scrapyd job {scrapyd_busy.running} of spider sleeper")
    assert lines[3].startswith(f"    tmux session '{sleep_session}' of {sleep_user} runs 'sleep 3600'")
    stale_user, _ = tmux_users["stale"]
    idle = said(make_scrapyd(jobs=0), stale_user)
    assert idle.returncode == 0 and idle.stdout.splitlines() == [
        f"{MINION}: Not busy: {verdict}"], idle
    whole = said(make_scrapyd(jobs=0), stale_user, "--out=json")
    assert json.loads(whole.stdout)[MINION]["sources"]["tmux"]["stale"][0]["owner"] == stale_user


def test_idle_server_exits_0(salt, make_scrapyd, tmux_users):
    server = make_scrapyd(jobs=0)
    stale_user, _ = tmux_users["stale"]
    ret = salt("kingfisher.busy", "postgres=never", f"users={stale_user}", *scrapyd_args(server))
    assert ret.returncode == 0, ret
    assert ret.data["busy"] is False and ret.data["reasons"] == []
    assert ret.data["sources"]["postgres"] == {"status": "skipped", "why": "postgres=never"}
    assert ret.data["sources"]["tmux"]["stale"][0]["owner"] == stale_user


def test_unreadable_sources_count_as_busy(salt, make_scrapyd, tmux_users):
    server = make_scrapyd(jobs=0)
    server.kill()
    stale_user, _ = tmux_users["stale"]
    ret = salt("kingfisher.busy", "postgres=always", f"users={stale_user}", *scrapyd_args(server),
               "socket_dir=/tmp/dtk-nowhere", "port=1")
    assert ret.returncode == 1, ret
    assert ret.data["sources"]["scrapyd"]["status"] == "busy"
    assert ret.data["reasons"][0] == f"scrapyd cannot be read, so it counts as busy: Scrapyd at {server.url} " \
        "cannot be reached: 127.0.0.1 refused the connection (nothing listens there)."
    assert ret.data["reasons"][1].startswith(
        "postgres cannot be read, so it counts as busy: PostgreSQL at /tmp/dtk-nowhere port 1 cannot be queried: ")


def test_each_function_answers_through_the_cli(salt, scrapyd_busy, tmux_users, pg_cluster):
    jobs = salt("kingfisher.scrapyd_jobs", *scrapyd_args(scrapyd_busy))
    assert jobs.returncode == 0 and jobs.data["running"][0]["job"] == scrapyd_busy.running
    sleep_user, sleep_session = tmux_users["sleep"]
    sessions = salt("kingfisher.tmux_sessions", f"users={sleep_user}")
    assert sessions.returncode == 0 and sessions.data["sessions"][0]["name"] == sleep_session
    queries = salt("kingfisher.long_queries", "threshold=3600", *pg_args(pg_cluster))
    assert queries.returncode == 0 and queries.data == {"threshold": 3600.0, "client": "psycopg", "queries": []}
    pending = salt("kingfisher.postgres_restart_pending")
    assert pending.returncode == 0 and set(pending.data) == {"restart", "reasons", "packages"}
    again = salt("kingfisher.postgres_restart_pending")
    assert again.data["packages"]["checked"] == pending.data["packages"]["checked"], "kept, with its age"
    assert again.data["packages"]["age"] >= 0 and again.data["reasons"] == pending.data["reasons"]


def test_restart_pending_runs_the_state_test(salt, sls_dir):
    conf = f"/tmp/dtk-pgconf-{os.getpid()}"
    (sls_dir / "dtkpgrestart.sls").write_text(
        f"dtk pg conf:\n  file.managed:\n    - name: {conf}\n    - contents: new\n"
        "dtk pg service:\n  test.succeed_with_changes:\n    - name: postgresql\n    - watch:\n"
        "      - file: dtk pg conf\n"
    )
    try:
        ret = salt("kingfisher.postgres_restart_pending", "state_test=dtkpgrestart")
        assert ret.returncode == 0, ret
        assert set(ret.data) == {"restart", "reasons", "packages"}
        assert not os.path.exists(conf), "test mode changes nothing"
        missing = salt("kingfisher.postgres_restart_pending", "state_test=dtk-no-such-sls")
        assert missing.returncode == 1
        assert "state.apply test=True could not run: No matching sls found for 'dtk-no-such-sls'" in missing.stdout
    finally:
        (sls_dir / "dtkpgrestart.sls").unlink()


@pytest.mark.parametrize("value", ["[1]", "1", '{"a": 1}', "a b"])
def test_restart_pending_refuses_a_state_test_that_names_no_sls(salt, value):
    ret = salt("kingfisher.postgres_restart_pending", f"state_test={value}")
    assert ret.returncode == 1
    assert "state_test must be True, False or sls names separated by commas, e.g. state_test=postgres,kingfisher; " \
        "got " in ret.stdout, ret
    assert "Succeeded" not in ret.stdout and "state.apply" not in ret.stdout


@pytest.mark.parametrize(
    "args, sentence",
    [
        (["postgres=sometimes"], "postgres must be one of auto, always or never; got 'sometimes'."),
        (["postgres=always", "threshold=abc"], "The threshold must be a number of seconds, 0 or more; got 'abc'."),
        (["postgres=always", "threshold=-5"], "The threshold must be a number of seconds, 0 or more; got -5."),
        (["url=localhost:6800"], "The Scrapyd URL 'localhost:6800' is not valid: give one like http://localhost:6800."),
        (["users=alice;id"], "'alice;id' is not a valid user name: use letters, digits, '_' and '-'."),
        (["scrapyd=false"], "kingfisher.busy takes no scrapyd= argument: a source is turned off in the server's "
                            "config or pillar (kingfisher: {scrapyd: false}), never for one call, so that no "
                            "deployment skips a check that would stop it."),
        (["postgers=always"], "kingfisher.busy has no argument 'postgers'; it takes postgres, "),
    ],
)
def test_bad_input_is_one_sentence_and_exit_1(salt, args, sentence):
    ret = salt("kingfisher.busy", *args)
    assert ret.returncode == 1, ret
    assert sentence in ret.stdout and "Traceback" not in ret.stdout


def test_settings_come_from_pillar_through_config_get(salt, salt_cli, pillar_sls, scrapyd_busy, pg_cluster):
    pillar_sls(
        "kingfisher:\n"
        f"  scrapyd: {{url: '{scrapyd_busy.url}', username: {scrapyd_busy.username},"
        f" password: '{scrapyd_busy.password}'}}\n"
        f"  postgres: {{socket_dir: '{pg_cluster.socket_dir}', port: {pg_cluster.port}, threshold: 7200}}\n"
    )
    try:
        assert salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=MINION).returncode == 0
        jobs = salt("kingfisher.scrapyd_jobs")
        assert jobs.returncode == 0, jobs
        assert scrapyd_busy.running in str(jobs.data) and scrapyd_busy.password not in jobs.stdout
        queries = salt("kingfisher.long_queries")
        assert queries.returncode == 0, queries
        assert queries.data["threshold"] == 7200 and queries.data["queries"] == []
    finally:
        pillar_sls("{}\n")
        salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=MINION)


def test_sources_turned_off_in_pillar_are_skipped_not_busy(salt, salt_cli, pillar_sls, tmux_users):
    pillar_sls("kingfisher: {scrapyd: false, postgres: false}\n")
    stale_user, _ = tmux_users["stale"]
    try:
        assert salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=MINION).returncode == 0
        ret = salt("kingfisher.busy", "postgres=always", f"users={stale_user}")
        assert ret.returncode == 0, ret
        assert ret.data["busy"] is False and ret.data["summary"] == (
            "Not busy: checked tmux; skipped scrapyd (turned off: kingfisher:scrapyd is false) and postgres "
            "(turned off: kingfisher:postgres is false).")
        guard = salt("state.single", "kingfisher.no_running_jobs", "name=crawls")
        (state,) = guard.data.values()
        assert state["result"] is True, guard
        assert state["comment"] == "No Scrapyd job is checked: scrapyd is turned off: kingfisher:scrapyd is false."
    finally:
        pillar_sls("{}\n")
        salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=MINION)


def test_report_reads_any_source_by_name(salt, tmux_users):
    user, session = tmux_users["sleep"]
    ret = salt("kingfisher.report", "tmux", f"users={user}")
    assert ret.returncode == 0, ret
    assert [found["name"] for found in ret.data["sessions"]] == [session]
    unknown = salt("kingfisher.report", "celery")
    assert unknown.returncode == 1
    assert "There is no Kingfisher source 'celery'; the sources are scrapyd, tmux, postgres." in unknown.stdout


def test_credentials_in_the_scrapyd_url_are_never_shown(salt, scrapyd_busy):
    host = scrapyd_busy.url.split("://", 1)[1]
    url = f"http://{scrapyd_busy.username}:{scrapyd_busy.password}@{host}"
    jobs = salt("kingfisher.scrapyd_jobs", f"url={url}")
    assert jobs.returncode == 0 and jobs.data["url"] == f"http://***@{host}", jobs
    down = salt("kingfisher.scrapyd_jobs", f"url=http://{scrapyd_busy.username}:{scrapyd_busy.password}@127.0.0.1:9")
    assert down.returncode == 1 and "Scrapyd at http://***@127.0.0.1:9 cannot be reached" in down.stdout
    for ret in (jobs, down):
        assert scrapyd_busy.password not in ret.stdout
