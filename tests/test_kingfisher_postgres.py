"""long_queries against a real PostgreSQL 15 cluster (see kingfisher_fixtures.pg_cluster)."""

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from deploytoken.kingfisher import postgres as pg_source
from deploytoken.kingfisher.errors import InputError, SourceError
from kingfisher_fixtures import PG_BIN, lean_python, wait_for

SLEEP = "SELECT pg_sleep(600)"


def settings(**kwargs):
    return pg_source.Settings.parse(kwargs)


def long_queries(cluster, **kwargs):
    return pg_source.long_queries(settings(socket_dir=cluster.socket_dir, port=cluster.port, **kwargs))


def test_long_queries_name_their_owners(pg_cluster, pg_query):
    tcp = pg_query(f"/* alice: reindex */ {SLEEP}", user="alice", tcp=True)
    local = pg_query(f"-- bob: vacuum full\n{SLEEP}", user="bob")
    time.sleep(1.2)
    report = long_queries(pg_cluster, threshold=1)
    found = {query["pid"]: query for query in report["queries"]}
    assert set(found) == {tcp, local}
    alice = found[tcp]
    assert alice["usename"] == "alice" and alice["client_addr"] == "127.0.0.1"
    assert alice["comment"] == "alice: reindex" and alice["query"] == "/* alice: reindex */ SELECT pg_sleep(600)"
    assert alice["duration"] >= 1
    bob = found[local]
    assert bob["usename"] == "bob" and bob["client_addr"] is None and bob["comment"] == "bob: vacuum full"
    assert report["threshold"] == 1


READ_WITH_PSQL = """
import json
from deploytoken.kingfisher import postgres as pg_source
settings = pg_source.Settings.parse({{"socket_dir": {socket_dir!r}, "port": {port}, "threshold": 1,
                                               "user": {user!r}}})
try:
    print(json.dumps(pg_source.long_queries(settings)))
except Exception as exc:
    print(json.dumps({{"error": str(exc)}}))
"""


def test_without_psycopg_the_servers_psql_gives_the_same_report(pg_cluster, pg_query, tmp_path):
    tcp = pg_query(f"/* alice: it's, \"quoted\" \x1f | x */ {SLEEP}", user="alice", tcp=True)
    local = pg_query(f"-- bob: vacuum full\n{SLEEP}", user="bob")
    time.sleep(1.2)
    code = READ_WITH_PSQL.format(socket_dir=pg_cluster.socket_dir, port=pg_cluster.port, user="postgres")
    with_psql = json.loads(lean_python(tmp_path, code))
    with_psycopg = long_queries(pg_cluster, threshold=1)
    assert with_psql["client"] == "psql" and with_psycopg["client"] == "psycopg"
    ours = [query for query in with_psql["queries"] if query["pid"] in (tcp, local)]
    assert [query["comment"] for query in ours] == ["alice: it's, \"quoted\" \x1f | x", "bob: vacuum full"]
    assert ours[0]["client_addr"] == "127.0.0.1" and ours[1]["client_addr"] is None
    for query in with_psycopg["queries"] + with_psql["queries"]:
        query.pop("duration")
        query.pop("query_duration")
    assert with_psql["queries"] == with_psycopg["queries"]
    code = READ_WITH_PSQL.format(socket_dir=pg_cluster.socket_dir, port=pg_cluster.port, user="dtkmonitor")
    refused = json.loads(lean_python(tmp_path, code))["error"]
    assert refused.startswith("Role 'dtkmonitor' cannot see other sessions' queries"), refused


def test_queries_younger_than_the_threshold_are_not_reported(pg_cluster, pg_query):
    pid = pg_query(SLEEP, user="alice")
    assert pid not in [query["pid"] for query in long_queries(pg_cluster, threshold=3600)["queries"]]


def test_parallel_workers_are_not_counted_twice(pg_cluster, pg_query):
    with pg_cluster.connect(autocommit=True) as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS big AS SELECT generate_series(1, 300000) AS n")
        admin.execute("ANALYZE big")
    sql = ("SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;"
           " SET min_parallel_table_scan_size = 0;"
           " SELECT count(*) FROM big WHERE n > 0 AND pg_sleep(0.01) IS NOT NULL")
    pid = pg_query(sql, user="postgres")
    time.sleep(1.2)
    with pg_cluster.connect(autocommit=True) as admin:
        workers = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE leader_pid = %s AND pid <> %s",
                                (pid, pid)).fetchone()[0]
    assert workers > 0, "the test query should run with parallel workers"
    report = long_queries(pg_cluster, threshold=1)
    assert [query["pid"] for query in report["queries"]] == [pid]


def reasons_of(report, pid):
    return [sentence for query, sentence in zip(report["queries"], pg_source.reasons(report)) if query["pid"] == pid]


@pytest.fixture
def psql_script(pg_cluster, tmp_path):
    """``run(sql)``: ``psql -1 -f`` of a script, as a migration is run, in the background; killed afterwards."""
    started = []

    def run(sql, user="alice"):
        script = tmp_path / "migration.sql"
        script.write_text(sql)
        process = subprocess.Popen([str(PG_BIN / "psql"), "-X", "-q", "-h", pg_cluster.socket_dir, "-p",
                                    str(pg_cluster.port), "-U", user, "-d", "postgres", "-1", "-f", str(script)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        return process

    yield run
    for process in started:
        process.kill()
        process.wait(timeout=10)


def test_a_long_transaction_of_short_statements_counts(pg_cluster, psql_script):
    # 40 statements of 0.25 s in one transaction: no statement is ever older than the threshold.
    psql_script("/* alice: migrate */ SELECT pg_sleep(0.25);\n" * 40)
    with pg_cluster.connect(autocommit=True) as admin:
        pid = wait_for(lambda: admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'alice' AND xact_start < now() - interval '2.5 s'"
        ).fetchone(), what="the migration to be 2.5 s old")[0]
    report = long_queries(pg_cluster, threshold=2)
    (found,) = [query for query in report["queries"] if query["pid"] == pid]
    assert found["kind"] == "transaction" and found["duration"] >= 2 and found["query_duration"] < 2
    (sentence,) = reasons_of(report, pid)
    assert sentence.startswith(f"PostgreSQL transaction {pid} of alice (alice: migrate) has been open for "), sentence
    assert sentence.endswith("now running: /* alice: migrate */ SELECT pg_sleep(0.25);")


def test_an_uncommitted_update_left_idle_in_transaction_counts(pg_cluster, pg_query):
    with pg_cluster.connect(autocommit=True) as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS dtk_held (n int)")
        admin.execute("GRANT ALL ON dtk_held TO bob")
    pid = pg_query("/* bob: fix prices */ UPDATE dtk_held SET n = n + 1", user="bob", idle_in_transaction=True)
    time.sleep(1.2)
    report = long_queries(pg_cluster, threshold=1)
    (found,) = [query for query in report["queries"] if query["pid"] == pid]
    assert found["kind"] == "idle in transaction" and found["state"] == "idle in transaction"
    (sentence,) = reasons_of(report, pid)
    assert sentence.startswith(f"PostgreSQL session {pid} of bob (bob: fix prices) has left a transaction open for ")
    assert sentence.endswith("(idle in transaction), a restart would roll it back; its last statement: "
                             "/* bob: fix prices */ UPDATE dtk_held SET n = n + 1")
    assert pid not in [query["pid"] for query in long_queries(pg_cluster, threshold=3600)["queries"]]


def test_a_running_pg_basebackup_counts_whatever_its_age(pg_cluster):
    target = tempfile.mkdtemp(prefix="dtk-basebackup-", dir="/tmp")
    os.rmdir(target)
    # Throttled, so the copy of the small test cluster lasts while the check runs.
    backup = subprocess.Popen([str(PG_BIN / "pg_basebackup"), "-h", pg_cluster.socket_dir, "-p", str(pg_cluster.port),
                               "-U", "postgres", "-D", target, "--max-rate=32k", "-X", "none", "--no-sync"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with pg_cluster.connect(autocommit=True) as admin:
            pid = wait_for(lambda: admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender'").fetchone(),
                what="pg_basebackup's replication connection")[0]
        report = long_queries(pg_cluster, threshold=3600)
        assert backup.poll() is None, "pg_basebackup still runs"
    finally:
        backup.kill()
        backup.wait(timeout=10)
        shutil.rmtree(target, ignore_errors=True)
    (found,) = [query for query in report["queries"] if query["pid"] == pid]
    assert found["kind"] == "replication" and found["usename"] == "postgres"
    assert reasons_of(report, pid) == [
        f"PostgreSQL replication connection {pid} of postgres (pg_basebackup) has been open for "
        f"{pg_source.duration(found['duration'])}; a restart would break it."]


def test_unprivileged_role_is_an_error_not_none(pg_cluster, pg_query):
    pg_query(f"/* alice: reindex */ {SLEEP}", user="alice")
    with pytest.raises(SourceError, match=r"Role 'dtkmonitor' cannot see other sessions' queries .*pg_read_all_stats"):
        long_queries(pg_cluster, threshold=0, user="dtkmonitor")


def test_connecting_without_switching_user_works_too(pg_cluster, pg_query):
    pid = pg_query(f"/* alice: reindex */ {SLEEP}", user="alice")
    time.sleep(1.2)
    assert pid in [query["pid"] for query in long_queries(pg_cluster, threshold=1, runas="")["queries"]]


def test_server_down_and_unknown_role_are_named(pg_cluster):
    with pytest.raises(SourceError, match=r"^PostgreSQL at /tmp/nowhere port 1 cannot be queried: no server listens "
                                          r"on that socket \(is PostgreSQL running\?\) "):
        pg_source.long_queries(settings(socket_dir="/tmp/nowhere", port=1))
    with pytest.raises(SourceError, match=r"cannot be queried: the server refused this role \(.*role \"dtk-nobody\" "
                                          "does not exist"):
        long_queries(pg_cluster, user="dtk-nobody")


@pytest.mark.parametrize("threshold", ["abc", -1, "-5", float("nan"), None, True, "1h"])
def test_bad_threshold_is_refused(threshold):
    with pytest.raises(InputError) as info:
        settings(threshold=threshold)
    assert str(info.value) == f"The threshold must be a number of seconds, 0 or more; got {threshold!r}."


@pytest.mark.parametrize("port", ["abc", 0, 70000, "5432; ls"])
def test_bad_port_is_refused(port):
    with pytest.raises(InputError, match=r"^The PostgreSQL port must be a number from 1 to 65535; got "):
        settings(port=port)


def test_unknown_runas_user_is_refused():
    with pytest.raises(InputError, match="^There is no system user 'dtk-nobody' to connect to PostgreSQL as.$"):
        settings(runas="dtk-nobody")


@pytest.mark.parametrize(
    "query, comment",
    [
        ("/* alice: reindex */ SELECT 1", "alice: reindex"),
        ("  -- bob: vacuum\nSELECT 1", "bob: vacuum"),
        ("/* multi\nline */ SELECT 1", "multi\nline"),
        ("SELECT 1 /* late */", None),
        ("", None),
    ],
)
def test_leading_comment(query, comment):
    assert pg_source.leading_comment(query) == comment
