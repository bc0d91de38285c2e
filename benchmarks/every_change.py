"""
What does "every change needs the token" cost a server's jobs?

Starts two real salt-master/salt-minion pairs at once (as root, in temp folders, on 127.0.0.1), both
with the ``deploytoken`` ext_pillar and alice holding the token; the second minion has the executor on
(``module_executors: [deploytoken, direct_call]``, as examples/minion.d/deploytoken.conf says). Jobs are
published as alice by one Salt client per master that stays up, interleaved pair by pair with the order
swapped every pair, so the machine's load falls on both cases alike.

Prints, each with its goal and whether it is met:

- a read (``test.ping``): the median of the per-pair ratios with/without the executor, with the 95%
  interval of the median (goal 1.05 or less: a read pays a lookup in the table, nothing else);
- a change (``cmd.run true``, which the executor lets through for the holder): the added time per job
  (one token check: a pillar compile asked of the master, since such a job has no fresh pillar at hand);
- the decision itself with the job's fresh token data at hand, in this process (``held.decide`` on data
  the master key signed, the signature checked): goal 5 ms or less.

The checkout's ``_executors`` and ``_utils`` are compiled to bytecode first, as pip compiles an installed
package. Run with the project's venv, as root:
``sudo .venv/bin/python benchmarks/every_change.py [--pairs N]``
"""

import argparse
import compileall
import logging
import os
import pathlib
import statistics
import sys
import time

from figures import Machine, goal, ratio_lines, shown
from guard_overhead import Salt, interleaved, median_interval

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))

from deploytoken import model  # noqa: E402
from deploytoken.guard import held, seal  # noqa: E402

READ_GOAL = 1.05
DECIDE_GOAL_MS = 5
EXECUTOR = {
    "module_executors": ["deploytoken", "direct_call"],
    "executor_dirs": [str(REPO / "_executors")],
    "utils_dirs": [str(REPO / "_utils")],
}


def decide_seconds(salt, calls=500):
    """``held.decide`` on token data signed with the benchmark master's key, checked with its public key."""
    key = next((salt.root / "pki-m").glob("*.pem"))
    public = next((salt.root / "pki-n").glob("minion_master.pub"))
    now = model.isoformat(model.utcnow())
    data = seal.seal({"held": True, "holder": "Alice Smith", "login": "alice", "since": now, "claim": "c1",
                      "reason": "bench", "people": {"alice": "Alice Smith"}, "error": None, "store": None,
                      "consent": None, "minion": "bench-minion", "issued": now, "max_age": 300, "ssh_keys": {},
                      "operator": None, "override": None}, str(key))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        decision = held.decide(data, "alice", "bench-minion", master_key=str(public))
        times.append(time.perf_counter() - start)
    assert decision["result"] is True, decision
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--pairs", type=int, default=40, help="interleaved pairs of each job (default 40)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("Run as root: the masters and the minions run as root in temp folders.")
    if args.pairs < 8:
        sys.exit("Use --pairs 8 or more: the spread needs quartiles and the median an interval.")
    logging.getLogger().setLevel(logging.WARNING)

    # As pip compiles an installed package (and Salt's own modules are): a minion's job process then loads the
    # executor and the table from bytecode, not from source, whatever PYTHONDONTWRITEBYTECODE says here.
    for folder in ("_executors", "_utils"):
        compileall.compile_dir(str(REPO / folder), quiet=1)
    machine = Machine()
    with Salt(guarded=True) as plain, Salt(guarded=True, minion_extra=EXECUTOR) as checked:
        for salt in (plain, checked):
            salt.run("salt-run", "deploytoken.acquire", "reason=benchmark")
        time.sleep(2.5)  # the ext_pillar's read cache (2 s) forgets "nobody holds it"
        for salt in (plain, checked):
            for _ in range(6):
                salt.publish("test.ping")
                salt.publish("cmd.run", "true")
        reads = interleaved(plain, checked, args.pairs, "test.ping")
        writes = interleaved(plain, checked, args.pairs, "cmd.run", "true")
        decided = decide_seconds(checked)

    ratios = [pair[1] / pair[0] for pair in reads]
    low, high = median_interval(ratios)
    print(f"{args.pairs} interleaved pairs per job on two real master/minion pairs, published as alice, who holds "
          f"the token ({machine}):")
    print(f"  test.ping without the executor: {shown([pair[0] for pair in reads])}")
    print(f"  test.ping with the executor:    {shown([pair[1] for pair in reads])}")
    print("\n".join(ratio_lines("with/without", ratios, low, high, READ_GOAL)))
    print(f"  cmd.run true without the executor: {shown([pair[0] for pair in writes])}")
    print(f"  cmd.run true with the executor:    {shown([pair[1] for pair in writes])}")
    print(f"  added per change (one token check, a pillar compile asked of the master): median "
          f"{statistics.median((pair[1] - pair[0]) * 1000 for pair in writes):+.1f} ms")
    decide_ms = statistics.median(decided) * 1000
    print(f"  the decision with the job's fresh token data at hand (signature checked): {shown(decided, digits=2)}")
    print(goal("decision median", decide_ms, DECIDE_GOAL_MS, " ms"))


if __name__ == "__main__":
    main()
