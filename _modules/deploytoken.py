"""
What ``salt-run deploytoken.doctor`` asks each server, through the master or salt-ssh, in one call.
"""

import os
from typing import TYPE_CHECKING

from deploytoken.procedure import facts as server_facts

if TYPE_CHECKING:
    __opts__: dict
    __salt__: dict

__virtualname__ = "deploytoken"


def __virtual__():
    return __virtualname__


def facts():
    """
    This server's facts for ``deploytoken.doctor``: ``ssh_auth`` (the fingerprints of the keys sshd
    says logged in, None without ``ExposeAuthInfo yes``), the token store it remembers obeying
    (``remembered``, in the file ``memory``), and for each Kingfisher source whether it is ``off``,
    ``readable`` or ``unreadable`` (with the ``error`` the busy check would report).

    CLI Example:

    .. code-block:: bash

        salt 'collect*' deploytoken.facts
        salt-ssh kingfisher-main deploytoken.facts
    """
    return server_facts.gather(__opts__, dict(os.environ), __salt__["config.get"])
