"""
Give every minion a fresh ``deploytoken:`` pillar: who holds the deploy token (held, holder,
login, since, claim, reason), the ``people:`` mapping, which store said so, for which minion and when,
under salt-ssh the operator who runs it, and ``error`` when the store cannot be read.

Enable it in the master config:

.. code-block:: yaml

    ext_pillar:
      - deploytoken: {}

Salt recompiles pillar for every state run, so ``deploytoken.held`` sees the current holder. The
store is read through the runner's own code, at most once per ``deploytoken:pillar_cache`` seconds
(default 2) however many minions compile pillar at once.
"""

import logging
from typing import TYPE_CHECKING

from deploytoken.guard import pillar as token_pillar

if TYPE_CHECKING:
    __opts__: dict

log = logging.getLogger(__name__)

__virtualname__ = "deploytoken"


def __virtual__():
    return __virtualname__


def ext_pillar(minion_id, pillar, *args, **kwargs):
    """The ``deploytoken`` pillar of ``minion_id``."""
    data = token_pillar.pillar(__opts__, minion_id, pillar)
    if data.get("error"):
        log.warning("deploytoken ext_pillar: %s", data["error"])
    return {"deploytoken": data}
