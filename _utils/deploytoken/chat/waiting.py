"""
Who is waiting for the deploy token, so the chat message that it is free names them first.

People join with ``salt-run deploytoken.acquire wait=True`` (until their wait times out) or
``salt-run deploytoken.notify_me`` (until the next release). Every store has this list, whether or not
it keeps a line of its own; it is a file of the master, ``<cachedir>/deploytoken/waiting.json``,
changed under its lock.
"""

import datetime
import json
import os

from deploytoken import commands as token
from deploytoken import files, model

LOCK_WAIT = 5


def path(cachedir):
    return os.path.join(cachedir, "deploytoken", "waiting.json")


def ask(store, settings, caller, name=None):
    """``notify_me``: note the caller (or ``name``) for the next release message. Without a chat
    (``deploytoken:notify``) no message will ever name them: nothing is noted, and the answer says so
    with ``retcode`` 1, as a refusal."""
    login, shown = token.who(caller, name, settings.people)
    if settings.notify is None:
        return {"waiting": False, "retcode": 1, "message": "No chat is configured (there is no deploytoken:notify "
                "block in the master config), so no message can name you when the deploy token is released; nothing "
                "was noted. See who holds it with salt-run deploytoken.status, or wait in line with "
                "salt-run deploytoken.acquire wait=True."}
    holding = store.read()
    if holding is None:
        return {"waiting": False, "message": "Nobody holds the deploy token: take it with "
                "salt-run deploytoken.acquire reason='...'"}
    add(settings.cachedir, login, shown)
    return {"waiting": True, "holder": holding.holder,
            "message": f"You ({shown}) will be named in the chat message when the deploy token held by "
            f"{model.describe(holding)} is released."}


def add(cachedir, login, shown, seconds=None):
    """Note one person (again: their newer entry replaces the older), for ``seconds`` or until the release."""
    until = None
    if seconds is not None:
        until = model.isoformat(model.utcnow() + datetime.timedelta(seconds=float(seconds)))

    def change(entries):
        kept = [entry for entry in entries if entry["name"] != shown]
        return kept + [{"login": login, "name": shown, "until": until}]

    _change(cachedir, change)


def take(cachedir, holder_login=None, now=None):
    """The names of the people still waiting, in the order they came, but the holder whose claim just
    ended (who may have asked before taking the token); the list is emptied."""
    now = now or model.utcnow()
    taken = []

    def change(entries):
        for entry in entries:
            until = model.parse_time(entry.get("until"))
            if (until is None or until > now) and not (holder_login and entry.get("login") == holder_login):
                taken.append(entry["name"])
        return []

    _change(cachedir, change)
    return taken


def _change(cachedir, change):
    target = path(cachedir)
    try:
        files.private_dir(os.path.dirname(target))
        with files.locked(target + ".lock", timeout=LOCK_WAIT):
            files.write_json(target, change(_load(target)))
    except (OSError, files.ForeignFolder, files.LockTimeout) as exc:
        raise model.StoreError(f"The list of people waiting, {target}, cannot be changed: {exc}") from None


def _load(target):
    """The entries; a missing or damaged file is an empty list (it only ever costs a name in a message)."""
    try:
        with open(target, encoding="utf-8") as handle:
            found = json.load(handle)
    except (OSError, ValueError):
        return []
    if not isinstance(found, list):
        return []
    return [entry for entry in found if isinstance(entry, dict) and isinstance(entry.get("name"), str)]
