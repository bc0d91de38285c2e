"""
Is the Kingfisher server busy? Reads each source, turns what it finds into one sentence per
reason, and decides. A source that cannot be read is "unknown" and counts as busy (fail closed).

Also decides whether the next deployment would restart PostgreSQL, from data the Salt shell
gathers (pending package upgrades, a ``state.apply test=True`` return).
"""

import concurrent.futures

from deploytoken.kingfisher import sources
from deploytoken.kingfisher.errors import InputError, SourceError
from deploytoken.kingfisher.sources import SOURCES

POSTGRES_MODES = ("auto", "always", "never")
# kingfisher.busy's arguments, by the source whose settings they are (postgres is the mode).
ARGUMENTS = {
    "scrapyd": ("url", "username", "password"),
    "tmux": ("users",),
    "postgres": ("threshold", "socket_dir", "port", "user", "runas"),
}


def check_mode(mode):
    if mode not in POSTGRES_MODES:
        raise InputError(f"postgres must be one of auto, always or never; got {mode!r}.")
    return mode


def check_arguments(arguments):
    """InputError for anything ``kingfisher.busy`` would refuse in ``arguments`` (a mapping), checked
    where it is given (``deploytoken.setup busy_args=``) rather than on each minion after the first steps."""
    valid = ["postgres", *(key for keys in ARGUMENTS.values() for key in keys)]
    unknown = sorted(str(key) for key in arguments if key not in valid)
    if unknown:
        raise InputError(f"kingfisher.busy has no argument {unknown[0]!r}; it takes {', '.join(valid)}.")
    if arguments.get("postgres") is not None:
        check_mode(arguments["postgres"])
    for name, keys in ARGUMENTS.items():
        given = {key: arguments[key] for key in keys if arguments.get(key) is not None}
        if given:
            SOURCES[name].settings.parse({**SOURCES[name].defaults(), **given})
    return arguments


def read(name, settings):
    """Source ``name``'s report, or ``status: unknown`` with the sentence why it cannot be read."""
    try:
        return sources.read(name, settings)
    except SourceError as exc:
        return {**exc.detail, "status": "unknown", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        return {"status": "unknown", "error": f"{name} failed unexpectedly: {type(exc).__name__}: {exc}"}


def _names(items):
    items = list(items)
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def summary(busy, reports):
    """One sentence: busy or not, which sources were checked and which were skipped, and why."""
    checked = [name for name, report in reports.items() if report["status"] != "skipped"]
    skipped = [f"{name} ({report['why']})" for name, report in reports.items() if report["status"] == "skipped"]
    sentence = f"{'Busy' if busy else 'Not busy'}: checked {_names(checked) if checked else 'nothing'}"
    return sentence + (f"; skipped {_names(skipped)}." if skipped else ".")


def decide(reports):
    """
    ``{"busy", "reasons", "warnings", "summary", "sources"}`` from each source's report; a report with
    ``status: unknown`` makes the server busy, ``status: skipped`` is ignored. ``warnings`` gathers each
    source's own: what it saw but does not count (a screen session, work outside tmux).
    """
    reasons = []
    warnings = [warning for report in reports.values() for warning in report.get("warnings") or []]
    for name, report in reports.items():
        if report.get("status") == "skipped":
            reasons_here = []
        else:
            reasons_here = SOURCES[name].reasons(report)
            if report.get("status") == "unknown":
                reasons_here.insert(0, f"{name} cannot be read, so it counts as busy: {report['error']}")
            report["status"] = "busy" if reasons_here else "idle"
        reasons += reasons_here
    return {"busy": bool(reasons), "reasons": reasons, "warnings": warnings, "summary": summary(bool(reasons), reports),
            "sources": reports}


def _restart_answer(restart):
    """``restart()``, or, when it fails, an answer that checks PostgreSQL anyway (fail closed)."""
    try:
        return restart()
    except Exception as exc:  # noqa: BLE001 - an unknown answer must not skip the check
        return {"restart": None, "reasons": [], "error": f"{exc}; PostgreSQL is checked anyway."}


def busy(settings, postgres_mode="auto", restart=None):
    """
    Read every source (``settings``: its parsed settings by source name) and decide. ``restart`` is a
    function answering ``postgres_restart_pending``, needed only with ``postgres_mode="auto"``:
    PostgreSQL is then checked only when it would restart.

    The sources are read side by side in threads, ``restart`` with them; a source that forks is read
    after them, once no thread is left (it takes milliseconds; the others wait on sockets and programs).
    """
    skipped = {}
    if postgres_mode == "never":
        skipped["postgres"] = {"status": "skipped", "why": "postgres=never"}
    threaded = [name for name in SOURCES if name not in skipped and not SOURCES[name].forks]
    asking = postgres_mode == "auto" and restart is not None
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(threaded) + 1) as pool:
        answer = pool.submit(_restart_answer, restart) if asking else None
        futures = {name: pool.submit(read, name, settings[name]) for name in threaded}
    # Leaving the block joined every thread of the pool.
    reports = {name: future.result() for name, future in futures.items()}
    answer = answer.result() if answer else None
    if answer is not None and answer["restart"] is False:
        skipped["postgres"] = {"status": "skipped", "why": "the next deployment would not restart PostgreSQL"}
    found = decide({name: reports.get(name) or skipped.get(name) or read(name, settings[name]) for name in SOURCES})
    if answer is not None:
        found["sources"]["postgres"]["restart"] = answer
    return found


# Would the next deployment restart PostgreSQL?


def restart_reasons(upgrades, state_return=None):
    """
    ``{"restart", "reasons"}`` from ``pkg.list_upgrades`` ({name: version}) and, when given, a
    ``state.apply test=True`` return ({state id: {"name", "comment", ...}}).
    """
    reasons = [
        f"Package {name} would be upgraded to {version}."
        for name, version in sorted((upgrades or {}).items())
        if name.startswith("postgresql")
    ]
    if isinstance(state_return, dict):
        for key, ret in sorted(state_return.items()):
            if not isinstance(ret, dict) or not key.startswith("service_|"):
                continue
            comment = str(ret.get("comment", ""))
            if "postgresql" in str(ret.get("name", "")) and "set to be restarted" in comment:
                reasons.append(f"The state {ret.get('__id__', key)!r} says: {comment}")
    return {"restart": bool(reasons), "reasons": reasons}
