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
import os
from typing import TYPE_CHECKING

import salt.client
import salt.utils.event
import salt.utils.minions
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
    Who holds the deploy token, since when, why, under which claim, and the commands to release it;
    with ``deploytoken: remind_after``, when the next reminder is due (``next_reminder``).

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.status
        salt-run deploytoken.status --out=json
    """

    def show(config, store):
        ret = __utils__["deploytoken_token.status"](store)
        if ret["held"]:
            ret["next_reminder"] = __utils__["deploytoken_remind.next_due"](config, ret["since"])
        return ret

    ret = _run(show)
    # Without the ext_pillar, deploytoken.held on the minions cannot see the token and blocks every run.
    if "error" not in ret:
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
            config.people,
            reason=reason,
            name=name,
            wait=_flag(wait, "wait"),
            timeout=timeout,
            interval=interval,
            progress=_waiter(config, name, timeout),
            notify=_fire,
        ),
        changes=True,
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
            config.people,
            note=note,
            name=name,
            force=_flag(force, "force"),
            reason=reason,
            claim=None if claim is None else str(claim),
            notify=_fire,
        ),
        changes=True,
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


def update_repos(repos=None):
    """
    Bring each deploy repository to its default branch and pull it with rebase. Nothing is stashed
    or discarded: uncommitted changes that block the switch, a rebase conflict (aborted, the
    repository left as it was), a detached HEAD, unpushed local commits, no remote or a remote that
    cannot be reached are each reported in one sentence. Exit status 1 if any repository has a problem.

    repos
        A list of absolute paths of git checkouts. Default: ``deploytoken: repos:`` from the master
        config, else the git checkouts among the master's file_roots and pillar_roots.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.update_repos
        salt-run deploytoken.update_repos repos='["/srv/deploy", "/srv/deploy/pillar/private"]'
    """
    try:
        result = __utils__["deploytoken_repos.update_all"](_repo_paths(repos), progress=_progress)
    except SaltException as exc:
        return {"error": str(exc), "retcode": BAD_INPUT}
    if not result["ok"]:
        result["retcode"] = 1
    return result


def setup(targets=None, reason="", wait=False, consent=None, repos=None, tgt_type="glob", busy_args=None,
          timeout=600, interval=10, name=None):
    """
    The Setup of the deploy procedure in one command: update the deploy repositories (stops on any
    problem), ask ``targets`` whether Kingfisher is busy (stops when any is busy or does not answer,
    unless ``consent`` is given), then take the deploy token. Each step is reported on the runner's
    event stream; one summary is returned. Exit status 1 when stopped or refused, 2 on bad input.

    targets
        The Kingfisher minions to check with ``kingfisher.busy``, e.g. ``collect*``. Left out: no check.

    reason
        Why you deploy; written in the token and the history.

    wait
        ``True`` to wait for the token if someone else holds it (see ``deploytoken.acquire``).

    consent
        ``"<manager>: <why>"``: the data support manager who agreed to go ahead although Kingfisher
        is busy, and why. Recorded with the claim, so it shows in ``deploytoken.history``.

    repos
        The repositories to update, as for ``deploytoken.update_repos``.

    tgt_type
        How ``targets`` is matched (``glob`` by default, ``list``, ``compound``, ...).

    busy_args
        A mapping of arguments for ``kingfisher.busy``, e.g. ``'{"postgres": "always"}'``.

    timeout, interval
        With ``wait``, as for ``deploytoken.acquire``.

    name
        Write this name in the token instead of yours, as for ``deploytoken.acquire``.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.setup reason="upgrade postgres"
        salt-run deploytoken.setup targets='collect*' reason="upgrade postgres"
        salt-run deploytoken.setup targets='collect*' reason="new spider" consent="Dana Lee: crawl restarts fine"
    """

    def action(config, store):
        waiting = _flag(wait, "wait")
        if busy_args is not None and not isinstance(busy_args, dict):
            raise SaltInvocationError(f"busy_args must be a mapping of kingfisher.busy arguments, got {busy_args!r}.")
        __utils__["deploytoken_model.check_seconds"](timeout, "timeout")
        __utils__["deploytoken_model.check_seconds"](interval, "interval", minimum=0.1)
        people = config.people
        caller = _caller()
        shown = __utils__["deploytoken_token.who"](caller, name, people)[1]
        # The steps run inside deploytoken_setup.run, where this module's __utils__ and __opts__ are not
        # reachable: bind everything they need now.
        update_all = __utils__["deploytoken_repos.update_all"]
        acquire_token = __utils__["deploytoken_token.acquire"]
        conf_file, gather_timeout = __opts__["conf_file"], __opts__.get("timeout", 5)

        def check_busy(found):
            client = salt.client.LocalClient(conf_file)
            # LocalClient prints to stdout when nothing matches, which would spoil --out=json.
            if not salt.utils.minions.CkMinions(client.opts).check_minions(found, tgt_type)["minions"]:
                return {}
            return client.cmd(found, "kingfisher.busy", kwarg=dict(busy_args or {}), tgt_type=tgt_type,
                              full_return=True, timeout=gather_timeout)

        def take(recorded):
            return acquire_token(
                store, caller, people, reason=recorded, name=name, wait=waiting, timeout=timeout,
                interval=interval, progress=_progress, notify=_fire,
            )

        return __utils__["deploytoken_setup.run"](
            _repo_paths(repos), targets, reason, consent,
            update=lambda paths: update_all(paths, progress=_progress),
            check_busy=check_busy, acquire=take, progress=_progress,
            notify=lambda tag, data: _fire(tag, dict(data, person=shown)),
        )

    return _run(action, changes=True)


def cleanup(note="", name=None):
    """
    The Cleanup of the deploy procedure: give the deploy token back with a note for the history
    (same as ``deploytoken.release``).

    note
        What happened, e.g. "rebooted kingfisher-main".

    name
        The name you took the token under, if you gave ``name=`` to setup.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.cleanup note="rebooted kingfisher-main"
    """
    return release(note=note, name=name)


def _repo_paths(repos):
    return __utils__["deploytoken_repos.default_paths"](__opts__) if repos is None else repos


def flush():
    """
    Write to the history the rows still spooled on the master (the Google backend keeps a row
    locally when the Sheet could not be reached, and delivers it on the next runner call). A row
    whose claim id is already in the Sheet is not written again. Exit status 1 while rows remain.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.flush
    """
    return _run(lambda config, store: __utils__["deploytoken_token.flush"](store))


# ---- Salt plumbing ----------------------------------------------------------------------------


def _run(action, changes=False):
    """Open the configured store and run ``action``; our errors become one sentence and exit 2.

    ``changes``: the action may change the holder, so the ext_pillar's read cache is dropped and the
    next state run sees the new holder at once.
    """
    try:
        config = __utils__["deploytoken_settings.from_opts"](__opts__)
        store = __utils__["deploytoken_token.open_store"](config)
        return action(config, store)
    except SaltException as exc:
        return {"error": str(exc), "retcode": BAD_INPUT}
    finally:
        if changes:
            __utils__["deploytoken_pillar.forget"](__opts__)


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
    # Sealed with the master's key: a minion may put any deploytoken/* event on the bus, and the chat
    # (see announce) must tell the runner's from those. _fire is called from inside the _utils code,
    # where __utils__ cannot be reached; Salt puts the synced _utils folder on sys.path.
    import deploytoken_seal

    master_key = os.path.join(__opts__["pki_dir"], "master.pem")
    data = deploytoken_seal.seal(data, master_key if os.path.isfile(master_key) else None)
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as event:
        event.fire_event(data, tag)


# ---- chat notifications and reminders ---------------------------------------------------------


def remind():
    """
    Post the reminder that is due for a token held longer than ``deploytoken: remind_after``, once per
    ``remind_every``: running it often (a Salt schedule on the master, or cron) posts each reminder once.
    A reminder that could not be posted is tried again by the next run; the token is never changed.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.remind
    """
    return _run(lambda config, store: __utils__["deploytoken_remind.remind"](config, store))


def notify_me(name=None):
    """
    Be named in the chat message when the deploy token is released (as with ``acquire wait=True``).

    name
        Note this name instead of yours.

    CLI Example:

    .. code-block:: bash

        salt-run deploytoken.notify_me
    """
    return _run(lambda config, store: __utils__["deploytoken_waiting.ask"](store, config, _caller(), name))


def announce(tag, data=None):
    """
    Post a ``deploytoken/*`` event to the chat of ``deploytoken: notify:``; the reactor calls this.
    Only events this master's runner fired (sealed with the master's key) are posted. Never fails: a
    post that could not be made is said in ``message``, and nothing about the token changes.

    tag
        The event's tag, e.g. ``deploytoken/released``.

    data
        The event's data.

    CLI Example:

    .. code-block:: yaml

        # reactor/deploytoken.sls
        deploytoken chat:
          runner.deploytoken.announce:
            - args:
              - tag: {{ tag }}
              - data: {{ data | json }}
    """
    try:
        config = __utils__["deploytoken_settings.from_opts"](__opts__)
        master_public_key = os.path.join(__opts__["pki_dir"], "master.pub")
        return __utils__["deploytoken_events.announce"](config, tag, data, master_public_key)
    except SaltException as exc:
        return {"posted": False, "message": str(exc)}


def _waiter(config, name, timeout):
    """``progress`` for acquire: its first report means the caller waits, so the released message names them.
    It is called from inside the _utils code, where __utils__ cannot be reached: bind what it needs now."""
    who, add, caller = __utils__["deploytoken_token.who"], __utils__["deploytoken_waiting.add"], _caller()
    noted = []

    def progress(message):
        if not noted:
            noted.append(True)
            try:
                add(config.cachedir, *who(caller, name, config.people), seconds=timeout)
            except SaltException as exc:  # the wait goes on; only the name in the chat message is lost
                log.warning("deploytoken: %s", exc)
        _progress(message)

    return progress
