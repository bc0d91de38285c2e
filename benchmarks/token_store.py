"""
SQLite against PostgreSQL as the token store, side by side in one run (PostgreSQL 15 cluster started here).

1. Median time of one acquire + release cycle in-process (``deploytoken.commands``), each store.
2. Hand-off latency: from the holder's release to the moment the next waiter (another process, already
   waiting) holds the token. The waiter runs ``acquire wait=True interval=10`` on both: it stands in the
   store's line and wakes at the release (SQLite: inotify on the store file; PostgreSQL: LISTEN), not at
   its next try. The release comes at a random moment after the waiter joined the line. Goals: median
   <= 0.5 s on SQLite, <= 0.2 s on PostgreSQL.

Run as root (the cluster runs as the postgres user) with the project's venv:
``.venv/bin/python benchmarks/token_store.py [--cycles N] [--handoffs N]``
"""

import argparse
import multiprocessing
import pathlib
import random
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))
sys.path.insert(0, str(REPO / "tests"))

from token_runner import time_cycles  # noqa: E402

from deploytoken import commands as token  # noqa: E402
from deploytoken.stores import sqlite as sqlite_store  # noqa: E402
from pg_fixtures import postgres_store, section_for, store_cluster, take_in_turn  # noqa: E402

INTERVAL = 10


def _sqlite_waiter(path, results):
    ret = token.acquire(sqlite_store.SqliteStore(path), "bob", {}, wait=True, timeout=120, interval=INTERVAL)
    results.put(time.time() if ret.get("changed") else None)


def _listening_waiter(section, results):
    take_in_turn(postgres_store(section), "bob")
    results.put(time.time())


def handoffs(open_store, waiter, args, samples, ready, delay):
    """Seconds from the start of each release to the waiter holding the token."""
    context = multiprocessing.get_context("fork")
    found = []
    for _ in range(samples):
        store = open_store()
        token.acquire(store, "alice", {})
        results = context.Queue()
        child = context.Process(target=waiter, args=(*args, results))
        child.start()
        ready(store)
        time.sleep(random.uniform(*delay))
        released = time.time()
        token.release(store, "alice", {})
        held = results.get(timeout=120)
        child.join(30)
        found.append(held - released)
        token.release(store, "bob", {})
    return found


def p95(samples):
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--cycles", type=int, default=300, help="in-process acquire+release cycles per store")
    parser.add_argument("--handoffs", type=int, default=20, help="hand-offs measured per store")
    args = parser.parse_args()

    cluster = store_cluster()
    try:
        with tempfile.TemporaryDirectory(prefix="dt-bench-") as folder:
            path = str(pathlib.Path(folder) / "token.sqlite")
            section = section_for(cluster, schema="bench")
            sqlite_cycle = time_cycles(sqlite_store.SqliteStore(path), args.cycles)
            postgres_cycle = time_cycles(postgres_store(section), args.cycles)

            def in_line(store):
                deadline = time.monotonic() + 60
                while not store.waiting() and time.monotonic() < deadline:
                    time.sleep(0.05)

            listened = handoffs(lambda: postgres_store(section), _listening_waiter, (section,), args.handoffs,
                                in_line, (0.2, 1.0))
            watched = handoffs(lambda: sqlite_store.SqliteStore(path), _sqlite_waiter, (path,), args.handoffs,
                               in_line, (0.2, 1.0))
    finally:
        cluster.stop()

    print(f"{'':26}{'SQLite':>22}{'PostgreSQL':>22}{'ratio':>8}")
    print(f"{'acquire+release median':26}{sqlite_cycle * 1000:19.2f} ms{postgres_cycle * 1000:19.2f} ms"
          f"{postgres_cycle / sqlite_cycle:7.1f}x   ({args.cycles} cycles each, in-process)")
    print(f"{'hand-off median':26}{statistics.median(watched):20.3f} s{statistics.median(listened):20.3f} s"
          f"{statistics.median(listened) / statistics.median(watched):8.3f}x  (in line, interval={INTERVAL}: "
          "SQLite watches the file, PostgreSQL LISTENs)")
    print(f"{'hand-off p95':26}{p95(watched):20.3f} s{p95(listened):20.3f} s"
          f"{'':8}  ({args.handoffs} hand-offs each)")
    for name, samples, goal in (("SQLite", watched, 0.5), ("PostgreSQL", listened, 0.2)):
        met = "met" if statistics.median(samples) <= goal else "missed"
        print(f"goal {name} hand-off median <= {goal} s: {met}")


if __name__ == "__main__":
    main()
