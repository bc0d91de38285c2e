"""
A line of 100 waiters on the PostgreSQL store: is each served in its turn, and how quickly does the token
pass from one to the next?

On a throwaway PostgreSQL 15 cluster started here: alice holds the token; 100 waiters (separate processes,
``acquire wait=True interval=30``, so a quick turn means the waiter was woken, not that it tried again)
join the line one after the other; alice releases, and each waiter, once it holds the token, gives it back
at once, handing it to the next. A hand-off is from the start of the previous holder's release (alice's,
then each waiter's, which releases as soon as it holds) to the next waiter holding the token. The
baseline, in the same run and interleaved round by round: hand-offs to a line of one.

Prints the hand-off's median and quartiles per round and over all rounds, whether the line was served in
exactly the order it joined, and the total time from alice's release to the last waiter holding. Goals:
median hand-off 0.2 s or less, the order exact.

Run as root (the cluster runs as the postgres user) with the project's venv:
``.venv/bin/python benchmarks/waiting_line.py [--waiters 100] [--rounds 3] [--lone 5]``
"""

import argparse
import logging
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))
sys.path.insert(0, str(REPO / "tests"))

from figures import Machine, goal, shown  # noqa: E402

import racing  # noqa: E402
from deploytoken import commands as token  # noqa: E402
from pg_fixtures import drop_schema, postgres_settings, postgres_store, section_for, store_cluster  # noqa: E402

PEOPLE = {}
HANDOFF_GOAL = 0.2
JOIN_SECONDS = 120


def serve(section, count):
    """``count`` waiters join the line in a known order; alice releases; each holds and gives it back.
    Returns (the order they joined, the order they held it, hand-off seconds, total seconds)."""
    store = postgres_store(section, people=PEOPLE)
    assert token.acquire(store, "alice", PEOPLE).get("changed")
    logins = [f"waiter{number:03d}" for number in range(count)]
    settings = postgres_settings(section, people=PEOPLE)
    with racing.started(racing.take_in_turn, barrier=False) as race:
        for login in logins:
            race.start(racing.take_in_turn, settings, login, PEOPLE, 600, 30)
            deadline = time.monotonic() + JOIN_SECONDS
            while len(store.waiting()) < len(race.processes):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{login} did not stand in the line within {JOIN_SECONDS} s")
                time.sleep(0.02)
        joined = [entry["who"] for entry in store.waiting()]
        released = time.time()
        token.release(store, "alice", PEOPLE)
        served = sorted(racing.returned(race.collect(timeout=600)), key=lambda outcome: outcome[1])
    held = [when for _, when in served]
    handoffs = [later - earlier for earlier, later in zip([released] + held, held)]
    return joined, [login for login, _ in served], handoffs, held[-1] - released


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--waiters", type=int, default=100, help="waiters in the line (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="lines served (default 3)")
    parser.add_argument("--lone", type=int, default=5, help="baseline hand-offs to a line of one per round")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("Run as root: the PostgreSQL cluster runs as the postgres user.")
    logging.getLogger().setLevel(logging.WARNING)

    machine = Machine()
    cluster = store_cluster()
    lines, lone = [], []
    try:
        for number in range(args.rounds):
            section = section_for(cluster, schema=f"dt_line_{number}")
            try:
                for _ in range(args.lone):  # the baseline first, then the long line, every round
                    lone.extend(serve(section, 1)[2])
                lines.append(serve(section, args.waiters))
            finally:
                drop_schema(cluster, section["schema"])
    finally:
        cluster.stop()

    print(f"A line of {args.waiters} waiters on PostgreSQL (LISTEN), {args.rounds} rounds ({machine}):")
    every = []
    exact = True
    for number, (joined, served, handoffs, total) in enumerate(lines, 1):
        in_order = joined == served and len(served) == args.waiters
        exact = exact and in_order
        every.extend(handoffs)
        print(f"  round {number}: hand-off {shown(handoffs, 's', 1, 3)}; order {'exact' if in_order else 'WRONG'}; "
              f"total {total:.1f} s from the first release to the last waiter holding")
    print(f"  all rounds: hand-off {shown(every, 's', 1, 3)}")
    print(f"baseline, a line of one ({len(lone)} hand-offs): {shown(lone, 's', 1, 3)}")
    print(goal("median hand-off", statistics.median(every), HANDOFF_GOAL, " s"))
    print(f"  goal the order exact in every round: {'met' if exact else 'MISSED'}")


if __name__ == "__main__":
    main()
