"""
A master worker's first ext_pillar compile on SQLite, before and after the core became one package.

For each revision (``--before``, default 66da7d7: the flat ``_utils/`` reached through ``__utils__``, every
store imported up front; ``--after``, default HEAD), the revision's Salt folders are taken out of git into
a temp file root, a master config of its own (``ext_pillar: [{deploytoken: {}}]``, ``backend: sqlite``)
syncs them with ``salt-run saltutil.sync_all``, and then, ``--runs`` times, interleaved revision by
revision, a fresh Python process does what a master worker does on its first compile: Salt's loader loads
the ext_pillar modules and calls ``deploytoken`` once, with no read cache to use. ``--venv`` adds a third
case: a virtualenv with the package installed (no file root, no sync), as ``tests/test_package.py`` makes.

Prints each case's median with its quartiles, and which of psycopg and Google's client the compile imported.

Run with the project's venv, from the checkout: ``.venv/bin/python benchmarks/pillar_first_compile.py
[--runs N] [--before REV] [--after REV] [--venv PATH]``
"""

import argparse
import io
import json
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

from figures import Machine, shown

REPO = pathlib.Path(__file__).resolve().parent.parent
FOLDERS = ("_modules", "_states", "_runners", "_utils", "_pillar", "_output")
MINION = "bench-minion"
HEAVY = ("psycopg", "psycopg_binary", "googleapiclient")

FIRST_COMPILE = """
import json, logging, sys, time
import salt.config, salt.loader
logging.getLogger().setLevel(logging.WARNING)
opts = salt.config.master_config(sys.argv[1])
before = set(sys.modules)
start = time.perf_counter()
data = salt.loader.pillars(opts, {})["deploytoken"](sys.argv[2], {})
seconds = time.perf_counter() - start
heavy = sorted({name.split(".")[0] for name in sys.modules if name.split(".")[0] in %r})
print(json.dumps({"seconds": seconds, "imported": heavy, "modules": len(set(sys.modules) - before),
                  "error": data["deploytoken"]["error"]}))
""" % (HEAVY,)


class Case:
    """One way of running the ext_pillar: a revision synced from a file root, or an installed package."""

    def __init__(self, name, root, python, file_root=None):
        self.name, self.root, self.python = name, root, pathlib.Path(python)
        self.conf = root / "conf"
        for sub in ("conf", "cache/proc", "pki", "sock"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        master = {
            "id": "bench-master", "user": "root", "root_dir": str(root), "cachedir": str(root / "cache"),
            "pki_dir": str(root / "pki"), "sock_dir": str(root / "sock"), "log_file": str(root / "master.log"),
            "ext_pillar": [{"deploytoken": {}}], "deploytoken": {"backend": "sqlite"},
            "file_roots": {"base": [str(file_root)] if file_root else []},
        }
        (self.conf / "master").write_text(json.dumps(master))
        if file_root:
            done = subprocess.run([str(self.python.parent / "salt-run"), "-c", str(self.conf), "saltutil.sync_all"],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"sync_all for {name} failed: {done.stdout}{done.stderr}")
        self.times, self.found = [], None

    def compile_once(self):
        (self.root / "cache" / "deploytoken-pillar.json").unlink(missing_ok=True)
        done = subprocess.run([str(self.python), "-c", FIRST_COMPILE, str(self.conf / "master"), MINION],
                              capture_output=True, text=True, timeout=300, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: {done.stderr}")
        found = json.loads(done.stdout.strip().splitlines()[-1])
        if found["error"]:
            raise RuntimeError(f"{self.name}: the ext_pillar could not read the store: {found['error']}")
        self.times.append(found["seconds"])
        self.found = found


def checkout(revision, into):
    """The Salt folders of ``revision``, taken out of git into ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", revision, *FOLDERS],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=9, help="fresh processes per case (default 9)")
    parser.add_argument("--before", default="66da7d7", help="the revision before the change (default 66da7d7)")
    parser.add_argument("--after", default="HEAD", help="the revision after it (default HEAD)")
    parser.add_argument("--venv", help="also a virtualenv with the package installed (its bin/python)")
    args = parser.parse_args()

    machine = Machine()
    work = pathlib.Path(tempfile.mkdtemp(prefix="dtb-first-", dir="/tmp"))
    try:
        cases = [Case(f"{label} ({revision}, file root)", work / label, sys.executable,
                      checkout(revision, work / f"{label}-tree"))
                 for label, revision in (("before", args.before), ("after", args.after))]
        if args.venv:
            cases.append(Case("package (installed, no file root)", work / "package",
                              pathlib.Path(args.venv) / "bin" / "python"))
        for _ in range(args.runs):
            for case in cases:
                case.compile_once()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"A master worker's first ext_pillar compile on SQLite: a fresh process, Salt's loader, one call "
          f"({machine}):")
    for case in cases:
        imported = ", ".join(case.found["imported"]) or "neither psycopg nor googleapiclient"
        print(f"  {case.name}: {shown(case.times, digits=0)}; imported {imported}; "
              f"{case.found['modules']} modules loaded by the compile")


if __name__ == "__main__":
    main()
