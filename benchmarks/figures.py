"""
What every benchmark prints alongside its figures: the machine (nproc and load average, at the start and at
the end), the spread of what it timed (quartiles), and each goal with whether it is met.
"""

import os
import statistics


class Machine:
    """``nproc`` and the 1-minute load average, read at the start; ``str()`` adds the load at the end."""

    def __init__(self):
        self.nproc = len(os.sched_getaffinity(0))
        self.load_at_start = os.getloadavg()[0]

    def __str__(self):
        return f"nproc {self.nproc}, load {self.load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"


def spread(values):
    """Median, first and third quartile, min and max."""
    values = list(values)
    if len(values) < 2:
        return (values[0],) * 5
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), first, third, min(values), max(values)


def percentile(values, share):
    """The ``share`` (0-100) percentile, as ``statistics.quantiles`` counts it."""
    values = list(values)
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(max(round(share), 1), 99) - 1]


def shown(values, unit="ms", scale=1000, digits=1):
    """``median 1.2 ms (quartiles 1.0-1.4, min 0.9, max 3.1, n 2000)`` of values in seconds."""
    middle, first, third, low, high = (value * scale for value in spread(values))
    return (f"median {middle:.{digits}f} {unit} (quartiles {first:.{digits}f}-{third:.{digits}f}, "
            f"min {low:.{digits}f}, max {high:.{digits}f}, n {len(list(values))})")


def goal(name, value, limit, unit=""):
    """One line: the goal, the figure, met or missed."""
    return f"  goal {name} <= {limit}{unit}: {value:.3g}{unit}, {'met' if value <= limit else 'MISSED'}"


def ratio_lines(label, ratios, low, high, limit):
    """Two lines: the per-pair ratios' median and spread with the 95% interval of the median (``low``, ``high``),
    and the goal ``limit``, met or missed, decided or not by that interval."""
    line = ("  ratio {} per pair: median {:.3f} (quartiles {:.3f}-{:.3f}, min {:.3f}, max {:.3f})".format(
        label, *spread(ratios)) + f"; 95% interval of the median {low:.3f}-{high:.3f}")
    decided = (high <= limit) == (low <= limit)
    return [line, goal("ratio", spread(ratios)[0], limit) + (
        " (decided: the interval is on one side of the goal)" if decided
        else " (undecided: the interval straddles the goal; run with more --pairs)")]
