"""
What the runner does with the token, independent of Salt: read the settings, open the configured
store, and decide acquire / release / status / history, with the sentences people read.

Functions return plain dicts. Refusals carry ``retcode`` 1; bad input and unreadable stores raise
``deploytoken.model.DeploytokenError`` (a ``SaltException``), which the Salt shells turn into
``retcode`` 2 and one sentence.
"""

import dataclasses
import logging
import secrets
import time

from deploytoken import consent as consents
from deploytoken import model
from deploytoken.model import describe, since_text

REFUSED = 1
# How far past its own timeout a waiter's last try may come (a wake-up late on a loaded machine); later
# than that its process was held up (stopped), and it no longer takes the token.
LATE_SECONDS = 2

log = logging.getLogger(__name__)


def who(login, name, people):
    """(login of the named person, display name) for a caller, honouring ``name=``."""
    if name is None:
        if not login:
            raise model.InputError("Cannot tell who is calling: run salt-run as yourself or give name=.")
        return login, model.check_name(model.display_name(login, people), what="display name for " + login)
    shown = model.check_name(name)
    return model.login_for_name(shown, people), shown


# ---- status / history -------------------------------------------------------------------------


def status(store):
    holding = store.read()
    ret = {"held": holding is not None, "backend": store.backend, "store": store.location,
           "waiting": store.waiting()}
    if holding is None:
        ret.update(
            holder=None,
            message="Nobody holds the deploy token. Take it with: salt-run deploytoken.acquire reason='...'",
        )
        return ret
    age = model.seconds_between(holding.since, model.isoformat(model.utcnow()))
    ret.update(holding.to_dict())
    ret.update(
        age=model.human_duration(age),
        age_seconds=age,
        message=f"The deploy token is held by {describe(holding)}.",
        release_command="salt-run deploytoken.release note='...'",
        force_command=_force_command(holding),
    )
    return ret


def history(store, limit=10):
    """The latest ``limit`` rows, newest first, each with its kind; an override's ``released`` is its actual end."""
    limit = model.check_count(limit, "limit", maximum=model.MAX_LIMIT)
    return [row.to_dict() for row in model.settle(store.history(limit), model.utcnow())]


def flush(store, overrides=0):
    """Deliver the history rows a store still keeps locally (the Google store's spool); ``overrides``
    is how many override rows are still kept on the master."""
    pending = store.flush() + overrides
    if pending:
        return {
            "pending": pending,
            "message": f"{pending} history row(s) could not be written to the history yet; they stay "
            "spooled on the master: try again later.",
            "retcode": REFUSED,
        }
    return {"pending": 0, "message": "Every history row is in the history."}


# ---- acquire ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """An acquire's arguments, checked: who asks, the name to write, why, how long to wait, and whether
    to take a free token ahead of the people waiting in line."""

    caller: str
    login: str | None
    shown: str
    reason: str
    wait: bool
    timeout: float
    interval: float
    force: bool = False


def request(caller, people, reason="", name=None, wait=False, timeout=600, interval=10, force=False,
            consent=None):
    """Check an acquire's arguments, so that a caller with several steps (setup) can refuse bad input
    before its first step does anything. ``consent`` (setup's, checked) is written after the reason."""
    wait = model.check_flag(wait, "wait")
    force = model.check_flag(force, "force")
    reason = model.check_text(reason, "reason")
    if consents.MARK in reason.casefold():
        raise model.InputError(
            f"The reason may not hold {consents.MARK!r}: a consent is given with salt-run deploytoken.setup "
            "consent='<manager>: <why>', which records it with the claim."
        )
    reason = model.check_text(consents.recorded(reason, consent), "reason")
    timeout = model.check_seconds(timeout, "timeout", maximum=model.MAX_TIMEOUT)
    interval = model.check_seconds(interval, "interval", minimum=0.1, maximum=model.MAX_INTERVAL)
    if force and wait:
        raise model.InputError(
            "force=True takes a free token at once, ahead of the people waiting; it cannot be combined with wait=True."
        )
    if force and not reason:
        raise model.InputError(
            "Taking the token ahead of the people waiting needs a reason, e.g. force=True reason='hotfix, "
            "agreed with Bob in chat'."
        )
    login, shown = who(caller, name, people)
    return Request(caller, login, shown, reason, wait, timeout, interval, force)


def acquire(store, caller, people, reason="", name=None, wait=False, timeout=600, interval=10, force=False, **how):
    """Take the token for ``caller`` (a login), or say who holds it; ``how`` as for ``take``."""
    return take(store, request(caller, people, reason, name, wait, timeout, interval, force), **how)


def take(store, asked, progress=None, notify=None, sleep=None, clock=time.monotonic):
    """Take the token as ``asked`` (a ``Request``), or say who holds it.

    The store's line of waiters is served in the order they came: while anyone stands in it, a free
    token is only taken from the line (by its first) or with ``asked.force``; a plain acquire is refused,
    naming who is first. With ``asked.wait``, join the line and try again when the store says the token
    may have changed hands (``store.wait``, at most every ``asked.interval`` seconds) until
    ``asked.timeout``, telling ``progress``. A store without a line lets every waiter try.
    ``notify(tag, data)`` is called once the token is taken.
    """
    ticket, said = None, None
    try:
        start, began = clock(), model.utcnow()
        while True:
            wanted = model.Holding(
                holder=asked.shown,
                login=asked.login,
                caller=asked.caller,
                claim=secrets.token_hex(8),
                since=model.isoformat(model.utcnow()),
                reason=asked.reason,
            )
            # While others wait ahead of us, only look: the token is theirs first. A waiter past its own
            # timeout (a process stopped and resumed) only looks too, and gives up below.
            line = [] if ticket is not None or asked.force else store.waiting()
            late = asked.wait and clock() - start > asked.timeout + LATE_SECONDS
            waited_row = None
            if late or line or (ticket is not None and store.ahead(ticket) > 0):
                current = store.read()
            elif ticket is not None and getattr(store, "writes_wait_with_acquire", False):
                # The wait's row is written with the holding, in one transaction.
                waited_row = _wait_row(asked, began, wanted.since, took=True)
                current = store.acquire(wanted, waited=waited_row)
            else:
                current = store.acquire(wanted)
            if asked.wait and current is not None and current.claim == wanted.claim and (
                    clock() - start > asked.timeout + LATE_SECONDS):
                # Held up between its look and its take (a stopped process): a waiter past its own timeout gives
                # the token back at once instead of keeping it.
                _give_back_late(store, wanted)
                current, late = store.read(), True
            done = _taken(store, asked, wanted, current, notify)
            waited = clock() - start
            if late and not done:
                return _after_wait(store, asked, ticket, began, waited, _refused_late(asked, current, waited))
            if done:
                written = waited_row is not None and current.claim == wanted.claim
                return done if written else _after_wait(store, asked, ticket, began, waited, done)
            if not asked.wait or waited >= asked.timeout:
                return _after_wait(store, asked, ticket, began, waited, _refused(asked, current, waited, line))
            if ticket is None:
                ticket = store.enqueue(asked.shown)
            holder = f"held by {describe(current)}" if current else "free, but others waited for it first"
            message = (f"Waiting for the deploy token, {holder}; "
                       f"waited {model.human_duration(waited)} of {model.human_duration(asked.timeout)}.")
            # Joining the line changes the store, which wakes the waiter at once: say each state once.
            if progress and message != said:
                progress(message)
            said = message
            (sleep or store.wait)(max(0.0, min(asked.interval, asked.timeout - waited)))
    finally:
        if ticket is not None:
            store.dequeue(ticket)


def _after_wait(store, asked, ticket, began, waited, answer):
    """``answer``, once a wait in the line (``ticket``) is written down in the history as a row of kind
    ``waited`` (the report's "who waited longest"). A wait that cannot be written down is only logged: the
    token changed hands all the same."""
    if ticket is None:
        return answer
    # A wait that led to a holding ends when that holding began, not once the answer was made.
    ended = answer["since"] if answer.get("changed") and answer.get("since") else model.isoformat(model.utcnow())
    row = _wait_row(asked, began, ended, took=bool(answer.get("acquired")))
    try:
        store.append_history(row)
    except model.DeploytokenError as exc:
        log.warning("deploytoken: the wait of %s is not in the history: %s", asked.shown, exc)
    return answer


def _wait_row(asked, began, ended, took):
    """The history row (kind ``waited``) of a wait in the line that began at ``began`` and ended at ``ended``."""
    return model.HistoryRow(
        claim=model.WAIT_PREFIX + secrets.token_hex(8),
        holder=asked.shown,
        login=asked.login,
        caller=asked.caller,
        acquired=model.isoformat(began),
        released=ended,
        duration=model.seconds_between(model.isoformat(began), ended) or 0,
        reason=asked.reason,
        note="took the token" if took else "gave up",
        kind=model.WAITED,
    )


def _taken(store, asked, wanted, current, notify):
    """The answer when the token is ours (just taken, or held already), else None."""
    if current is None:
        return None
    if current.claim == wanted.claim:
        if notify:
            notify("deploytoken/acquired", dict(current.to_dict(), backend=store.backend))
        return dict(
            current.to_dict(),
            acquired=True,
            changed=True,
            backend=store.backend,
            message=f"You hold the deploy token now (claim {current.claim}). "
            "Give it back with: salt-run deploytoken.release note='...'",
        )
    if _is_holder(current, asked.login, asked.shown, asked.caller):
        return dict(
            current.to_dict(),
            acquired=True,
            changed=False,
            backend=store.backend,
            message=f"You already hold the deploy token, since {since_text(current.since)} "
            f"(claim {current.claim}).",
        )
    return None


def _give_back_late(store, wanted):
    """End ``wanted``, taken by a waiter past its own timeout, with a history row that says why."""
    released = model.isoformat(model.utcnow())
    row = model.HistoryRow(
        claim=wanted.claim, holder=wanted.holder, login=wanted.login, caller=wanted.caller, acquired=wanted.since,
        released=released, duration=model.seconds_between(wanted.since, released), reason=wanted.reason,
        note="given back at once: this wait had outlasted its timeout (its process was held up)",
        kind=model.HOLDING,
    )
    try:
        store.release(wanted.claim, row)
    except model.DeploytokenError as exc:
        log.warning("deploytoken: a late waiter could not give back claim %s: %s", wanted.claim, exc)


def _refused_late(asked, current, waited):
    """The refusal of a waiter that came back past its own timeout (its process was stopped)."""
    answer = _refused(asked, current, waited)
    answer["message"] = (
        f"Gave up: this wait was meant to last at most {model.human_duration(asked.timeout)}, but its process was "
        f"held up for {model.human_duration(waited)} in all (stopped?), so it did not take the deploy token"
        + (f", held by {describe(current)}." if current else ".")
        + " Try again with salt-run deploytoken.acquire wait=True."
    )
    return answer


def _refused(asked, current, waited, line=()):
    """The refusal: held by someone else, or free but others stand in ``line`` (or were ahead of us)."""
    place = next((number for number, entry in enumerate(line, 1) if entry["who"] == asked.shown), None)
    if place is not None:  # a wait=True of this person's is in the line already: another one adds nothing
        holder = f"held by {describe(current)}" if current is not None else "free"
        return {"acquired": False, "changed": False, "holder": current.holder if current else None,
                "waiting": line, "retcode": REFUSED,
                "message": f"The deploy token is {holder}, and you are already waiting for it in line (number "
                f"{place} of {len(line)}, since {since_text(line[place - 1]['since'])}): that salt-run "
                "deploytoken.acquire wait=True takes the token when it is your turn."}
    if current is None and line:
        return {"acquired": False, "changed": False, "holder": None, "waiting": line, "retcode": REFUSED,
                "message": f"The deploy token is free, but {_line_text(line)}. Join the line with salt-run "
                "deploytoken.acquire wait=True, or take it ahead of the line with salt-run deploytoken.acquire "
                "force=True reason='...'"}
    if current is None:  # free, but the waiters ahead of us took their turn first
        return {"acquired": False, "changed": False, "holder": None, "waited_seconds": int(waited), "retcode": REFUSED,
                "message": f"Gave up after waiting {model.human_duration(waited)}: others were waiting for the "
                "deploy token before you. Try again with salt-run deploytoken.acquire wait=True."}
    age = model.seconds_between(current.since, model.isoformat(model.utcnow()))
    if asked.wait:
        message = (
            f"Gave up after waiting {model.human_duration(waited)}: the deploy token is still held by "
            f"{describe(current)}. Ask {current.holder} to run salt-run deploytoken.release."
        )
    else:
        message = (
            f"Deploy token is held by {describe(current)}. Wait with salt-run "
            f"deploytoken.acquire wait=True, or ask {current.holder} to run salt-run deploytoken.release."
        )
        if line:
            message += f" In line already: {_line_text(line)}."
    return dict(
        current.to_dict(),
        acquired=False,
        changed=False,
        age_seconds=age,
        waited_seconds=int(waited),
        message=message,
        retcode=REFUSED,
    )


def _line_text(line):
    """``Bob Jones has waited for it since ...``, or ``3 people wait for it, first Bob Jones (since ...)``."""
    first, since = line[0]["who"], since_text(line[0]["since"])
    if len(line) == 1:
        return f"{first} has waited for it since {since}"
    return f"{len(line)} people wait for it, first {first} (since {since})"


# ---- release ----------------------------------------------------------------------------------


def release(
    store,
    caller,
    people,
    note="",
    name=None,
    force=False,
    reason="",
    claim=None,
    notify=None,
):
    """Give the token back (or, with ``force``, end someone else's claim) and write the history row."""
    note = model.check_text(note, "note")
    force = model.check_flag(force, "force")
    reason = model.check_text(reason, "reason")
    claim = model.check_claim(claim)
    if force and not reason:
        raise model.InputError(
            "A forced release needs a reason, e.g. force=True reason='Alice is on holiday, agreed in chat'."
        )
    login, shown = who(caller, name, people)
    current = store.read()
    if claim is not None and (current is None or claim != current.claim):
        ended = any(row.claim == claim for row in store.history(model.MAX_LIMIT))
        message = model.claim_ended(claim, current) if ended else model.no_such_claim(claim)
        return {"released": False, "changed": False, "message": message, "retcode": REFUSED}
    if current is None:
        return {
            "released": False,
            "changed": False,
            "holder": None,
            "message": "Nobody holds the deploy token: there is nothing to release.",
            "retcode": REFUSED,
        }
    if not force and not _is_holder(current, login, shown, caller):
        return dict(
            current.to_dict(),
            released=False,
            changed=False,
            message=(
                f"You ({shown}) do not hold the deploy token: it is held by {describe(current)}. "
                f"Ask {current.holder} to run salt-run deploytoken.release, or end the claim with "
                f"{_force_command(current)}"
            ),
            retcode=REFUSED,
        )
    released = model.isoformat(model.utcnow())
    row = model.HistoryRow(
        claim=current.claim,
        holder=current.holder,
        login=current.login,
        caller=current.caller,
        acquired=current.since,
        released=released,
        duration=model.seconds_between(current.since, released),
        reason=current.reason,
        note=note,
        forced_by=f"{shown} ({caller})" if force else None,
        force_reason=reason if force else None,
        kind=model.FORCED if force else model.HOLDING,
    )
    try:
        store.release(current.claim, row)
    except model.ClaimConflict as exc:
        return {"released": False, "changed": False, "message": str(exc), "retcode": REFUSED}
    if notify:
        notify("deploytoken/forced" if force else "deploytoken/released", dict(row.to_dict(), backend=store.backend))
    verb = "Forced the release of" if force else "Released"
    return dict(
        row.to_dict(),
        changed=True,
        backend=store.backend,
        message=f"{verb} the deploy token at {model.clock(row.released)}, held by {current.holder} for "
        f"{model.human_duration(row.duration)}; the history has a new row (claim {row.claim}).",
    )


# ---- sentences --------------------------------------------------------------------------------


def _is_holder(holding, login, shown, caller):
    return model.same_person(holding, login, shown) or (bool(caller) and holding.caller == caller)


def _force_command(holding):
    claim = f" claim={holding.claim}" if holding.claim else ""
    return f"salt-run deploytoken.release force=True{claim} reason='...'"
