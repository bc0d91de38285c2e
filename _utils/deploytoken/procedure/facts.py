"""
What a server (a minion, or a salt-ssh target) tells ``salt-run deploytoken.doctor`` about itself, in
one round trip: whether sshd exposed the key that logged in, the token store it remembers obeying,
and whether each Kingfisher source can be read with the settings the server gets.

Minion side and light, like the guard: no token store, no Google client.
"""

from deploytoken.guard import held as guard
from deploytoken.kingfisher import sources
from deploytoken.kingfisher.errors import KingfisherError


def gather(opts, environ, lookup):
    """The facts of this server: ``opts`` its Salt opts, ``environ`` the job's environment, ``lookup``
    Salt's ``config.get`` (config or pillar, as ``kingfisher.busy`` reads its settings)."""
    memory = guard.store_memory(opts)
    return {
        # None: sshd did not say which key logged in (no ExposeAuthInfo), so the guard cannot check it.
        "ssh_auth": guard.ssh_auth_keys(environ),
        "memory": memory,
        "remembered": guard.remembered_store(memory),
        "sources": {name: source_state(name, lookup) for name in sources.names()},
    }


def source_state(name, lookup):
    """``{"status": "off"}``, ``{"status": "readable"}``, or ``{"status": "unreadable", "error": sentence}``:
    the source read once with this server's settings (busy or idle does not matter here)."""
    try:
        parsed = sources.settings(name, {}, lookup)
        if parsed is None:
            return {"status": "off"}
        sources.read(name, parsed)
    except KingfisherError as exc:
        return {"status": "unreadable", "error": str(exc)}
    return {"status": "readable"}
