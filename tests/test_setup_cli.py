"""``salt-run deploytoken.update_repos / setup / cleanup`` on the shared real master and minion, real git
repositories, and a real Scrapyd for the Kingfisher check: the procedure end to end through the real
salt-run CLI, its refusals through the runner loaded in this process (``runner``)."""

import json
import re

import git
import pytest

from conftest import MINION_ID as MINION
from deploytoken import model

pytestmark = [pytest.mark.daemons, pytest.mark.usefixtures("free_token")]

CONSENT = "Dana Lee: the crawl can be restarted tomorrow"


def as_alice(salt_run, *args):
    return salt_run.run(*args, env={"SUDO_USER": "alice"})


def repos_arg(*repos):
    return "repos=" + json.dumps([repo.working_tree_dir if hasattr(repo, "working_tree_dir") else str(repo)
                                  for repo in repos])


@pytest.fixture
def busy_settings(salt_cli, pillar_sls):
    """``busy_settings(server)``: only this test's Scrapyd, no tmux user with a server and PostgreSQL not
    asked, as the minion's kingfisher pillar, where a team keeps them (busy_args that narrow the check need
    a consent)."""

    def use(server):
        pillar_sls(json.dumps({"kingfisher": {
            "scrapyd": {"url": server.url, "username": server.username, "password": server.password},
            "tmux": {"users": "nobody"}, "busy": {"postgres": "never"}}}) + "\n")
        assert salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=MINION).returncode == 0

    yield use
    pillar_sls("{}\n")
    salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=MINION)


@pytest.fixture
def behind(git_world):
    """A clone on a feature branch, one commit behind its origin's default branch ``trunk``."""
    origin = git_world.origin(default="trunk")
    clone = git_world.clone(origin)
    clone.git.checkout("-b", "feature")
    upstream = git_world.push_from_elsewhere(origin, {"new.txt": "from upstream\n"})
    return clone, upstream


def token_holder(salt_run):
    return as_alice(salt_run, "deploytoken.status").data.get("holder")


def test_update_repos_switches_pulls_and_reports(salt_run, behind, git_world):
    clone, upstream = behind
    ret = as_alice(salt_run, "deploytoken.update_repos", repos_arg(clone))
    assert ret.returncode == 0, ret
    (report,) = ret.data["repos"]
    assert ret.data["ok"] is True and ret.data["problems"] == []
    assert (report["branch_before"], report["branch_after"], report["pulled"]) == ("feature", "trunk", 1)
    assert report["head_after"] == upstream and clone.head.commit.hexsha == upstream


def test_update_repos_exits_1_on_a_problem(runner, git_world):
    good = git_world.clone(git_world.origin())
    lonely = git_world.path("lonely")
    lonely.mkdir()
    git_world.commit(git.Repo.init(lonely), {"a": "a\n"}, "only")
    ret = as_alice(runner, "deploytoken.update_repos", repos_arg(good, lonely))
    assert ret.returncode == 1, ret
    assert ret.data["problems"] == [
        f"{lonely}: has no remote named origin, so there is nothing to pull from. Nothing was changed."]
    assert ret.data["repos"][0]["problem"] is None


@pytest.mark.parametrize("entry, sentence", [
    ("srv/deploy", "The repos entry 'srv/deploy' is a relative path: give an absolute path."),
    ("/nonexistent/dt-deploy", "The repos entry /nonexistent/dt-deploy is not a directory."),
    ("/tmp", "The repos entry /tmp is not a git repository."),
])
def test_update_repos_bad_entry_changes_nothing(runner, behind, entry, sentence):
    clone, _ = behind
    ret = as_alice(runner, "deploytoken.update_repos", repos_arg(clone, entry))
    assert ret.returncode == 2, ret
    assert ret.data == {"error": sentence, "retcode": 2}
    assert clone.active_branch.name == "feature"


def test_setup_on_idle_minion_takes_the_token_and_cleanup_gives_it_back(
        salt_run, salt_minion, behind, make_scrapyd, busy_settings):
    clone, upstream = behind
    server = make_scrapyd(jobs=0)
    busy_settings(server)
    # Warnings shown: Salt names every client left open on exit.
    ret = as_alice(salt_run, "--log-level=warning", "deploytoken.setup", f"targets={MINION}",
                   "reason=upgrade postgres", repos_arg(clone))
    assert ret.returncode == 0, ret
    summary = ret.data
    assert summary["done"] is True and summary["consent"] is None
    assert summary["repos"]["repos"][0]["branch_after"] == "trunk" and clone.head.commit.hexsha == upstream
    assert summary["kingfisher"] == {MINION: {
        "busy": False, "answered": True, "reasons": [],
        "summary": "Not busy: checked scrapyd and tmux; skipped postgres (postgres=never)."}}
    assert summary["token"]["holder"] == "Alice Smith" and summary["token"]["reason"] == "upgrade postgres"
    assert summary["message"].startswith("Setup done: repositories updated; Kingfisher checked. You hold the deploy")
    assert server.password not in ret.stdout
    # Salt's own salt-run leaves its Runner and MasterMinion open; the clients setup opens are closed.
    unclosed = set(re.findall(r"unclosed (\w+)", ret.stderr))
    assert unclosed <= {"Runner", "MasterMinion"}, ret.stderr

    done = as_alice(salt_run, "deploytoken.cleanup", "note=rebooted kingfisher-main")
    assert done.returncode == 0 and done.data["released"], done
    (row,) = as_alice(salt_run, "deploytoken.history", "limit=1").data
    assert row["claim"] == summary["token"]["claim"] and row["note"] == "rebooted kingfisher-main"
    assert token_holder(salt_run) is None


def test_running_crawl_stops_setup_and_consent_lets_it_through(
        salt_run, salt_minion, behind, scrapyd_busy, busy_settings):
    clone, _ = behind
    busy_settings(scrapyd_busy)
    args = (f"targets={MINION}", "reason=new spider", repos_arg(clone))
    stopped = as_alice(salt_run, "deploytoken.setup", *args)
    assert stopped.returncode == 1, stopped
    assert stopped.data["done"] is False and stopped.data["token"] is None
    message = stopped.data["message"]
    assert message.startswith(f"Setup stopped: Kingfisher is busy.\n{MINION}: Scrapyd job {scrapyd_busy.running} "
                              "of spider sleeper (project dtkproject) has been running")
    assert message.endswith(".\nAsk the owners, or the data support manager, and run again with "
                            "consent='Dana Lee: the crawl can be restarted tomorrow'.")
    # One line per reason, each a whole sentence.
    reasons = message.splitlines()[1:-1]
    assert len(reasons) == 2 and all(line.startswith(f"{MINION}: ") and line.endswith(".") for line in reasons)
    assert token_holder(salt_run) is None

    agreed = as_alice(salt_run, "deploytoken.setup", *args, f"consent={CONSENT}")
    assert agreed.returncode == 0, agreed
    assert agreed.data["kingfisher"][MINION]["busy"] is True and agreed.data["consent"] == CONSENT
    assert agreed.data["token"]["reason"] == f"new spider [consent: {CONSENT}]"

    assert as_alice(salt_run, "deploytoken.cleanup", "note=crawl restarted").returncode == 0
    (row,) = as_alice(salt_run, "deploytoken.history", "limit=1").data
    assert row["reason"] == f"new spider [consent: {CONSENT}]" and row["note"] == "crawl restarted"


def test_setup_stops_on_a_repository_problem_before_asking_anyone(runner, git_world):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    git_world.commit(clone, {"README": "local\n"}, "local change")
    git_world.push_from_elsewhere(origin, {"README": "upstream\n"})
    ret = as_alice(runner, "deploytoken.setup", "targets=nobody-matches-this", repos_arg(clone))
    assert ret.returncode == 1, ret
    assert ret.data["message"].startswith(f"Setup stopped: 1 repository problem: {clone.working_tree_dir}: "
                                          "rebasing main onto origin/main conflicts with local commit(s) ")
    assert ret.data["kingfisher"] is None and ret.data["token"] is None
    assert token_holder(runner) is None


def test_setup_stops_when_no_minion_matches(runner, behind):
    clone, _ = behind
    ret = as_alice(runner, "deploytoken.setup", "targets=nobody-matches-this", repos_arg(clone))
    assert ret.returncode == 1, ret
    assert ret.data["message"] == "Setup stopped: no minion matches targets 'nobody-matches-this'."
    assert token_holder(runner) is None


@pytest.mark.parametrize("arg, sentence", [
    ("targets=", "targets is empty: give the Kingfisher minions to check, e.g. targets='collect*', or leave it out; "
                 "got ''."),
    ("consent=Dana Lee", "consent must name the data support manager who agreed and why, as "
                         "consent='<manager>: <why>', e.g. consent='Dana Lee: the crawl can be restarted tomorrow'; "
                         "got 'Dana Lee'."),
    ("consent=Dana Lee:", "consent must name the data support manager who agreed and why, as "
                          "consent='<manager>: <why>', e.g. consent='Dana Lee: the crawl can be restarted tomorrow'; "
                          "got 'Dana Lee:'."),
    ("wait=maybe", "wait must be True or False, got 'maybe'."),
    ("busy_args=always", "busy_args must be a mapping of kingfisher.busy arguments, got 'always'."),
])
def test_setup_bad_input_changes_nothing(runner, behind, arg, sentence):
    clone, _ = behind
    ret = as_alice(runner, "deploytoken.setup", "reason=x", repos_arg(clone), arg)
    assert ret.returncode == 2, ret
    assert ret.data == {"error": sentence, "retcode": 2}
    assert clone.active_branch.name == "feature", "the repositories were not touched"
    assert token_holder(runner) is None


@pytest.mark.parametrize("arg, sentence", [
    ("consent=Dana Lee\nok", "deploytoken.setup got 'consent=Dana Lee\\nok', which is name=value with a line break "
                             "in the value: values must be single lines."),
    ("timeout=1e308", "The timeout must be a number of seconds, at least 0 and at most 86400; got '1e308'."),
    ("tgt_type=globb", "tgt_type must be one of glob, pcre, list, grain, grain_pcre, pillar, pillar_pcre, "
                       "pillar_exact, compound, compound_pillar_exact, nodegroup, ipcidr, range; got 'globb'."),
    ("reasno=typo", "deploytoken.setup has no argument reasno: it takes targets, reason, wait, consent, repos, "
                    "tgt_type, busy_args, timeout, interval, name, ssh."),
])
def test_setup_checks_every_argument_before_the_first_step(runner, behind, arg, sentence):
    clone, _ = behind
    ret = as_alice(runner, "deploytoken.setup", "targets=nobody-matches-this", "reason=x", repos_arg(clone), arg)
    assert ret.returncode == 2, ret
    assert ret.data == {"error": sentence, "retcode": 2}
    assert clone.active_branch.name == "feature", "the repositories were not touched"
    assert token_holder(runner) is None


def test_the_history_says_what_each_row_is_through_the_cli(
        salt_run, salt_minion, behind, scrapyd_busy, busy_settings):
    clone, _ = behind
    busy_settings(scrapyd_busy)
    bob = {"env": {"SUDO_USER": "bob"}}
    start = model.isoformat(model.utcnow())
    as_alice(salt_run, "deploytoken.acquire", "reason=upgrade postgres")
    given = as_alice(salt_run, "deploytoken.release", "note=rebooted")
    assert given.returncode == 0 and given.data["duration"] >= 0, given
    assert given.data["message"].startswith(f"Released the deploy token at {model.clock(given.data['released'])}, "
                                            "held by Alice Smith for ")
    as_alice(salt_run, "deploytoken.acquire", "reason=again")
    assert salt_run.run("deploytoken.release", "force=True", "reason=Alice is away", **bob).returncode == 0
    made = salt_run.run("deploytoken.override", "reason=db down", "targets=dt-nomatch-*", **bob).data
    salt_run.run("deploytoken.override", "cancel=True", f"id={made['id']}", "reason=db back", **bob)
    stopped = as_alice(salt_run, "deploytoken.setup", f"targets={MINION}", "reason=new spider", repos_arg(clone))
    assert stopped.returncode == 1 and stopped.data["message"].startswith("Setup stopped: Kingfisher is busy.")

    rows = as_alice(salt_run, "deploytoken.history", "limit=5").data[::-1]
    assert [row["kind"] for row in rows] == ["holding", "forced", "override", "override_cancelled", "setup_stopped"]
    holding, forced, override, cancel, setup = rows
    assert (holding["released"], holding["note"]) == (given.data["released"], "rebooted")
    assert forced["forced_by"] == "Bob Jones (bob)" and override["note"].endswith("dt-nomatch-*")
    assert override["until"] == made["until"] and override["released"] == cancel["released"]
    assert setup["holder"] == "Alice Smith" and setup["reason"] == "new spider" and setup["acquired"] is None
    assert setup["note"].startswith(f"Setup stopped: Kingfisher is busy. {MINION}: Scrapyd job ")
    # Times are when things happened: in the order they happened, none in the future.
    happened = [holding["released"], forced["released"], override["acquired"], cancel["released"], setup["released"]]
    assert start <= happened[0] and happened == sorted(happened) and happened[-1] <= model.isoformat(model.utcnow())
    assert all(row["acquired"] <= row["released"] for row in rows[:4])

    table = as_alice(salt_run, "--out=table", "deploytoken.history", "limit=5")
    assert table.returncode == 0 and " Kind " in table.stdout and "setup_stopped" in table.stdout, table.stdout


def test_busy_args_that_narrow_the_check_need_a_consent_and_are_recorded_with_it(
        salt_run, salt_minion, behind, scrapyd_busy, busy_settings):
    clone, _ = behind
    busy_settings(scrapyd_busy)
    narrow = 'busy_args={"users": "nobody", "postgres": "never", "password": "s3cret"}'
    args = (f"targets={MINION}", "reason=new spider", repos_arg(clone), narrow)
    refused = as_alice(salt_run, "deploytoken.setup", *args)
    assert refused.returncode == 2, refused
    assert refused.data["error"] == (
        "busy_args users='nobody', postgres='never', password='***' change what kingfisher.busy checks on the "
        "targets, so the check could miss someone's work: that needs the data support manager's consent, recorded "
        "with the claim, as consent='Dana Lee: the crawl can be restarted tomorrow'; or leave them out (settings "
        "belong in the minions' config or pillar). Only busy_args='{\"postgres\": \"always\"}' needs none.")
    assert token_holder(salt_run) is None and clone.active_branch.name == "feature"

    agreed = as_alice(salt_run, "deploytoken.setup", *args, f"consent={CONSENT}")
    assert agreed.returncode == 0, agreed
    recorded = (f"new spider [consent: {CONSENT} (busy check narrowed with busy_args users='nobody', "
                "postgres='never', password='***')]")
    assert agreed.data["token"]["reason"] == recorded and "s3cret" not in agreed.stdout
    assert as_alice(salt_run, "deploytoken.cleanup", "note=done").returncode == 0
    (row,) = as_alice(salt_run, "deploytoken.history", "limit=1").data
    assert row["reason"] == recorded

    widened = as_alice(salt_run, "deploytoken.setup", f"targets={MINION}", "reason=reindex", repos_arg(clone),
                       'busy_args={"postgres": "always"}')
    assert widened.returncode == 1 and widened.data["message"].startswith("Setup stopped: Kingfisher is busy.")
