"""
How fast is ``kingfisher.busy`` compared with the manual routine it replaces? Run as root:

    python benchmarks/kingfisher_busy.py [--users 20] [--repeat 5] [--pairs 11] [--only salt-call|in-process]

1. ``tmux_sessions`` (in process) against the manual loop ``su USER -c "tmux ls"`` over the
   same users, each with a live tmux server (the loop reads less: only session names).
2. ``busy`` with 200 tmux panes, 500 PostgreSQL connections (50 of them long queries) and a
   Scrapyd with a running job, against the same manual loop.
3. ``salt-call kingfisher.busy`` with the defaults (``postgres=auto``: would the next
   deployment restart PostgreSQL?) against ``salt-call test.true`` on a real master and minion
   (``guard_overhead.py``'s), interleaved pair by pair, the order swapped every pair; the minion's
   pillar points Scrapyd and PostgreSQL at an idle Scrapyd and a throwaway cluster, tmux is ``auto``.
   The first busy call, which asks the package cache, is shown apart; the timed ones reuse its answer
   while the package lists and dpkg's status are unchanged. Goal: median ratio 1.5 or less.

It creates its own users (``dtkb...``), Scrapyd, PostgreSQL cluster and Salt daemons, and removes them
at the end.
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "_utils"), str(REPO / "tests")]

from guard_overhead import BIN, MINION, Salt  # noqa: E402

import kingfisher_fixtures as services  # noqa: E402
from deploytoken.kingfisher import busy as busy_check  # noqa: E402
from deploytoken.kingfisher import sources  # noqa: E402
from deploytoken.kingfisher import tmux  # noqa: E402

PANES = 200
CONNECTIONS = 500
LONG = 50
SALT_CALL_GOAL = 1.5


def median_seconds(function, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def su_loop(names):
    """The manual routine, one ``su`` per user (argument lists; su runs the fixed ``tmux ls``)."""
    for name in names:
        subprocess.run(["su", name, "-c", "tmux ls"], capture_output=True, stdin=subprocess.DEVNULL)


def salt_call_seconds(salt, function):
    """Wall time of one ``salt-call FUNCTION`` on the benchmark's minion (busy may exit 1: it is timed)."""
    start = time.perf_counter()
    subprocess.run([str(BIN / "salt-call"), "-c", str(salt.conf), "--out=json", function], capture_output=True,
                   env=dict(os.environ, PYTHONWARNINGS="ignore"), timeout=300)
    return time.perf_counter() - start


def spread(values):
    return f"median {statistics.median(values):.2f}, min {min(values):.2f}, max {max(values):.2f}"


def salt_call_ratio(pairs):
    """Part 3: ``salt-call kingfisher.busy`` against ``salt-call test.true``, interleaved."""
    scrapyd = cluster = None
    try:
        scrapyd = services.start_scrapyd(jobs=0)
        cluster = services.start_postgres()
        with Salt(guarded=False) as salt:
            (salt.root / "pillar" / "top.sls").write_text("base:\n  '*':\n    - kingfisher\n")
            (salt.root / "pillar" / "kingfisher.sls").write_text(
                f"kingfisher:\n  scrapyd: {{url: '{scrapyd.url}', username: {scrapyd.username},"
                f" password: '{scrapyd.password}'}}\n"
                f"  postgres: {{socket_dir: '{cluster.socket_dir}', port: {cluster.port}}}\n")
            salt.run("salt", MINION, "saltutil.refresh_pillar", "wait=True")
            shown = salt.run("salt-call", "kingfisher.busy", check=False)["local"]
            restart = shown["sources"]["postgres"].get("restart", {})
            print(f"salt-call kingfisher.busy: {shown['summary']} Restart: {restart.get('reasons') or 'none'}"
                  f" (packages: {restart.get('packages', {}).get('how')})")
            cache = salt.root / "minion" / "cache" / "kingfisher" / "postgres_upgrades.json"
            cache.unlink(missing_ok=True)
            first = salt_call_seconds(salt, "kingfisher.busy")
            salt_call_seconds(salt, "test.true")
            busy_times, true_times = [], []
            for index in range(pairs):
                order = [("kingfisher.busy", busy_times), ("test.true", true_times)]
                for function, times in order if index % 2 == 0 else order[::-1]:
                    times.append(salt_call_seconds(salt, function))
    finally:
        if cluster:
            cluster.stop()
        if scrapyd:
            scrapyd.cleanup()
    ratios = [busy / true for busy, true in zip(busy_times, true_times)]
    median = statistics.median(ratios)
    print(f"salt-call test.true, {pairs} runs:        {spread(true_times)} s")
    print(f"salt-call kingfisher.busy, {pairs} runs:  {spread(busy_times)} s"
          f" (the first, asking the package cache: {first:.2f} s)")
    print(f"kingfisher.busy / test.true, pair by pair: {spread(ratios)}")
    print(f"goal: {SALT_CALL_GOAL:.1f} or less: {'met' if median <= SALT_CALL_GOAL else 'NOT met'}"
          f" (nproc {os.cpu_count()}, load {os.getloadavg()[0]:.1f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=11, help="salt-call pairs (at least 9)")
    parser.add_argument("--only", choices=["salt-call", "in-process"], help="part 3, or parts 1 and 2")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("Run as root: the benchmark creates users and reads their tmux servers.")
    if options.pairs < 9:
        parser.error("--pairs must be at least 9: fewer pairs say nothing at any load.")
    if options.only in (None, "salt-call"):
        salt_call_ratio(options.pairs)
    if options.only == "salt-call":
        return
    names = [f"dtkb{services.RUN}{index:02d}" for index in range(options.users)]
    windows = -(-PANES // len(names))  # windows per user so that the panes reach PANES
    scrapyd = cluster = None
    connections = []
    try:
        for name in names:
            services.create_user(name)
            services.run_as(name, "tmux", "new-session", "-d", "-s", "work", "sleep", "3600")
        only = tmux.Settings.parse({"users": ",".join(names)})
        report = tmux.sessions(only)
        assert len(report["sessions"]) == len(names), report

        tmux_time = median_seconds(lambda: tmux.sessions(only), options.repeat)
        loop_time = median_seconds(lambda: su_loop(names), options.repeat)
        print(f"tmux_sessions, {len(names)} users:  {tmux_time * 1000:8.1f} ms (median of {options.repeat})")
        print(f"su loop,       {len(names)} users:  {loop_time * 1000:8.1f} ms")
        print(f"tmux_sessions / su loop:        {tmux_time / loop_time:8.2f}x (goal: 0.50x or less)")

        for name in names:
            for _ in range(windows - 1):
                services.run_as(name, "tmux", "new-window", "-d", "-t", "work", "sleep", "3600")
        panes = sum(len(s["panes"]) for s in tmux.sessions(only)["sessions"])
        scrapyd = services.start_scrapyd(jobs=1)
        cluster = services.start_postgres(max_connections=CONNECTIONS + 20)
        for index in range(CONNECTIONS):
            conn = cluster.connect(user="alice", autocommit=True)
            connections.append(conn)
            if index < LONG:
                conn.pgconn.send_query(f"/* alice: job {index} */ SELECT pg_sleep(600)".encode())
        time.sleep(1.5)

        given = {
            "scrapyd": {"url": scrapyd.url, "username": scrapyd.username, "password": scrapyd.password},
            "tmux": {"users": ",".join(names)},
            "postgres": {"threshold": 1, "socket_dir": cluster.socket_dir, "port": cluster.port},
        }
        settings = {name: sources.settings(name, given[name], lambda key, default: default)
                    for name in sources.names()}

        def busy():
            return busy_check.busy(settings, postgres_mode="always")

        result = busy()
        queries = len(result["sources"]["postgres"]["queries"])
        assert result["busy"] and queries == LONG, result["sources"]["postgres"]
        busy_time = median_seconds(busy, options.repeat)
        print(f"busy, {panes} panes, {CONNECTIONS} connections ({queries} long), 1 crawl:"
              f" {busy_time * 1000:8.1f} ms (median of {options.repeat})")
        print(f"busy / su loop:                 {busy_time / loop_time:8.2f}x")
    finally:
        for conn in connections:
            conn.close()
        if cluster:
            cluster.stop()
        if scrapyd:
            scrapyd.cleanup()
        for name in names:
            services.remove_user(name)


if __name__ == "__main__":
    main()
