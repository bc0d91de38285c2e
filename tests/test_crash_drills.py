"""
Crash drills on every store: racers take and give back the token in a loop while one of them is
killed with SIGKILL at a random moment (and, on PostgreSQL, the server is restarted or the racers'
backends terminated); and waiters in line, one of them stopped with SIGSTOP at a random moment. After
each round: at most one holder, and that one the killed racer or one a
server fault cut off before it could give the token back; every release a racer was told of is in the
history exactly once; no round hangs.

The everyday suite runs one round per store; ``scripts/stress`` runs
``DEPLOYTOKEN_DRILL_ROUNDS`` (300 by default; the SIGSTOP drill a tenth of them, since a round may last a
stale place's lifetime) and prints the counts.
"""

import contextlib
import os
import queue
import random
import signal
import time

import pytest

import racing
from deploytoken import commands as token
from deploytoken import model
from deploytoken.stores import noline

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


def _in_line(store, count, seconds=30):
    """Wait until ``count`` waiters stand in the store's line (a store without a line: a moment)."""
    if isinstance(store, noline.NoWaitingLine):
        time.sleep(1)
        return False
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(store.waiting()) >= count:
            return True
        time.sleep(0.05)
    return False


def test_a_stopped_waiter_loses_its_turn_and_never_takes_the_token_after_its_timeout(backend):
    store = backend.open()
    token.acquire(store, "holder", {}, reason="holding")
    with racing.started(racing.wait_in_line, [(backend.settings, "stopped", 20, 2)], barrier=False) as race:
        stopped = race.processes[0]
        lined = _in_line(store, 1, 30)
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            token.release(store, "holder", {}, note="done")
            released = time.monotonic()
            if lined:  # the stopped waiter is first in line: a plain acquire must wait its turn, for a while
                assert token.acquire(store, "carol", {}, reason="now")["retcode"] == 1
            race.start(racing.wait_in_line, backend.settings, "next", 45, 2)
            (outcome,) = race.collect(1, timeout=60)
            took = time.monotonic() - released
            assert outcome[0] == "ok", outcome
            login, acquired, _, message, _ = outcome[1]
            assert (login, acquired) == ("next", True), message
            # The line moves on once the stopped waiter's place has gone stale, at the next one's next try.
            assert took <= model.WAITER_STALE + 10, took
            time.sleep(max(0.0, 22 - (time.monotonic() - released)))  # past the stopped waiter's own timeout
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        (outcome,) = race.collect(1, timeout=60)
    assert outcome[0] == "ok", outcome
    login, acquired, _, message, _ = outcome[1]
    assert (login, acquired) == ("stopped", False), message
    assert message.startswith("Gave up: this wait was meant to last at most 20 s, but its process was held up for ")
    assert backend.holder_count() == 0
    assert "stopped" not in [row["holder"] for row in token.history(backend.open(), limit=100)
                             if row["kind"] == "holding"]


# The SIGSTOP drill costs up to a stale place's lifetime per round: a tenth of the SIGKILL drill's rounds.
STOP_ROUNDS = max(1, ROUNDS // 10)
STOP_WAITERS = 3
STOP_INTERVAL = 2


def test_a_waiter_stopped_at_a_random_moment_never_freezes_the_line_beyond_the_bound(backend, stress_counts):
    """Three waiters in line; the token is given back and one of them is stopped (SIGSTOP) at a random moment,
    for a random time up to beyond a place's lifetime. The others are served within the bound (a stale
    place's lifetime and a try), unless the stopped one holds the token; resumed past its own timeout, the
    stopped one never takes it; one holder at most, and every release in the history."""
    chooser = random.Random(os.environ.get("DEPLOYTOKEN_DRILL_SEED", "7"))
    bound = model.WAITER_STALE + 2 * STOP_INTERVAL + 15
    for _ in range(STOP_ROUNDS):
        store = backend.open()
        token.acquire(store, "holder", {}, reason="holding")
        logins = [f"waiter{number}" for number in range(STOP_WAITERS)]
        victim = chooser.choice(logins)
        # The stopped one's own timeout may end while it is stopped; the others' never does within a round.
        timeouts = {login: chooser.choice([15, 90]) if login == victim else 120 for login in logins}
        violations, held_by_victim, resumed, resumed_wall = [], False, None, None
        began = time.monotonic()
        with racing.started(racing.wait_in_line, [(backend.settings, login, timeouts[login], STOP_INTERVAL)
                                                  for login in logins], barrier=False) as race:
            _in_line(store, STOP_WAITERS)
            process = race.processes[logins.index(victim)]
            # Stopped up to half a second before the release (waiting) or after it (maybe taking its turn).
            moment = chooser.uniform(-0.5, 0.5)
            if moment < 0:
                os.kill(process.pid, signal.SIGSTOP)
                time.sleep(-moment)
            token.release(store, "holder", {}, note="done")
            released = time.monotonic()
            if moment >= 0:
                time.sleep(moment)
                try:
                    os.kill(process.pid, signal.SIGSTOP)
                except ProcessLookupError:  # served and gone already: this round has nobody stopped
                    stress_counts["done before the stop"] += 1
                    moment = None
            stopped_at = time.monotonic()
            stop_for = 0 if moment is None else chooser.uniform(0, model.WAITER_STALE + 10)
            outcomes = []
            try:
                while len(outcomes) < STOP_WAITERS - 1 + (resumed is not None):
                    now = time.monotonic()
                    if resumed is None and (now - stopped_at >= stop_for or held_by_victim):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(process.pid, signal.SIGCONT)
                        resumed, resumed_wall = now, time.time()
                    if resumed is None and not held_by_victim:
                        current = store.read()
                        held_by_victim = current is not None and current.login == victim
                    if backend.holder_count() > 1:
                        violations.append("two holders")
                    if now - released > bound + (stop_for if held_by_victim else 0) + 90:
                        violations.append("a round that never ended")
                        break
                    try:
                        outcomes += race.collect(1, timeout=0.5)
                    except queue.Empty:  # nobody done yet
                        pass
                    served = [value for kind, value in outcomes if kind == "ok" and value[0] != victim]
                    if (len(served) < STOP_WAITERS - 1 and not held_by_victim and resumed is None
                            and now - released > bound):
                        stress_counts["lines frozen beyond the bound"] += 1
                        violations.append(f"the line stood still for {now - released:.0f} s behind {victim}")
                        break
            finally:
                if resumed is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGCONT)
                    resumed, resumed_wall = time.monotonic(), time.time()
            if len(outcomes) < STOP_WAITERS and not violations:
                outcomes += race.collect(STOP_WAITERS - len(outcomes), timeout=120)
        stress_counts["stop rounds"] += 1
        stress_counts["stops"] += moment is not None
        stress_counts["stopped while holding"] += held_by_victim
        assert all(kind == "ok" for kind, _ in outcomes), outcomes
        answers = {value[0]: value for _, value in outcomes}
        _, acquired, _, message, held_at = answers.get(victim, (victim, False, None, "", None))
        late = resumed - began > timeouts[victim] + token.LATE_SECONDS + 1
        if acquired and late and held_at > resumed_wall:
            stress_counts["taken past the timeout"] += 1
            violations.append(f"{victim} took the token after its own timeout: {message}")
        unserved = [login for login in logins if login != victim and not answers.get(login, (0, False))[1]]
        if unserved:
            violations.append(f"{', '.join(unserved)} never got the token")
        if backend.holder_count():
            violations.append("the token is still held after the round")
        claims = {row["claim"] for row in token.history(backend.open(), limit=10000)}
        lost = [answer[2] for answer in answers.values() if answer[1] and answer[2] not in claims]
        if lost:
            stress_counts["lost rows"] += len(lost)
            violations.append(f"released claims missing from the history: {lost}")
        stress_counts["violations"] += len(violations)
        assert not violations, violations


def test_a_waiter_killed_right_after_taking_the_token_leaves_its_waited_row(backend):
    """The moment a waiter holds the token, its wait is in the history (written with the holding where the store
    can): killed right after, it still leaves its row."""
    store = backend.open()
    if isinstance(store, noline.NoWaitingLine):
        pytest.skip(f"{store.backend} keeps no line, so it has no waits to record")
    for number in range(5):
        token.acquire(store, "holder", {}, reason="holding")
        with racing.started(racing.wait_and_hold, [(backend.settings, "killed", 60, 1)], barrier=False) as race:
            _in_line(store, 1)
            token.release(store, "holder", {}, note="done")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and getattr(store.read(), "login", None) != "killed":
                pass  # looking as fast as we can: the first moment it holds
            waits = [row for row in token.history(store, limit=100) if row["kind"] == "waited"]
            os.kill(race.processes[0].pid, signal.SIGKILL)
        assert len(waits) == number + 1 and waits[0]["note"] == "took the token", waits
        assert [row for row in token.history(store, limit=100) if row["kind"] == "waited"] == waits
        token.release(store, "drill", {}, force=True, reason="holder killed")
