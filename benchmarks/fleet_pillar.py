"""
A fleet's pillar refresh: what does the deploytoken ext_pillar cost the token store and the master when
100, 1,000 and 5,000 minions compile pillar at once?

For each store (SQLite, PostgreSQL on a throwaway cluster started here, and the Google store against the
fake Docs/Sheets server of the tests), with alice holding the token: a pool of master workers (separate
processes forked from this one, as a salt-master forks its workers; ``--workers``, default 5, Salt's
``worker_threads``) starts at once and each calls the ext_pillar's code (``token_pillar.pillar``, what
the ext_pillar function runs, signing with a 2048-bit master key as Salt's master makes it) for its share
of the minion ids, back to back. The sizes are interleaved store by store, and each size runs ``--rounds`` times.

Prints for each store and size: the store reads (every process's, counted from the ext_pillar's own
"reading the token store" record) against the cache periods the burst spanned, the p50 and p99 of a warm
call (each worker's first call apart: it opens the store), errors (an exception, or token data carrying
an ``error``) and timeouts (a call longer than the read cache's 5 s lock wait). Goals: at most 1 store read
per cache period (``deploytoken:pillar_cache``, 2 s), warm p99 5 ms or less, no errors, no timeouts. The
baseline, in the same run: 100 ids with the read cache off (``pillar_cache: 0``), every call a read.

Run as root (the PostgreSQL cluster runs as the postgres user) with the project's venv:
``.venv/bin/python benchmarks/fleet_pillar.py [--sizes 100,1000,5000] [--workers 5] [--rounds 2]``
"""

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))
sys.path.insert(0, str(REPO / "tests"))

import salt.crypt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from figures import Machine, goal, percentile  # noqa: E402

from deploytoken import cache  # noqa: E402
from deploytoken import commands as token  # noqa: E402
from deploytoken import settings as token_settings  # noqa: E402
from deploytoken import stores as token_stores  # noqa: E402
from deploytoken.guard import pillar as token_pillar  # noqa: E402
from fake_google import FakeGoogle  # noqa: E402
from google_fixtures import HEADER, HISTORY_RANGE, free_doc  # noqa: E402
from pg_fixtures import section_for, store_cluster  # noqa: E402

PEOPLE = {"alice": "Alice Smith"}
READ_RECORD = "deploytoken: reading the token store for the ext_pillar"
TIMEOUT = cache.LOCK_WAIT
P99_GOAL_MS = 5
BASELINE_SIZE = 100


class ReadCounter(logging.Handler):
    """Counts the ext_pillar's own record of each store read in this process."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.reads = 0

    def emit(self, record):
        if record.getMessage() == READ_RECORD:
            self.reads += 1


def worker(opts, minions, barrier, results):
    counter = ReadCounter()
    logger = logging.getLogger(token_pillar.__name__)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(counter)
    barrier.wait()
    started = time.time()
    times, cpu, errors = [], [], []
    for minion in minions:
        start, start_cpu = time.perf_counter(), time.thread_time()
        try:
            data = token_pillar.pillar(opts, minion)
            problem = data["error"] or (None if data["login"] == "alice" and data["signature"] else "no holder")
        except Exception as exc:  # counted and shown, never hidden
            problem = repr(exc)
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
        if problem:
            errors.append(problem)
    results.put({"times": times, "cpu": cpu, "errors": errors[:3], "error_count": len(errors),
                 "reads": counter.reads, "started": started, "ended": time.time()})


def burst(opts, size, workers):
    """All ``size`` ids at once over ``workers`` processes: one dict of figures."""
    token_pillar.forget(opts)  # a cold read cache, as after a change of holder
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(workers), context.Queue()
    minions = [f"minion-{number:05d}" for number in range(size)]
    processes = [context.Process(target=worker, args=(opts, minions[index::workers], barrier, results))
                 for index in range(workers)]
    for process in processes:
        process.start()
    found = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(60)
    warm = [seconds for one in found for seconds in one["times"][1:]]
    warm_cpu = [seconds for one in found for seconds in one["cpu"][1:]]
    first = [one["times"][0] for one in found if one["times"]]
    wall = max(one["ended"] for one in found) - min(one["started"] for one in found)
    cache = token_settings.from_opts(opts).pillar_cache
    # A burst of ``wall`` seconds starting at a cold cache spans at most floor(wall / period) + 1 periods.
    periods = math.floor(wall / cache) + 1 if cache > 0 else None
    every = [seconds for one in found for seconds in one["times"]]
    return {
        "size": size, "wall": wall, "reads": sum(one["reads"] for one in found), "periods": periods,
        "p50": percentile(warm, 50), "p99": percentile(warm, 99), "first": max(first),
        "cpu_p50": percentile(warm_cpu, 50), "cpu_p99": percentile(warm_cpu, 99),
        "errors": sum(one["error_count"] for one in found),
        "examples": [error for one in found for error in one["errors"]][:3],
        "timeouts": sum(seconds >= TIMEOUT for seconds in every),
    }


def master_key(folder):
    """A master key as Salt's master makes it (``keysize`` 2048), written as ``master.pem``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki = folder / "pki"
    pki.mkdir(mode=0o700)
    (pki / "master.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    (pki / "master.pem").chmod(0o600)
    assert salt.crypt.get_rsa_key(str(pki / "master.pem"), None)
    return pki


@contextlib.contextmanager
def stores(folder):
    """``{name: deploytoken settings}`` for SQLite, PostgreSQL (a throwaway cluster) and the Google fake."""
    fake = FakeGoogle()
    url = fake.serve()
    cluster = store_cluster()
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file = folder / "google-key.json"
        key_file.write_text(json.dumps({
            "type": "service_account", "project_id": "bench", "private_key_id": "bench", "client_id": "1",
            "client_email": "deploytoken@bench.iam.gserviceaccount.com", "token_uri": url + "token",
            "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode(),
        }))
        key_file.chmod(0o600)
        fake.add_document("doc", free_doc())
        fake.add_sheet("sheet", [HEADER])
        yield fake, {
            "SQLite": {"sqlite": {"path": str(folder / "token.sqlite")}},
            "PostgreSQL": {"backend": "postgres", "postgres": section_for(cluster, "dt_fleet")},
            "Google (fake)": {"backend": "google", "google": {
                "service_account_file": str(key_file), "document_id": "doc", "spreadsheet_id": "sheet",
                "history_range": HISTORY_RANGE, "api_endpoint": url, "backoff": 0.01}},
        }
    finally:
        cluster.stop()
        fake.stop()


def master_opts(folder, pki, name, section, pillar_cache=None):
    cachedir = folder / f"cache-{name.split()[0].lower()}-{pillar_cache}"
    cachedir.mkdir(mode=0o700, exist_ok=True)
    config = dict(section, people=PEOPLE)
    if pillar_cache is not None:
        config["pillar_cache"] = pillar_cache
    return {"id": "bench_master", "cachedir": str(cachedir), "pki_dir": str(pki), "deploytoken": config}


def line(name, found, baseline=False):
    reads = found["reads"]
    periods = found["periods"]
    per_period = f"{reads / periods:.2f}/period over {periods}" if periods else "cache off"
    return (f"  {name:<14} {found['size']:>6} ids{' (baseline)' if baseline else '':<11} wall {found['wall']:6.2f} s  "
            f"reads {reads:>5} ({per_period})  warm p50 {found['p50'] * 1000:5.2f} ms  "
            f"p99 {found['p99'] * 1000:6.2f} ms (CPU p50 {found['cpu_p50'] * 1000:4.2f}, "
            f"p99 {found['cpu_p99'] * 1000:4.2f})  "
            f"first call {found['first'] * 1000:5.0f} ms  "
            f"errors {found['errors']}  timeouts {found['timeouts']}"
            + (f"  e.g. {found['examples'][0]}" if found["examples"] else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", default="100,1000,5000", help="minion ids per burst (default 100,1000,5000)")
    parser.add_argument("--workers", type=int, default=5, help="master worker processes (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="bursts per store and size (default 2)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if os.geteuid() != 0:
        sys.exit("Run as root: the PostgreSQL cluster runs as the postgres user.")
    logging.getLogger().setLevel(logging.WARNING)  # Salt sets the root logger to TRACE on import

    machine = Machine()
    results = {}
    with tempfile.TemporaryDirectory(prefix="dt-fleet-") as name, stores(pathlib.Path(name)) as (fake, found):
        folder = pathlib.Path(name)
        pki = master_key(folder)
        opts = {store: master_opts(folder, pki, store, section) for store, section in found.items()}
        for store, options in opts.items():
            settings = token_settings.from_opts(options)
            assert token.acquire(token_stores.open_store(settings), "alice", PEOPLE).get("changed"), store
        calls_before = dict(fake.calls)
        for _ in range(args.rounds):
            for size in sizes:
                for store, options in opts.items():  # the stores interleaved at every size
                    results.setdefault((store, size), []).append(burst(options, size, args.workers))
        google_reads = fake.calls.get("docs.get", 0) - calls_before.get("docs.get", 0)
        baseline = {store: burst(master_opts(folder, pki, store, found[store], pillar_cache=0), BASELINE_SIZE,
                                 args.workers) for store in opts}

    print(f"The ext_pillar for a fleet at once: {args.workers} worker processes, {args.rounds} bursts per store and "
          f"size, read cache {token_settings.PILLAR_CACHE} s ({machine}):")
    worst = {"per_period": 0, "p99": 0, "errors": 0, "timeouts": 0}
    for (store, size), bursts in results.items():
        for one in bursts:
            print(line(store, one))
            worst["per_period"] = max(worst["per_period"], one["reads"] / one["periods"])
            worst["p99"] = max(worst["p99"], one["p99"] * 1000)
            worst["errors"] += one["errors"]
            worst["timeouts"] += one["timeouts"]
    print(f"  (the Google fake served {google_reads} Doc reads to these bursts)")
    print(f"baseline, the read cache off (pillar_cache: 0), {BASELINE_SIZE} ids:")
    for store, one in baseline.items():
        print(line(store, one, baseline=True))
    print("growth, median over the bursts of each size (warm p99 ms / store reads):")
    for store in opts:
        cells = []
        for size in sizes:
            bursts = sorted(results[(store, size)], key=lambda one: one["p99"])
            cells.append(f"{size}: {bursts[len(bursts) // 2]['p99'] * 1000:.2f} ms / "
                         f"{sorted(one['reads'] for one in results[(store, size)])[len(bursts) // 2]}")
        print(f"  {store:<14} " + ", ".join(cells))
    print("goals, the worst burst of all:")
    print(goal("store reads per cache period", worst["per_period"], 1))
    print(goal("warm p99 of the ext_pillar call", worst["p99"], P99_GOAL_MS, " ms"))
    print(goal("errors", worst["errors"], 0))
    print(goal("timeouts", worst["timeouts"], 0))


if __name__ == "__main__":
    main()
