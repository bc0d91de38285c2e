"""
What do the deploy token guard and its ext_pillar cost a state run?

Starts two real salt-master/salt-minion pairs at once (as root, in temp folders, on 127.0.0.1):

1. bare: no ext_pillar, a small sls without the guard;
2. guarded: ``ext_pillar: [{deploytoken: {}}]`` and the same sls with ``deploytoken.held`` first
   (alice holds the token and runs ``state.apply``).

The two cases run on daemons that are up side by side, interleaved pair by pair with the order swapped
every pair (bare, guarded, guarded, bare, ...), so a change of the machine's load between samples falls
on both cases alike. The ext_pillar is a master-wide setting, so the cases cannot share one master.
Prints the median of the per-pair ratios with its spread, and each part's cost: the guard state's own
duration (as the minion reports it) and a pillar compile (``pillar.items``) with and without the
ext_pillar, also interleaved. Goal: median ratio 1.05 or less.

A third pair with ``deploytoken:pillar_cache: 0`` then counts how many times the token store was read
for 20 concurrent pillar compiles (``salt-call pillar.items`` run at once on the minion) with and
without the read cache.

Run with the project's venv, as root:
``sudo .venv/bin/python benchmarks/guard_overhead.py [--pairs N]``
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
MINION = "bench-minion"
READ_LINE = "deploytoken: reading the token store for the ext_pillar"

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

    def __init__(self, guarded, pillar_cache=None):
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="dtb-", dir="/tmp"))
        self.conf = self.root / "conf"
        self.guarded = guarded
        self.pillar_cache = pillar_cache
        self.processes = []

    def __enter__(self):
        root, conf = self.root, self.conf
        for sub in ("conf", "sls", "pillar", "master/cache/proc", "minion/cache", "sock-m", "sock-n", "pki-m", "pki-n"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "sls" / "bench.sls").write_text(SLS.format(guard=GUARD if self.guarded else "", root=root))
        publish, ret = free_port(), free_port()
        deploytoken = {"sqlite": {"path": str(root / "token.sqlite")}, "people": {"alice": "Alice Smith"}}
        if self.pillar_cache is not None:
            deploytoken["pillar_cache"] = self.pillar_cache
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
        self.run("salt", MINION, "saltutil.sync_all")
        return self

    def __exit__(self, *exc):
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

    def store_reads(self):
        return (self.root / "master.log").read_text(errors="replace").count(READ_LINE)


WARM_UP = 6  # more than the master's worker_threads (5)
GOAL = 1.05
GUARD_GOAL_MS = 5


def warm_up(salt):
    # The first runs write the file and warm every master worker (each loads the ext_pillar's modules once,
    # as on a master that has been running); the timed runs change nothing.
    for _ in range(WARM_UP):
        salt.run("salt", MINION, "state.apply", "bench")


def timed(salt, *args):
    start = time.perf_counter()
    answer = salt.run("salt", MINION, *args)
    return time.perf_counter() - start, answer


def guard_ms(answer):
    """The guard state's own duration in one state.apply answer, as the minion measured it."""
    states = answer.get(MINION, {})
    return next(state["duration"] for key, state in states.items() if key.startswith("deploytoken_|"))


def interleaved(bare, guarded, pairs, *args):
    """``pairs`` (bare seconds, guarded seconds, guarded answer), the order swapped every pair."""
    samples = []
    for index in range(pairs):
        order = (bare, guarded) if index % 2 == 0 else (guarded, bare)
        times = {}
        for salt in order:
            times[salt] = timed(salt, *args)
        samples.append((times[bare][0], times[guarded][0], times[guarded][1]))
    return samples


def spread(values):
    """Median, first and third quartile, min and max."""
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), quartiles[0], quartiles[2], min(values), max(values)


def concurrent_compiles(salt, count=20):
    before = salt.store_reads()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda _: salt.run("salt-call", "pillar.items"), range(count)))
    assert all("deploytoken" in answer.get("local", {}) for answer in answers), answers[:1]
    return salt.store_reads() - before


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--pairs", type=int, default=15, help="interleaved state.apply pairs (default 15)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("Run as root: the masters and the minions run as root in temp folders.")
    if args.pairs < 4:
        sys.exit("Use --pairs 4 or more: the spread needs quartiles.")

    load_at_start = os.getloadavg()[0]
    with Salt(guarded=False) as bare, Salt(guarded=True) as guarded:
        guarded.run("salt-run", "deploytoken.acquire", "reason=benchmark")
        time.sleep(2.5)  # let the ext_pillar's read cache (2 s) forget "nobody holds it"
        warm_up(bare)
        warm_up(guarded)
        applies = interleaved(bare, guarded, args.pairs, "state.apply", "bench")
        pillars = interleaved(bare, guarded, args.pairs, "pillar.items")
        time.sleep(3)
        cached_reads = concurrent_compiles(guarded)
    with Salt(guarded=True, pillar_cache=0) as salt:
        uncached_reads = concurrent_compiles(salt)

    ratio = spread([pair[1] / pair[0] for pair in applies])
    bare_ms = statistics.median(pair[0] for pair in applies) * 1000
    guarded_ms = statistics.median(pair[1] for pair in applies) * 1000
    added = statistics.median((pair[1] - pair[0]) * 1000 for pair in applies)
    held_ms = statistics.median(guard_ms(pair[2]) for pair in applies)
    pillar_added = statistics.median((pair[1] - pair[0]) * 1000 for pair in pillars)
    print(f"state.apply of a small sls, {args.pairs} interleaved pairs on two real master/minion pairs "
          f"(nproc {os.cpu_count()}, load {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end):")
    print(f"  without guard and ext_pillar: median {bare_ms:8.0f} ms")
    print(f"  with deploytoken.held + ext_pillar: median {guarded_ms:8.0f} ms")
    print(f"  added: median {added:+.0f} ms per run")
    print("  ratio guarded/bare per pair: median {:.3f} (quartiles {:.3f}-{:.3f}, min {:.3f}, max {:.3f})"
          .format(*ratio))
    print(f"  goal ratio <= {GOAL}: {'met' if ratio[0] <= GOAL else 'missed'}")
    print("parts of the added time:")
    print(f"  deploytoken.held's own duration on the minion: median {held_ms:.1f} ms "
          f"(goal <= {GUARD_GOAL_MS} ms: {'met' if held_ms <= GUARD_GOAL_MS else 'missed'})")
    print(f"  a pillar compile (salt MINION pillar.items), ext_pillar minus none: median {pillar_added:+.0f} ms")
    # Without the cache every pillar compile reads the store (salt-call asks the master more than once).
    print("token store reads for 20 concurrent salt-call pillar.items on the minion:")
    print(f"  with the read cache (2 s): {cached_reads}")
    print(f"  without (pillar_cache: 0): {uncached_reads}   ratio {cached_reads / max(uncached_reads, 1):.2f}")


if __name__ == "__main__":
    main()
