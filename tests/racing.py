"""
The one harness of every race and crash drill: racers in processes of their own, as separate
``salt-run`` processes or master workers are, started together behind a barrier.

Racers are forked by multiprocessing's fork server, a fresh interpreter that runs no thread. Forked
straight from the test process, where the fake Google server and Salt's helpers run threads, a racer
could inherit a lock that one of those threads held at that moment and then never reach the barrier
(two CI rounds hung that way). The server imports the store code once, so a racer starts in a few
milliseconds.

A racer is a function of this module (so the server has it imported) called with arguments that
pickle: store ``Settings``, not store objects. What it returns, or the sentence of what it raised,
comes back as one outcome.
"""

import contextlib
import json
import multiprocessing
import os
import subprocess
import time

from salt.exceptions import SaltException

from deploytoken import cache
from deploytoken import commands as token
from deploytoken import model
from deploytoken import stores as token_stores

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["racing"])
# However loaded the machine, a racer that has not answered by then is hung, not slow.
ANSWER_SECONDS = 180


class Race:
    """Racers started by ``started``; ``collect()`` waits for their outcomes."""

    def __init__(self, barrier_size):
        self.results = CONTEXT.Queue()
        self.barrier = CONTEXT.Barrier(barrier_size) if barrier_size else None
        self.processes = []

    def start(self, racer, *args):
        process = CONTEXT.Process(target=_run, args=(racer, args, self.barrier, self.results))
        process.start()
        self.processes.append(process)
        return process

    def collect(self, count=None, timeout=ANSWER_SECONDS):
        """The next ``count`` outcomes (all racers' by default), in the order they came:
        ``("ok", returned)`` or ``("error", sentence)``. A racer that never answers fails the test."""
        count = len(self.processes) if count is None else count
        deadline = time.monotonic() + timeout
        return [self.results.get(timeout=max(deadline - time.monotonic(), 1)) for _ in range(count)]

    def stop(self):
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)


@contextlib.contextmanager
def started(racer, argument_lists=(), barrier=True):
    """Start ``racer(*args)`` for each of ``argument_lists`` (all released at once by a barrier unless
    ``barrier=False``); yield the ``Race``, and reap every racer on the way out."""
    argument_lists = list(argument_lists)
    race = Race(len(argument_lists) if barrier and argument_lists else 0)
    try:
        for args in argument_lists:
            race.start(racer, *args)
        yield race
    finally:
        race.stop()


def run(racer, argument_lists, barrier=True, timeout=ANSWER_SECONDS):
    """Start the racers together and return their outcomes."""
    with started(racer, argument_lists, barrier) as race:
        return race.collect(timeout=timeout)


def returned(outcomes):
    """What each racer returned; a racer that raised fails the test with its sentence."""
    errors = [value for kind, value in outcomes if kind != "ok"]
    assert not errors, errors
    return [value for _, value in outcomes]


def _run(racer, args, barrier, results):
    try:
        if barrier is not None:
            barrier.wait(ANSWER_SECONDS)
        results.put(("ok", racer(*args)))
    except SaltException as exc:  # our own errors are sentences
        results.put(("error", str(exc)))
    except BaseException as exc:  # every outcome must reach the test, a bug's included
        results.put(("error", f"{type(exc).__name__}: {exc}"))


# ---- racers -----------------------------------------------------------------------------------


def acquire(settings, login, people=None):
    """``salt-run deploytoken.acquire reason="by <login>"``: (won or refused, login, claim, retcode, message)."""
    ret = token.acquire(token_stores.open_store(settings), login, people or {}, reason=f"by {login}")
    return ("won" if ret.get("changed") else "refused", login, ret.get("claim"), ret.get("retcode"), ret["message"])


def release(settings, login, claim, force, people=None):
    """``salt-run deploytoken.release`` of ``claim`` (forced: ``force=True reason=race``)."""
    ret = token.release(token_stores.open_store(settings), login, people or {}, claim=claim, force=force,
                        reason="race" if force else "")
    return ("released" if ret.get("released") else "refused", login, claim, ret.get("retcode"), ret["message"])


def write_holding(settings, number):
    """The store's own acquire of a holding for racer ``number``: (number, holder seen, claim seen, won)."""
    wanted = model.Holding(holder=f"Racer {number}", login=f"racer{number}", claim=f"claim{number}")
    current = token_stores.open_store(settings).acquire(wanted)
    return number, current.holder, current.claim, current.claim == wanted.claim


def take_in_turn(settings, login, people, timeout=120, interval=10):
    """``acquire wait=True`` in the store's line, then give the token back: (login, when it held it)."""
    store = token_stores.open_store(settings)
    taken = token.acquire(store, login, people, wait=True, timeout=timeout, interval=interval)
    if not taken.get("acquired"):
        raise TimeoutError(f"{login} never got the token: {taken['message']}")
    held_at = time.time()
    token.release(store, login, people, note="served")
    return login, held_at


def serve_line(settings, role, login, people, waiters):
    """The fair line's race: a waiter takes its turn (trying again only every 30 s, so a quick turn means it
    was woken) and gives the token back at once: ("served", login, when it held it); the releaser ends
    ``login``'s claim once ``waiters`` stand in line: ("line", the line's order, when)."""
    if role == "waiter":
        return ("served", *take_in_turn(settings, login, people, interval=30))
    store = token_stores.open_store(settings)
    deadline = time.monotonic() + 60
    while len(store.waiting()) < waiters:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(store.waiting())} of {waiters} waiters stood in line after 60 s")
        time.sleep(0.05)
    line = [entry["who"] for entry in store.waiting()]
    token.release(store, login, people)
    return "line", line, time.time()


def release_later(settings, login, people, seconds):
    time.sleep(seconds)
    token.release(token_stores.open_store(settings), login, people)


def read_through_cache(path, counter):
    """A pillar compile's read through the cross-process cache; each real read leaves a mark in ``counter``."""

    def read():
        with open(counter, "a") as handle:
            handle.write("x")
        return {"read": True}

    return cache.cached(path, 30, read)


def command(argv, env):
    """A command line (a real ``salt-run``, say) with ``env`` added: (exit status, its JSON answer)."""
    done = subprocess.run(argv, env=dict(os.environ, **env), capture_output=True, text=True, timeout=ANSWER_SECONDS)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        return done.returncode, done.stdout + done.stderr


def cycle(settings, login, seconds):
    """Take and give back the token as ``login`` for ``seconds``, as a person running the procedure in a
    loop would: the claims this racer released (each must be in the history exactly once). A time, not a
    number of turns, so that a racer is still running when the drill kills it, however fast the store."""
    store = token_stores.open_store(settings)
    released = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            taken = token.acquire(store, login, {}, reason="drill")
            if taken.get("changed"):
                given = token.release(store, login, {}, note="drill")
                if given.get("released"):
                    released.append(taken["claim"])
    except model.DeploytokenError as exc:  # cut off by a server fault: say who, as a person would know
        raise model.StoreError(f"{login}: {exc}") from None
    return released


def wait_in_line(settings, login, timeout, interval):
    """``acquire wait=True`` as ``login``, giving the token back at once if it came: (login, acquired, claim,
    message, when it held it or None)."""
    store = token_stores.open_store(settings)
    taken = token.acquire(store, login, {}, reason="in line", wait=True, timeout=timeout, interval=interval)
    if not taken.get("acquired"):
        return login, False, None, taken["message"], None
    held_at = time.time()
    token.release(store, login, {}, note="served")
    return login, True, taken["claim"], taken["message"], held_at


def wait_and_hold(settings, login, timeout, interval):
    """``acquire wait=True`` as ``login``, then hold the token (until killed, or a minute)."""
    taken = token.acquire(token_stores.open_store(settings), login, {}, reason="in line", wait=True,
                          timeout=timeout, interval=interval)
    time.sleep(60)
    return login, taken.get("acquired")
