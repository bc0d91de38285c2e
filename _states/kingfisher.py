"""
Guards that stop a deployment from interrupting work on the Kingfisher server, made for Salt's
``prereq`` requisite: the guard runs only when the state it protects would change.

.. code-block:: yaml

    no crawls interrupted:
      kingfisher.no_running_jobs:
        - prereq:
          - service: scrapyd

Each guard fails naming whose work would be interrupted. The data support manager's consent, given
when the token is taken (``salt-run deploytoken.setup ... consent="<manager>: <why>"``), recorded in the
history and carried in the master-signed token data, lets them pass with a loud comment.

``kingfisher.not_interrupted`` guards any source of the registry by name; the named guards are
that one guard for Scrapyd, PostgreSQL and tmux.
"""

import os
import re
import threading
from typing import TYPE_CHECKING

import salt.utils.data
from salt.exceptions import SaltException

from deploytoken.guard import held as token_guard
from deploytoken.kingfisher import guard as kf_guard
from deploytoken.kingfisher import sources

if TYPE_CHECKING:
    __grains__: dict
    __opts__: dict
    __salt__: dict
    __pillar__: dict

__virtualname__ = "kingfisher"


def __virtual__():
    return __virtualname__


def not_interrupted(name, source, **settings):
    """
    Fail while the Kingfisher ``source`` (``scrapyd``, ``tmux``, ``postgres``, or one added since)
    finds work that a deployment would interrupt, or cannot be read.

    name
        Any label for the state.

    source
        The source's name in the registry.

    Other keyword arguments are the source's settings, as for ``kingfisher.report``; by default
    ``kingfisher:<source>:<setting>`` from the minion config, else the pillar the master compiles for
    this minion. A ``kingfisher:`` given with ``pillar=`` on the command line is not obeyed (it could turn
    the guard off or narrow it): the comment says so.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' state.single kingfisher.not_interrupted name=crawls source=scrapyd test=True
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    given = {key: value for key, value in settings.items() if value is not None and not key.startswith("__")}
    try:
        found = sources.get(source)
    except SaltException as exc:
        ret["comment"] = str(exc)
        return ret
    try:
        lookup, ignored = _lookup(source)
        report = sources.read(source, sources.settings(source, given, lookup))
        reasons = found.reasons(report)
    except SaltException as exc:
        ret["comment"] = (
            f"Cannot tell whether a {found.what} would be interrupted, so this deployment may not go on: {exc}"
        )
        return ret
    if report.get("status") == "skipped":
        ret.update(result=True, comment=f"No {found.what} is checked: {source} is {report['why']}.{ignored}")
        return ret
    consent, unchecked = None, ""
    if reasons:
        try:
            consent = _consent()
        except SaltException as exc:
            unchecked = f" The consent recorded with the deploy token cannot be checked, so none counts: {exc}"
    kingfisher = __pillar__.get("kingfisher")
    typed = kingfisher.get("consent") if isinstance(kingfisher, dict) else None
    decision = kf_guard.decide(reasons, consent, found.what, test=bool(__opts__.get("test")),
                               typed=typed)
    ret.update(result=decision["result"], comment=decision["comment"] + unchecked + ignored)
    return ret


def _lookup(source):
    """``(lookup, ignored)``: ``lookup(key, default)`` reads the minion config, else the pillar the master
    compiles for this minion (never what a command line adds); ``ignored`` is the sentence saying that the
    job's pillar set ``kingfisher:<source>`` otherwise and was not obeyed (empty when it did not)."""
    job = token_guard.find_job(os.path.join(__opts__["cachedir"], "proc"), os.getpid(), _jid())
    mine = __pillar__.get("kingfisher") if isinstance(__pillar__.get("kingfisher"), dict) else {}
    if mine.get(source) is None:
        master = __pillar__
    else:
        master, _ = token_guard.master_pillar(__opts__, __grains__, __pillar__, job)

    def lookup(key, default):
        for data in (__opts__, master):
            found = salt.utils.data.traverse_dict_and_list(data, key, _MISSING, delimiter=":")
            if found is not _MISSING:
                return found
        return default

    theirs = (master.get("kingfisher") if isinstance(master.get("kingfisher"), dict) else {}).get(source)
    ignored = ""
    if mine.get(source) is not None and mine.get(source) != theirs:
        ignored = (f" This job's pillar sets kingfisher:{source} otherwise than the master's pillar (a pillar= on "
                   "the command line?), which is not obeyed: a guard's settings come from the minion config or the "
                   "master's pillar, and a guard is passed only with a consent given when taking the token.")
    return lookup, ignored


_MISSING = object()


def _jid():
    """This job's jid on a minion with ``multiprocessing: False`` (see ``deploytoken.held``), else None."""
    named = re.fullmatch(r"ProcessPayload\(jid=(\d+)\)", threading.current_thread().name)
    return named.group(1) if named else None


def _consent():
    """The consent recorded with the claim that holds the token, from token data the master signed."""
    data, master_key = token_guard.token_data(__opts__, __grains__, __pillar__)
    consent = token_guard.consent(data, __opts__["id"], master_key=master_key)
    return kf_guard.check_consent(consent)


def no_running_jobs(name, url=None, username=None, password=None):
    """
    Fail while Scrapyd runs or has pending jobs (or crawl processes it no longer lists).

    name
        Any label for the state.

    url, username, password
        Scrapyd's address and basic auth; default ``kingfisher:scrapyd:*`` from config or pillar.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' state.single kingfisher.no_running_jobs name=crawls test=True
    """
    return not_interrupted(name, "scrapyd", url=url, username=username, password=password)


def no_long_queries(name, threshold=None, socket_dir=None, port=None, user=None, runas=None):
    """
    Fail while a PostgreSQL client query has been running for longer than ``threshold`` seconds.

    name
        Any label for the state.

    threshold
        Seconds; default ``kingfisher:postgres:threshold`` or 3600.

    socket_dir, port, user, runas
        How to reach PostgreSQL, as for ``kingfisher.long_queries``.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' state.single kingfisher.no_long_queries name=queries threshold=600 test=True
    """
    return not_interrupted(name, "postgres", threshold=threshold, socket_dir=socket_dir, port=port, user=user,
                           runas=runas)


def no_active_sessions(name, users=None):
    """
    Fail while a tmux pane runs anything but an interactive shell waiting at its prompt (background
    and stopped jobs included), or a tmux server cannot be read or reached.

    name
        Any label for the state.

    users
        ``auto`` (default, ``kingfisher:tmux:users``) or a comma-separated list of user names.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' state.single kingfisher.no_active_sessions name=sessions test=True
    """
    return not_interrupted(name, "tmux", users=users)
