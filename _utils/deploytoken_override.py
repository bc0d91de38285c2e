"""
Overrides of the deploy token guard: ``salt-run deploytoken.override reason=... [targets=] [minutes=]``.

An override lets ``deploytoken.held`` pass on the targeted minions for a while, loudly, whoever holds
the token. It is kept on the master (``<cachedir>/deploytoken/overrides.json``, readable by the
master's user only), where the ext_pillar finds it for each minion, and it is written to the token
store's history as a row of its own (claim ``override-<id>``). When the store cannot be reached (Google
down), the override still works and its row waits in the file until a later runner call delivers it.
"""

import datetime
import fnmatch
import json
import os
import secrets

import deploytoken_files as files
import deploytoken_model as model
import deploytoken_token as token

MAX_MINUTES = 24 * 60


def path_of(cachedir):
    return os.path.join(cachedir, "deploytoken", "overrides.json")


def check(reason, targets, minutes):
    """(reason, targets, minutes) checked; InputError naming the first one that is wrong."""
    reason = model.check_text(reason, "reason")
    if not reason:
        raise model.InputError(
            "An override needs a reason, e.g. salt-run deploytoken.override reason='database down, agreed with "
            "Alice' targets='kingfisher*'."
        )
    if isinstance(targets, (list, tuple)):
        targets = ",".join(str(target) for target in targets)
    targets = model.check_text("*" if targets in (None, "") else targets, "targets")
    if any(char.isspace() for char in targets):
        raise model.InputError(f"targets must be minion ids or globs separated by commas, got {targets!r}.")
    minutes = model.check_count(minutes, "minutes")
    if minutes > MAX_MINUTES:
        raise model.InputError(f"An override lasts at most {MAX_MINUTES} minutes (one day); got {minutes}.")
    return reason, targets, minutes


def matches(targets, minion_id):
    return any(fnmatch.fnmatchcase(minion_id, pattern) for pattern in targets.split(",") if pattern)


def load(path):
    """Every override kept on the master; a damaged file stops with its path (it may hold history rows)."""
    try:
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise model.StoreError(
            f"The overrides file {path} is damaged ({exc}); it was left untouched: repair it, or move it aside "
            "once its overrides have ended and are in the history."
        ) from exc
    return found if isinstance(found, list) else []


def active(path, now=None):
    now = now or model.utcnow()
    return [entry for entry in load(path) if _until(entry) > now and not entry.get("cancelled")]


def for_minion(path, minion_id, now=None):
    """What the ext_pillar gives ``minion_id``: the newest active override that targets it, or None."""
    found = [entry for entry in active(path, now) if matches(entry["targets"], minion_id)]
    if not found:
        return None
    newest = max(found, key=lambda entry: entry["since"])
    return {key: newest[key] for key in ("id", "by", "reason", "targets", "since", "until")}


def create(path, who, login, caller, reason, targets, minutes, now=None):
    """Keep a new override on the master; returns its record (its history row not yet delivered)."""
    now = now or model.utcnow()
    record = {
        "id": f"override-{secrets.token_hex(8)}",
        "by": who,
        "login": login,
        "caller": caller,
        "reason": reason,
        "targets": targets,
        "since": model.isoformat(now),
        "until": model.isoformat(now + datetime.timedelta(minutes=minutes)),
        "cancelled": None,
        "pending": [],
    }
    record["pending"].append(_row(record, record["until"], f"Override of the deploy token guard on {targets}"))
    _change(path, lambda entries: entries + [record])
    return record


def cancel(path, who, caller, now=None):
    """End every active override now; returns the ended records."""
    now = now or model.utcnow()
    ended = []

    def change(entries):
        for entry in entries:
            if _until(entry) > now and not entry.get("cancelled"):
                entry["cancelled"] = {"by": who, "caller": caller, "at": model.isoformat(now)}
                row = _row(entry, model.isoformat(now), f"Override {entry['id']} on {entry['targets']} cancelled "
                           f"by {who}")
                entry["pending"].append(dict(row, claim=f"{entry['id']}.cancel"))
                ended.append(entry)
        return entries

    _change(path, change)
    return ended


def deliver(path, append):
    """Write the history rows kept on the master with ``append(row)``; returns how many remain.

    ``append`` must be idempotent by claim id (the stores are), so a row delivered just before a crash
    is not doubled when delivered again. Overrides that have ended and been delivered are dropped.
    """
    if not any(entry.get("pending") for entry in load(path)):
        return 0
    now = model.utcnow()

    def change(entries):
        for entry in entries:
            while entry.get("pending"):
                try:
                    append(model.HistoryRow(**entry["pending"][0]))
                except model.DeploytokenError:
                    return entries
                entry["pending"].pop(0)
        return [entry for entry in entries if entry.get("pending") or (_until(entry) > now and not entry["cancelled"])]

    return sum(len(entry.get("pending") or []) for entry in _change(path, change))


def _row(record, released, note):
    return model.HistoryRow(
        claim=record["id"],
        holder=record["by"],
        login=record["login"],
        caller=record["caller"],
        acquired=record["since"],
        released=released,
        duration=model.seconds_between(record["since"], released),
        reason=record["reason"],
        note=note,
    ).to_dict()


def _change(path, change):
    """Apply ``change(entries) -> entries`` to the file under its lock; returns what was written."""
    files.private_dir(os.path.dirname(path))
    with files.locked(path + ".lock"):
        entries = change(load(path))
        files.write_json(path, entries)
    return entries


def _until(entry):
    return model.parse_time(entry.get("until")) or model.utcnow()


def run(store, cachedir, caller, people, reason="", targets=None, minutes=60, cancel_all=False, notify=None):
    """``salt-run deploytoken.override``: start an override (or end them with ``cancel_all``), write its
    history row when the store can take it, tell ``notify(tag, data)``. Returns the runner's answer."""
    cancel_all = model.check_flag(cancel_all, "cancel")
    path = path_of(cachedir)
    login, shown = token.who(caller, None, people)
    if cancel_all:
        ended = cancel(path, shown, caller)
        pending = deliver(path, store.append_history)
        if not ended:
            return {"changed": False, "overrides": [], "message": "No override is active: nothing to cancel."}
        for entry in ended:
            if notify:
                notify("deploytoken/override/cancelled", _public(entry))
        message = f"Cancelled {len(ended)} override(s): the guard checks the deploy token again."
        return {"changed": True, "overrides": [_public(entry) for entry in ended], "pending": pending,
                "message": message + _kept(pending)}
    reason, targets, minutes = check(reason, targets, minutes)
    record = create(path, shown, login, caller, reason, targets, minutes)
    pending = deliver(path, store.append_history)
    if notify:
        notify("deploytoken/override", _public(record))
    until = model.parse_time(record["until"]).strftime("%Y-%m-%d %H:%M UTC")
    message = (
        f"OVERRIDE {record['id']}: the deploy token guard lets every deployment through on {targets} until "
        f"{until}, because: {reason!r}. End it early with salt-run deploytoken.override cancel=True."
    )
    return dict(_public(record), changed=True, pending=pending, message=message + _kept(pending))


def status(cachedir):
    """What ``deploytoken.status`` adds: the active overrides, and history rows still kept on the master."""
    path = path_of(cachedir)
    entries = load(path)
    now = model.utcnow()
    return {
        "overrides": [_public(entry) for entry in entries if _until(entry) > now and not entry.get("cancelled")],
        "overrides_pending": sum(len(entry.get("pending") or []) for entry in entries),
    }


def _public(entry):
    return {key: entry.get(key) for key in ("id", "by", "login", "reason", "targets", "since", "until", "cancelled")}


def _kept(pending):
    if not pending:
        return " The history has its row."
    return (
        " The token store could not be reached, so the override's history row is kept on the master and written "
        "by the next salt-run deploytoken.flush (or any override call)."
    )
