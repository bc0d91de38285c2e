"""The Setup decisions without Salt: targets and consent checks, and reading kingfisher.busy answers."""

import pytest

from deploytoken import model
from deploytoken.procedure import setup
from deploytoken.stores import sqlite as sqlite_store


def test_targets_left_out_or_given():
    assert setup.check_targets(None) is None
    assert setup.check_targets(" collect* ") == "collect*"


@pytest.mark.parametrize("targets", ["", "   ", 5])
def test_empty_targets_are_refused(targets):
    with pytest.raises(model.InputError, match=r"^targets is empty: give the Kingfisher minions to check"):
        setup.check_targets(targets)


def test_consent_names_manager_and_reason():
    assert setup.check_consent(None) is None and setup.check_consent("") is None
    assert setup.check_consent(" Dana Lee :  crawl restarts fine ") == "Dana Lee: crawl restarts fine"


@pytest.mark.parametrize("consent", ["Dana Lee", "Dana Lee:", ": crawl restarts fine", " : "])
def test_consent_without_manager_or_reason_is_refused(consent):
    with pytest.raises(model.InputError) as caught:
        setup.check_consent(consent)
    assert str(caught.value).startswith(
        "consent must name the data support manager who agreed and why, as consent='<manager>: <why>'")


def test_consent_must_be_one_line():
    with pytest.raises(model.InputError, match="^The consent must be a single line"):
        setup.check_consent("Dana: ok\nrm -rf")


def test_verdicts_fail_closed():
    returns = {
        "idle": {"ret": {"busy": False, "reasons": [], "summary": "Not busy: checked tmux.", "sources": {}},
                 "retcode": 0},
        "crawling": {"ret": {"busy": True, "reasons": ["Scrapyd job 1 of spider a is running."]}, "retcode": 1},
        "silent": False,
        "old": {"ret": "'kingfisher.busy' is not available.", "retcode": 254},
        "terse": {"ret": {"busy": True}, "retcode": 1},
    }
    assert setup.verdicts(returns) == {
        "crawling": {"busy": True, "answered": True, "reasons": ["Scrapyd job 1 of spider a is running."],
                     "summary": ""},
        "idle": {"busy": False, "answered": True, "reasons": [], "summary": "Not busy: checked tmux."},
        "old": {"busy": True, "answered": False,
                "reasons": ["old could not run kingfisher.busy, so it counts as busy: 'kingfisher.busy' is not "
                            "available."]},
        "silent": {"busy": True, "answered": False, "reasons": ["silent did not answer, so it counts as busy."]},
        "terse": {"busy": True, "answered": True, "reasons": ["terse says it is busy."], "summary": ""},
    }


@pytest.mark.parametrize("arguments, sentence", [
    ({"targets": "collect*\nrm"}, "The targets must be a single line of printable text"),
    ({"consent": "Dana: ok", "reason": "r" * 490}, "The reason is 510 characters long; at most 500 are allowed."),
    ({"busy_args": "always"}, "busy_args must be a mapping of kingfisher.busy arguments, got 'always'."),
    ({"tgt_type": "globb"}, "tgt_type must be one of glob, pcre, list, grain, grain_pcre, pillar, pillar_pcre, "),
    ({"timeout": "1e308"}, "The timeout must be a number of seconds, at least 0 and at most 86400; got '1e308'."),
    ({"name": "N\u043ebody"}, "it reads as 'Nobody'"),
])
def test_every_argument_is_checked_before_the_repositories_are_touched(tmp_path, git_world, arguments, sentence):
    clone = git_world.clone(git_world.origin(default="trunk"))
    clone.git.checkout("-b", "feature")
    store = sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))
    asked = []
    given = dict({"targets": None, "tgt_type": "glob", "reason": "x", "consent": None, "busy_args": None},
                 **arguments)
    with pytest.raises(model.InputError) as caught:
        setup.run(store, "alice", {}, [clone.working_tree_dir], check_busy=lambda *found: asked.append(found),
                  progress=asked.append, notify=None, **given)
    assert sentence in str(caught.value)
    assert asked == [] and clone.active_branch.name == "feature" and store.read() is None


def test_a_busy_setup_says_one_reason_per_line_each_a_sentence_and_records_them_whole(tmp_path, git_world):
    clone = git_world.clone(git_world.origin())
    store = sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))
    # A reason that does not end in a full stop (an unreadable source's error), and more than a note holds.
    reasons = ["postgres cannot be read, so it counts as busy: connection refused"] + [
        f"tmux session 'crawl{number}' of bob runs 'scrapy crawl spider{number}' (for 2 h)." for number in range(40)]
    busy = {"kf": {"ret": {"busy": True, "reasons": reasons, "summary": "Busy: checked postgres and tmux."}}}
    said = []
    stopped = setup.run(store, "alice", {}, [clone.working_tree_dir], "kf", "glob", "new spider", None, None,
                        check_busy=lambda *asked: busy, progress=said.append, notify=None)
    assert said[0] == "Step 1 of 3: updating 1 repository."
    step2 = said.index("Step 2 of 3: asking kf whether Kingfisher is busy.")
    assert said[step2 + 1:step2 + 4] == ["kf: Busy: checked postgres and tmux.",
                                         "    postgres cannot be read, so it counts as busy: connection refused.",
                                         f"    {reasons[1]}"]
    lines = stopped["message"].splitlines()
    assert lines[0] == "Setup stopped: Kingfisher is busy." and len(lines) == 1 + len(reasons) + 1
    assert lines[1] == "kf: postgres cannot be read, so it counts as busy: connection refused."
    assert lines[-1].startswith("Ask the owners, or the data support manager, and run again with consent=")
    (row,) = store.history(1)
    assert row.kind == model.SETUP_STOPPED and "\u2026" not in row.note and len(row.note) <= setup.MAX_NOTE
    shown = row.note.count("tmux session 'crawl")
    assert 0 < shown < 40 and row.note.endswith(f". And {40 - shown} more reasons.")
    assert row.note.startswith("Setup stopped: Kingfisher is busy. kf: postgres cannot be read, so it counts as busy: "
                               "connection refused. kf: tmux session 'crawl0' of bob")
