"""
The decision behind the ``deploytoken.held`` state, and the pillar data it decides on.

The ext_pillar on the master turns the token store into ``snapshot()`` data; on the minion the
state finds who published the job (``publisher()``) and ``decide()`` says pass or block, with the
sentence people read. Plain Python: no ``__salt__`` here.
"""

import logging
import os

import salt.payload

import deploytoken_cache
import deploytoken_model as model
import deploytoken_settings
import deploytoken_stores
import deploytoken_token as token

ACQUIRE = "salt-run deploytoken.acquire reason='...'"

log = logging.getLogger(__name__)


def pillar(opts):
    """The ``deploytoken`` pillar on the master: the store as the runner reads it, through a read
    cache shared by every process, so the store is read at most once per ``deploytoken:pillar_cache``
    seconds (default 2) however many minions compile pillar at once."""
    settings = deploytoken_settings.from_opts(opts)
    return deploytoken_cache.cached(_cache_path(opts), settings.pillar_cache, lambda: read_store(settings))


def forget_pillar(opts):
    """After the runner changed the token: the next pillar compile reads the store again."""
    deploytoken_cache.forget(_cache_path(opts))


def _cache_path(opts):
    return os.path.join(opts["cachedir"], "deploytoken-pillar.json")


def read_store(settings):
    """Pillar data from the configured store; a store that cannot be read gives ``error``."""
    log.debug("deploytoken: reading the token store for the ext_pillar")
    try:
        return snapshot(deploytoken_stores.open_store(settings).read(), settings.people)
    except model.DeploytokenError as exc:
        return unreadable(exc, settings.people)


def snapshot(holding, people):
    """Pillar data for a holding read from the store (``holding`` None: nobody holds the token)."""
    data = {"held": holding is not None, "people": dict(people or {}), "error": None}
    fields = holding.to_dict() if holding else dict.fromkeys(("holder", "login", "claim", "since", "reason"))
    data.update((key, fields[key]) for key in ("holder", "login", "claim", "since", "reason"))
    return data


def unreadable(message, people=None):
    """Pillar data when the store cannot be read: the guard fails closed on ``error``."""
    return dict(snapshot(None, people), held=None, error=str(message))


def job_login(proc_dir, pid):
    """The login of the person running the job of process ``pid``, from the minion's proc files.

    ``salt`` writes the publisher (``sudo_bob`` is bob); ``salt-call`` runs as the person at the
    terminal. A scheduled job has no person: None, and the guard blocks it.
    """
    job = _proc_entry(proc_dir, pid)
    if job is None:
        return None
    if job.get("user"):
        return model.login_of(job["user"])
    if job.get("tgt") == "salt-call":
        return model.local_login()
    return None


def _proc_entry(proc_dir, pid):
    try:
        names = os.listdir(proc_dir)
    except OSError:
        return None
    for name in names:
        try:
            with open(os.path.join(proc_dir, name), "rb") as handle:
                job = salt.payload.load(handle)
        except Exception:  # a job that just ended, or a file being written: not ours either way
            continue
        if isinstance(job, dict) and job.get("pid") == pid:
            return job
    return None


def person(login, people):
    """``Alice Smith (alice)``, or just the login when it has no display name."""
    shown = model.display_name(login, people)
    return shown if shown == login else f"{shown} ({login})"


def decide(pillar, login, minion, test=False, now=None):
    """Pass or block a deployment by ``login`` on ``minion``, from the ``deploytoken`` pillar.

    Returns ``{"result", "comment", "override"}``; ``override`` holds the event data to send when
    an override let the run through. In test mode a block is ``result: None``.
    """
    pillar = pillar if isinstance(pillar, dict) else {}
    people = pillar.get("people") or {}
    now = now or model.utcnow()
    blocked = None if test else False
    who = person(login, people) if login else "an unknown person"

    override = pillar.get("override")
    if override not in (None, ""):
        reason = _one_line(override, "override")
        if not reason:
            return _ret(blocked, "The deploy token override must give a reason as one line of text, e.g. "
                        "deploytoken: override: 'database down, agreed with Alice'; nothing was deployed.")
        holder = _holder_text(pillar, now)
        verb = "would pass" if test else "PASSED"
        comment = (
            f"OVERRIDE: the deploy token guard {verb} for {who} on {minion} without checking the token "
            f"({holder}), because: {reason!r}. Remove deploytoken:override from the pillar once done."
        )
        event = {"login": login, "person": who, "minion": minion, "reason": reason, "holder": pillar.get("holder")}
        return {"result": True, "comment": comment, "override": None if test else event}

    if not pillar or "held" not in pillar:
        return _ret(blocked, "The deploy token cannot be checked: this minion's pillar has no deploytoken data. "
                    "Add ext_pillar: [{deploytoken: {}}] to the master config, restart the master, and run "
                    "salt-run saltutil.sync_all.")
    if pillar.get("error"):
        return _ret(blocked, f"The deploy token cannot be read, so nobody may deploy: {pillar['error']} "
                    "Check with salt-run deploytoken.status.")
    if not login:
        return _ret(blocked, "The deploy token guard cannot tell who runs this job (a scheduled job or an "
                    "unknown publisher), so it may not deploy. Run it with salt, salt-call or salt-ssh as the "
                    "holder of the token.")
    if not pillar.get("held"):
        return _ret(blocked, f"Nobody holds the deploy token, so {who} may not deploy on {minion}. Take it "
                    f"first with: {ACQUIRE}")
    holding = model.Holding(holder=pillar.get("holder") or "", login=pillar.get("login"))
    if model.same_person(holding, login, model.display_name(login, people)):
        return _ret(True, f"{who} holds the deploy token, since {_since(pillar, now)} "
                    f"(claim {pillar.get('claim')}).")
    return _ret(blocked, f"Deploy token is held by {_holder_text(pillar, now)}, so {who} may not deploy on "
                f"{minion}. Wait with salt-run deploytoken.acquire wait=True, or ask {pillar.get('holder')} "
                "to run salt-run deploytoken.release.")


def _one_line(value, what):
    """``value`` stripped when it is one line of text, else ''."""
    if not isinstance(value, str):
        return ""
    try:
        return model.check_text(value, what)
    except model.InputError:
        return ""


def _ret(result, comment):
    return {"result": result, "comment": comment, "override": None}


def _since(pillar, now):
    return token.since_text(pillar.get("since"), now)


def _holder_text(pillar, now):
    if pillar.get("error"):
        return "the token could not be read"
    if not pillar.get("held"):
        return "nobody holds the token"
    holding = model.Holding(
        holder=pillar.get("holder") or "someone",
        login=pillar.get("login"),
        since=pillar.get("since"),
        reason=pillar.get("reason") or "",
    )
    return token.describe(holding, now)
