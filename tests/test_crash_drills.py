"""
Crash drills on every store: racers take and give back the token in a loop while one of them is
killed with SIGKILL at a random moment (and, on PostgreSQL, the server is restarted or the racers'
backends terminated). After each round: at most one holder, and that one the killed racer or one a
server fault cut off before it could give the token back; every release a racer was told of is in the
history exactly once; no round hangs.

The everyday suite runs one round per store; ``scripts/stress`` runs
``DEPLOYTOKEN_DRILL_ROUNDS`` (300 by default) and prints the counts.
"""

import os
import random
import signal
import time

import racing
from deploytoken import commands as token

ROUNDS = int(os.environ.get("DEPLOYTOKEN_DRILL_ROUNDS", "1"))
RACERS = 6
# Each racer runs this long; the victim is killed 0.1 to 1 s after the racers start.
SECONDS = 1.5


def _pg_fault(request, chooser):
    """A server-side fault for a PostgreSQL round, or None."""
    cluster = request.getfixturevalue("pg_store_cluster")
    role = request.getfixturevalue("pg_section")["user"]
    kind = chooser.choice(["none", "none", "terminate", "restart"])

    def terminate():
        with cluster.connect(autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))

    def restart():
        cluster.pg_ctl("restart", "-m", "fast", "-w", "-l", str(cluster.root / "log"))

    return {"none": None, "terminate": terminate, "restart": restart}[kind], kind


def test_racers_killed_at_random_moments_leave_one_holder_and_every_row_once(backend, request, stress_counts):
    chooser = random.Random(os.environ.get("DEPLOYTOKEN_DRILL_SEED", "7"))
    store = backend.open()
    for _ in range(ROUNDS):
        fault, kind = (None, "none")
        if store.backend == "postgres":
            fault, kind = _pg_fault(request, chooser)
        logins = [f"racer{number}" for number in range(RACERS)]
        # No barrier: a racer killed before it got there would hold the others at it.
        racers = [(backend.settings, login, SECONDS) for login in logins]
        with racing.started(racing.cycle, racers, barrier=False) as race:
            time.sleep(chooser.uniform(0.1, 1.0))
            victim = chooser.randrange(RACERS)
            os.kill(race.processes[victim].pid, signal.SIGKILL)
            if fault:
                fault()
            outcomes = race.collect(RACERS - 1)
        stress_counts["rounds"] += 1
        stress_counts["kills"] += 1
        if fault:
            stress_counts[f"postgres {kind}"] += 1
        survivors = [value for outcome, value in outcomes if outcome == "ok"]
        # A racer cut off by a server fault says so in a sentence; it is not a violation.
        stress_counts["store errors"] += len(outcomes) - len(survivors)
        assert all(outcome == "ok" or "Traceback" not in value for outcome, value in outcomes), outcomes

        held = backend.holder_count()
        status = token.status(backend.open())
        violations = []
        if held > 1:
            violations.append(f"{held} holders")
        # The token may stay with the killed racer, or with one a server fault cut off between taking the
        # token and giving it back: that racer was told its release failed, as a person would be.
        cut_off = {value.split(":", 1)[0] for outcome, value in outcomes if outcome != "ok"}
        if status["held"] and status["login"] not in {logins[victim], *cut_off}:
            violations.append(f"held by {status['login']}, who was neither killed nor cut off")
        claims = [row["claim"] for row in token.history(backend.open(), limit=10000)]
        if len(claims) != len(set(claims)):
            violations.append("a history row written twice")
        lost = [claim for released in survivors for claim in released if claim not in claims]
        if lost:
            violations.append(f"released claims missing from the history: {lost}")
        stress_counts["violations"] += len(violations)
        assert not violations, violations
        if status["held"]:  # the killed or cut-off racer held it: take it back, as a person would
            token.release(backend.open(), "drill", {}, force=True, reason="holder killed")
