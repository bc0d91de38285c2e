"""
Is the Kingfisher server busy? Reads each source, turns what it finds into one sentence per
reason, and decides. A source that cannot be read is "unknown" and counts as busy (fail closed).

Also decides whether the next deployment would restart PostgreSQL, from data the Salt shell
gathers (pending package upgrades, a ``state.apply test=True`` return).
"""

import kingfisher_postgres as postgres
import kingfisher_scrapyd as scrapyd
import kingfisher_tmux as tmux
from deploytoken_model import human_duration as duration
from kingfisher_errors import InputError, SourceError

POSTGRES_MODES = ("auto", "always", "never")


def check_mode(mode):
    if mode not in POSTGRES_MODES:
        raise InputError(f"postgres must be one of auto, always or never; got {mode!r}.")
    return mode


# Sentences, one per reason


def scrapyd_reasons(report):
    reasons = [
        f"Scrapyd job {job['job']} of spider {job['spider']} (project {job['project']}) has been running "
        f"for {duration(job['running_for'])}."
        for job in report.get("running", [])
    ]
    reasons += [
        f"Scrapyd job {job['job']} of spider {job['spider']} (project {job['project']}) is waiting to run."
        for job in report.get("pending", [])
    ]
    reasons += [
        f"Crawl process {crawl['pid']} of spider {crawl['spider']} (job {crawl['job']}) has been running for "
        f"{duration(crawl['running_for'])} but Scrapyd does not list it."
        for crawl in report.get("unlisted", [])
    ]
    return reasons


def tmux_reasons(report):
    reasons = []
    for session in report.get("sessions", []):
        for pane in session["panes"]:
            if not pane["idle"]:
                reasons.append(
                    f"tmux session {session['name']!r} of {session['owner']} runs "
                    f"{pane['cmdline'] or pane['command']!r} (for {duration(pane['running_for'])})."
                )
    reasons += [
        f"The tmux server of {error['owner']} at {error['socket']} cannot be read: {error['error']}"
        for error in report.get("errors", [])
    ]
    return reasons


def postgres_reasons(report):
    reasons = []
    for query in report.get("queries", []):
        owner = f"{query['usename']}" + (f" from {query['client_addr']}" if query["client_addr"] else "")
        note = f" ({query['comment']})" if query["comment"] else ""
        reasons.append(
            f"PostgreSQL query {query['pid']} of {owner}{note} has been running for "
            f"{duration(query['duration'])}: {query['query'][:80]}"
        )
    return reasons


# Reading the sources


def read_scrapyd(url, username=None, password=None):
    listed = []
    try:
        report = scrapyd.jobs(url, username, password)
        listed = [job["pid"] for job in report["running"]]
    except SourceError as exc:
        report = {"url": url, "status": "unknown", "error": str(exc)}
    report["unlisted"] = scrapyd.unlisted(listed)
    return report


def read_tmux(users=None):
    try:
        return tmux.sessions(users)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        return {"status": "unknown", "error": f"tmux sessions cannot be listed: {exc}"}


def read_postgres(**kwargs):
    try:
        return postgres.long_queries(**kwargs)
    except SourceError as exc:
        return {"status": "unknown", "error": str(exc)}


def decide(sources):
    """
    ``{"busy", "reasons", "sources"}`` from each source's report; a report with ``status:
    unknown`` makes the server busy, ``status: skipped`` is ignored.
    """
    sentences = {"scrapyd": scrapyd_reasons, "tmux": tmux_reasons, "postgres": postgres_reasons}
    reasons = []
    for name, report in sources.items():
        if report.get("status") == "skipped":
            reasons_here = []
        else:
            reasons_here = sentences[name](report)
            if report.get("status") == "unknown":
                reasons_here.insert(0, f"{name} cannot be read, so it counts as busy: {report['error']}")
            report["status"] = "busy" if reasons_here else "idle"
        reasons += reasons_here
    return {"busy": bool(reasons), "reasons": reasons, "sources": sources}


def check_inputs(scrapyd_args, tmux_users, postgres_args, postgres_mode):
    """InputError for the first bad argument, before anything is read or run."""
    check_mode(postgres_mode)
    scrapyd.check_url(scrapyd_args["url"])
    tmux.check_users(tmux_users)
    postgres.check_threshold(postgres_args.get("threshold", 3600))
    postgres.check_port(postgres_args.get("port", 5432))


def busy(scrapyd_args, tmux_users, postgres_args, postgres_mode="auto", restart=None):
    """
    Read every source and decide. ``restart`` is ``postgres_restart_pending``'s answer, needed
    only with ``postgres_mode="auto"``: PostgreSQL is then checked only when it would restart.
    """
    check_inputs(scrapyd_args, tmux_users, postgres_args, postgres_mode)
    sources = {"scrapyd": read_scrapyd(**scrapyd_args), "tmux": read_tmux(tmux_users)}
    if postgres_mode == "never":
        sources["postgres"] = {"status": "skipped", "why": "postgres=never"}
    elif postgres_mode == "auto" and restart is not None and not restart["restart"]:
        sources["postgres"] = {"status": "skipped", "why": "the next deployment would not restart PostgreSQL"}
    else:
        sources["postgres"] = read_postgres(**postgres_args)
    return decide(sources)


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
