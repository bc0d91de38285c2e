"""
What do the deploy token guard and its ext_pillar cost a state run?

Starts two real salt-master/salt-minion pairs at once (as root, in temp folders, on 127.0.0.1):

1. bare: no ext_pillar, a small sls without the guard;
2. guarded: ``ext_pillar: [{deploytoken: {}}]`` and the same sls with ``deploytoken.held`` first
   (alice holds the token and runs ``state.apply``).

The two cases run on daemons that are up side by side, interleaved pair by pair with the order swapped
every pair (bare, guarded, guarded, bare, ...), so a change of the machine's load between samples falls
on both cases alike. The ext_pillar is a master-wide setting, so the cases cannot share one master.
Each job is published by one Salt client per master (``LocalClient``, as alice through sudo) that stays
up, so the seconds a ``salt`` process needs to start, the same in both cases, add no noise: the ratio is
of the jobs alone.

Prints, each with its goal and whether it is met:

- the median of the per-pair ratios guarded/bare, its quartiles and the 95% interval of the median
  (goal 1.05 or less; the interval says whether the answer could be noise);
- the guard state's own duration, as the minion reports it in the state return (goal 5 ms or less);
- the ext_pillar function timed in this process on the guarded master's config (many calls: p50 and p99,
  goal p99 5 ms or less) and a master worker's first compile (a fresh process loading it through Salt's
  loader, the store read included);
- a pillar compile (``pillar.items``) with and without the ext_pillar, also interleaved.

How many times the token store is read when many minions compile pillar at once is
``benchmarks/fleet_pillar.py``'s.

Run with the project's venv, as root:
``sudo .venv/bin/python benchmarks/guard_overhead.py [--pairs N] [--calls N]``
"""

import argparse
import json
import logging
import math
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import salt.config
import salt.loader
from figures import Machine, goal, percentile, ratio_lines, shown

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
MINION = "bench-minion"

SLS = """\
{guard}
a small deployment:
  file.managed:
    - name: {root}/deployed
    - contents: deployed
"""
GUARD = """\
deploy token held:
  deploytoken.held:
    - order: 1
    - failhard: True
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Salt:
    """A master and a minion in ``root``, stopped (and the folder removed) on exit."""

    def __init__(self, guarded, minion_extra=None):
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="dtb-", dir="/tmp"))
        self.conf = self.root / "conf"
        self.guarded = guarded
        self.minion_extra = minion_extra or {}
        self.processes = []
        self._publisher = None

    def __enter__(self):
        try:
            return self._start_all()
        except BaseException:
            self.__exit__(None, None, None)  # a pair that failed to start leaves no daemon behind
            raise

    def _start_all(self):
        root, conf = self.root, self.conf
        for sub in ("conf", "sls", "pillar", "master/cache/proc", "minion/cache", "sock-m", "sock-n", "pki-m", "pki-n"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "sls" / "bench.sls").write_text(SLS.format(guard=GUARD if self.guarded else "", root=root))
        publish, ret = free_port(), free_port()
        deploytoken = {"sqlite": {"path": str(root / "token.sqlite")}, "people": {"alice": "Alice Smith"}}
        master = {
            "id": "bench-master", "user": "root", "interface": "127.0.0.1", "publish_port": publish,
            "ret_port": ret, "root_dir": str(root), "pki_dir": str(root / "pki-m"),
            "cachedir": str(root / "master/cache"), "sock_dir": str(root / "sock-m"),
            "pidfile": str(root / "master.pid"), "log_file": str(root / "master.log"),
            "log_level_logfile": "debug", "auto_accept": True,
            "file_roots": {"base": [str(REPO), str(root / "sls")]},
            "pillar_roots": {"base": [str(root / "pillar")]},
            "deploytoken": deploytoken,
        }
        if self.guarded:
            master["ext_pillar"] = [{"deploytoken": {}}]
        minion = {
            "id": MINION, "user": "root", "master": "127.0.0.1", "master_port": ret, "publish_port": publish,
            "root_dir": str(root), "pki_dir": str(root / "pki-n"), "cachedir": str(root / "minion/cache"),
            "sock_dir": str(root / "sock-n"), "pidfile": str(root / "minion.pid"),
            "log_file": str(root / "minion.log"),
            # The store this benchmark's minion obeys, kept with it (each run makes a new store).
            "deploytoken": {"store_memory": str(root / "store-memory.json")},
            **self.minion_extra,
        }
        (conf / "master").write_text(json.dumps(master))
        (conf / "minion").write_text(json.dumps(minion))
        self.processes.append(self._start("salt-master"))
        self.run("salt-run", "saltutil.sync_all")
        self.processes.append(self._start("salt-minion"))
        deadline = time.monotonic() + 120
        while self.run("salt", MINION, "test.ping", check=False).get(MINION) is not True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the minion did not answer; see {root}/minion.log")
            time.sleep(1)
        if not self.minion_extra:  # a minion given its module folders needs no sync (and may refuse one)
            self.run("salt", MINION, "saltutil.sync_all")
        return self

    def __exit__(self, *exc):
        if self._publisher is not None:
            self._publisher.stdin.close()
            self._publisher.wait(30)
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _start(self, daemon):
        return subprocess.Popen([str(BIN / daemon), "-c", str(self.conf), "-l", "quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run(self, script, *args, check=True, user="alice"):
        command = [str(BIN / script), "-c", str(self.conf), "--out=json", *args]
        env = dict(os.environ, SUDO_USER=user, PYTHONWARNINGS="ignore")
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")
        try:
            return json.loads(done.stdout or "{}")
        except ValueError:
            return {}

    def publish(self, fun, *args):
        """``salt MINION fun args`` as alice through sudo, by this pair's publisher process (one Salt client
        that stays up, so no start-up is timed): (seconds, the minion's return)."""
        if self._publisher is None:
            self._publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(self.conf / "master")],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._publisher.stdin.write(json.dumps([fun, *args]) + "\n")
        self._publisher.stdin.flush()
        answer = json.loads(self._publisher.stdout.readline() or "null")
        if not isinstance(answer, dict) or answer.get("retcode") != 0:
            raise RuntimeError(f"{fun} failed: {answer}")
        return answer["seconds"], answer["ret"]


# One Salt client per master, in a process of its own (two in one process lose each other's returns).
PUBLISHER = """
import json, logging, sys, time
import salt.client
logging.getLogger().setLevel(logging.WARNING)
client = salt.client.LocalClient(sys.argv[1])
client.salt_user = "sudo_alice"
for line in sys.stdin:
    fun, *args = json.loads(line)
    start = time.perf_counter()
    answer = client.cmd("%s", fun, arg=args, timeout=300, full_return=True).get("%s")
    seconds = time.perf_counter() - start
    found = answer if isinstance(answer, dict) else {"ret": answer, "retcode": None}
    print(json.dumps({"seconds": seconds, "ret": found.get("ret"), "retcode": found.get("retcode")}), flush=True)
""" % (MINION, MINION)


WARM_UP = 6  # more than the master's worker_threads (5)
RATIO_GOAL = 1.05
GUARD_GOAL_MS = 5
EXT_PILLAR_GOAL_MS = 5
FIRST_COMPILES = 5


def warm_up(salt):
    # The first runs write the file and warm every master worker (each loads the ext_pillar's modules once,
    # as on a master that has been running); the timed runs change nothing.
    for _ in range(WARM_UP):
        salt.publish("state.apply", "bench")


def guard_seconds(answer):
    """The guard state's own duration in one state.apply return, as the minion measured it (ms there)."""
    return next(state["duration"] for key, state in answer.items() if key.startswith("deploytoken_|")) / 1000


def interleaved(bare, guarded, pairs, *args):
    """``pairs`` (bare seconds, guarded seconds, guarded return), the order swapped every pair."""
    samples = []
    for index in range(pairs):
        order = (bare, guarded) if index % 2 == 0 else (guarded, bare)
        times = {salt: salt.publish(*args) for salt in order}
        samples.append((times[bare][0], times[guarded][0], times[guarded][1]))
    return samples


def median_interval(values):
    """The 95% interval of the median (order statistics, no assumption about the distribution)."""
    ordered = sorted(values)
    half = 1.96 * math.sqrt(len(ordered)) / 2
    low = max(int(math.floor(len(ordered) / 2 - half)), 0)
    high = min(int(math.ceil(len(ordered) / 2 + half)), len(ordered) - 1)
    return ordered[low], ordered[high]


def ext_pillar_warm(conf, calls):
    """Seconds per call (wall clock, and this thread's CPU) of the ext_pillar function loaded through Salt's
    loader on the master's config, after a first call (the read cache refreshes as on a master: once per
    cache period). The CPU time leaves out the moments another process had the CPU."""
    function = salt.loader.pillars(salt.config.master_config(str(conf / "master")), {})["deploytoken"]
    function(MINION, {})
    times, cpu = [], []
    for _ in range(calls):
        start, start_cpu = time.perf_counter(), time.thread_time()
        data = function(MINION, {})
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    assert data["deploytoken"]["login"] == "alice" and data["deploytoken"]["signature"], data
    return times, cpu


FIRST_COMPILE = """
import json, logging, sys, time
import salt.config, salt.loader
logging.getLogger().setLevel(logging.WARNING)
opts = salt.config.master_config(sys.argv[1])
start = time.perf_counter()
data = salt.loader.pillars(opts, {})["deploytoken"](sys.argv[2], {})
print(json.dumps({"seconds": time.perf_counter() - start, "login": data["deploytoken"]["login"]}))
"""


def first_compiles(salt, count):
    """A master worker's first compile, ``count`` times: a fresh process (Salt imported, the master's config
    read) loads the ext_pillar through Salt's loader and runs it once, with no read cache to use."""
    times = []
    for _ in range(count):
        (salt.root / "master/cache/deploytoken-pillar.json").unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-c", FIRST_COMPILE, str(salt.conf / "master"), MINION],
                              capture_output=True, text=True, check=True)
        found = json.loads(done.stdout.strip().splitlines()[-1])
        assert found["login"] == "alice", found
        times.append(found["seconds"])
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--pairs", type=int, default=30, help="interleaved state.apply pairs (default 30)")
    parser.add_argument("--calls", type=int, default=3000, help="timed ext_pillar calls in-process (default 3000)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("Run as root: the masters and the minions run as root in temp folders.")
    if args.pairs < 8:
        sys.exit("Use --pairs 8 or more: the spread needs quartiles and the median an interval.")
    logging.getLogger().setLevel(logging.WARNING)  # Salt sets the root logger to TRACE on import

    machine = Machine()
    with Salt(guarded=False) as bare, Salt(guarded=True) as guarded:
        guarded.run("salt-run", "deploytoken.acquire", "reason=benchmark")
        time.sleep(2.5)  # let the ext_pillar's read cache (2 s) forget "nobody holds it"
        warm_up(bare)
        warm_up(guarded)
        applies = interleaved(bare, guarded, args.pairs, "state.apply", "bench")
        pillars = interleaved(bare, guarded, args.pairs, "pillar.items")
        warm, warm_cpu = ext_pillar_warm(guarded.conf, args.calls)
        first = first_compiles(guarded, FIRST_COMPILES)

    ratios = [pair[1] / pair[0] for pair in applies]
    low, high = median_interval(ratios)
    held = [guard_seconds(pair[2]) for pair in applies]
    held_ms = statistics.median(held) * 1000
    p50, p99 = percentile(warm, 50) * 1000, percentile(warm, 99) * 1000
    print(f"state.apply of a small sls, {args.pairs} interleaved pairs on two real master/minion pairs, published "
          f"by a Salt client that stays up ({machine}):")
    print(f"  without guard and ext_pillar:       {shown([pair[0] for pair in applies], digits=0)}")
    print(f"  with deploytoken.held + ext_pillar: {shown([pair[1] for pair in applies], digits=0)}")
    print(f"  added per run: median {statistics.median((pair[1] - pair[0]) * 1000 for pair in applies):+.0f} ms")
    print("\n".join(ratio_lines("guarded/bare", ratios, low, high, RATIO_GOAL)))
    print("parts of the added time:")
    print(f"  deploytoken.held's own duration on the minion (state return): {shown(held, digits=2)}")
    print(goal("guard state median", held_ms, GUARD_GOAL_MS, " ms"))
    print(f"  the ext_pillar in-process on the master's config, {args.calls} calls: p50 {p50:.2f} ms, "
          f"p99 {p99:.2f} ms; {shown(warm, digits=2)}")
    print(f"    its CPU time alone: p50 {percentile(warm_cpu, 50) * 1000:.2f} ms, "
          f"p99 {percentile(warm_cpu, 99) * 1000:.2f} ms")
    print(goal("ext_pillar warm p99", p99, EXT_PILLAR_GOAL_MS, " ms"))
    print(f"  a master worker's first compile (fresh process, loader + store read): {shown(first, digits=0)}")
    print(f"  a pillar compile (pillar.items), ext_pillar minus none: median "
          f"{statistics.median((pair[1] - pair[0]) * 1000 for pair in pillars):+.0f} ms "
          f"(bare {shown([pair[0] for pair in pillars], digits=0)})")


if __name__ == "__main__":
    main()
