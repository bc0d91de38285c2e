"""
Take, give back and inspect the global deploy token from the master.

Exit status: 0 when done, 1 when refused (someone else holds the token, you do not hold it),
2 when an argument, the configuration or the token store is wrong. Nothing is changed unless the
exit status is 0.

Configuration (master config, all optional):

.. code-block:: yaml

    deploytoken:
      backend: sqlite          # or google
      sqlite: {path: /var/cache/salt/master/deploytoken.sqlite}
      people: {alice: "Alice Smith"}
"""

import logging
from typing import TYPE_CHECKING

import salt.utils.event
from salt.exceptions import SaltException, SaltInvocationError

if TYPE_CHECKING:
    __opts__: dict
    __user__: str
    __utils__: dict
    __jid_event__: object

log = logging.getLogger(__name__)

__virtualname__ = "deploytoken"

BAD_INPUT = 2


def __virtual__():
    if "deploytoken_token.acquire" not in __utils__:
        return (False, "deploytoken: the _utils modules are not synced; run salt-run saltutil.sync_all")
    return __virtualname__


def status():
    """
    Who holds the deploy token, since when, why, under which claim, and the commands to release it.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.status
        salt-run deploytoken.status --out=json
    """
    ret = _run(lambda config, store: __utils__["deploytoken_token.status"](store))
    # Without the ext_pillar, deploytoken.held on the minions cannot see the token and blocks every run.
    pillars = __opts__.get("ext_pillar") or []
    ret["ext_pillar"] = any(isinstance(entry, dict) and "deploytoken" in entry for entry in pillars)
    return ret


def acquire(reason="", wait=False, timeout=600, interval=10, name=None):
    """
    Take the deploy token. Refused (exit status 1) while someone else holds it; taking it again
    while you hold it changes nothing.

    reason
        Why you deploy; shown to everyone who asks for the token.

    wait
        ``True`` to wait until the token is free, reporting progress on the runner's event stream.

    timeout
        With ``wait``: give up after this many seconds (default 600).

    interval
        With ``wait``: seconds between attempts (default 10).

    name
        Write this name in the token instead of yours (your login is recorded as the caller).

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.acquire reason="upgrade postgres"
        salt-run deploytoken.acquire reason="upgrade postgres" wait=True timeout=1800
    """
    return _run(
        lambda config, store: __utils__["deploytoken_token.acquire"](
            store,
            _caller(),
            __utils__["deploytoken_token.people_of"](config),
            reason=reason,
            name=name,
            wait=_flag(wait, "wait"),
            timeout=timeout,
            interval=interval,
            progress=_progress,
            notify=_fire,
        )
    )


def release(note="", name=None, force=False, reason="", claim=None):
    """
    Give the deploy token back and add a row to the deploy history (one transaction).

    note
        What happened, e.g. "rebooted kingfisher-main"; kept in the history.

    name
        The name you took the token under, if you gave ``name=`` to acquire.

    force
        ``True`` to end someone else's claim; needs ``reason``. Recorded with who forced it.

    reason
        With ``force``: why the claim is ended.

    claim
        The claim id to end (see ``deploytoken.status``); refused if the token has changed hands since.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.release note="rebooted kingfisher-main"
        salt-run deploytoken.release force=True claim=3f9c0a1b2c3d4e5f reason="Alice is away, agreed in chat"
    """
    return _run(
        lambda config, store: __utils__["deploytoken_token.release"](
            store,
            _caller(),
            __utils__["deploytoken_token.people_of"](config),
            note=note,
            name=name,
            force=_flag(force, "force"),
            reason=reason,
            claim=None if claim is None else str(claim),
            notify=_fire,
        )
    )


def history(limit=10):
    """
    The latest rows of the deploy history, newest first.

    limit
        How many rows (default 10).

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.history limit=20 --out=json
    """
    return _run(lambda config, store: __utils__["deploytoken_token.history"](store, limit))


# ---- Salt plumbing ----------------------------------------------------------------------------


def _run(action):
    """Open the configured store and run ``action``; our errors become one sentence and exit 2."""
    try:
        config = __utils__["deploytoken_token.settings"](__opts__)
        store = __utils__["deploytoken_token.open_store"](config, __opts__["cachedir"])
        return action(config, store)
    except SaltException as exc:
        return {"error": str(exc), "retcode": BAD_INPUT}


def _caller():
    return __utils__["deploytoken_model.login_of"](__user__)


def _flag(value, what):
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "yes", "1"):
        return True
    if str(value).lower() in ("false", "no", "0", "none", ""):
        return False
    raise SaltInvocationError(f"{what} must be True or False, got {value!r}.")


def _progress(message):
    log.info("deploytoken: %s", message)
    try:
        __jid_event__.fire_event({"message": message}, "progress")
    except NameError:  # called outside a runner job (e.g. from another module)
        pass


def _fire(tag, data):
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as event:
        event.fire_event(data, tag)
