"""
Reminders for a token held too long: ``deploytoken: remind_after: 4h`` (and ``remind_every``).

Reminder n of a claim is due at ``since + remind_after + n * remind_every``. The master notes in
``<cachedir>/deploytoken/reminder.json`` the last reminder it posted for the current claim, under a
lock, so ``remind`` may run every minute (a Salt schedule, or cron without a master) and still posts
each reminder once. A reminder that could not be posted is not noted: the next run tries again.
"""

import datetime
import json
import os

from deploytoken import files, model
from deploytoken.chat import notify

RELEASE = "salt-run deploytoken.release note='...'"


def path(cachedir):
    return os.path.join(cachedir, "deploytoken", "reminder.json")


def period(settings, since, now):
    """The number of the latest reminder due for a claim taken at ``since`` (0 for the first), or None if
    none is due yet."""
    age = model.seconds_between(since, model.isoformat(now))
    if settings.remind_after is None or age is None or age < settings.remind_after:
        return None
    return int((age - settings.remind_after) // settings.remind_every)


def next_due(settings, since, now=None):
    """When the next reminder for a claim taken at ``since`` is due (ISO time), or None (reminders off,
    time unknown)."""
    start = model.parse_time(since)
    if settings.remind_after is None or start is None:
        return None
    latest = period(settings, since, now or model.utcnow())
    offset = settings.remind_after + (0 if latest is None else (latest + 1) * settings.remind_every)
    return model.isoformat(start + datetime.timedelta(seconds=offset))


def text(holding, now=None):
    """``Alice Smith has held the deploy token for 5 h 12 min (upgrade postgres). Release it with ...``"""
    age = model.seconds_between(holding.since, model.isoformat(now or model.utcnow()))
    reason = f" ({holding.reason})" if holding.reason else ""
    return (
        f"{holding.holder} has held the deploy token for {model.human_duration(age)}{reason}. "
        f"Release it with {RELEASE}, or force with salt-run deploytoken.release force=True claim={holding.claim} "
        "reason='...'"
    )


def remind(settings, store, now=None):
    """Post the reminder that is due, if it was not posted yet; says what it did in ``message``."""
    if settings.remind_after is None:
        return {"reminded": False, "message": "Reminders are off: set deploytoken:remind_after (e.g. 4h)."}
    holding = store.read()
    if holding is None:
        return {"reminded": False, "held": False, "message": "Nobody holds the deploy token: no reminder is due."}
    target = path(settings.cachedir)
    wait = settings.notify.longest() if settings.notify else 0
    try:
        files.private_dir(os.path.dirname(target))
        with files.locked(target + ".lock", timeout=wait + 1):
            return _remind(settings, holding, target, now or model.utcnow())
    except files.LockTimeout:
        return {"reminded": False, "message": "Another reminder run kept the lock too long; nothing was done."}
    except (OSError, files.ForeignFolder) as exc:
        raise model.StoreError(f"The reminder note {target} cannot be used: {exc}") from None


def _remind(settings, holding, target, now):
    due = period(settings, holding.since, now)
    ret = {"reminded": False, "held": True, "holder": holding.holder, "claim": holding.claim,
           "next_due": next_due(settings, holding.since, now)}
    if due is None or _last(target, holding.claim) >= due:
        when = model.parse_time(ret["next_due"]).strftime("at %Y-%m-%d %H:%M:%S UTC") if ret["next_due"] else "never"
        return dict(ret, message=f"No reminder is due for {holding.holder}'s claim; the next one is due {when}.")
    ret["text"] = text(holding, now)
    if settings.notify is None:
        return dict(ret, message=ret["text"] + " (No deploytoken:notify block: the reminder was not posted.)")
    posted = notify.post(settings.notify, ret["text"])
    if not posted["posted"]:
        return dict(ret, message=posted["message"] + " The deploy token is unchanged; the next run tries again.")
    files.write_json(target, {"claim": holding.claim, "period": due})
    return dict(ret, reminded=True, message=f"Reminded the chat: {ret['text']}")


def _last(target, claim):
    """The number of the last reminder posted for ``claim``; -1 when none (or the note is unreadable)."""
    try:
        with open(target, encoding="utf-8") as handle:
            noted = json.load(handle)
    except (OSError, ValueError):
        return -1
    if not isinstance(noted, dict) or noted.get("claim") != claim or not isinstance(noted.get("period"), int):
        return -1
    return noted["period"]
