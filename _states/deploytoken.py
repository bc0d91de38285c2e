"""
``deploytoken.held``: stop a state run unless the person running it holds the deploy token.

Put it first, so nothing else runs when it fails:

.. code-block:: yaml

    deploy token held:
      deploytoken.held:
        - order: 1
        - failhard: True

Needs the ``deploytoken`` ext_pillar on the master (``ext_pillar: [{deploytoken: {}}]``), or, under
salt-ssh, in the configuration of each operator's salt-ssh.
"""

import os
import re
import threading
from typing import TYPE_CHECKING

from salt.exceptions import SaltException

from deploytoken.guard import held as guard

if TYPE_CHECKING:
    __grains__: dict
    __opts__: dict
    __salt__: dict
    __pillar__: dict

__virtualname__ = "deploytoken"


def __virtual__():
    return __virtualname__


def held(name):
    """
    Pass only when the person running this job holds the deploy token; block (``result: False``,
    with ``failhard`` the whole run stops) when someone else holds it, when nobody does, or when the
    token cannot be read. In test mode a block is ``result: None`` with the same sentence.

    The person is the job's publisher (``salt`` or a master-side ``state.apply``: ``sudo_alice`` is
    alice), the caller of ``salt-call`` (``SUDO_USER``, else the login name), or under salt-ssh the
    operator who runs ``salt-ssh`` on their own machine (never the SSH account on the target), mapped
    to a name through ``deploytoken: people:``. Where sshd exposes the key that logged in
    (``ExposeAuthInfo yes``), that key must be listed for that person under ``ssh_keys``.

    A server remembers which token store its last deployment obeyed (``deploytoken:store_memory`` in
    the minion config, default ``/var/lib/deploytoken/store.json``) and blocks a run whose token comes
    from another store, so two private stores can never both hand out the token.

    The token data must be as the master wrote it: signed with the master's key (checked with the
    master's public key the minion keeps), made for this minion, and fresh (``deploytoken:pillar_max_age``,
    default 300 s). A minion takes it from the job's own pillar only when the master compiled that pillar
    for this very job moments ago (``state.apply``, ``sls``, ``highstate`` or ``top`` with no ``pillar=``,
    ``pillarenv=`` or other argument that could change it); for anything else it asks its master for a
    fresh compile of its pillar. So neither a ``pillar=`` on the command line nor a saved snapshot counts,
    and under ``salt-call --local`` (no master to ask) it blocks. Under salt-ssh the operator's own
    machine compiles the data for this very run.

    An emergency override, ``salt-run deploytoken.override reason=... targets=...``, passes with a loud
    comment until it ends; the override and who asked for it are in the deploy history.

    name
        Any label for the state.

    CLI Example:

    .. code-block:: bash

        salt 'collect*' state.single deploytoken.held name=guard
        salt-call state.single deploytoken.held name=guard test=True
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        job = guard.find_job(os.path.join(__opts__["cachedir"], "proc"), os.getpid(), _jid())
        decision = guard.judge(__opts__, __grains__, __pillar__, job, test=bool(__opts__.get("test")))
    except (SaltException, OSError) as exc:
        ret["comment"] = f"The deploy token guard failed, so nothing may deploy: {exc}"
        return ret
    ret.update(result=decision["result"], comment=decision["comment"])
    if decision["override"] and not __opts__.get("test"):
        ret["changes"] = {"override": decision["override"]}
    return ret


def _jid():
    """This job's jid on a minion with ``multiprocessing: False``, where every job shares the minion's pid:
    Salt names the thread that runs the job ``ProcessPayload(jid=...)``. None elsewhere."""
    named = re.fullmatch(r"ProcessPayload\(jid=(\d+)\)", threading.current_thread().name)
    return named.group(1) if named else None
