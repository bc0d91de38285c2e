"""The busy decision and the restart decision: pure functions, no daemon."""

import os
import subprocess

import pytest

from deploytoken.kingfisher import busy as busy_check
from deploytoken.kingfisher import packages, panes, proc, sources, tmux
from deploytoken.kingfisher.errors import InputError, SourceError
from deploytoken.model import human_duration

SESSION = {
    "owner": "alice", "socket": "/tmp/tmux-1000/default", "name": "crawl",
    "panes": [{"command": "sleep", "cmdline": "sleep 3600", "idle": False, "running_for": 7260}],
}
IDLE_SESSION = dict(SESSION, name="notes", panes=[{"command": "bash", "cmdline": "-bash", "idle": True,
                                                   "running_for": 5}])
QUERY = {"pid": 42, "usename": "alice", "client_addr": "10.0.0.5", "application_name": "psql", "duration": 4000,
         "comment": "alice: reindex", "query": "/* alice: reindex */ REINDEX TABLE release"}


def test_nothing_running_is_not_busy():
    report = busy_check.decide({
        "scrapyd": {"running": [], "pending": [], "unlisted": []},
        "tmux": {"sessions": [IDLE_SESSION], "stale": [{"socket": "/tmp/tmux-1/default", "owner": "bob"}],
                 "errors": []},
        "postgres": {"status": "skipped", "why": "postgres=never"},
    })
    assert report["busy"] is False and report["reasons"] == []
    assert report["sources"]["scrapyd"]["status"] == "idle" and report["sources"]["tmux"]["status"] == "idle"
    assert report["sources"]["postgres"]["status"] == "skipped"


def test_each_reason_is_one_sentence_naming_the_owner():
    report = busy_check.decide({
        "scrapyd": {"running": [{"project": "kingfisher", "spider": "zambia", "job": "j1", "pid": 7,
                                 "running_for": 59}], "pending": [], "unlisted": []},
        "tmux": {"sessions": [SESSION, IDLE_SESSION], "errors": []},
        "postgres": {"queries": [QUERY]},
    })
    assert report["busy"] is True
    assert report["reasons"] == [
        "Scrapyd job j1 of spider zambia (project kingfisher) has been running for 59 s.",
        "tmux session 'crawl' of alice runs 'sleep 3600' (for 2 h 01 min).",
        "PostgreSQL query 42 of alice from 10.0.0.5 (alice: reindex) has been running for 1 h 06 min: "
        "/* alice: reindex */ REINDEX TABLE release",
    ]


def test_unknown_source_counts_as_busy():
    report = busy_check.decide({
        "tmux": {"sessions": [], "errors": [{"socket": "/tmp/tmux-5/default", "owner": "eve",
                                            "error": "tmux failed: timed out."}]},
        "postgres": {"status": "unknown", "error": "PostgreSQL at /run/postgresql port 5432 cannot be queried: x"},
    })
    assert report["busy"] is True
    assert report["reasons"] == [
        "The tmux server of eve at /tmp/tmux-5/default cannot be read: tmux failed: timed out.",
        "postgres cannot be read, so it counts as busy: PostgreSQL at /run/postgresql port 5432 cannot be "
        "queried: x",
    ]


@pytest.mark.parametrize("seconds, text", [(None, "an unknown time"), (0, "0 s"), (600, "10 min"),
                                           (3725, "1 h 02 min")])
def test_duration(seconds, text):
    assert human_duration(seconds) == text


@pytest.mark.parametrize("mode", ["sometimes", "", None, "ALWAYS"])
def test_unknown_postgres_mode_is_refused(mode):
    with pytest.raises(InputError) as info:
        busy_check.check_mode(mode)
    assert str(info.value) == f"postgres must be one of auto, always or never; got {mode!r}."


def test_restart_pending_from_package_upgrades_and_state_test():
    state = {
        "service_|-postgresql_|-postgresql_|-running": {
            "__id__": "postgresql", "name": "postgresql", "result": None,
            "comment": "Service is set to be restarted", "changes": {},
        },
        "service_|-scrapyd_|-scrapyd_|-running": {
            "__id__": "scrapyd", "name": "scrapyd", "result": None, "comment": "Service is set to be restarted",
        },
        "pkg_|-postgresql_|-postgresql-15_|-installed": {"name": "postgresql-15", "comment": "installed"},
    }
    upgrades = {"postgresql-15": "15.9-0+deb12u1", "tmux": "3.3a-4", "libpq5": "15.9-0+deb12u1"}
    assert busy_check.restart_reasons(upgrades, state) == {
        "restart": True,
        "reasons": [
            "Package postgresql-15 would be upgraded to 15.9-0+deb12u1.",
            "The state 'postgresql' says: Service is set to be restarted",
        ],
    }
    assert busy_check.restart_reasons({"tmux": "3.3a-4"}, None) == {"restart": False, "reasons": []}


def test_auto_mode_skips_postgres_when_no_restart_is_pending(tmp_path):
    given = {"scrapyd": {"url": "http://127.0.0.1:1"}, "tmux": {"users": "root"},
             "postgres": {"threshold": 3600, "socket_dir": str(tmp_path), "port": 1}}
    settings = {name: sources.settings(name, given[name], lambda key, default: default)
                for name in sources.names()}
    report = busy_check.busy(settings, postgres_mode="auto", restart=lambda: {"restart": False, "reasons": []})
    assert report["sources"]["postgres"] == {"status": "skipped", "why": "the next deployment would not restart "
                                             "PostgreSQL", "restart": {"restart": False, "reasons": []}}
    assert report["sources"]["scrapyd"]["status"] == "busy", "Scrapyd at port 1 cannot be read"


def test_auto_mode_checks_postgres_when_the_restart_question_fails(tmp_path):
    given = {"scrapyd": {"url": "http://127.0.0.1:1"}, "tmux": {"users": "root"},
             "postgres": {"threshold": 3600, "socket_dir": str(tmp_path), "port": 1, "runas": ""}}
    settings = {name: sources.settings(name, given[name], lambda key, default: default)
                for name in sources.names()}

    def restart():
        raise SourceError("Pending package upgrades cannot be listed: apt-cache failed: exit status 100.")

    postgres = busy_check.busy(settings, postgres_mode="auto", restart=restart)["sources"]["postgres"]
    assert postgres["status"] == "busy" and postgres["error"].startswith(f"PostgreSQL at {tmp_path} port 1 ")
    assert postgres["restart"] == {"restart": None, "reasons": [], "error": "Pending package upgrades cannot be "
                                   "listed: apt-cache failed: exit status 100.; PostgreSQL is checked anyway."}


POLICY = """\
postgresql-15:
  Installed: 15.18-0+deb12u1
  Candidate: 15.20-0+deb12u1
  Version table:
     15.20-0+deb12u1 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
 *** 15.18-0+deb12u1 500
        100 /var/lib/dpkg/status
postgresql-common:
  Installed: 248+deb12u1
  Candidate: 248+deb12u1
postgresql-doc-15:
  Installed: (none)
  Candidate: 15.20-0+deb12u1
"""


def test_apt_policy_gives_the_packages_that_would_change():
    assert packages.parse_policy(POLICY) == {"postgresql-15": "15.20-0+deb12u1"}


@pytest.mark.skipif(packages.tools() is None, reason="not a Debian-family system")
def test_postgres_upgrades_are_those_apt_lists_as_upgradable():
    found = packages.pending(packages.tools(), "postgresql*")
    listed = subprocess.run(["apt", "list", "--upgradable", "postgresql*"], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "LC_ALL": "C"}).stdout
    # postgresql-15/bookworm-security 15.20-0+deb12u1 amd64 [upgradable from: 15.18-0+deb12u1]
    upgradable = {line.split("/")[0]: line.split()[1] for line in listed.splitlines() if "[upgradable" in line}
    assert found["upgrades"] == upgradable
    assert found["age"] == 0 and found["how"] == "dpkg-query and apt-cache policy for postgresql*"


@pytest.mark.skipif(packages.tools() is None, reason="not a Debian-family system")
def test_the_answer_is_kept_with_its_age_until_an_input_changes(tmp_path):
    dpkg_status = tmp_path / "status"
    dpkg_status.write_text("one")
    cache = str(tmp_path / "kept" / "upgrades.json")
    clock = [1000.0]

    def ask():
        return packages.pending(packages.tools(), "dtk-no-such-package*", cache,
                                now=lambda: clock[0], inputs=(str(dpkg_status), str(tmp_path / "absent")))

    first = ask()
    assert first == {"upgrades": {}, "checked": "1970-01-01T00:16:40Z", "age": 0,
                     "how": "dpkg-query and apt-cache policy for dtk-no-such-package*"}
    assert oct(os.stat(cache).st_mode & 0o777) == "0o600"
    clock[0] += 90
    assert ask() == dict(first, age=90.0), "reused with its age"
    dpkg_status.write_text("two: a package was installed")
    assert ask()["checked"] == "1970-01-01T00:18:10Z"
    clock[0] += packages.MAX_AGE
    assert ask()["age"] == 0, "too old to be reused"


@pytest.mark.skipif(packages.tools() is None, reason="not a Debian-family system")
def test_a_failing_package_tool_is_one_sentence():
    dpkg_query, _ = packages.tools()
    with pytest.raises(SourceError) as info:
        packages.pending((dpkg_query, "/bin/false"), "dpkg")
    assert str(info.value) == "Pending package upgrades cannot be listed: false failed: exit status 1."


def test_tmux_lines_become_sessions():
    line = tmux.SEP.join(["crawl", "1700000000", "2", "1700000600", "0", "bash", "0", "999999999",
                          "sleep", "%7", "999999998"])
    (session,), server_pid = tmux.parse_panes(line + "\nmalformed line\n", "alice", "/tmp/tmux-1000/default",
                                              now=1700001000, table=panes.read(uids=set()))
    assert session["name"] == "crawl" and session["attached"] == 2 and session["owner"] == "alice"
    assert session["created"].startswith("2023-11-1") and server_pid == 999999998
    # No such process: the pane's program ended between tmux's answer and the look at /proc.
    assert session["idle"] is True and session["left_over"] == []
    assert session["panes"] == [{"window": "0:bash", "pane": 0, "pane_id": "%7", "command": "sleep", "cmdline": None,
                                 "pid": 999999999, "running_for": None, "idle": True, "background": False,
                                 "stopped": False, "detached": False, "more": 0}]


def test_only_listening_stream_sockets_are_live(tmp_path):
    table = tmp_path / "unix"
    table.write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000: 00000002 00000000 00010000 0001 01 1 /tmp/tmux-1001/default\n"
        "0000: 00000002 00000000 00000000 0001 03 2 /tmp/tmux-1002/default\n"
        "0000: 00000002 00000000 00010000 0002 01 3 /tmp/dgram\n"
        "0000: 00000002 00000000 00010000 0001 01 4 /tmp/tmux-1003/with space\n"
        "0000: 00000003 00000000 00000000 0001 03 5\n"
    )
    assert tmux.listening_sockets(str(table)) == {"/tmp/tmux-1001/default", "/tmp/tmux-1003/with space"}


def process(pid, comm, ppid, pgid, sid=100, tpgid=102, state="S", uid=1000):
    return proc.Process(pid=pid, comm=comm, state=state, ppid=ppid, pgid=pgid, sid=sid, tpgid=tpgid, started=0.0,
                        uid=uid)


def pane_of(*rows):
    """A pane whose shell is pid 100, from ``(process, argv)`` rows (the look at /proc, written out)."""
    processes = {row[0].pid: row[0] for row in rows}
    children = {}
    for found in processes.values():
        children.setdefault(found.ppid, []).append(found.pid)
    table = panes.Table(processes=processes, children=children, tagged={}, servers={},
                        argv={row[0].pid: row[1] for row in rows})
    return panes.pane(table, 1, "%0", 100, now=10.0)


def test_a_root_shell_at_its_prompt_under_sudo_is_idle_and_an_ended_job_runs_nothing():
    shell = (process(100, "bash", 1, 100), ["-bash"])
    sudo = (process(101, "sudo", 100, 101), ["sudo", "-i"])
    root = (process(102, "bash", 101, 102, uid=0), ["-bash"])
    ended = (process(103, "sleep", 102, 103, state="Z", uid=0), [])
    assert pane_of(shell, sudo, root, ended)["idle"] is True
    make = (process(104, "make", 102, 104, uid=0), ["make", "-j2"])
    found = pane_of(shell, sudo, root, make)
    assert found["idle"] is False and [work["cmdline"] for work in found["work"]] == ["make -j2"]
    assert found["work"][0]["background"] is True
