"""
The ``deploytoken`` pillar, made on the master (or, under salt-ssh, on the operator's machine) for
each minion that compiles pillar: who holds the token, the people, which store said so, the override
that covers the minion, and under salt-ssh who runs it.

The store is read through a read cache shared by every process, so it is read at most once per
``deploytoken:pillar_cache`` seconds however many minions compile pillar at once (the holder and the
running overrides in one read); the per-minion fields (``minion``, ``issued``, ``operator``,
``override``) are added after the cache, for every compile.
"""

import logging
import os
import socket

import salt.utils.user

from deploytoken import cache
from deploytoken import consent as consents
from deploytoken import model
from deploytoken import settings as token_settings
from deploytoken import stores
from deploytoken.guard import overrides as override
from deploytoken.guard import seal

log = logging.getLogger(__name__)

HOLDING_KEYS = ("holder", "login", "claim", "since", "reason")


def pillar(opts, minion_id, incoming=None, now=None, ssh=None):
    """The sealed ``deploytoken`` pillar of ``minion_id``; never raises: what goes wrong is its ``error``.
    ``incoming`` is the pillar compiled so far (pillar files and the command line); ``ssh``: made for a
    salt-ssh run (it names the operator), by default when salt-ssh runs this process."""
    settings = None
    now = now or model.utcnow()
    ssh = opts.get("__cli") == "salt-ssh" if ssh is None else ssh
    try:
        settings = token_settings.from_opts(opts)
        data = dict(cache.cached(_cache_path(opts), settings.pillar_cache,
                                 lambda: read_store(settings, opts["cachedir"])))
        overrides = data.pop("overrides", None) or []
        data = stamp(data, settings, minion_id, ssh, now)
        data["override"] = override.for_minion(_usable(overrides, data["store"], opts["cachedir"], now), minion_id)
    except model.DeploytokenError as exc:
        people = settings.people if settings else {}
        data = stamp(unreadable(exc, people), settings, minion_id, ssh, now)
    legacy = incoming.get("deploytoken") if isinstance(incoming, dict) else None
    if isinstance(legacy, dict) and legacy.get("override") and not isinstance(legacy["override"], dict):
        # The old pillar override: carried on, so that the guard refuses it by name.
        data["override"] = str(legacy["override"])
    return seal.seal(data, master_key(opts))


def _usable(from_store, store, cachedir, now):
    """The overrides read with the holder, with the rows spooled on this machine. With the store down
    (``store`` None) a spooled override still counts: it names its store, which the guard checks."""
    rows = [entry for entry in override.spooled(cachedir)["rows"]
            if store is None or (entry["store"] or {}).get("id") == store["id"]]
    return override.combine(from_store, rows, now)


def stamp(data, settings, minion_id, ssh, now=None):
    """Add what is true of this compile only: for whom, when, and under salt-ssh who runs it.

    Under salt-ssh the job on the target runs as the SSH account (root for everyone): the person is
    the operator who runs salt-ssh here, ``sudo`` honoured, which only this machine can tell.
    """
    data = dict(
        data,
        minion=minion_id,
        issued=model.isoformat(now or model.utcnow()),
        max_age=settings.pillar_max_age if settings else token_settings.PILLAR_MAX_AGE,
        ssh_keys=dict(settings.ssh_keys) if settings else {},
        operator=None,
        override=None,
    )
    if ssh:
        data["operator"] = {"login": model.login_of(salt.utils.user.get_specific_user()), "host": socket.getfqdn()}
    return data


def master_key(opts):
    """The master's private key file (Salt 3008 names it after the master id, ``master.pem`` before), or
    None where there is none (salt-ssh on an operator's machine)."""
    pki_dir = opts.get("pki_dir") or ""
    names = [f"{str(opts.get('id') or '').removesuffix('_master')}.pem", "master.pem"]
    found = [os.path.join(pki_dir, name) for name in names if name != ".pem"]
    return next((path for path in found if os.path.isfile(path)), None)


def forget(opts):
    """After the runner changed the token: the next pillar compile reads the store again."""
    cache.forget(_cache_path(opts))


def _cache_path(opts):
    return os.path.join(opts["cachedir"], "deploytoken-pillar.json")


def read_store(settings, cachedir):
    """Pillar data from the configured store, with its running overrides; a store that cannot be read
    gives ``error``."""
    log.debug("deploytoken: reading the token store for the ext_pillar")
    try:
        store = stores.open_store(settings)
        identity = override.note_identity(store, cachedir)  # for an override made while it is down
        overrides = override.in_store(store, identity, model.utcnow())
        return dict(snapshot(store.read(), settings.people), store=identity, overrides=overrides)
    except model.DeploytokenError as exc:
        return unreadable(exc, settings.people)


def snapshot(holding, people):
    """Pillar data for a holding read from the store (``holding`` None: nobody holds the token)."""
    data = {"held": holding is not None, "people": dict(people or {}), "error": None, "store": None}
    fields = holding.to_dict() if holding else dict.fromkeys(HOLDING_KEYS)
    data.update((key, fields[key]) for key in HOLDING_KEYS)
    # The data support manager's consent given with this claim, for the Kingfisher guards.
    data["consent"] = consents.of_reason(fields["reason"])
    return data


def unreadable(message, people=None):
    """Pillar data when the store cannot be read: the guard fails closed on ``error``."""
    return dict(snapshot(None, people), held=None, error=str(message))
