"""
Overrides of the deploy token guard: ``salt-run deploytoken.override reason=... [targets=] [minutes=]``.

An override lets ``deploytoken.held`` pass on the targeted minions for a while, loudly, whoever holds
the token. It lives in the token store, as history rows: the override (kind ``override``, claim
``override-<id>``, its planned end as ``until``, its targets in the note) and, when ended early, its
cancellation (kind ``override_cancelled``, claim ``override-<id>.cancel``, when as ``released``, who and
why as ``forced_by`` and ``force_reason``). So every master and
operator sharing the store sees, uses and may cancel the same overrides, and the history keeps them.

Each override names the store it was made in (its ``identity``), and the guard honours it only on a
server that obeys that store. A row the store cannot take yet (the store is down) waits in a spool on
this machine (``<cachedir>/deploytoken/override-spool.json``) until a later runner call writes it; while
it waits, the override works for deployments run from this machine only.
"""

import datetime
import fnmatch
import json
import os
import secrets

from deploytoken import commands as token
from deploytoken import files, model

MAX_MINUTES = 24 * 60
DEFAULT_MINUTES = 60
NOTE = "Override of the deploy token guard on "
PUBLIC = ("id", "by", "login", "reason", "targets", "since", "until", "store")


def spool_path(cachedir):
    return os.path.join(cachedir, "deploytoken", "override-spool.json")


def legacy_path(cachedir):
    """Where earlier versions kept overrides; only its rows not yet written are still of use."""
    return os.path.join(cachedir, "deploytoken", "overrides.json")


def check(reason, targets, minutes):
    """(reason, targets, minutes) checked; InputError naming the first one that is wrong."""
    reason = model.check_text(reason, "reason")
    if not reason:
        raise model.InputError(
            "An override needs a reason, e.g. salt-run deploytoken.override reason='database down, agreed with "
            "Alice' targets='kingfisher*'."
        )
    targets = check_targets(targets)
    minutes = model.check_count(DEFAULT_MINUTES if minutes is None else minutes, "minutes")
    if minutes > MAX_MINUTES:
        # shown: 1e300 is a whole number too, and 301 digits are no help.
        raise model.InputError(f"An override lasts at most {MAX_MINUTES} minutes (one day); got "
                               f"{model.shown(minutes, most=12)}.")
    return reason, targets, minutes


def check_targets(targets):
    """The minions an override covers: ``*`` when left out, minion ids or globs separated by commas, or
    ``L@`` and a list of exact minion ids; InputError for anything that is empty or could match nothing
    (Salt's other matchers: the ext_pillar knows a minion by its id only)."""
    if targets is None:
        return "*"
    if isinstance(targets, (list, tuple)):
        targets = ",".join(str(target) for target in targets)
    text = model.check_text(targets, "targets")
    example = "give minion ids or globs separated by commas, e.g. targets='kingfisher*,db1' or targets=L@db1,db2"
    if not text:
        raise model.InputError(f"targets is empty, so the override would cover no server: {example}, or leave "
                               "targets out to cover every minion.")
    if any(char.isspace() for char in text):
        raise model.InputError(f"targets must be minion ids or globs separated by commas, got {text!r}.")
    listed = text[2:] if text.startswith("L@") else text
    if "@" in listed or (text.startswith("L@") and any(char in listed for char in "*?[")):
        raise model.InputError(f"targets {text!r} would match no minion: the guard knows a server by its minion id "
                               f"only, so {example}.")
    if any(not item for item in listed.split(",")):
        raise model.InputError(f"targets {text!r} holds an empty name between commas: {example}.")
    return text


def matches(targets, minion_id):
    """Whether ``targets`` (as ``check_targets`` returns them) covers ``minion_id``: ``L@`` lists exact ids."""
    if targets.startswith("L@"):
        return minion_id in targets[2:].split(",")
    return any(fnmatch.fnmatchcase(minion_id, pattern) for pattern in targets.split(",") if pattern)


def end_copies(source, target, who, caller, now=None):
    """After ``deploytoken.migrate`` copied ``source``'s history into ``target``: end there (a cancellation
    row each) the overrides still running in ``source``. An override is made for the store the servers obey:
    the copy would otherwise run on in ``target`` as one made there. Returns the records ended."""
    now = now or model.utcnow()
    running = [record for record in (from_row(row, source.identity) for row in source.overrides(now)) if record]
    for record in running:
        target.append_history(_cancel_row(record, who, caller, f"moved to {target.location} by deploytoken.migrate; "
                                          "an override is made in the store the servers obey", now))
    return running


# ---- overrides from history rows --------------------------------------------------------------


def from_row(row, store):
    """The override a history row records, made in ``store`` (an identity); None if it is not one."""
    note = row.note or ""
    if not note.startswith(NOTE) or not note[len(NOTE):]:
        return None  # no targets to be read: it covers nothing
    return {"id": row.claim, "by": row.holder, "login": row.login, "reason": row.reason,
            "targets": note[len(NOTE):], "since": row.acquired, "until": row.until, "store": store}


def _row(record, caller):
    return model.HistoryRow(
        claim=record["id"], holder=record["by"], login=record["login"], caller=caller, acquired=record["since"],
        released=None, duration=None, reason=record["reason"], note=NOTE + record["targets"], kind=model.OVERRIDE,
        until=record["until"],
    )


def _cancel_row(record, who, caller, reason, now):
    ended = model.isoformat(now)
    return model.HistoryRow(
        claim=record["id"] + model.CANCEL_SUFFIX, holder=record["by"], login=record["login"], caller=caller,
        acquired=record["since"], released=ended, duration=model.seconds_between(record["since"], ended),
        reason=record["reason"], note=f"Override {record['id']} on {record['targets']} cancelled by {who}",
        forced_by=who, force_reason=reason, kind=model.OVERRIDE_CANCELLED, until=record["until"],
    )


def in_store(store, identity, now):
    """The overrides running in ``store`` at ``now``, each naming ``identity``."""
    return [found for found in (from_row(row, identity) for row in store.overrides(now)) if found]


def combine(from_store, spooled_rows, now):
    """The overrides read from the store, with those of the rows spooled here: an override waiting to be
    written is added, one whose cancellation waits is dropped."""
    cancelled = {entry["row"]["claim"].removesuffix(model.CANCEL_SUFFIX) for entry in spooled_rows
                 if entry["row"]["claim"].endswith(model.CANCEL_SUFFIX)}
    found = {record["id"]: record for record in from_store}
    for entry in spooled_rows:
        record = from_row(model.HistoryRow(**entry["row"]), entry["store"])
        if record and record["id"] not in found:
            found[record["id"]] = record
    return [record for record in found.values()
            if record["id"] not in cancelled and (model.parse_time(record["until"]) or now) > now]


def for_minion(overrides, minion_id):
    """What the ext_pillar gives ``minion_id``: the newest of ``overrides`` that targets it, or None."""
    found = [record for record in overrides if matches(record["targets"], minion_id)]
    return max(found, key=lambda record: record["since"] or "", default=None)


# ---- the spool of rows not yet written ---------------------------------------------------------


def spooled(cachedir):
    """The spool: ``{"identities": {location: identity}, "rows": [{"location", "store", "row"}]}``."""
    return _load(spool_path(cachedir)) or {"identities": {}, "rows": []}


def _load(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise model.StoreError(
            f"The file {path} is damaged ({exc}); it was left untouched, since it may hold history rows not yet "
            "written: repair it, or move it aside once salt-run deploytoken.history shows its overrides."
        ) from exc


def _change(cachedir, change):
    """Apply ``change(spool) -> result`` to the spool under its lock; returns the result."""
    path = spool_path(cachedir)
    files.private_dir(os.path.dirname(path))
    with files.locked(path + ".lock"):
        spool = spooled(cachedir)
        result = change(spool)
        files.write_json(path, spool)
    return result


def identity(store, cachedir):
    """The identity of ``store``; a store that is down is named by the identity it had when this machine
    last reached it (an override must name the store it is for)."""
    try:
        return note_identity(store, cachedir)
    except model.StoreError as exc:
        known = spooled(cachedir)["identities"].get(store.location)
        if known is None:
            raise model.StoreError(
                f"{exc} This machine never reached that store before, so an override cannot name the store it "
                "is for: fix the store first."
            ) from None
        return known


def note_identity(store, cachedir):
    """``store.identity``, noted on this machine for the time the store is down."""
    found = store.identity

    def note(spool):
        spool["identities"][store.location] = found

    if spooled(cachedir)["identities"].get(store.location) != found:
        _change(cachedir, note)
    return found


def deliver(cachedir, store):
    """Write the spooled rows of ``store`` (and those of the file of earlier versions) with
    ``store.append_history``, which is idempotent by claim, so a row written just before a crash is not
    doubled; returns how many rows are still spooled."""
    legacy = legacy_path(cachedir)
    if not os.path.exists(legacy) and not spooled(cachedir)["rows"]:
        return 0

    def change(spool):
        kept = _load(legacy) or []
        for entry in kept if isinstance(kept, list) else []:
            spool["rows"] += [{"location": store.location, "store": None, "row": row}
                              for row in entry.get("pending") or []]
        if os.path.exists(legacy):
            os.unlink(legacy)  # its rows are in the spool now; it never lets anything through again
        remaining = []
        failed = False
        for entry in spool["rows"]:
            if entry["location"] == store.location and not failed:
                try:
                    store.append_history(model.HistoryRow(**entry["row"]))
                    continue
                except model.DeploytokenError:
                    failed = True  # the store is down: the rows after this one keep their order
            remaining.append(entry)
        spool["rows"] = remaining
        return len(remaining)

    return _change(cachedir, change)


def _write(cachedir, store, made_in, row):
    """Spool ``row`` and write the spool; returns how many rows stay spooled."""
    _change(cachedir, lambda spool: spool["rows"].append(
        {"location": store.location, "store": made_in, "row": row.to_dict()}))
    return deliver(cachedir, store)


# ---- the runner -------------------------------------------------------------------------------


def current(store, cachedir, now=None):
    """The overrides running now in ``store``, with those spooled here; StoreError if the store cannot be
    read and nothing is spooled for it."""
    now = now or model.utcnow()
    rows = [entry for entry in spooled(cachedir)["rows"] if entry["location"] == store.location]
    try:
        from_store = in_store(store, identity(store, cachedir), now)
    except model.StoreError:
        if not rows:
            raise
        from_store = []
    return combine(from_store, rows, now)


def run(store, cachedir, caller, people, reason="", targets=None, minutes=None, cancel_all=False, notify=None,
        override_id=None):
    """``salt-run deploytoken.override``: start an override in the store (or, with ``cancel_all``, end the
    running ones, or only ``override_id``), and tell ``notify(tag, data)``. Returns the runner's answer.
    ``minutes`` None is the default, DEFAULT_MINUTES."""
    cancel_all = model.check_flag(cancel_all, "cancel")
    login, shown = token.who(caller, None, people)
    if cancel_all:
        if targets is not None or minutes is not None:
            raise model.InputError(
                "cancel=True ends every running override (or the one id= names): targets and minutes are for a "
                "new override, so leave them out."
            )
        return _cancel(store, cachedir, caller, shown, reason, override_id, notify)
    if override_id is not None:
        raise model.InputError("id= names the override to cancel: add cancel=True.")
    reason, targets, minutes = check(reason, targets, minutes)
    made_in = identity(store, cachedir)
    now = model.utcnow()
    record = {"id": f"{model.OVERRIDE_PREFIX}{secrets.token_hex(8)}", "by": shown, "login": login,
              "reason": reason, "targets": targets, "since": model.isoformat(now),
              "until": model.isoformat(now + datetime.timedelta(minutes=minutes)), "store": made_in}
    pending = _write(cachedir, store, made_in, _row(record, caller))
    if notify:
        notify("deploytoken/override", record)
    message = (
        f"OVERRIDE {record['id']}: until {model.clock(record['until'])} the deploy token guard lets every deployment "
        f"on {targets} through, whoever holds the token, on servers that obey {made_in['name']}, because: "
        f"{reason!r}. Everyone using that store sees it in salt-run deploytoken.status; end it early with "
        "salt-run deploytoken.override cancel=True reason='...'."
    )
    return dict(record, changed=True, pending=pending, message=message + _kept(pending))


def _cancel(store, cachedir, caller, shown, reason, override_id, notify):
    reason = model.check_text(reason, "reason")
    if not reason:
        raise model.InputError(
            "Cancelling an override needs a reason too, e.g. salt-run deploytoken.override cancel=True "
            "reason='database back'."
        )
    now = model.utcnow()
    running = current(store, cachedir, now)
    if override_id is not None:
        running = [record for record in running if record["id"] == override_id]
        if not running:
            raise model.InputError(f"No running override has the id {override_id!r}: see salt-run deploytoken.status.")
    if not running:
        return {"changed": False, "overrides": [], "message": "No override is running: nothing to cancel."}
    made_in = identity(store, cachedir)
    pending = 0
    ended = []
    for record in running:
        pending = _write(cachedir, store, made_in, _cancel_row(record, shown, caller, reason, now))
        ended.append(dict(record, cancelled={"by": shown, "at": model.isoformat(now), "reason": reason}))
        if notify:
            notify("deploytoken/override/cancelled", ended[-1])
    message = (f"Cancelled {len(ended)} override(s) ({', '.join(record['id'] for record in ended)}): the guard "
               "checks the deploy token again.")
    return {"changed": True, "overrides": ended, "pending": pending, "message": message + _kept(pending)}


def status(store, cachedir):
    """What ``deploytoken.status`` adds: the running overrides, and their rows still spooled here."""
    return {
        "overrides": [{key: record[key] for key in PUBLIC} for record in current(store, cachedir)],
        "overrides_pending": len(spooled(cachedir)["rows"]),
    }


def _kept(pending):
    if not pending:
        return " The history has its row."
    return (
        " The token store could not be reached, so the row is kept on this machine until the next salt-run "
        "deploytoken.flush (or any override call) writes it; until then only deployments run from here see it."
    )
