"""
The short answer of ``salt-run deploytoken.*`` for a person: the sentence first, then a few lines (who
waits, running overrides, each finding or problem, one line per history row), and each progress report
as one plain line.

The runner hands its full answer to this outputter when salt-run is given no ``--out``; with any
``--out`` (``json``, ``yaml``, ``nested``, ``table``) Salt prints the full data with that outputter
instead, and the exit status is the answer's ``retcode`` either way.
"""

import salt.output.nested

__virtualname__ = "deploytoken"


def __virtual__():
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """One line per thing a person reads; what has no short form is shown as Salt's ``nested`` does."""
    found = lines(data)
    if found is None:
        return salt.output.nested.output(data, **kwargs)
    return "\n".join(found)


def lines(data):
    """The lines of the short answer, or None for data of no known shape."""
    if isinstance(data, str):
        return [data]
    if isinstance(data, list):
        if not data:
            return ["The history has no rows."]
        if all(isinstance(row, dict) and "kind" in row for row in data):
            return [_history_line(row) for row in data]
        return None
    if not isinstance(data, dict):
        return None
    if data.get("suffix") == "progress" and isinstance(data.get("event"), dict):
        return [str(data["event"].get("message", ""))]
    if "error" in data:
        return [str(data["error"])]
    found = [str(data["message"])] if "message" in data else []
    if data.get("release_command") and data.get("force_command"):  # status, while someone holds the token
        found += [f"Claim: {data.get('claim')}", f"Release (the holder): {data['release_command']}",
                  f"Force (anyone, recorded in the history): {data['force_command']}"]
    for entry in data.get("waiting") or []:
        found.append(f"Waiting: {entry.get('who')} since {_time(entry.get('since'))}")
    for entry in data.get("overrides") or []:
        if "targets" in entry and "cancelled" not in entry:  # the running ones (status), not those just ended
            until = _time(entry.get("until"))
            found.append(f"Override {entry.get('id')} by {entry.get('by')} on {entry.get('targets')} until {until}: "
                         f"{entry.get('reason')!r}")
    if data.get("ext_pillar") is False:
        found.append("Warning: the deploytoken ext_pillar is off in this master's config, so deploytoken.held on the "
                     "servers cannot see the token (salt-run deploytoken.doctor says how to fix it).")
    for key in ("findings", "problems"):  # doctor's findings, update_repos' problems (doctor counts its own)
        if isinstance(data.get(key), list):
            found += [str(line) for line in data[key]]
    return found or None


def _history_line(row):
    """``2026-11-26 14:02  holding  Alice Smith  38 min  "upgrade postgres"``: when, what, who, how long, why."""
    when = row.get("acquired") if row.get("kind") == "override" else row.get("released")
    parts = [_time(when), str(row.get("kind")), str(row.get("holder"))]
    if row.get("duration") is not None:
        parts.append(_duration(row["duration"]))
    elif row.get("kind") == "override":
        parts.append(f"until {_time(row.get('until'))}" if not row.get("released") else "")
    parts += [f"{row['reason']!r}" if row.get("reason") else "", str(row.get("note") or "")]
    if row.get("forced_by"):
        parts.append(f"by {row['forced_by']}: {row.get('force_reason')!r}")
    return "  ".join(part for part in parts if part)


def _time(text):
    """``2026-11-26T14:02:05Z`` as ``2026-11-26 14:02`` (UTC)."""
    return str(text or "?")[:16].replace("T", " ")


def _duration(seconds):
    try:
        from deploytoken import model  # the runner has imported the core by the time it prints
    except ImportError:
        return f"{int(seconds)} s"
    return model.human_duration(seconds)
