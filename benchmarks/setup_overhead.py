"""
What does ``salt-run deploytoken.setup`` cost on top of the work it does?

Starts a real salt-master and salt-minion (``guard_overhead.py``'s, as root, in a temp folder, on
127.0.0.1), an idle Scrapyd, and four local git repositories, each cloned from a bare origin. Then,
interleaved, N times each (one new upstream commit per repository before every timed step, and the
token given back after it, so each step pulls one commit and finds the token free):

1. the bare work: ``git pull --rebase`` in each clone, ``salt MINION test.ping``, and one store write
   (``salt-run deploytoken.acquire``);
2. ``salt-run deploytoken.setup targets=MINION repos=[...] busy_args={...}``: the same repositories, the
   Kingfisher check on the minion, and the acquire. ``busy_args`` points at the idle Scrapyd, limits
   tmux to one user that does not exist and says ``postgres=never``, so the check reads real sources
   and finds nothing.

Prints the median of each, the parts of the bare work, and the ratio (goal: 1.5 or less). The store write
through ``salt-run`` costs a Salt start-up that a person typing the steps by hand would pay too; a
second, stricter ratio counts the store write as one in-process SQLite acquire instead.

Run with the project's venv, as root: ``sudo .venv/bin/python benchmarks/setup_overhead.py [--runs N]``
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.append(str(REPO / "tests"))
sys.path.append(str(REPO / "_utils"))

from guard_overhead import MINION, Salt  # noqa: E402

import git_fixtures  # noqa: E402
import kingfisher_fixtures as services  # noqa: E402
from deploytoken import model  # noqa: E402
from deploytoken.stores import sqlite as sqlite_store  # noqa: E402

REPOSITORIES = 4
NOBODY = "dtkbnobody"  # no such user, so tmux is asked about one user and finds no server


def advance(writers, round_):
    """One new commit on every origin's default branch, pushed from clones the benchmark does not time."""
    for writer in writers:
        git_fixtures.GitWorld.commit(writer, {"CHANGES": f"{round_}\n"}, f"upstream change {round_}")
        writer.remote("origin").push()


def bare_work(salt, clones):
    """Seconds of each part: the pulls, the ping, the store write."""
    start = time.perf_counter()
    for clone in clones:
        subprocess.run(["git", "-C", clone.working_tree_dir, "pull", "--rebase", "--quiet"], check=True)
    pulled = time.perf_counter()
    salt.run("salt", MINION, "test.ping")
    pinged = time.perf_counter()
    salt.run("salt-run", "deploytoken.acquire", "reason=benchmark")
    return pulled - start, pinged - pulled, time.perf_counter() - pinged


def store_write(path):
    """Seconds of one in-process acquire on a SQLite store (released again, untimed)."""
    store = sqlite_store.SqliteStore(str(path))
    holding = model.Holding(holder="Bench", login="bench", claim=os.urandom(8).hex(),
                            since=model.isoformat(model.utcnow()))
    start = time.perf_counter()
    store.acquire(holding)
    seconds = time.perf_counter() - start
    store.release(holding.claim, model.HistoryRow(claim=holding.claim, holder="Bench", login="bench", caller=None,
                                                  acquired=holding.since, released=holding.since, duration=0))
    return seconds


def setup(salt, arguments):
    """Seconds of one Setup; ``salt.run`` raises if it stopped or was refused."""
    start = time.perf_counter()
    result = salt.run("salt-run", "deploytoken.setup", *arguments)
    seconds = time.perf_counter() - start
    # Less work than the bare work's would flatter the ratio.
    pulled = [report["pulled"] for report in result["repos"]["repos"]]
    if pulled != [1] * REPOSITORIES or not result["kingfisher"][MINION]["answered"]:
        raise RuntimeError(f"deploytoken.setup did not pull one commit per repository and ask {MINION}: {result}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each (default 7)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("Run as root: the master and the minion run as root in a temp folder.")

    scrapyd = services.start_scrapyd(jobs=0)
    try:
        with Salt(guarded=False) as salt:
            world = git_fixtures.GitWorld(salt.root / "git")
            origins = [world.origin() for _ in range(REPOSITORIES)]
            clones = [world.clone(origin) for origin in origins]
            writers = [world.clone(origin) for origin in origins]
            busy_args = {"url": scrapyd.url, "username": scrapyd.username, "password": scrapyd.password,
                         "users": NOBODY, "postgres": "never"}
            arguments = [f"targets={MINION}", "reason=benchmark", f"busy_args={json.dumps(busy_args)}",
                         "repos=" + json.dumps([clone.working_tree_dir for clone in clones])]
            bare, ours, writes = [], [], []
            for round_ in range(args.runs + 1):  # the first round warms up and is not counted
                advance(writers, f"{round_}a")
                bare.append(bare_work(salt, clones))
                writes.append(store_write(salt.root / "bench-write.sqlite"))
                salt.run("salt-run", "deploytoken.release", "note=benchmark")
                advance(writers, f"{round_}b")
                ours.append(setup(salt, arguments))
                salt.run("salt-run", "deploytoken.release", "note=benchmark")
    finally:
        scrapyd.cleanup()

    pulls, ping, acquire = (statistics.median(part) for part in zip(*bare[1:]))
    baseline = statistics.median(sum(parts) for parts in bare[1:])
    setup_time = statistics.median(ours[1:])
    strict = statistics.median(pulled + pinged + write for (pulled, pinged, _), write in zip(bare[1:], writes[1:]))
    print(f"Setup against the bare work, median of {args.runs} interleaved runs each, {REPOSITORIES} repositories, "
          f"1 minion; nproc {len(os.sched_getaffinity(0))}, load {os.getloadavg()[0]:.2f}:")
    for label, seconds in [
        ("  bare work", baseline),
        (f"    git pull --rebase x{REPOSITORIES}", pulls),
        (f"    salt {MINION} test.ping", ping),
        ("    salt-run deploytoken.acquire", acquire),
        (f"  salt-run deploytoken.setup targets={MINION}", setup_time),
    ]:
        print(f"{label:<50}{seconds * 1000:6.0f} ms")
    print(f"  added: {(setup_time - baseline) * 1000:+.0f} ms, ratio {setup_time / baseline:.2f} (goal: 1.50 or less)")
    print(f"  stricter: the store write in-process ({statistics.median(writes[1:]) * 1000:.1f} ms), bare work "
          f"{strict * 1000:.0f} ms, ratio {setup_time / strict:.2f}")


if __name__ == "__main__":
    main()
