"""Helpers shared by the guard tests: state files in the test file root, pillar sls, token changes."""

import contextlib
import os
import pathlib
import shutil
import tempfile

import pytest

from conftest import MINION_ID as MINION  # noqa: F401 (the guard tests import it from here)

GUARDED = """\
deploy token held:
  deploytoken.held:
    - order: 1
    - failhard: True

the deployment:
  file.managed:
    - name: {marker}
    - contents: deployed
"""


@pytest.fixture
def guarded(write_sls, marker_dir):
    """A state file with ``deploytoken.held`` first and a deployment that writes a marker: (sls, marker)."""
    marker = marker_dir / "deployed"
    return write_sls("dtguarded", GUARDED.format(marker=marker)), marker


@pytest.fixture
def marker_dir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="dtg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def write_sls(sls_dir, salt_minion):
    """``write_sls(name, text)`` writes ``<name>.sls`` into the test file root (for the shared minion);
    removed afterwards."""
    written = []

    def write(name, text):
        path = sls_dir / f"{name}.sls"
        path.write_text(text)
        written.append(path)
        return name

    yield write
    for path in written:
        path.unlink(missing_ok=True)


@pytest.fixture
def pillar_sls(session_dir):
    """``pillar_sls(text)`` makes ``text`` the pillar of every minion; the pillar root is restored afterwards."""
    root = session_dir / "pillar"
    saved = {path.name: path.read_text() for path in root.glob("*.sls")}

    def write(text):
        (root / "top.sls").write_text("base:\n  '*':\n    - dtguard\n")
        (root / "dtguard.sls").write_text(text)

    yield write
    for path in root.glob("*.sls"):
        if path.name not in saved:
            path.unlink()
    for name, text in saved.items():
        (root / name).write_text(text)


@pytest.fixture
def token(salt_run, salt_master, free_token):
    """``token.take(login)`` through the real runner (which drops the ext_pillar's read cache itself).
    ``free_token`` empties the store behind the runner's back, so the cache is dropped around the test too."""
    cache = pathlib.Path(salt_master.config["cachedir"]) / "deploytoken-pillar.json"

    class Token:
        def forget(self):
            cache.unlink(missing_ok=True)

        def take(self, login, reason="deploy the guard test"):
            ret = salt_run.run("deploytoken.acquire", f"reason={reason}", env={"SUDO_USER": login})
            assert ret.returncode == 0, ret
            return ret.data

    tok = Token()
    tok.forget()
    yield tok
    tok.forget()


@contextlib.contextmanager
def unreadable_store(store_path):
    """Put a file that is not a token store where the store is; the real store comes back afterwards."""
    saved = store_path.with_name(store_path.name + ".saved")
    if store_path.exists():
        os.replace(store_path, saved)
    try:
        store_path.write_text("this is not a deploy token store\n" * 100)
        yield
    finally:
        store_path.unlink(missing_ok=True)
        if saved.exists():
            os.replace(saved, store_path)
