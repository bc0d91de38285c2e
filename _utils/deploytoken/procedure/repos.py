"""
Bring the deploy repositories to their default branch, up to date with origin, without ever losing
a local commit or an uncommitted change.

Per repository: fetch origin, find its default branch (``origin/HEAD``, else the remote's HEAD from
``git ls-remote --symref``), switch to it, and rebase it onto ``origin/<default>`` (what
``git pull --rebase`` does, with a single fetch). Anything in the way is reported as one sentence and
the repository is left as it was: nothing is stashed, reset or discarded.
"""

import os

import git

from deploytoken import model

# Never wait for a password or a host-key prompt: the runner has no terminal.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")}
NETWORK_TIMEOUT = 120


class RepoProblem(Exception):
    """What is in the way of updating one repository, as one sentence."""


# ---- which repositories -----------------------------------------------------------------------


def check_paths(paths):
    """The repositories to update, each an absolute path to the top of a git work tree."""
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, (list, tuple)) or not paths:
        raise model.InputError(
            f"repos must be a list of absolute paths of git checkouts, e.g. repos='[\"/srv/deploy\"]'; got {paths!r}."
        )
    checked = []
    for path in paths:
        if not isinstance(path, str) or not path.strip():
            raise model.InputError(f"Each repos entry must be a path, got {path!r}.")
        if not os.path.isabs(path):
            raise model.InputError(f"The repos entry {path!r} is a relative path: give an absolute path.")
        if not os.path.isdir(path):
            raise model.InputError(f"The repos entry {path} is not a directory.")
        try:
            repo = git.Repo(path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise model.InputError(f"The repos entry {path} is not a git repository.") from None
        if repo.bare:
            raise model.InputError(f"The repos entry {path} is a bare git repository, not a checkout.")
        if path not in checked:
            checked.append(path)
    return checked


def default_paths(settings, opts, cwd=None):
    """``deploytoken: repos:`` (``settings.repos``), else the git checkouts among the master's
    file_roots and pillar_roots (from Salt's ``opts``). A relative root (a deploy repository's
    ``salt/``, read by salt-ssh run from its top folder) stands for the checkout that holds the current
    folder ``cwd``: the deploy repository itself."""
    if settings.repos:
        return settings.repos
    found = []
    for option in ("file_roots", "pillar_roots"):
        for roots in (opts.get(option) or {}).values():
            for root in roots or []:
                if not isinstance(root, str):
                    continue
                checkout = root if os.path.isabs(root) else _checkout_holding(cwd or os.getcwd())
                if checkout and os.path.exists(os.path.join(checkout, ".git")) and checkout not in found:
                    found.append(checkout)
    if not found:
        raise model.InputError(
            "No repositories to update: set deploytoken: repos: in the master config or give repos=."
        )
    return found


def _checkout_holding(path):
    """The top folder of the git checkout ``path`` is in, or None."""
    path = os.path.abspath(path)
    while not os.path.exists(os.path.join(path, ".git")):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return path


# ---- updating ---------------------------------------------------------------------------------


def update_all(paths, progress=None):
    """Check ``paths``, then update each repository in turn."""
    return update_each(check_paths(paths), progress)


def update_each(paths, progress=None):
    """Update each repository of ``paths`` (as ``check_paths`` returns them) in turn; one repository's
    problem does not stop the others."""
    reports = []
    for path in paths:
        if progress:
            progress(f"Updating {path}.")
        report = update(path)
        if progress:
            progress(report["message"])
        reports.append(report)
    problems = [report["problem"] for report in reports if report["problem"]]
    return {"repos": reports, "problems": problems, "ok": not problems}


def update(path):
    """Update one repository; returns its report (``problem`` is None or one sentence)."""
    repo = git.Repo(path)
    report = {
        "path": path,
        "default_branch": None,
        "branch_before": _branch(repo),
        "branch_after": None,
        "head_before": _head(repo),
        "head_after": None,
        "pulled": 0,
        "problem": None,
    }
    try:
        with repo.git.custom_environment(**GIT_ENV):
            _update(repo, path, report)
    except RepoProblem as problem:
        report["problem"] = str(problem)
    except git.GitCommandError as exc:
        report["problem"] = f"{path}: git {exc.command[1] if len(exc.command) > 1 else ''} failed: {_git_said(exc)}."
    report["branch_after"] = _branch(repo)
    report["head_after"] = _head(repo)
    if report["problem"]:
        report["message"] = report["problem"]
    elif report["pulled"]:
        report["message"] = f"{path}: pulled {report['pulled']} commit(s) onto {report['default_branch']}."
    else:
        report["message"] = f"{path}: {report['default_branch']} is up to date."
    return report


def _update(repo, path, report):
    if repo.head.is_detached:
        raise RepoProblem(
            f"{path}: HEAD is detached at {repo.head.commit.hexsha[:12]}; check out a branch (and keep any "
            "commits made there on one) before updating. Nothing was changed."
        )
    if "origin" not in [remote.name for remote in repo.remotes]:
        raise RepoProblem(f"{path}: has no remote named origin, so there is nothing to pull from. Nothing was changed.")
    url = repo.remote("origin").url
    try:
        repo.git.fetch("origin", "--prune", kill_after_timeout=NETWORK_TIMEOUT)
    except git.GitCommandError as exc:
        raise RepoProblem(
            f"{path}: cannot reach the remote origin ({url}): {_git_said(exc)}. Nothing was changed."
        ) from None
    default = _default_branch(repo, path, url)
    report["default_branch"] = default
    upstream = f"origin/{default}"
    before = report["branch_before"]
    dirty = _dirty_files(repo)
    if before != default:
        if dirty:
            raise RepoProblem(
                f"{path}: uncommitted changes ({_listing(dirty)}) block the switch from {before} to {default}; "
                "commit or stash them yourself, then run again. Nothing was changed."
            )
        try:
            repo.git.checkout(default)
        except git.GitCommandError as exc:
            raise RepoProblem(
                f"{path}: cannot switch from {before} to {default}: {_git_said(exc)}. Nothing was changed."
            ) from None
    behind = int(repo.git.rev_list("--count", f"HEAD..{upstream}"))
    if behind:
        if dirty:
            raise RepoProblem(
                f"{path}: uncommitted changes ({_listing(dirty)}) block pulling {behind} commit(s) into {default}; "
                "commit or stash them yourself, then run again. Nothing was pulled."
            )
        local = repo.git.rev_list("--reverse", f"{upstream}..HEAD").split()
        try:
            repo.git.rebase(upstream)
        except git.GitCommandError as exc:
            _abort_rebase(repo)
            _switch_back(repo, before, default)
            if not local:
                raise RepoProblem(
                    f"{path}: cannot bring {default} up to {upstream} ({_git_said(exc)}); the repository is as "
                    "it was. Move those files away, then run again."
                ) from None
            raise RepoProblem(
                f"{path}: rebasing {default} onto {upstream} conflicts with local commit(s) "
                f"{_listing([sha[:12] for sha in local])} ({_git_said(exc)}); the rebase was aborted and the "
                "repository is as it was. Resolve it by hand with git pull --rebase."
            ) from None
        report["pulled"] = behind
    ahead = repo.git.rev_list(f"{upstream}..HEAD").split()
    if ahead:
        raise RepoProblem(
            f"{path}: {default} has {len(ahead)} local commit(s) not pushed to {upstream} "
            f"({_listing([sha[:12] for sha in ahead])}); push them or move them to another branch."
        )


def _default_branch(repo, path, url):
    try:
        ref = repo.git.symbolic_ref("--quiet", "refs/remotes/origin/HEAD")
        return _branch_name(repo, path, url, ref.removeprefix("refs/remotes/origin/"))
    except git.GitCommandError:
        pass
    try:
        answer = repo.git.ls_remote("--symref", "origin", "HEAD", kill_after_timeout=NETWORK_TIMEOUT)
    except git.GitCommandError as exc:
        raise RepoProblem(f"{path}: cannot reach the remote origin ({url}): {_git_said(exc)}. Nothing was changed.")
    for line in answer.splitlines():
        if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
            return _branch_name(repo, path, url, line[len("ref: refs/heads/"):-len("\tHEAD")])
    raise RepoProblem(
        f"{path}: the remote origin ({url}) does not say which branch is its default. Nothing was changed."
    )


def _branch_name(repo, path, url, name):
    """The remote's default branch, if git accepts it as a branch name: the name comes from the remote
    and is given to git checkout, where ``--orphan=x`` would be read as an option."""
    try:
        accepted = repo.git.check_ref_format("--branch", name)
    except git.GitCommandError:
        accepted = None
    if accepted != name:  # --branch also expands @{-1}-style names: only a plain branch name is taken
        raise RepoProblem(
            f"{path}: the remote origin ({url}) names its default branch {name!r}, which is not a valid branch "
            "name. Nothing was changed."
        )
    return name


def _abort_rebase(repo):
    try:
        repo.git.rebase("--abort")
    except git.GitCommandError:
        pass


def _switch_back(repo, before, default):
    if before != default:
        repo.git.checkout(before)


def _dirty_files(repo):
    """Tracked files with staged or unstaged changes (untracked files do not block a rebase)."""
    changed = {diff.a_path for diff in repo.index.diff(None)}
    if repo.head.is_valid():
        changed |= {diff.a_path for diff in repo.index.diff("HEAD")}
    return sorted(changed)


def _listing(items, most=3):
    shown = ", ".join(items[:most])
    return shown if len(items) <= most else f"{shown} and {len(items) - most} more"


def _branch(repo):
    return None if repo.head.is_detached else repo.active_branch.name


def _head(repo):
    return repo.head.commit.hexsha if repo.head.is_valid() else None


def _git_said(exc):
    """What git said went wrong, on one line, without its ``fatal:``/``error:`` prefix."""
    lines = [line.strip().removeprefix("stderr: ").strip("'").strip() for line in str(exc.stderr or "").splitlines()]
    lines = [line for line in lines if line and not line.startswith("hint:")]
    for index, line in enumerate(lines):
        if line.startswith(("fatal: ", "error: ")):
            said = line.removeprefix("fatal: ").removeprefix("error: ")
            if said.endswith(":"):  # a list follows, e.g. the files in the way
                listed = [item for item in lines[index + 1:index + 4] if not item.startswith(("Please", "Aborting"))]
                said = f"{said} {', '.join(listed)}"
            return said.rstrip(".")
    return (lines[-1] if lines else f"git exited with status {exc.status}").rstrip(".")
