"""
salt-ssh's roster with the deploy token in it: the servers of another roster (``flat`` by default, the
team's ``salt-config/roster``), each given the token data this operator's machine reads for this very
run, so that every function salt-ssh runs on a server meets the token, not only a state run.

A state run carries the ``deploytoken`` pillar to the server; a plain function call (``cmd.run``,
``file.remove``, ``service.restart``...) carries no pillar at all. What it does carry is the server's
minion options, which salt-ssh builds from ``ssh_minion_opts`` and the roster entry's ``minion_opts``:
this roster adds the token data there, and the ``deploytoken`` executor on the server decides with it.

In salt-ssh's own config (``salt-config/master`` of the deploy repository):

.. code-block:: yaml

    roster: deploytoken
    ssh_minion_opts:
      module_executors: [deploytoken, direct_call]
    deploytoken:
      roster: flat               # the roster that lists the servers (the default)
"""

import logging
from typing import TYPE_CHECKING

import salt.loader

from deploytoken.guard import held
from deploytoken.guard import pillar as token_pillar

if TYPE_CHECKING:
    __opts__: dict
    __utils__: dict

log = logging.getLogger(__name__)

__virtualname__ = "deploytoken"


def __virtual__():
    return __virtualname__


def targets(tgt, tgt_type="glob", **kwargs):
    """
    The servers the inner roster (``deploytoken:roster``, default ``flat``) finds for ``tgt``, each
    with the token data made for it now in its ``minion_opts`` (``deploytoken_token``).

    CLI Example:

    .. code-block:: bash

        salt-ssh --roster deploytoken 'kingfisher*' cmd.run 'systemctl restart scrapyd'
    """
    inner = ((__opts__.get("deploytoken") or {}).get("roster") or "flat") if isinstance(
        __opts__.get("deploytoken"), (dict, type(None))) else "flat"
    if inner == __virtualname__:
        log.error("deploytoken roster: deploytoken:roster names this roster itself; using flat")
        inner = "flat"
    rosters = salt.loader.roster(__opts__, utils=__utils__)
    found = rosters[f"{inner}.targets"](tgt, tgt_type, **kwargs)
    for minion_id, target in found.items():
        if not isinstance(target, dict):
            continue
        options = dict(target.get("minion_opts") or {})
        options[held.SSH_TOKEN_OPTION] = token_pillar.pillar(__opts__, minion_id, ssh=True)
        target["minion_opts"] = options
    return found
