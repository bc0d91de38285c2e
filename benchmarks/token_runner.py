"""
How much does the deploy token cost?

1. Median wall time of ``salt-run deploytoken.status`` against ``salt-run test.arg`` on the same
   master configuration (a private one in a temp folder, no daemon): the ratio is our own overhead
   on top of Salt's start-up.
2. Median time of one acquire + release cycle in-process on the embedded SQLite store.

Run with the project's venv: ``.venv/bin/python benchmarks/token_runner.py [--runs N]``
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))

from deploytoken import commands as token  # noqa: E402
from deploytoken.stores import sqlite as sqlite_store  # noqa: E402


def write_master_config(root):
    for sub in ("conf", "cache/proc", "pki", "sock", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "conf" / "master").write_text(
        f"user: {os.environ.get('USER') or 'root'}\n"
        f"root_dir: {root}\ncachedir: {root}/cache\npki_dir: {root}/pki\nsock_dir: {root}/sock\n"
        f"pidfile: {root}/run/master.pid\nlog_file: {root}/log/master\n"
        f"file_roots: {{base: [{REPO}]}}\n"
    )
    return root / "conf"


def time_command(command, runs):
    env = dict(os.environ, PYTHONWARNINGS="ignore::ResourceWarning")
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_cycles(store, runs):
    """Median seconds of one acquire + release cycle on ``store``, in-process."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        token.acquire(store, "alice", {}, reason="benchmark")
        token.release(store, "alice", {}, note="benchmark")
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=15, help="salt-run invocations per command")
    parser.add_argument("--cycles", type=int, default=500, help="in-process acquire+release cycles")
    args = parser.parse_args()

    salt_run = str(pathlib.Path(sys.executable).with_name("salt-run"))
    with tempfile.TemporaryDirectory(prefix="dt-bench-") as folder:
        root = pathlib.Path(folder)
        conf = write_master_config(root)
        base = [salt_run, "-c", str(conf), "--log-level=quiet"]
        subprocess.run(base + ["saltutil.sync_all"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        baseline = time_command(base + ["test.arg", "x"], args.runs)
        ours = time_command(base + ["deploytoken.status"], args.runs)
        cycle = time_cycles(sqlite_store.SqliteStore(str(root / "cycle.sqlite")), args.cycles)

    print(f"salt-run test.arg          median {baseline * 1000:8.1f} ms  ({args.runs} runs, baseline)")
    print(f"salt-run deploytoken.status median {ours * 1000:8.1f} ms  ratio {ours / baseline:.2f}x")
    print(f"acquire+release in-process  median {cycle * 1000:8.3f} ms  ({args.cycles} cycles, SQLite)")


if __name__ == "__main__":
    main()
