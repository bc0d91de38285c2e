"""kingfisher.no_running_jobs / no_long_queries / no_active_sessions under ``prereq``, against real
Scrapyd, PostgreSQL and tmux servers, through the real salt CLI."""

import json
import time

import pytest

from guard_helpers import MINION
from kingfisher_fixtures import wait_for

pytestmark = pytest.mark.daemons

# The file.managed stands in for the service a deployment would restart: the guard runs only when it
# would change.
PREREQ = """\
{guard} would be interrupted:
  kingfisher.{guard}:
{args}
    - prereq:
      - file: service stand-in

service stand-in:
  file.managed:
    - name: {marker}
    - contents: restarted
"""


@pytest.fixture
def guarded(write_sls, marker_dir):
    """``guarded(guard, **args)`` writes the sls and returns (sls name, the stand-in's path)."""
    marker = marker_dir / "restarted"

    def write(guard, **args):
        lines = "\n".join(f"    - {key}: {value!r}" for key, value in args.items())
        return write_sls(f"dtkf_{guard}", PREREQ.format(guard=guard, args=lines, marker=marker)), marker

    return write


def apply(salt_cli, sls, *args):
    return salt_cli.run("state.apply", sls, *args, minion_tgt=MINION)


def guard_of(ret):
    (state,) = [value for key, value in ret.data.items() if key.startswith("kingfisher_|")]
    return state


def scrapyd(server):
    return {"url": server.url, "username": server.username, "password": server.password}


def test_running_crawl_blocks_a_restart(salt_cli, scrapyd_busy, guarded):
    sls, marker = guarded("no_running_jobs", **scrapyd(scrapyd_busy))
    ret = apply(salt_cli, sls)
    assert ret.returncode == 1
    guard = guard_of(ret)
    assert guard["result"] is False
    assert f"Scrapyd job {scrapyd_busy.running} of spider sleeper (project dtkproject) has been running" in (
        guard["comment"]
    )
    assert guard["comment"].endswith(
        "Deploying now would interrupt this work: wait until it ends, or take the deploy token with the data "
        "support manager's consent (salt-run deploytoken.setup reason='...' consent='<manager>: <why>')."
    )
    assert scrapyd_busy.password not in ret.stdout
    assert not marker.exists()


def test_long_query_blocks_a_restart(salt_cli, pg_cluster, pg_query, guarded):
    pid = pg_query("/* alice: reindex */ SELECT pg_sleep(600)", user="alice", tcp=True)
    time.sleep(1.2)
    sls, marker = guarded("no_long_queries", threshold=1, socket_dir=str(pg_cluster.socket_dir), port=pg_cluster.port)
    ret = apply(salt_cli, sls)
    assert ret.returncode == 1
    assert f"PostgreSQL query {pid} of alice from 127.0.0.1 (alice: reindex) has been running" in (
        guard_of(ret)["comment"]
    )
    assert not marker.exists()


def test_tmux_pane_running_a_program_blocks_a_restart(salt_cli, tmux_users, guarded):
    user, session = tmux_users["sleep"]
    idle, _ = tmux_users["idle"]
    sls, marker = guarded("no_active_sessions", users=f"{user},{idle}")
    ret = apply(salt_cli, sls)
    assert ret.returncode == 1
    comment = guard_of(ret)["comment"]
    assert f"tmux session '{session}' of {user} runs 'sleep 3600'" in comment and idle not in comment
    assert not marker.exists()


def test_a_command_a_dash_pane_runs_blocks_a_restart(salt_cli, login_users, guarded):
    # tmux names the pane's foreground process "sh" here: dash stays in front and forks the command.
    name = login_users.make("/bin/sh")
    login_users.tmux(name, "new-session", "-d", "-s", "crawl", "sleep 600")
    wait_for(lambda: [argv for _, _, argv in login_users.processes(name) if argv == ["sleep", "600"]],
             what="sleep 600")
    sls, marker = guarded("no_active_sessions", users=name)
    ret = apply(salt_cli, sls)
    assert ret.returncode == 1
    assert f"tmux session 'crawl' of {name} runs 'sleep 600' (for " in guard_of(ret)["comment"]
    assert not marker.exists()


def test_idle_services_let_the_restart_happen(salt_cli, make_scrapyd, tmux_users, guarded):
    sls, marker = guarded("no_running_jobs", **scrapyd(make_scrapyd(jobs=0)))
    ret = apply(salt_cli, sls)
    assert ret.returncode == 0, ret
    assert guard_of(ret)["comment"] == "No Scrapyd job would be interrupted."
    assert marker.exists()


def test_guard_does_not_run_without_a_pending_change(salt_cli, scrapyd_busy, guarded):
    sls, marker = guarded("no_running_jobs", **scrapyd(scrapyd_busy))
    marker.write_text("restarted\n")
    ret = apply(salt_cli, sls)
    assert ret.returncode == 0, ret
    guard = guard_of(ret)
    # Salt did not call the guard: Scrapyd is busy, yet the comment is prereq's own.
    assert guard["result"] is True and guard["comment"] == "No changes detected", guard


def test_consent_taken_with_the_token_passes_loudly(salt_cli, salt_run, scrapyd_busy, guarded, token, git_world):
    repos = "repos=" + json.dumps([git_world.clone(git_world.origin()).working_tree_dir])
    ret = salt_run.run("deploytoken.setup", "reason=new spider", "consent=Dana Lee: the crawl can be restarted",
                       repos, env={"SUDO_USER": "alice"})
    assert ret.returncode == 0, ret
    sls, marker = guarded("no_running_jobs", **scrapyd(scrapyd_busy))
    ret = apply(salt_cli, sls)
    assert ret.returncode == 0, ret
    comment = guard_of(ret)["comment"]
    assert comment.startswith(f"CONSENT: PASSED although Scrapyd job {scrapyd_busy.running} ")
    assert comment.endswith("Consent recorded with the deploy token: 'Dana Lee: the crawl can be restarted'.")
    assert marker.exists()


def test_consent_typed_in_pillar_is_not_obeyed(salt_cli, scrapyd_busy, guarded, pillar_sls, token):
    pillar_sls("kingfisher:\n  consent: 'Dana Lee: the crawl can be restarted'\n")
    sls, marker = guarded("no_running_jobs", **scrapyd(scrapyd_busy))
    ret = apply(salt_cli, sls, 'pillar={"kingfisher": {"consent": "Dana Lee: fine by me"}}')
    assert ret.returncode == 1
    assert guard_of(ret)["comment"].endswith(
        "The pillar key kingfisher:consent ('Dana Lee: fine by me') is not obeyed: a consent is given when taking "
        "the token, so the history keeps it.")
    assert not marker.exists()


def test_unreachable_scrapyd_blocks(salt_cli, guarded):
    sls, marker = guarded("no_running_jobs", url="http://127.0.0.1:9")
    ret = apply(salt_cli, sls)
    assert ret.returncode == 1
    assert guard_of(ret)["comment"].startswith(
        "Cannot tell whether a Scrapyd job would be interrupted, so this deployment may not go on: "
    )
    assert not marker.exists()


def test_test_mode_reports_a_block_as_none(salt_cli, scrapyd_busy, guarded):
    sls, marker = guarded("no_running_jobs", **scrapyd(scrapyd_busy))
    guard = guard_of(apply(salt_cli, sls, "test=True"))
    assert guard["result"] is None and "Scrapyd job" in guard["comment"]
    assert not marker.exists()


def test_any_source_is_guarded_by_its_name(salt_cli, tmux_users, guarded):
    user, session = tmux_users["sleep"]
    sls, marker = guarded("not_interrupted", source="tmux", users=user)
    ret = apply(salt_cli, sls)
    assert ret.returncode == 1
    assert f"tmux session '{session}' of {user} runs 'sleep 3600'" in guard_of(ret)["comment"]
    assert not marker.exists()


def test_unknown_source_or_setting_blocks_with_one_sentence(salt_cli, guarded):
    sls, marker = guarded("not_interrupted", source="celery")
    assert guard_of(apply(salt_cli, sls))["comment"] == (
        "There is no Kingfisher source 'celery'; the sources are scrapyd, tmux, postgres.")
    sls, marker = guarded("not_interrupted", source="tmux", threshold=1)
    assert guard_of(apply(salt_cli, sls))["comment"] == (
        "Cannot tell whether a tmux session would be interrupted, so this deployment may not go on: "
        "tmux has no setting 'threshold'; its settings are users.")
    assert not marker.exists()


COMMAND_LINE_OFF = 'pillar={"kingfisher": {"scrapyd": false, "tmux": false}}'
NOT_OBEYED = ("This job's pillar sets kingfisher:{source} otherwise than the master's pillar (a pillar= on the command "
              "line?), which is not obeyed: a guard's settings come from the minion config or the master's pillar, "
              "and a guard is passed only with a consent given when taking the token.")


def test_sources_turned_off_with_pillar_on_the_command_line_are_checked_anyway(
        salt_cli, scrapyd_busy, tmux_users, guarded):
    sls, marker = guarded("no_running_jobs", **scrapyd(scrapyd_busy))
    ret = apply(salt_cli, sls, COMMAND_LINE_OFF)
    assert ret.returncode == 1
    comment = guard_of(ret)["comment"]
    assert f"Scrapyd job {scrapyd_busy.running} of spider sleeper" in comment
    assert comment.endswith(NOT_OBEYED.format(source="scrapyd"))
    user, session = tmux_users["sleep"]
    sls, _ = guarded("no_active_sessions", users=user)
    ret = apply(salt_cli, sls, COMMAND_LINE_OFF)
    assert ret.returncode == 1
    comment = guard_of(ret)["comment"]
    assert f"tmux session '{session}' of {user} runs 'sleep 3600'" in comment
    assert comment.endswith(NOT_OBEYED.format(source="tmux"))
    assert not marker.exists()


def test_a_source_turned_off_in_the_masters_pillar_passes(salt_cli, scrapyd_busy, guarded, pillar_sls):
    pillar_sls("kingfisher: {scrapyd: false}\n")
    sls, marker = guarded("no_running_jobs", **scrapyd(scrapyd_busy))
    ret = apply(salt_cli, sls)
    assert ret.returncode == 0, ret
    assert guard_of(ret)["comment"] == "No Scrapyd job is checked: scrapyd is turned off: kingfisher:scrapyd is false."
    assert marker.exists()
