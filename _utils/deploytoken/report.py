"""
The picture of the token's life (``salt-run deploytoken.report``): one self-contained HTML page for a
period, with a timeline of who held the token (one bar per holding), the overrides, forced releases and
stopped setups marked, and the figures a team lead asks for.

The page is made of inline CSS and SVG only: no JavaScript, no font, image or style from elsewhere, and a
Content-Security-Policy that forbids the browser to fetch anything, so opening it reaches no server. Every
value comes from the history, where people wrote names, reasons and notes: each is escaped.
"""

import datetime
import errno
import html
import os
import pwd
import re
import stat
import statistics
import tempfile

from deploytoken import model, settings

DEFAULT_SINCE = "30d"
DEFAULT_PATH = "deploytoken-report.html"
# The longest file name Linux folders take, in bytes.
NAME_MAX = 255
# The first line of every page; an existing file without it is not ours to overwrite.
MARK = "<!DOCTYPE html><!-- deploytoken report -->"
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
HELD = (model.HOLDING, model.FORCED)

# The timeline's geometry, in SVG units: the page scales it to its width.
WIDTH, LEFT, RIGHT, TOP, LANE, BAR = 1000, 170, 20, 30, 30, 18
# The most characters of a name that fit left of the timeline's bars (12 px text, about 7 px a character).
LANE_CHARS = 22
TICK_STEPS = [60 * minutes for minutes in (5, 15, 30)] + [3600 * hours for hours in (1, 3, 6, 12)] + [
    86400 * days for days in (1, 2, 7, 14, 28)]
# The timeline zooms to the part of the period with activity when that is less than this share of it, with a
# margin on each side (this share of the activity's span, at least MARGIN seconds).
ZOOM_BELOW, ZOOM_MARGIN, MARGIN = 0.5, 0.05, 1800
# A bar's label, in SVG units: the width of one character of it (11 px text), and its gap to the bar.
LABEL_CHAR, LABEL_GAP = 6.2, 4
# The narrowest bar, in SVG units, so that a short holding in a long view can still be seen and hovered.
MIN_BAR = 4.0


def check_since(since, now):
    """The start of the period: ``7d``/``12h`` back from ``now``, or a UTC date or time; InputError else."""
    if since is None:
        since = DEFAULT_SINCE
    example = "e.g. since=7d, since=12h or since=2026-11-01"
    if not isinstance(since, str) or not since.strip():
        raise model.InputError(f"since must be a duration back from now or a date, {example}; got "
                               f"{model.shown(since)}.")
    text = since.strip()
    if DATE.match(text):
        start = model.parse_time(text if "T" in text or " " in text else text + "T00:00:00Z")
        if start is None:
            raise model.InputError(f"since {text!r} is not a date or time: write it as {example}.")
    else:
        try:
            seconds = settings.duration(text, "since")
        except model.InputError:
            raise model.InputError(f"since must be a duration back from now or a date, {example}; got "
                                   f"{model.shown(since)}.") from None
        if seconds > 100 * 365 * 86400:
            raise model.InputError(f"since reaches back more than a hundred years; got {model.shown(since)}.")
        start = now - datetime.timedelta(seconds=seconds)
    if start >= now:
        raise model.InputError(f"since {text!r} is not in the past: the period ends now.")
    return start.replace(microsecond=0)


def check_path(path):
    """Where to write the page: a file in an existing folder, new or an earlier report (never another file)."""
    if path is None:
        path = DEFAULT_PATH
    if not isinstance(path, str) or not model.check_text(path, "path"):
        raise model.InputError(f"path must be the name of a file to write, e.g. path=report.html; got "
                               f"{model.shown(path)}.")
    path = os.path.abspath(path.strip())
    folder = os.path.dirname(path)
    if len(os.fsencode(os.path.basename(path))) > NAME_MAX:
        raise model.InputError(f"The file name {model.shown(os.path.basename(path))} is longer than {NAME_MAX} bytes, "
                               "which no folder takes: give path= a shorter name.")
    if not os.path.isdir(folder):
        raise model.InputError(f"The folder {folder} does not exist: give path= a file in an existing folder.")
    _check_folders(folder)
    if os.path.lexists(path):
        if not os.path.isfile(path) or os.path.islink(path):
            raise model.InputError(f"{path} is not a plain file: give path= the name of a new file.")
        try:
            # Opened without following a link or waiting on a FIFO, and checked again once open: the file
            # may be swapped by its owner after the checks above.
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(descriptor, "rb") as handle:
                if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                    raise model.InputError(f"{path} is not a plain file: give path= the name of a new file.")
                ours = handle.read(len(MARK.encode())).decode("utf-8", "replace") == MARK
        except OSError as exc:
            raise model.InputError(f"{path} cannot be read ({exc.strerror}): give path= another file.") from None
        if not ours:
            raise model.InputError(f"{path} exists and is not a deploytoken report, so it is left alone: give path= "
                                   "the name of a new file.")
    return path


def writer_uid():
    """Whom the report is written for: the person behind sudo when run as root through it, else this user."""
    if os.geteuid() == 0 and os.environ.get("SUDO_UID", "").isdigit():
        return int(os.environ["SUDO_UID"])
    return os.geteuid()


def _check_folders(folder):
    """InputError unless every folder on the way to ``folder`` (and every link on it) belongs to the person the
    report is written for or to root: another user could swap a folder of theirs, or a link of theirs could lead
    root's write into a folder that user may not enter."""
    allowed = {0, writer_uid()}
    parts = folder.strip(os.sep).split(os.sep)
    seen = [os.sep + os.sep.join(parts[:length]) for length in range(len(parts) + 1)]
    real = os.path.realpath(folder)
    real_parts = real.strip(os.sep).split(os.sep)
    seen += [os.sep + os.sep.join(real_parts[:length]) for length in range(len(real_parts) + 1)]
    for place in dict.fromkeys(seen):
        try:
            owner = os.lstat(place).st_uid
        except OSError as exc:
            raise model.InputError(f"The folder {place} cannot be checked ({exc.strerror}): give path= a file in "
                                   "another folder.") from None
        if owner not in allowed:
            raise model.InputError(
                f"{place} belongs to {_login(owner)}, not to you or root, so the report is not written through it "
                "(its owner could lead it elsewhere): give path= a file in a folder of yours.")


def _login(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# ---- the figures ------------------------------------------------------------------------------


def holdings_of(rows, holding, since, now):
    """The holdings that overlap the period, oldest first, as ``(row, start, end)`` in datetimes; the
    current holding, if any, ends now."""
    found = [(row, model.parse_time(row.acquired), model.parse_time(row.released)) for row in rows
             if row.kind in HELD]
    if holding is not None and holding.since:
        current = model.HistoryRow(claim=holding.claim, holder=holding.holder, login=holding.login,
                                   caller=holding.caller, acquired=holding.since, released=None, duration=None,
                                   reason=holding.reason, kind=model.HOLDING)
        found.append((current, model.parse_time(holding.since), now))
    return sorted(((row, start, end) for row, start, end in found if start and end and end >= since and start <= now),
                  key=lambda item: item[1])


def figures(rows, holding, since, now):
    """The numbers of the period, plain data: counts, median and longest holding, the gaps between one
    release and the next take (hand-offs), who waited longest in the line, and each person's holdings and time."""
    held = holdings_of(rows, holding, since, now)
    seconds = [int((end - start).total_seconds()) for _, start, end in held]
    gaps = [(int((later[1] - earlier[2]).total_seconds()), earlier[0], later[0])
            for earlier, later in zip(held, held[1:]) if later[1] >= earlier[2]]
    people = {}
    for (row, _, _), spent in zip(held, seconds):
        person = people.setdefault(row.holder, {"holder": row.holder, "holdings": 0, "seconds": 0})
        person["holdings"] += 1
        person["seconds"] += spent
    events = [row for row in rows if _moment(row) and since <= _moment(row) <= now]
    longest = max(range(len(held)), key=lambda index: seconds[index], default=None)
    slowest = max(gaps, key=lambda gap: gap[0], default=None)
    waits = [row for row in events if row.kind == model.WAITED and row.duration is not None]
    waited = max(waits, key=lambda row: row.duration, default=None)
    return {
        "since": model.isoformat(since),
        "until": model.isoformat(now),
        "holdings": len(held),
        "forced": sum(1 for row, _, _ in held if row.kind == model.FORCED),
        "overrides": sum(1 for row in events if row.kind == model.OVERRIDE),
        "setups_stopped": sum(1 for row in events if row.kind == model.SETUP_STOPPED),
        "median_holding_seconds": int(statistics.median(seconds)) if seconds else None,
        "longest_holding": None if longest is None else {
            "holder": held[longest][0].holder, "seconds": seconds[longest], "acquired": held[longest][0].acquired,
            "claim": held[longest][0].claim},
        "median_handoff_seconds": int(statistics.median(gap for gap, _, _ in gaps)) if gaps else None,
        "longest_handoff": None if slowest is None else {
            "seconds": slowest[0], "from": slowest[1].holder, "to": slowest[2].holder, "released": slowest[1].released},
        "waits": len(waits),
        "longest_wait": None if waited is None else {
            "holder": waited.holder, "seconds": waited.duration, "since": waited.acquired, "outcome": waited.note},
        "people": sorted(people.values(), key=lambda person: (-person["seconds"], person["holder"])),
    }


def _moment(row):
    """When a row's event happened: an override's start, else its release (or stop)."""
    return model.parse_time(row.acquired if row.kind == model.OVERRIDE else row.released)


# ---- the page ---------------------------------------------------------------------------------


def view(spans, since, now):
    """The part of the period the timeline shows: all of it, or, when its activity (``spans``, pairs of
    datetimes) covers less than ``ZOOM_BELOW`` of it, that activity with a margin on each side, so that short
    holdings in a long period are bars and not slivers."""
    inside = [(max(start, since), min(end, now)) for start, end in spans
              if start is not None and end is not None and start <= now and end >= since]
    if not inside:
        return since, now
    first, last = min(start for start, _ in inside), max(end for _, end in inside)
    period, busy = (now - since).total_seconds(), (last - first).total_seconds()
    if busy >= ZOOM_BELOW * period:
        return since, now
    margin = datetime.timedelta(seconds=max(ZOOM_MARGIN * busy, MARGIN))
    return max(since, first - margin), min(now, last + margin)


def page(rows, holding, since, now, found, location):
    """The HTML page: the timeline, the figures and the rows of the period, every value escaped."""
    held = holdings_of(rows, holding, since, now)
    lanes = list(dict.fromkeys(row.holder for row, _, _ in held))
    overrides = [row for row in rows if row.kind == model.OVERRIDE and _overlaps(row, since, now)]
    stopped = [row for row in rows if row.kind == model.SETUP_STOPPED and since <= (_moment(row) or now) <= now]
    waits = [row for row in rows if row.kind == model.WAITED and _overlaps(row, since, now)]
    extra = [name for name, there in (("Waits", waits), ("Overrides", overrides), ("Stopped setups", stopped))
             if there]
    spans = [(start, end) for _, start, end in held] + [
        (model.parse_time(row.acquired), model.parse_time(row.released or row.until) or now)
        for row in overrides + waits] + [(_moment(row), _moment(row)) for row in stopped]
    shown_from, shown_to = view(spans, since, now)
    span = max(1.0, (shown_to - shown_from).total_seconds())

    def x(moment):
        return LEFT + (WIDTH - LEFT - RIGHT) * min(1.0, max(0.0, (moment - shown_from).total_seconds() / span))

    def lane_y(index):
        return TOP + index * LANE + (LANE - BAR) / 2

    height = TOP + LANE * max(1, len(lanes) + len(extra)) + 10
    svg = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" role="img" '
           'aria-label="Timeline of the deploy token">']
    svg += _axis(shown_from, shown_to, x, height)
    for index, name in enumerate(lanes + extra):
        # Cut to the room left of the bars (the whole name in the tooltip and in the tables below).
        svg.append(f'<text class="lane" x="{LEFT - 8}" y="{lane_y(index) + BAR - 4:.1f}"><title>{_e(name)}</title>'
                   f'{_e(_cut(name, LANE_CHARS))}</text>')
    bars = {}  # each lane's bars, (left, right), for where a label fits
    for row, start, end in held:
        bars.setdefault(row.holder, []).append((x(start), max(x(start) + MIN_BAR, x(end))))
    for row in waits:
        start, end = model.parse_time(row.acquired), model.parse_time(row.released) or now
        bars.setdefault("Waits", []).append((x(start), max(x(start) + MIN_BAR, x(end))))

    def label(lane, left, right, top, text):
        """A bar's label (how long it lasted), after it, or before it at the right edge, where its lane has
        room for it between the bars; none where there is no room."""
        room = LABEL_CHAR * len(text) + 2 * LABEL_GAP
        after = min([start for start, _ in bars.get(lane, []) if start > left] + [WIDTH - RIGHT])
        before = max([end for _, end in bars.get(lane, []) if end < right] + [LEFT])
        if after - right >= room:
            svg.append(f'<text class="barlabel" x="{right + LABEL_GAP:.1f}" y="{top + BAR - 5:.1f}">{_e(text)}</text>')
        elif left - before >= room:
            svg.append(f'<text class="barlabel before" x="{left - LABEL_GAP:.1f}" y="{top + BAR - 5:.1f}">'
                       f"{_e(text)}</text>")

    for row, start, end in held:
        left, right = x(start), x(end)
        kind = "forced" if row.kind == model.FORCED else "current" if row.released is None else "holding"
        tip = (f"{row.holder}: {model.human_duration((end - start).total_seconds())}, {model.clock(row.acquired)} to "
               + (model.clock(row.released) if row.released else "now (holds it)"))
        tip += f'. "{row.reason}"' if row.reason else ""
        tip += f" Forced by {row.forced_by}: {row.force_reason}" if row.kind == model.FORCED else ""
        top = lane_y(lanes.index(row.holder))
        svg.append(f'<rect class="bar {kind}" x="{left:.1f}" y="{top:.1f}" width="{max(MIN_BAR, right - left):.1f}" '
                   f'height="{BAR}"><title>{_e(tip)}</title></rect>')
        held_for = model.human_duration((end - start).total_seconds())
        label(row.holder, left, max(left + MIN_BAR, right), top,
              f"{held_for}, forced by {row.forced_by}" if row.kind == model.FORCED else held_for)
        if row.kind == model.FORCED:
            svg.append(f'<path class="forced-mark" d="M{right:.1f} {top - 1:.1f} l-5 -7 h10 z"><title>{_e(tip)}</title>'
                       "</path>")
    for row in overrides:
        start = model.parse_time(row.acquired)
        end = model.parse_time(row.released or row.until) or now
        tip = (f"Override by {row.holder} on {row.note.removeprefix('Override of the deploy token guard on ')}, "
               f"{model.clock(row.acquired)} to {model.clock(row.released or row.until)}: \"{row.reason}\"")
        left = x(start)
        svg.append(f'<rect class="override" x="{left:.1f}" y="{lane_y(len(lanes) + extra.index("Overrides")):.1f}" '
                   f'width="{max(2.0, x(end) - left):.1f}" height="{BAR}"><title>{_e(tip)}</title></rect>')
    for row in waits:
        start = model.parse_time(row.acquired)
        end = model.parse_time(row.released) or now
        left, right, top = x(start), x(end), lane_y(len(lanes) + extra.index("Waits"))
        took = model.human_duration((end - start).total_seconds())
        tip = (f"{row.holder} waited in line {took}, {model.clock(row.acquired)} to {model.clock(row.released)} "
               f"({row.note})")
        svg.append(f'<rect class="wait" x="{left:.1f}" y="{top:.1f}" width="{max(MIN_BAR, right - left):.1f}" '
                   f'height="{BAR}"><title>{_e(tip)}</title></rect>')
        label("Waits", left, max(left + MIN_BAR, right), top, f"{row.holder}, {took}")
    for row in stopped:
        center, middle = x(_moment(row)), lane_y(len(lanes) + extra.index("Stopped setups")) + BAR / 2
        tip = f"Setup of {row.holder} stopped at {model.clock(row.released)}: {row.note}"
        svg.append(f'<path class="stopped" d="M{center:.1f} {middle - 7:.1f} l7 7 l-7 7 l-7 -7 z">'
                   f"<title>{_e(tip)}</title></path>")
    svg.append("</svg>")
    period = f"{model.clock(found['since'])} to {model.clock(found['until'])}"
    scale = f"The timeline shows {model.clock(model.isoformat(shown_from))} to {model.clock(model.isoformat(shown_to))}"
    if (shown_from, shown_to) != (since, now):
        scale += (f", the part of the period with activity (the whole period is "
                  f"{model.human_duration((now - since).total_seconds())} long)")
    return "\n".join([
        MARK,
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may be fetched: no script, font, image, style sheet or frame from anywhere.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Deploy token, {_e(period)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Deploy token: {_e(period)}</h1>",
        f'<p class="where">From {_e(location)}. {_e(scale)}. Hover a bar for its holder, times and reason.</p>',
        "".join(svg),
        _legend(),
        _figures_html(found),
        _rows_html(rows, since, now),
        "</body></html>\n",
    ])


def _overlaps(row, since, now):
    start = model.parse_time(row.acquired)
    end = model.parse_time(row.released or row.until) or now
    return bool(start) and start <= now and end >= since


def _axis(since, now, x, height):
    span = (now - since).total_seconds()
    step = next((step for step in TICK_STEPS if span / step <= 10), TICK_STEPS[-1])
    tick = datetime.datetime.fromtimestamp((since.timestamp() // step + 1) * step, datetime.timezone.utc)
    daily = step >= 86400
    parts = []
    while tick < now:
        label = tick.strftime("%m-%d" if daily else "%m-%d %H:%M")
        parts.append(f'<line class="tick" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{TOP - 6}" y2="{height - 8}"/>'
                     f'<text class="tick" x="{x(tick):.1f}" y="{TOP - 10}">{label}</text>')
        tick += datetime.timedelta(seconds=step)
    return parts


def _legend():
    items = [("bar holding", "a holding"), ("bar forced", "a holding ended by someone else"),
             ("bar current", "held now"), ("wait", "a wait in the line"), ("override", "an override of the guard"),
             ("stopped", "a setup stopped by a busy server")]
    return '<p class="legend">' + " ".join(
        f'<svg viewBox="0 0 14 14" class="key"><rect class="{css}" x="0" y="0" width="14" height="14"/></svg> {text}'
        for css, text in items) + "</p>"


def _figures_html(found):
    def duration(seconds):
        return "none" if seconds is None else model.human_duration(seconds)

    longest, handoff, waited = found["longest_holding"], found["longest_handoff"], found["longest_wait"]
    lines = [
        ("Holdings", f"{found['holdings']} ({found['forced']} ended by someone else)"),
        ("Median holding", duration(found["median_holding_seconds"])),
        ("Longest holding", "none" if longest is None else
         f"{longest['holder']}, {duration(longest['seconds'])}, from {model.clock(longest['acquired'])}"),
        ("Median time from a release to the next holder", duration(found["median_handoff_seconds"])),
        ("Longest time from a release to the next holder", "none" if handoff is None else
         f"{duration(handoff['seconds'])}, from {handoff['from']} to {handoff['to']} after "
         f"{model.clock(handoff['released'])}"),
        ("Who waited longest", "nobody waited" if waited is None else
         f"{waited['holder']}, {duration(waited['seconds'])} from {model.clock(waited['since'])} "
         f"({waited['outcome']}; {found['waits']} wait(s) in the line)"),
        ("Overrides", str(found["overrides"])),
        ("Setups stopped by a busy server", str(found["setups_stopped"])),
    ]
    people = "".join(f"<tr><td>{_e(person['holder'])}</td><td>{person['holdings']}</td>"
                     f"<td>{_e(duration(person['seconds']))}</td></tr>" for person in found["people"])
    terms = "".join(f"<dt>{_e(name)}</dt><dd>{_e(value)}</dd>" for name, value in lines)
    return (f'<h2>Figures</h2><dl class="figures">{terms}</dl><table class="people"><tr><th>Holder</th>'
            f"<th>Holdings</th><th>Time held</th></tr>{people}</table>")


def _rows_html(rows, since, now):
    shown = [row for row in rows if (_moment(row) or now) >= since or _overlaps(row, since, now)]
    body = "".join(
        f'<tr class="{_e(row.kind)}"><td>{_e(row.kind)}</td><td>{_e(_who(row))}</td><td>{_time(row.acquired)}</td>'
        f"<td>{_time(row.released)}</td><td>{_time(row.until)}</td>"
        f'<td class="time">{_e("" if row.duration is None else model.human_duration(row.duration))}</td>'
        f"<td>{_e(row.reason)}</td><td>{_e(row.note)}</td><td>{_e(_ended_by(row))}</td></tr>"
        for row in shown)
    return ('<h2>History of the period</h2><table class="rows"><tr><th>Kind</th><th>Who</th><th>Acquired</th>'
            "<th>Released</th><th>Until (planned)</th><th>Held</th><th>Reason</th><th>Note</th>"
            f"<th>Forced or cancelled by, and why</th></tr>{body}</table>")


def _who(row):
    """The row's person, said for what they did: an override's author is not who cancelled it."""
    if row.kind == model.OVERRIDE_CANCELLED:
        return f"override by {row.holder}"
    if row.kind == model.OVERRIDE:
        return f"{row.holder} (made it)"
    return row.holder


def _ended_by(row):
    if not row.forced_by:
        return ""
    return f"{row.forced_by}: {row.force_reason}" if row.force_reason else row.forced_by


def _cut(text, most):
    return text if len(text) <= most else text[:most - 1] + "\u2026"


def _time(text):
    return f'<span class="time">{_e(model.clock(text))}</span>' if text else ""


def _e(text):
    return html.escape(str(text), quote=True)


STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
.where{color:#555}
svg.timeline{width:100%;height:auto;border:1px solid #ccc;background:#fafafa}
text{font-size:12px;fill:#333}text.lane{text-anchor:end}text.tick{text-anchor:middle;font-size:10px;fill:#666}
line.tick{stroke:#ddd;stroke-width:1}
.holding{fill:#3b7dd8}.forced{fill:#d8543b}.current{fill:#3bb273}.wait{fill:#a7b1bc}
text.barlabel{font-size:11px;fill:#444}text.barlabel.before{text-anchor:end}.time{white-space:nowrap}
.override{fill:#f2b134;fill-opacity:.7;stroke:#b07b10}.stopped{fill:#8a4fbf}
.forced-mark{fill:#d8543b}
svg.key{width:14px;height:14px;vertical-align:middle;margin-left:1em}
dl.figures{display:grid;grid-template-columns:max-content auto;gap:.3em 1.5em}dt{font-weight:bold}dd{margin:0}
table{border-collapse:collapse;margin-top:1em;font-size:.9em}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
table.rows{table-layout:fixed;width:100%}
tr.holding td:first-child{color:#3b7dd8}tr.forced td:first-child{color:#d8543b}
"""


# ---- the runner's function ----------------------------------------------------------------------


def write(store, since=None, path=None, now=None):
    """Write the page of the period from ``since`` to now into ``path``; returns the runner's answer."""
    now = now or model.utcnow()
    start = check_since(since, now)
    path = check_path(path)
    rows = model.settle(store.history(model.MAX_LIMIT), now)
    holding = store.read()
    found = figures(rows, holding, start, now)
    _save(path, page(rows, holding, start, now, found, store.location))
    median = found["median_holding_seconds"]
    return {
        "path": path,
        "figures": found,
        "message": (
            f"Wrote the report of {model.clock(found['since'])} to {model.clock(found['until'])} to {path}: "
            f"{found['holdings']} holding(s)" + (
                f", median {model.human_duration(median)}, longest "
                f"{model.human_duration(found['longest_holding']['seconds'])} ({found['longest_holding']['holder']})"
                if median is not None else "") + "."
        ),
    }


def _save(path, text):
    """Write ``path`` whole or not at all. It holds every reason and note of the period, so it is readable
    by its owner only: the person who ran it, also through sudo."""
    folder = os.path.dirname(path)
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=".deploytoken-report-", dir=folder)
    except OSError as exc:
        raise model.InputError(f"The report cannot be written in {folder}: {exc.strerror}.") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            if os.geteuid() == 0 and os.environ.get("SUDO_UID", "").isdigit():
                os.fchown(handle.fileno(), int(os.environ["SUDO_UID"]), int(os.environ.get("SUDO_GID") or -1))
            handle.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        os.unlink(temporary)
        full = " (the disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise model.InputError(f"The report cannot be written to {path}: {exc.strerror}{full}; nothing was "
                               "written.") from None
    except BaseException:
        os.unlink(temporary)
        raise
