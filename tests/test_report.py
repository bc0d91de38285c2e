"""
``salt-run deploytoken.report``: the page of a seeded history, opened in a real headless Chromium (Debian's
``chromium``, which ``.ci/run`` installs) with every host name unresolvable and a network log: it renders
one bar per holding, shows them in the screenshot, runs no script and asks for nothing but its own file.
The runner's answer and refusals go through the runner on the shared master.
"""

import datetime
import html.parser
import json
import re
import struct
import subprocess
import zlib

import pytest

from conftest import hint_prefix
from deploytoken import commands as report_token
from deploytoken import model, report
from deploytoken.stores import sqlite as sqlite_store

NOW = model.utcnow()
HOSTILE = '<script>alert("x")</script> & <img src="http://example.org/x.png">'
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions", "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,1000"]


def hours_ago(hours):
    return model.isoformat(NOW - datetime.timedelta(hours=hours))


def holding(number, holder, start, hours, forced=False):
    acquired, released = hours_ago(start), hours_ago(start - hours)
    return model.HistoryRow(
        claim=f"{number:016x}", holder=holder, login=None, caller="alice", acquired=acquired, released=released,
        duration=model.seconds_between(acquired, released), reason=HOSTILE, note=f"note {number}",
        forced_by="Bob Jones (bob)" if forced else None, force_reason="away" if forced else None,
        kind=model.FORCED if forced else model.HOLDING)


# Six holdings in the last week (one forced), one the week before, an override and a stopped setup.
ROWS = [
    holding(1, "Alice Smith", 300, 2),
    holding(2, "Alice Smith", 150, 2),
    holding(3, "Bob Jones", 140, 4),
    holding(4, "Carol <b>Díaz</b>", 120, 1),
    holding(5, "Alice Smith", 100, 6, forced=True),
    model.HistoryRow(claim="override-00000000000000aa", holder="Bob Jones", login="bob", caller="bob",
                     acquired=hours_ago(90), released=None, duration=None, reason=HOSTILE,
                     note="Override of the deploy token guard on kingfisher*", kind=model.OVERRIDE,
                     until=hours_ago(89)),
    holding(6, "Bob Jones", 80, 3),
    model.HistoryRow(claim="setup-00000000000000aa", holder="Carol <b>Díaz</b>", login="carol", caller="carol",
                     acquired=None, released=hours_ago(50), duration=None, reason="new spider",
                     note="Setup stopped: Kingfisher is busy.", kind=model.SETUP_STOPPED),
    holding(7, "Carol <b>Díaz</b>", 20, 1),
    # Two waits in the line: Carol's, from 86 to 80 hours ago (she gave up), the longest; Bob's before it.
    model.HistoryRow(claim="wait-00000000000000aa", holder="Bob Jones", login="bob", caller="bob",
                     acquired=hours_ago(141), released=hours_ago(140), duration=3600, reason="", note="took the token",
                     kind=model.WAITED),
    model.HistoryRow(claim="wait-00000000000000bb", holder="Carol <b>Díaz</b>", login="carol", caller="carol",
                     acquired=hours_ago(86), released=hours_ago(80), duration=6 * 3600, reason="", note="gave up",
                     kind=model.WAITED),
]
HOLDINGS_THIS_WEEK = 6


@pytest.fixture
def seeded(tmp_path):
    store = sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))
    for row in ROWS:
        assert store.append_history(row)
    return store


def render(url, folder):
    """(the page's DOM after loading, the URLs the page asked the network for) in headless Chromium.

    The browser also makes requests of its own (component updates, its clock): in the network log those
    start without an origin, while a page's requests name theirs (``null`` for a file)."""
    netlog = folder / "net.json"
    rendered = subprocess.run(CHROMIUM + [f"--log-net-log={netlog}", "--dump-dom", url], capture_output=True,
                              text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    begun = [event.get("params", {}) for event in log["events"] if event["type"] == start]
    requested = [params["url"] for params in begun if "url" in params and params.get("initiator") != "not an origin"]
    return rendered.stdout, requested


def test_the_figures_of_a_seeded_week(seeded, tmp_path):
    found = report.write(seeded, since="7d", path=str(tmp_path / "r.html"), now=NOW)["figures"]
    assert (found["holdings"], found["forced"], found["overrides"], found["setups_stopped"]) == (6, 1, 1, 1)
    assert found["median_holding_seconds"] == 2.5 * 3600
    assert found["longest_holding"] == {"holder": "Alice Smith", "seconds": 6 * 3600, "acquired": hours_ago(100),
                                        "claim": f"{5:016x}"}
    # Release to the next take: 148 to 140 h ago, 136 to 120, 119 to 100, 94 to 80, 77 to 20.
    assert found["median_handoff_seconds"] == 16 * 3600
    assert found["longest_handoff"] == {"seconds": 57 * 3600, "from": "Bob Jones", "to": "Carol <b>Díaz</b>",
                                        "released": hours_ago(77)}
    assert found["people"][0] == {"holder": "Alice Smith", "holdings": 2, "seconds": 8 * 3600}
    assert found["waits"] == 2 and found["longest_wait"] == {
        "holder": "Carol <b>Díaz</b>", "seconds": 6 * 3600, "since": hours_ago(86), "outcome": "gave up"}


def test_the_page_renders_in_chromium_with_one_bar_per_holding_and_fetches_nothing(seeded, tmp_path):
    page = tmp_path / "report.html"
    done = report.write(seeded, since="7d", path=str(page), now=NOW)
    assert done["path"] == str(page) and page.stat().st_mode & 0o077 == 0
    url = page.as_uri()

    dom, requested = render(url, tmp_path)
    timeline = dom[dom.index('<svg class="timeline"'):dom.index("</svg>")]
    assert len(re.findall(r'<rect class="bar (holding|forced)"', timeline)) == HOLDINGS_THIS_WEEK
    assert timeline.count('<rect class="bar forced"') == 1
    assert timeline.count('<rect class="override"') == 1 and timeline.count('<path class="stopped"') == 1
    # Every value people wrote is text on the page, never markup.
    assert "<script" not in dom and "<img" not in dom and "<b>" not in dom
    assert "<dt>Who waited longest</dt><dd>Carol &lt;b&gt;Díaz&lt;/b&gt;, " in dom
    assert "&lt;script&gt;alert(\"x\")&lt;/script&gt; &amp; &lt;img" in dom and "Carol &lt;b&gt;Díaz&lt;/b&gt;" in dom

    assert requested == []
    # The same look at a page that does fetch something finds its request.
    probe = tmp_path / "probe.html"
    probe.write_text('<!DOCTYPE html><p>probe</p><img src="http://dt-probe.example/x.png">')
    assert render(probe.as_uri(), tmp_path)[1] == ["http://dt-probe.example/x.png"]

    shot = tmp_path / "shot.png"
    taken = subprocess.run(CHROMIUM + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert taken.returncode == 0, taken.stderr
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 20000
    # On the screen: one blue bar per holding given back and one red bar per forced one (bars are at least
    # 2 px by 20 px; text and marks are smaller), and the legend's swatch of each colour.
    pixels = png_pixels(shot.read_bytes())
    assert blocks_of(pixels, (0x3B, 0x7D, 0xD8)) == (HOLDINGS_THIS_WEEK - 1) + 1
    assert blocks_of(pixels, (0xD8, 0x54, 0x3B)) == 1 + 1


# A week with three short holdings, in its last two days: one forced, a wait in the line, and an override
# cancelled early.
SHORT_WEEK = [
    model.HistoryRow(claim=f"{1:016x}", holder="Alice Smith", login="alice", caller="alice", acquired=hours_ago(50),
                     released=hours_ago(49.5), duration=1800, reason="upgrade postgres", note="rebooted",
                     kind=model.HOLDING),
    model.HistoryRow(claim=f"{2:016x}", holder="Bob Jones", login="bob", caller="bob", acquired=hours_ago(26),
                     released=hours_ago(25.25), duration=2700, reason="new spider", note="",
                     forced_by="Alice Smith (alice)", force_reason="Bob is away, agreed in chat", kind=model.FORCED),
    model.HistoryRow(claim=f"{3:016x}", holder="Carol Díaz", login="carol", caller="carol", acquired=hours_ago(3),
                     released=hours_ago(2.75), duration=900, reason="reindex", note="", kind=model.HOLDING),
    model.HistoryRow(claim="wait-00000000000000cc", holder="Carol Díaz", login="carol", caller="carol",
                     acquired=hours_ago(25.8), released=hours_ago(25.25), duration=1980, reason="", note="gave up",
                     kind=model.WAITED),
    model.HistoryRow(claim="override-00000000000000cc", holder="Bob Jones", login="bob", caller="bob",
                     acquired=hours_ago(10), released=None, duration=None, reason="database down",
                     note="Override of the deploy token guard on kingfisher*", kind=model.OVERRIDE,
                     until=hours_ago(9)),
    model.HistoryRow(claim="override-00000000000000cc" + model.CANCEL_SUFFIX, holder="Bob Jones", login="bob",
                     caller="alice", acquired=hours_ago(10), released=hours_ago(9.5), duration=1800,
                     reason="database down", note="Override override-00000000000000cc on kingfisher* cancelled by "
                     "Alice Smith (alice)", forced_by="Alice Smith (alice)", force_reason="database back",
                     kind=model.OVERRIDE_CANCELLED, until=hours_ago(9)),
]


def bars(page):
    """``(class, x, width)`` of each bar of the timeline, in SVG units."""
    timeline = page[page.index('<svg class="timeline"'):page.index("</svg>")]
    return [(kind, float(left), float(width)) for kind, left, width in re.findall(
        r'<rect class="(bar \w+|wait)" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', timeline)]


def test_the_timeline_zooms_to_the_days_with_holdings_and_says_so(tmp_path):
    store = sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))
    for row in SHORT_WEEK:
        assert store.append_history(row)
    page = tmp_path / "week.html"
    report.write(store, since="7d", path=str(page), now=NOW)
    text = page.read_text()
    since = NOW.replace(microsecond=0) - datetime.timedelta(days=7)
    shown_from, shown_to = report.view([(model.parse_time(row.acquired), model.parse_time(row.released))
                                        for row in SHORT_WEEK[:3]], since, NOW)
    # The title keeps the whole period; the line under it gives the timeline's own.
    period = f"{model.clock(model.isoformat(since))} to {model.clock(model.isoformat(NOW))}"
    assert f"<h1>Deploy token: {period}</h1>" in text
    assert (f"The timeline shows {model.clock(model.isoformat(shown_from))} to "
            f"{model.clock(model.isoformat(shown_to))}, the part of the period with activity (the whole period is "
            "7 d 0 h long).") in text
    assert shown_from > since + datetime.timedelta(days=4)
    found = bars(text)
    assert [kind for kind, _, _ in found] == ["bar holding", "bar forced", "bar holding", "wait"]
    # Over the two days shown, a 15-minute holding is 4 units wide or more, not a sliver at the right edge.
    assert all(width >= report.MIN_BAR for _, _, width in found)
    assert min(left for _, left, _ in found) < report.LEFT + 100
    # Each bar says how long it lasted; the forced one says who forced it.
    assert '>30 min</text>' in text and '>45 min, forced by Alice Smith (alice)</text>' in text
    assert '>15 min</text>' in text and '>Carol Díaz, 33 min</text>' in text
    assert ">Waits</text>" in text


def test_the_timeline_shows_the_whole_period_when_its_activity_fills_it_or_there_is_none():
    since = NOW - datetime.timedelta(days=7)
    spread = [(since + datetime.timedelta(days=1), since + datetime.timedelta(days=1, hours=1)),
              (NOW - datetime.timedelta(hours=2), NOW - datetime.timedelta(hours=1))]
    assert report.view(spread, since, NOW) == (since, NOW)
    assert report.view([], since, NOW) == (since, NOW)
    assert report.view([(None, None)], since, NOW) == (since, NOW)  # a row without its times
    # Activity in the last hour only: that hour, with at least half an hour on each side (up to now).
    late = [(NOW - datetime.timedelta(minutes=50), NOW - datetime.timedelta(minutes=20))]
    assert report.view(late, since, NOW) == (NOW - datetime.timedelta(minutes=80), NOW)


def test_the_history_rows_say_who_did_what_and_why(tmp_path):
    store = sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))
    for row in SHORT_WEEK:
        assert store.append_history(row)
    page = tmp_path / "week.html"
    report.write(store, since="7d", path=str(page), now=NOW)
    row = r'<tr class="(\w+)"><td>\w+</td><td>([^<]*)</td>(?:<td[^>]*>.*?</td>){6}<td>([^<]*)</td></tr>'
    rows = {match[0]: match for match in re.findall(row, page.read_text())}
    # A forced holding's reason and an override's cancel reason are on the page, not only in a hover text.
    assert rows["forced"][1:] == ("Bob Jones", "Alice Smith (alice): Bob is away, agreed in chat")
    # The cancelled override's row names its author as such, and who cancelled it and why.
    assert rows["override_cancelled"][1:] == ("override by Bob Jones", "Alice Smith (alice): database back")
    assert rows["override"][1] == "Bob Jones (made it)"
    # A date never wraps: each is one unbreakable span.
    assert f'<span class="time">{model.clock(hours_ago(50))}</span>' in page.read_text()
    assert ".time{white-space:nowrap}" in page.read_text()


def png_pixels(data):
    """The rows of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes) as lists of (r, g, b)."""
    chunks, position = {}, 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunks.setdefault(kind, []).append(data[position + 8:position + 8 + length])
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    assert depth == 8 and colour in (2, 6) and interlace == 0
    step = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(b"".join(chunks[b"IDAT"])), width * step, [], bytes(width * step)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left, up = line[i - step] if i >= step else 0, previous[i]
            corner = previous[i - step] if i >= step else 0
            guess = left + up - corner
            paeth = min((abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner))[2]
            line[i] = (line[i] + (0, left, up, (left + up) // 2, paeth)[kind]) & 0xFF
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, step)])
        previous = line
    return rows


def blocks_of(pixels, colour, smallest=40):
    """How many separate blocks (4-connected, at least ``smallest`` pixels) of exactly ``colour`` there are."""
    todo = {(x, y) for y, row in enumerate(pixels) for x, value in enumerate(row) if value == colour}
    blocks = 0
    while todo:
        stack, size = [todo.pop()], 0
        while stack:
            x, y = stack.pop()
            size += 1
            for near in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if near in todo:
                    todo.remove(near)
                    stack.append(near)
        blocks += size >= smallest
    return blocks


class Markup(html.parser.HTMLParser):
    """The tags and attributes of a page, and the text of its style elements."""

    def __init__(self):
        super().__init__()
        self.tags, self.attributes, self.style, self._in_style = set(), set(), "", False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes |= {name for name, _ in attrs}
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.style += data


def test_nothing_in_the_page_could_reach_a_server(seeded, tmp_path):
    page = tmp_path / "report.html"
    report.write(seeded, since="30d", path=str(page), now=NOW)
    markup = Markup()
    markup.feed(page.read_text())
    assert page.read_text().startswith(report.MARK) and "default-src 'none'" in page.read_text()
    assert not markup.tags & {"script", "link", "img", "iframe", "object", "embed", "image", "use", "a", "form"}
    assert not markup.attributes & {"src", "href", "srcset", "xlink:href", "action", "data", "poster", "style"}
    assert "url(" not in markup.style and "@import" not in markup.style


def test_the_runner_writes_the_page_and_refuses_bad_input(runner, tmp_path):
    page = tmp_path / "week.html"
    done = runner.run("deploytoken.report", "since=7d", f"path={page}")
    assert done.returncode == 0, done
    assert done.data["path"] == str(page) and page.read_text().startswith(report.MARK)
    assert done.data["message"].startswith("Wrote the report of ") and set(done.data["figures"]) >= {
        "holdings", "median_holding_seconds", "longest_holding", "median_handoff_seconds", "people"}
    again = runner.run("deploytoken.report", "since=7d", f"path={page}")
    assert again.returncode == 0, again  # an earlier report is replaced

    other = tmp_path / "notes.txt"
    other.write_text("my notes\n")
    for args, sentence in [
        (("since=2999-01-01",), "since '2999-01-01' is not in the past: the period ends now."),
        (("since=soon",), "since must be a duration back from now or a date, e.g. since=7d, since=12h or "
                          "since=2026-11-01; got 'soon'."),
        ((f"path={other}",), f"{other} exists and is not a deploytoken report, so it is left alone: give path= the "
                             "name of a new file."),
        ((f"path={tmp_path}/missing/r.html",), f"The folder {tmp_path}/missing does not exist: give path= a file "
                                               "in an existing folder."),
        (("sinse=7d",), "deploytoken.report has no argument sinse: it takes since, path."),
    ]:
        refused = runner.run("deploytoken.report", *args)
        assert refused.returncode == 2 and refused.data == {
            "error": sentence.replace("salt-run", hint_prefix(runner)), "retcode": 2}, refused
    assert other.read_text() == "my notes\n"


def test_a_long_reason_wraps_within_the_page_and_a_long_name_fits_left_of_the_timeline(tmp_path):
    store = sqlite_store.SqliteStore(str(tmp_path / "token.sqlite"))
    name = "Maximiliana Alexandrina Wolfeschlegelsteinhausenbergerdorff"
    taken = report_token.acquire(store, "alice", {}, name=name, reason="x" * 500)
    assert taken["acquired"], taken
    report_token.release(store, "alice", {}, name=name, note="y" * 500)
    page = tmp_path / "report.html"
    report.write(store, since="1d", path=str(page))
    # Measured by the browser itself, on a copy of the page with a script that writes what it found.
    probe = tmp_path / "measured.html"
    # (without the page's Content-Security-Policy, which forbids scripts)
    probe.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page.read_text()) + (
        "<script>const box = document.querySelector('text.lane').getBBox();"
        "const root = document.documentElement;"
        "document.body.dataset.overflow = String(root.scrollWidth > root.clientWidth);"
        "document.body.dataset.laneLeft = String(Math.floor(box.x));</script>"))
    rendered = subprocess.run(CHROMIUM + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    assert 'data-overflow="false"' in rendered.stdout
    lane_left = int(re.search(r'data-lane-left="(-?\d+)"', rendered.stdout).group(1))
    assert lane_left >= 0, lane_left
    assert f"<title>{name}</title>" in rendered.stdout and f"<td>{name}</td>" in rendered.stdout
