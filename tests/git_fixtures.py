"""
Real git repositories in temp folders: a bare "origin" and clones of it, for the repository updates.

``git_world`` (function) -> ``GitWorld``
    ``.origin(default="main")`` makes a bare repository whose default branch is ``default``, with one
    commit (``README``) pushed to it; ``.clone(origin)`` clones it; ``.commit(repo, files, message)``
    writes files and commits them; ``.push_from_elsewhere(origin, files)`` adds a commit to the
    origin's default branch through another clone (so the first clone is behind). All folders are
    removed after the test.
"""

import pathlib
import shutil
import tempfile

import git
import pytest


def configure(repo):
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test Person")
        config.set_value("user", "email", "test@example.org")
        config.set_value("advice", "detachedHead", "false")


class GitWorld:
    def __init__(self, root):
        self.root = root
        self.count = 0

    def path(self, name):
        self.count += 1
        return self.root / f"{name}{self.count}"

    def origin(self, default="main"):
        bare = git.Repo.init(self.path("origin"), bare=True, initial_branch=default)
        seed = git.Repo.init(self.path("seed"), initial_branch=default)
        configure(seed)
        self.commit(seed, {"README": "first\n"}, "first")
        seed.create_remote("origin", bare.working_dir).push(default)
        return bare

    def clone(self, origin):
        repo = git.Repo.clone_from(origin.working_dir, self.path("clone"))
        configure(repo)
        return repo

    @staticmethod
    def commit(repo, files, message):
        for name, text in files.items():
            path = pathlib.Path(repo.working_tree_dir, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        repo.index.add(list(files))
        return repo.index.commit(message).hexsha

    def push_from_elsewhere(self, origin, files, message="upstream change"):
        other = self.clone(origin)
        sha = self.commit(other, files, message)
        other.remote("origin").push()
        return sha


@pytest.fixture
def git_world():
    root = pathlib.Path(tempfile.mkdtemp(prefix="dt-git-", dir="/tmp"))
    yield GitWorld(root)
    shutil.rmtree(root, ignore_errors=True)
