"""
How fast is ``kingfisher.busy`` compared with the manual routine it replaces? Run as root:

    python benchmarks/kingfisher_busy.py [--users 20] [--repeat 5]

1. ``tmux_sessions`` (in process) against the manual loop ``su USER -c "tmux ls"`` over the same
   users, each with a live tmux server (the loop reads less: only session names).
2. ``busy`` with 200 tmux panes, 500 PostgreSQL connections (50 of them long queries) and a
   Scrapyd with a running job, against the same manual loop.

It creates its own users (``dtkb...``), Scrapyd and PostgreSQL cluster, and removes them at the end.
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

import kingfisher_busy  # noqa: E402
import kingfisher_fixtures as services  # noqa: E402
import kingfisher_sources  # noqa: E402
import kingfisher_tmux  # noqa: E402

PANES = 200
CONNECTIONS = 500
LONG = 50


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("Run as root: the benchmark creates users and reads their tmux servers.")
    names = [f"dtkb{services.RUN}{index:02d}" for index in range(options.users)]
    windows = -(-PANES // len(names))  # windows per user so that the panes reach PANES
    scrapyd = cluster = None
    connections = []
    try:
        for name in names:
            services.create_user(name)
            services.run_as(name, "tmux", "new-session", "-d", "-s", "work", "sleep", "3600")
        only = kingfisher_tmux.Settings.parse({"users": ",".join(names)})
        report = kingfisher_tmux.sessions(only)
        assert len(report["sessions"]) == len(names), report

        tmux_time = median_seconds(lambda: kingfisher_tmux.sessions(only), options.repeat)
        loop_time = median_seconds(lambda: su_loop(names), options.repeat)
        print(f"tmux_sessions, {len(names)} users:  {tmux_time * 1000:8.1f} ms (median of {options.repeat})")
        print(f"su loop,       {len(names)} users:  {loop_time * 1000:8.1f} ms")
        print(f"tmux_sessions / su loop:        {tmux_time / loop_time:8.2f}x (goal: 0.50x or less)")

        for name in names:
            for _ in range(windows - 1):
                services.run_as(name, "tmux", "new-window", "-d", "-t", "work", "sleep", "3600")
        panes = sum(len(s["panes"]) for s in kingfisher_tmux.sessions(only)["sessions"])
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
        settings = {name: kingfisher_sources.settings(name, given[name], lambda key, default: default)
                    for name in kingfisher_sources.names()}

        def busy():
            return kingfisher_busy.busy(settings, postgres_mode="always")

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
