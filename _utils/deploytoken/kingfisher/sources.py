"""
The Kingfisher sources: what ``kingfisher.busy``, the per-source module functions and the prereq
guards are made of. A new source is one ``kingfisher_<name>.py`` file (its ``Settings``, ``read`` and
``reasons``) plus one entry in ``SOURCES``.

A server without a source turns it off with ``kingfisher: {<name>: false}``: its settings are then
None and every reader reports it ``skipped``.
"""

import dataclasses
from collections.abc import Callable

from deploytoken.kingfisher import postgres, scrapyd, tmux
from deploytoken.kingfisher.errors import InputError


@dataclasses.dataclass(frozen=True)
class Source:
    # The key under ``kingfisher:`` in config and pillar, and under ``sources`` in busy's answer.
    name: str
    # A frozen dataclass: its fields and their defaults are the source's settings; ``parse(raw)``
    # validates them once (InputError), so ``read`` can trust what it gets; an optional ``check_here()``
    # checks, on the server that reads the source, what only that server knows.
    settings: type
    # settings -> a report of plain data; SourceError when the source cannot be read.
    read: Callable
    # report -> one sentence per piece of work a deployment would interrupt, naming its owner.
    reasons: Callable
    # What the guard names: "No {what} would be interrupted."
    what: str
    # The reader may fork a child that runs Python code (not only exec a program): busy then reads it
    # once no reader thread is alive, since a fork copies the locks other threads hold at that moment.
    forks: bool = False

    def defaults(self):
        return {field.name: field.default for field in dataclasses.fields(self.settings)}


SOURCES = {
    source.name: source
    for source in (
        Source("scrapyd", scrapyd.Settings, scrapyd.read, scrapyd.reasons, "Scrapyd job"),
        Source("tmux", tmux.Settings, tmux.read, tmux.reasons, "tmux session"),
        Source("postgres", postgres.Settings, postgres.long_queries, postgres.reasons, "long query", forks=True),
    )
}


def get(name):
    """The source called ``name``, or InputError naming the known ones."""
    if not isinstance(name, str) or name not in SOURCES:
        raise InputError(f"There is no Kingfisher source {name!r}; the sources are {', '.join(SOURCES)}.")
    return SOURCES[name]


def settings(name, given, lookup):
    """
    The parsed settings of source ``name``: each one from ``given`` (arguments; None is "not given"),
    else ``lookup("kingfisher:<name>:<key>", default)`` (Salt's ``config.get``: config or pillar).
    None when ``kingfisher:<name>`` is ``false``: the source is turned off on this server.
    """
    source = get(name)
    defaults = source.defaults()
    unknown = sorted(key for key in given if key not in defaults)
    if unknown:
        raise InputError(f"{name} has no setting {unknown[0]!r}; its settings are {', '.join(defaults)}.")
    switch = lookup(f"kingfisher:{name}", None)
    if switch is False:
        return None
    if switch not in (None, True) and not isinstance(switch, dict):
        raise InputError(f"kingfisher:{name} must be its settings or false (turned off); got {switch!r}.")
    parsed = source.settings.parse({
        key: given[key] if given.get(key) is not None else lookup(f"kingfisher:{name}:{key}", default)
        for key, default in defaults.items()
    })
    # What only the server itself can tell (tmux: that each user named has an account there). Settings
    # given to deploytoken.setup are parsed on the master, whose accounts are not the server's.
    if hasattr(parsed, "check_here"):
        parsed.check_here()
    return parsed


def turned_off(name):
    """The report of a source turned off on this server."""
    return {"status": "skipped", "why": f"turned off: kingfisher:{name} is false"}


def read(name, parsed):
    """Source ``name``'s report from its parsed settings (None: turned off); SourceError when unreadable."""
    return turned_off(name) if parsed is None else get(name).read(parsed)


def names():
    return list(SOURCES)
