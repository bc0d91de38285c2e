"""
What a person reads: ``salt-run deploytoken.*`` through the real CLI with no ``--out`` prints the short
answer of ``_output/deploytoken.py`` (the sentence first, one line per history row), compared as text;
the same calls with ``--out=json`` print one JSON document with the full data, and the exit status is the
same either way.
"""

import json
import os
import re
import subprocess

import pytest

from conftest import hint_prefix

pytestmark = [pytest.mark.daemons, pytest.mark.usefixtures("free_token")]


@pytest.fixture(scope="module")
def said(salt_master):
    """``said(login, *args)``: the real salt-run, as ``login`` through sudo, with no ``--out`` unless given."""
    script = salt_master.factories_manager.get_salt_script_path("salt-run")
    conf_dir = os.path.dirname(salt_master.config_file)

    def run(login, *args):
        return subprocess.run([salt_master.python_executable, script, "-c", conf_dir, *args], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, SUDO_USER=login))

    return run


def test_the_token_cycle_answers_in_sentences_and_json_keeps_the_data(said, salt_run):
    prefix = hint_prefix(salt_run)
    free = said("carol", "deploytoken.status")
    assert (free.returncode, free.stdout) == (0, "Nobody holds the deploy token. Take it with: "
                                                 f"{prefix} deploytoken.acquire reason='...'\n"), free

    taken = said("alice", "--out=json", "deploytoken.acquire", "reason=upgrade postgres")
    data = json.loads(taken.stdout)  # one document, the full answer
    assert taken.returncode == 0 and data["holder"] == "Alice Smith" and data["changed"] is True
    claim = data["claim"]
    again = said("alice", "deploytoken.acquire")
    assert again.returncode == 0 and re.fullmatch(
        r"You already hold the deploy token, since \d{4}-\d\d-\d\d \d\d:\d\d UTC \(\d+ s\) \(claim "
        + claim + r"\)\.\n", again.stdout), again.stdout

    refused = said("bob", "deploytoken.acquire", "reason=my turn")
    assert refused.returncode == 1 and re.fullmatch(
        r"Deploy token is held by Alice Smith \(alice\) since [^(]+ \(\d+ s\): \"upgrade postgres\"\. Wait with "
        + re.escape(f"{prefix} deploytoken.acquire wait=True, or ask Alice Smith to run {prefix} deploytoken.release.")
        + r"\n", refused.stdout), refused.stdout
    refused_json = said("bob", "--out=json", "deploytoken.acquire", "reason=my turn")
    assert refused_json.returncode == 1 and json.loads(refused_json.stdout)["retcode"] == 1

    held = said("carol", "deploytoken.status")
    assert held.returncode == 0 and re.fullmatch(
        r"The deploy token is held by Alice Smith \(alice\) since [^(]+ \(\d+ s\): \"upgrade postgres\"\.\n"
        + re.escape(f"Claim: {claim}\nRelease (the holder): {prefix} deploytoken.release note='...'\n"
                    f"Force (anyone, recorded in the history): {prefix} deploytoken.release force=True claim={claim} "
                    "reason='...'\n"), held.stdout), held.stdout

    given = said("alice", "deploytoken.release", "note=rebooted kingfisher-main")
    assert given.returncode == 0 and re.fullmatch(
        r"Released the deploy token at \d{4}-\d\d-\d\d \d\d:\d\d UTC, held by Alice Smith for \d+ s; the history "
        rf"has a new row \(claim {claim}\)\.\n", given.stdout), given.stdout

    (row,) = json.loads(said("carol", "--out=json", "deploytoken.history", "limit=1").stdout)
    rows = said("carol", "deploytoken.history", "limit=1")
    assert rows.returncode == 0 and rows.stdout == (
        f"{row['released'][:16].replace('T', ' ')}  holding  Alice Smith  {row['duration']} s  'upgrade postgres'  "
        "rebooted kingfisher-main\n")


def test_a_refusal_of_bad_input_is_its_sentence(said, salt_run):
    refused = said("alice", "deploytoken.acquire", "resaon=x")
    assert (refused.returncode, refused.stdout) == (
        2, "deploytoken.acquire has no argument resaon: it takes reason, wait, timeout, interval, name, force.\n")
    as_json = said("alice", "--out=json", "deploytoken.acquire", "resaon=x")
    assert as_json.returncode == 2 and json.loads(as_json.stdout) == {
        "error": refused.stdout.strip(), "retcode": 2}


def test_progress_of_a_wait_is_one_line_per_report(said, salt_run):
    said("alice", "deploytoken.acquire", "reason=busy")
    waited = said("bob", "deploytoken.acquire", "wait=True", "timeout=2", "interval=1")
    assert waited.returncode == 1
    lines = waited.stdout.splitlines()
    assert lines[0].startswith("Waiting for the deploy token, held by Alice Smith (alice) since "), lines
    assert all(line.startswith("Waiting for the deploy token") for line in lines[:-1])
    assert lines[0] != lines[1], "joining the line woke the waiter at once: its first report came twice"
    assert lines[-1].startswith("Gave up after waiting ") and "suffix" not in waited.stdout
    said("alice", "deploytoken.release")


def test_a_running_override_is_a_line_of_status_and_its_cancel_a_sentence(said):
    made = json.loads(said("bob", "--out=json", "deploytoken.override", "reason=db down", "targets=dt-human-*").stdout)
    status = said("carol", "deploytoken.status")
    until = made["until"][:16].replace("T", " ")
    assert f"Override {made['id']} by Bob Jones on dt-human-* until {until}: 'db down'" in status.stdout.splitlines()
    cancelled = said("bob", "deploytoken.override", "cancel=True", f"id={made['id']}", "reason=db back")
    assert (cancelled.returncode, cancelled.stdout) == (0, f"Cancelled 1 override(s) ({made['id']}): the guard checks "
                                                           "the deploy token again. The history has its row.\n")


def test_update_repos_says_each_repository_once(said, git_world):
    clone = git_world.clone(git_world.origin())
    updated = said("alice", "deploytoken.update_repos", "repos=" + json.dumps([clone.working_tree_dir]))
    # The progress reports, then the sum of them: no repository's sentence twice.
    assert updated.returncode == 0 and updated.stdout.splitlines() == [
        f"Updating {clone.working_tree_dir}.", f"{clone.working_tree_dir}: main is up to date.",
        "Updated 1 repository, with no problem."], updated.stdout
