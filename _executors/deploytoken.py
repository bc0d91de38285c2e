"""
Every change needs the deploy token: an executor that runs before every function a server runs and
refuses, before it starts, any that changes the server unless the person running it holds the token.

Turn it on in the minion config (and, under salt-ssh, in ``ssh_minion_opts`` of salt-ssh's own
config), before Salt's own executor:

.. code-block:: yaml

    module_executors: [deploytoken, direct_call]

Reading a server stays open to everyone (``test.*``, ``grains.*``, ``pillar.*``, ``kingfisher.*``, the
listings, any state run in test mode): ``deploytoken.guard.changes`` holds the one table, and
``deploytoken:reads`` / ``deploytoken:changes`` in the server's configuration add to it. A change is
checked exactly as the ``deploytoken.held`` state checks a deployment: who runs the job, the token data
the master signed for this very minion (or under salt-ssh, that the operator's machine made for this
run), the store the server obeys, and any emergency override.
"""

import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING

from salt.exceptions import CommandExecutionError

if TYPE_CHECKING:
    __opts__: dict
    __context__: dict

log = logging.getLogger(__name__)

__virtualname__ = "deploytoken"


def __virtual__():
    return __virtualname__


def execute(opts, data, func, args, kwargs):
    """
    Refuse ``func`` (the job's ``data["fun"]``) before it runs when it changes this server and the
    person running the job does not hold the deploy token; otherwise return None, so that the next
    executor in ``module_executors`` (``direct_call``) runs it.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' cmd.run 'touch /srv/x'      # refused unless you hold the token
        salt 'collect*' test.ping                   # always answers
    """
    fun = data.get("fun") if isinstance(data, dict) else None
    try:
        changes = _core(opts, "deploytoken.guard.changes")
        settings = changes.Settings.from_opts(opts)
    except (ValueError, ImportError) as exc:
        raise CommandExecutionError(f"The deploy token check is misconfigured, so {fun} may not run: {exc}") from None
    test = changes.test_mode(kwargs, opts) if str(fun).startswith("state.") else False
    verdict = changes.kind(fun, settings, test=test)
    if not verdict.change:
        return None
    # Imported only for a change: a read pays for none of it.
    model = _core(opts, "deploytoken.model")
    held = _core(opts, "deploytoken.guard.held")

    if not held.master_key(opts) and not opts.get(held.SSH_TOKEN_OPTION) and not (opts.get("pillar") or {}).get(
            "deploytoken"):
        raise CommandExecutionError(
            f"{fun} was not run: {verdict.why}, and this run carries no deploy token data to check it with. Under "
            "salt-ssh, set roster: deploytoken in salt-ssh's config (the deploy repository's salt-config/master), "
            "as docs/salt-ssh.md shows; a minion needs its master's key and the deploytoken ext_pillar.")
    try:
        job = held.find_job(os.path.join(opts["cachedir"], "proc"), os.getpid(), data.get("jid"))
        decision = held.judge(opts, opts.get("grains") or {}, opts.get("pillar") or {}, job)
    except (model.DeploytokenError, OSError) as exc:
        raise CommandExecutionError(
            f"{fun} changes this server, and the deploy token cannot be checked, so it may not run: {exc}"
        ) from None
    if decision["result"]:
        if decision["override"]:
            log.warning("%s runs under an emergency override: %s", fun, decision["comment"])
        return None
    raise CommandExecutionError(f"{fun} was not run: {verdict.why}, and {_lower_first(decision['comment'])}")


def _lower_first(text):
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def _core(opts, name):
    """The core module ``name``: installed with the package, or synced from a file root into the
    minion's ``extmods/utils``, which Salt puts on the path for other kinds of modules but not for
    executors."""
    try:
        return importlib.import_module(name)
    except ImportError:
        folders = [os.path.join(opts.get("extension_modules") or "", "utils"), *(opts.get("utils_dirs") or [])]
        for folder in folders:
            if os.path.isdir(os.path.join(folder, "deploytoken")) and folder not in sys.path:
                sys.path.append(folder)
        return importlib.import_module(name)
