"""
The short answer of ``kingfisher.busy`` for a person, the default of ``salt``, ``salt-call`` and
``salt-ssh`` for that function: per server, the verdict with the sources it checked, then one line per
piece of work a deployment would interrupt, after why PostgreSQL was asked at all when ``postgres=auto``
asked it (the next deployment would restart it, or that could not be told), then one per warning (what
was seen but is not counted). Any ``--out`` (``json``, ``yaml``, ``nested``) prints the full report instead.
"""

import salt.output.nested

__virtualname__ = "kingfisher"


def __virtual__():
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """``{server: report}`` as a few lines; anything else (an error string) as Salt's ``nested`` shows it."""
    found = []
    for server, report in data.items() if isinstance(data, dict) else ():
        if not (isinstance(report, dict) and isinstance(report.get("busy"), bool)):
            return salt.output.nested.output(data, **kwargs)
        found.append(f"{server}: {report.get('summary')}")
        why = _why_postgres(report.get("sources"))
        found += [f"    {line}" for line in ([why] if why else []) + (report.get("reasons") or [])]
        found += [f"    Warning: {warning}" for warning in report.get("warnings") or []]
    return "\n".join(found) if found else salt.output.nested.output(data, **kwargs)


SHOWN_REASONS = 2


def _why_postgres(sources):
    """Why ``postgres=auto`` checked PostgreSQL, or None when it did not ask (``always``, ``never``) or
    left it out (no restart pending)."""
    postgres = (sources or {}).get("postgres")
    restart = postgres.get("restart") if isinstance(postgres, dict) else None
    if not isinstance(restart, dict) or postgres.get("status") == "skipped":
        return None
    if restart.get("restart") is None:
        error = str(restart.get("error") or "no answer").removesuffix("; PostgreSQL is checked anyway.")
        return (f"PostgreSQL was checked because it could not be told whether the next deployment would restart "
                f"it: {error.rstrip('.')}.")
    reasons = [str(reason).rstrip(".") for reason in restart.get("reasons") or []]
    more = len(reasons) - SHOWN_REASONS
    shown = "; ".join(reasons[:SHOWN_REASONS]) + (f"; and {more} more (--out=json lists them)" if more > 0 else "")
    return f"PostgreSQL was checked because the next deployment would restart it: {shown}."
