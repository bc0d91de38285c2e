"""
The file-root way of installing, as the README gives it: ``scripts/file-root`` makes a folder that serves
Salt's folders and nothing else of the checkout; and however the modules are loaded, a process holds one
copy of each core module, and a master on SQLite never loads psycopg or Google's client.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import MINION_ID, REPO, SERVED

# A fresh Python that loads our runner, ext_pillar and state through Salt's own loaders from the
# checkout's folders (as a master and minion load them once synced), makes each fail on the core's
# InputError or StoreError, and says which modules it then holds.
ONE_PROCESS = r"""
import json, os, sys
import salt.config, salt.loader
repo, root, backend, path = sys.argv[1:]
opts = salt.config.master_config(None)
opts.update(root_dir=root, cachedir=root, pki_dir=root, sock_dir=root, file_roots={"base": []},
            pillar_roots={"base": []}, runner_dirs=[repo + "/_runners"], utils_dirs=[repo + "/_utils"],
            pillar_dirs=[repo + "/_pillar"], deploytoken={"backend": backend, "sqlite": {"path": path}})
utils = salt.loader.utils(opts)
status = salt.loader.runner(opts, utils=utils)["deploytoken.status"]()
pillar = salt.loader.pillars(opts, {})["deploytoken"]("m1", {})["deploytoken"]
minion = {**salt.config.minion_config(None), **opts, "id": "m1", "file_client": "local", "grains": {},
          "module_dirs": [repo + "/_modules"], "states_dirs": [repo + "/_states"],
          "deploytoken": {"store_memory": root + "/memory.json"}}
functions = salt.loader.minion_mods(minion, utils=salt.loader.utils(minion))
states = salt.loader.states(minion, functions, salt.loader.utils(minion), salt.loader.serializers(minion))
held = states["deploytoken.held"]("guard")
ours = sorted(name for name in sys.modules if "deploytoken" in name or "kingfisher" in name)
classes = {}  # every InputError and StoreError class any module holds, by where it was defined
for module in list(sys.modules.values()):
    for cls in (getattr(module, "InputError", None), getattr(module, "StoreError", None)):
        if isinstance(cls, type):
            classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", set()).add(id(cls))
print(json.dumps({
    "status": status, "pillar_error": pillar.get("error"), "held": held, "ours": ours,
    "error_classes": {name: len(ids) for name, ids in classes.items()},
    "heavy": [name for name in ("psycopg", "googleapiclient", "google.auth") if name in sys.modules],
}))
"""


# The core's error classes, each one class object however many modules use it (the Kingfisher checks have
# their own InputError, a CommandExecutionError for the minion's modules).
ONE_EACH = {"deploytoken.model.InputError": 1, "deploytoken.model.StoreError": 1,
            "deploytoken.kingfisher.errors.InputError": 1}


def one_process(tmp_path, backend, path):
    root = tmp_path / f"salt-{backend}-{len(os.listdir(tmp_path))}"  # a cachedir of its own, read cache included
    root.mkdir()
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS, str(REPO), str(root), backend, str(path)],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_file_root_links_the_salt_folders_and_nothing_else(tmp_path):
    done = subprocess.run([str(REPO / "scripts" / "file-root"), str(tmp_path / "root")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "root")) == sorted(SERVED)
    assert all(os.readlink(tmp_path / "root" / name) == str(REPO / name) for name in SERVED)


@pytest.mark.parametrize("inside", [".", "docs/here"])
def test_file_root_inside_the_checkout_is_refused(inside):
    done = subprocess.run([str(REPO / "scripts" / "file-root"), str(REPO / inside)], capture_output=True, text=True)
    assert done.returncode == 2 and "is inside this checkout" in done.stderr
    assert not (REPO / "docs" / "here").exists()


def test_file_root_needs_one_folder_and_leaves_what_is_not_its_own_alone(tmp_path):
    script = str(REPO / "scripts" / "file-root")
    usage = subprocess.run([script], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("Usage: scripts/file-root DEST")
    taken = tmp_path / "root"
    (taken / "_modules").mkdir(parents=True)
    taken.chmod(0o700)
    refused = subprocess.run([script, str(taken)], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr == (
        f"scripts/file-root: {taken}/_modules exists and is not a link; move it away or give another folder.\n")
    assert os.listdir(taken / "_modules") == [] and os.listdir(taken) == ["_modules"]
    assert taken.stat().st_mode & 0o777 == 0o700


def test_a_minion_reaches_only_the_salt_folders_of_the_file_root(salt_local):
    listed = salt_local.run("cp.list_master", minion_tgt=MINION_ID)
    assert listed.returncode == 0, listed
    served = {path.split("/", 1)[0] for path in listed.data if "/" in path}
    assert served and served <= set(SERVED), served
    assert not [path for path in listed.data if path.startswith((".git", ".venv", ".local", "tests", "docs"))]
    fetched = salt_local.run("cp.get_file", "salt://.gitignore", "/tmp/dt-never-served", minion_tgt=MINION_ID)
    assert not fetched.data and not os.path.exists("/tmp/dt-never-served")


def test_one_copy_of_each_core_module_whatever_fails_and_no_psycopg_or_google_on_sqlite(tmp_path):
    found = one_process(tmp_path, "sqlite", tmp_path / "token.sqlite")
    assert found["status"]["held"] is False and found["pillar_error"] is None
    assert found["held"]["result"] is False  # no master to sign the token data: the guard blocks
    # Each core module once, by its own name: none also loaded by Salt as salt.loaded.ext.utils.*
    assert not [name for name in found["ours"] if name.startswith("salt.loaded.ext.utils")], found["ours"]
    assert found["error_classes"] == ONE_EACH and found["heavy"] == [], found


def test_the_core_errors_are_caught_by_the_runner_and_the_ext_pillar_as_its_own_classes(tmp_path):
    unknown = one_process(tmp_path, "etcd", tmp_path / "token.sqlite")  # InputError
    assert unknown["status"]["retcode"] == 2 and "Unknown deploytoken:backend 'etcd'" in unknown["status"]["error"]
    assert "Unknown deploytoken:backend 'etcd'" in unknown["pillar_error"]
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder").chmod(0o777)
    broken = one_process(tmp_path, "sqlite", tmp_path / "folder" / "token.sqlite")  # StoreError: open to all
    assert broken["status"]["retcode"] == 2 and broken["pillar_error"], broken
    assert broken["status"]["error"] == broken["pillar_error"]
    assert unknown["error_classes"] == broken["error_classes"] == ONE_EACH
