"""
The short answer of ``kingfisher.busy`` for a person, the default of ``salt``, ``salt-call`` and
``salt-ssh`` for that function: per server, the verdict with the sources it checked, then one line per
piece of work a deployment would interrupt, then one per warning (what was seen but is not counted).
Any ``--out`` (``json``, ``yaml``, ``nested``) prints the full report instead.
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
        found += [f"    {reason}" for reason in report.get("reasons") or []]
        found += [f"    Warning: {warning}" for warning in report.get("warnings") or []]
    return "\n".join(found) if found else salt.output.nested.output(data, **kwargs)
