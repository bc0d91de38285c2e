"""The repository update core against real git repositories: every case leaves local work intact."""

import os

import git
import pytest

from deploytoken import model
from deploytoken import settings as token_settings
from deploytoken.procedure import repos


def read(repo, name):
    with open(os.path.join(repo.working_tree_dir, name)) as handle:
        return handle.read()


def test_clone_on_wrong_branch_and_behind_is_switched_and_pulled(git_world):
    origin = git_world.origin(default="trunk")
    clone = git_world.clone(origin)
    clone.git.checkout("-b", "feature")
    feature = git_world.commit(clone, {"feature.txt": "mine\n"}, "feature work")
    upstream = git_world.push_from_elsewhere(origin, {"new.txt": "from upstream\n"})

    report = repos.update(clone.working_tree_dir)

    assert report["problem"] is None, report
    assert report["default_branch"] == "trunk"
    assert (report["branch_before"], report["branch_after"]) == ("feature", "trunk")
    assert report["pulled"] == 1 and report["head_after"] == upstream
    assert read(clone, "new.txt") == "from upstream\n"
    assert clone.heads.feature.commit.hexsha == feature, "the local branch keeps its commit"


def test_behind_on_default_branch_is_pulled(git_world):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    git_world.push_from_elsewhere(origin, {"a.txt": "1\n"})
    last = git_world.push_from_elsewhere(origin, {"b.txt": "2\n"})

    report = repos.update(clone.working_tree_dir)

    assert report["problem"] is None and report["pulled"] == 2 and report["head_after"] == last
    assert report["message"].endswith(": pulled 2 commit(s) onto main.")
    again = repos.update(clone.working_tree_dir)
    assert again["problem"] is None and again["pulled"] == 0 and again["message"].endswith(": main is up to date.")


def test_default_branch_from_remote_head_when_origin_head_is_missing(git_world):
    origin = git_world.origin(default="production")
    clone = git_world.clone(origin)
    clone.git.remote("set-head", "origin", "-d")
    clone.git.checkout("-b", "other")

    report = repos.update(clone.working_tree_dir)

    assert report["problem"] is None and report["default_branch"] == "production"
    assert report["branch_after"] == "production"


def test_uncommitted_changes_block_the_switch_and_survive(git_world):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    clone.git.checkout("-b", "feature")
    head = clone.head.commit.hexsha
    path = os.path.join(clone.working_tree_dir, "README")
    with open(path, "w") as handle:
        handle.write("half-done edit\n")

    report = repos.update(clone.working_tree_dir)

    assert report["problem"] == (
        f"{clone.working_tree_dir}: uncommitted changes (README) block the switch from feature to main; "
        "commit or stash them yourself, then run again. Nothing was changed."
    )
    assert clone.active_branch.name == "feature" and clone.head.commit.hexsha == head
    assert read(clone, "README") == "half-done edit\n"
    assert clone.git.stash("list") == "", "nothing is stashed"


def test_uncommitted_changes_block_the_pull_and_survive(git_world):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    head = clone.head.commit.hexsha
    git_world.push_from_elsewhere(origin, {"README": "upstream\n"})
    with open(os.path.join(clone.working_tree_dir, "README"), "w") as handle:
        handle.write("local edit\n")
    clone.index.add(["README"])  # staged changes count too

    report = repos.update(clone.working_tree_dir)

    assert report["problem"].endswith(
        "uncommitted changes (README) block pulling 1 commit(s) into main; commit or stash them yourself, "
        "then run again. Nothing was pulled."
    )
    assert clone.head.commit.hexsha == head and read(clone, "README") == "local edit\n"
    assert [diff.a_path for diff in clone.index.diff("HEAD")] == ["README"]


def test_rebase_conflict_is_aborted_and_the_repository_left_as_it_was(git_world):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    local = git_world.commit(clone, {"README": "local version\n"}, "local change")
    clone.git.checkout("-b", "feature")
    with open(os.path.join(clone.working_tree_dir, "notes.txt"), "w") as handle:
        handle.write("untracked notes\n")
    git_world.push_from_elsewhere(origin, {"README": "upstream version\n"})

    report = repos.update(clone.working_tree_dir)

    problem = report["problem"]
    assert problem.startswith(f"{clone.working_tree_dir}: rebasing main onto origin/main conflicts with local "
                              f"commit(s) {local[:12]} (")
    assert problem.endswith("the rebase was aborted and the repository is as it was. "
                            "Resolve it by hand with git pull --rebase.")
    assert clone.active_branch.name == "feature", "switched back to where it was"
    assert clone.heads.main.commit.hexsha == local and clone.heads.feature.commit.hexsha == local
    assert read(clone, "README") == "local version\n" and read(clone, "notes.txt") == "untracked notes\n"
    assert not os.path.exists(os.path.join(clone.git_dir, "rebase-merge"))
    assert not os.path.exists(os.path.join(clone.git_dir, "rebase-apply"))


def test_unpushed_commit_is_rebased_kept_and_reported(git_world):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    local = git_world.commit(clone, {"local.txt": "mine\n"}, "local change")
    upstream = git_world.push_from_elsewhere(origin, {"upstream.txt": "theirs\n"})

    report = repos.update(clone.working_tree_dir)

    rebased = clone.head.commit
    assert report["pulled"] == 1
    assert report["problem"] == (
        f"{clone.working_tree_dir}: main has 1 local commit(s) not pushed to origin/main ({rebased.hexsha[:12]}); "
        "push them or move them to another branch."
    )
    assert rebased.message == "local change" and rebased.parents[0].hexsha == upstream
    assert clone.commit(local).tree["local.txt"] == rebased.tree["local.txt"], "same content, old object kept"
    assert read(clone, "local.txt") == "mine\n" and read(clone, "upstream.txt") == "theirs\n"


def test_detached_head_is_reported_and_left_alone(git_world):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    clone.git.checkout("--detach")
    detached = git_world.commit(clone, {"experiment.txt": "try\n"}, "experiment")
    git_world.push_from_elsewhere(origin, {"x.txt": "x\n"})

    report = repos.update(clone.working_tree_dir)

    assert report["problem"] == (
        f"{clone.working_tree_dir}: HEAD is detached at {detached[:12]}; check out a branch (and keep any "
        "commits made there on one) before updating. Nothing was changed."
    )
    assert clone.head.is_detached and clone.head.commit.hexsha == detached
    assert report["branch_before"] is None and report["branch_after"] is None


def test_repository_without_remote(git_world):
    repo = git.Repo.init(git_world.path("lonely"), initial_branch="main")
    git_world.commit(repo, {"a": "a\n"}, "only")

    report = repos.update(repo.working_tree_dir)

    assert report["problem"] == (
        f"{repo.working_tree_dir}: has no remote named origin, so there is nothing to pull from. Nothing was changed."
    )


def test_unreachable_remote(git_world):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    head = clone.head.commit.hexsha
    gone = git_world.path("gone")
    clone.remote("origin").set_url(str(gone))

    report = repos.update(clone.working_tree_dir)

    assert report["problem"].startswith(f"{clone.working_tree_dir}: cannot reach the remote origin ({gone}): ")
    assert "does not appear to be a git repository" in report["problem"]
    assert report["problem"].endswith(". Nothing was changed.")
    assert clone.head.commit.hexsha == head


def test_update_all_reports_every_repository(git_world):
    origin = git_world.origin()
    good = git_world.clone(origin)
    lonely = git.Repo.init(git_world.path("lonely"), initial_branch="main")
    git_world.commit(lonely, {"a": "a\n"}, "only")
    said = []

    result = repos.update_all([good.working_tree_dir, lonely.working_tree_dir], progress=said.append)

    assert result["ok"] is False and len(result["repos"]) == 2
    assert result["problems"] == [result["repos"][1]["problem"]]
    assert said[0] == f"Updating {good.working_tree_dir}." and said[1].endswith(": main is up to date.")


@pytest.mark.parametrize(
    "entry, sentence",
    [
        ("relative/path", "The repos entry 'relative/path' is a relative path: give an absolute path."),
        ("{missing}", "The repos entry {missing} is not a directory."),
        ("{plain}", "The repos entry {plain} is not a git repository."),
        ("{inside}", "The repos entry {inside} is not a git repository."),
        ("{bare}", "The repos entry {bare} is a bare git repository, not a checkout."),
    ],
)
def test_bad_repos_entries_are_refused_before_anything_changes(git_world, entry, sentence):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    clone.git.checkout("-b", "feature")
    plain = git_world.path("plain")
    plain.mkdir()
    inside = os.path.join(clone.working_tree_dir, "sub")
    os.mkdir(inside)
    names = {"missing": git_world.path("missing"), "plain": plain, "inside": inside, "bare": origin.git_dir}

    with pytest.raises(model.InputError) as caught:
        repos.update_all([clone.working_tree_dir, entry.format(**names)])

    assert str(caught.value) == sentence.format(**names)
    assert clone.active_branch.name == "feature", "the good repository was not touched"


@pytest.mark.parametrize("value", [[], "", None, 5])
def test_repos_must_be_a_list_of_paths(value):
    with pytest.raises(model.InputError, match="^(repos must be a list|Each repos entry must be a path)"):
        repos.check_paths(value)


def test_default_paths_are_the_git_checkouts_among_the_roots(git_world):
    checkout = git_world.clone(git_world.origin()).working_tree_dir
    plain = git_world.path("plain")
    plain.mkdir()
    opts = {"file_roots": {"base": [checkout, str(plain)]}, "pillar_roots": {"base": [checkout]}}
    assert repos.default_paths(token_settings.from_opts(opts), opts) == [checkout]
    configured = dict(opts, deploytoken={"repos": ["/srv/x"]})
    assert repos.default_paths(token_settings.from_opts(configured), configured) == ["/srv/x"]
    only_plain = {"file_roots": {"base": [str(plain)]}}
    with pytest.raises(model.InputError, match="^No repositories to update: set deploytoken: repos:"):
        repos.default_paths(token_settings.from_opts(only_plain), only_plain)


@pytest.mark.parametrize("hostile", ["--orphan=x", "-b"])
@pytest.mark.parametrize("origin_head", [True, False], ids=["origin-HEAD", "ls-remote"])
def test_a_default_branch_that_reads_as_an_option_is_refused(git_world, hostile, origin_head):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    clone.remote("origin").push(f"main:refs/heads/{hostile}")
    origin.git.symbolic_ref("HEAD", f"refs/heads/{hostile}")
    if origin_head:
        clone.git.remote("set-head", "origin", "--auto")
        assert clone.git.symbolic_ref("refs/remotes/origin/HEAD") == f"refs/remotes/origin/{hostile}"
    else:
        clone.git.remote("set-head", "origin", "--delete")
    branches = sorted(branch.name for branch in clone.branches)
    report = repos.update(clone.working_tree_dir)
    assert report["problem"] == (
        f"{clone.working_tree_dir}: the remote origin ({origin.working_dir}) names its default branch {hostile!r}, "
        "which is not a valid branch name. Nothing was changed."
    )
    assert sorted(branch.name for branch in clone.branches) == branches and clone.active_branch.name == "main"


def test_untracked_file_in_the_way_of_the_pull_is_kept(git_world):
    origin = git_world.origin()
    clone = git_world.clone(origin)
    head = clone.head.commit.hexsha
    git_world.push_from_elsewhere(origin, {"data.csv": "upstream\n"})
    with open(os.path.join(clone.working_tree_dir, "data.csv"), "w") as handle:
        handle.write("my scratch file\n")

    report = repos.update(clone.working_tree_dir)

    assert report["problem"].startswith(f"{clone.working_tree_dir}: cannot bring main up to origin/main (")
    assert "data.csv" in report["problem"]
    assert report["problem"].endswith("; the repository is as it was. Move those files away, then run again.")
    assert clone.head.commit.hexsha == head and read(clone, "data.csv") == "my scratch file\n"
