"""
Scrapyd's running and pending jobs, read through its JSON API (Scrapyd 1.2 to 1.6), and crawl
processes that run on this machine although Scrapyd does not list them.

Jobs are read per project (``listprojects.json``, then ``listjobs.json?project=``), which every
version from 1.2 on answers. Scrapyd reports errors as HTTP 200 with ``"status": "error"``, so
every answer's ``status`` is checked. Credentials are only sent, never logged nor returned: a
URL is shown with its userinfo (``user:secret@``) replaced by ``***@``.
"""

import dataclasses
import datetime
import json
import re
import time
import urllib.parse

from deploytoken import network
from deploytoken.kingfisher import proc
from deploytoken.kingfisher.errors import InputError, SourceError, missing_package
from deploytoken.model import human_duration as duration

try:
    import requests
except ImportError:  # the target's own Python under salt-ssh may lack it: a sentence when Scrapyd is read
    requests = None

# Seconds for the whole read of Scrapyd's jobs, every call and every byte of each answer included.
TIMEOUT = 10
MAX_CHUNK = 65536
# Everything between the scheme (if any) and the last "@": the userinfo, password included, even when the
# password holds "/" or "#" or the scheme is missing (a path with an "@" is hidden too, which is harmless).
USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?).*@", re.DOTALL)


def redact(url):
    """``url`` as it may be shown or logged: ``http://user:secret@host`` becomes ``http://***@host``."""
    return USERINFO.sub(r"\1***@", url) if isinstance(url, str) else url


def check_url(url):
    """``url`` as Scrapyd's base URL without a trailing slash, or InputError."""
    try:
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        port_ok = parsed is not None and (parsed.port is None or parsed.port > 0)
    except ValueError:  # a bad port, or an unclosed "[" of an IPv6 address
        parsed, port_ok = None, False
    if (
        parsed is None
        or parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or not port_ok
        or parsed.query
        or parsed.fragment
        or any(char.isspace() for char in url)
    ):
        raise InputError(f"The Scrapyd URL {redact(url)!r} is not valid: give one like http://localhost:6800.")
    return url.rstrip("/")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to reach Scrapyd (``kingfisher:scrapyd:*``)."""

    url: str = dataclasses.field(default="http://localhost:6800", repr=False)
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def parse(cls, raw):
        given = cls(**raw)
        username = None if given.username in (None, "") else str(given.username)
        password = None if given.password is None else str(given.password)
        return cls(url=check_url(given.url), username=username, password=password)

    @property
    def shown_url(self):
        return redact(self.url)


class _Late(Exception):
    """The deadline of the whole read passed while Scrapyd was still answering."""


def _body(response, deadline):
    """The answer's bytes, read chunk by chunk until ``deadline`` (time.monotonic()): requests' timeout bounds
    each wait on the socket, not the whole answer, which a server can drip for minutes."""
    chunks = []
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    # read1 returns what has arrived; read(n) would wait for n bytes (urllib3 before 2 has no read1).
    read = getattr(response.raw, "read1", None) or response.raw.read
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Late()
        if sock is not None:
            sock.settimeout(left)
        chunk = read(MAX_CHUNK if read is not response.raw.read else 1024, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _call(url, endpoint, auth, deadline, params=None):
    where = f"Scrapyd at {redact(url)}"
    late = SourceError(f"{where} did not answer {endpoint} within {TIMEOUT} seconds.")
    try:
        left = deadline - time.monotonic()
        if left <= 0:
            raise late
        response = requests.get(f"{url}/{endpoint}", params=params, auth=auth, timeout=left, stream=True)
        with response:
            body = _body(response, deadline)
    except _Late:
        raise late from None
    except requests.RequestException as exc:
        if network.kind(exc) == "timeout" or isinstance(exc, requests.Timeout):
            raise late from None
        why = network.cause(exc, urllib.parse.urlsplit(url).hostname) or type(exc).__name__
        raise SourceError(f"{where} cannot be reached: {why}.") from None
    except OSError as exc:  # a socket timeout while reading the body, outside requests' own wrapping
        if isinstance(exc, TimeoutError):
            raise late from None
        raise SourceError(f"{where} cannot be reached: {exc}.") from None
    if response.status_code == 401:
        raise SourceError(f"{where} refused the username and password (HTTP 401): check kingfisher:scrapyd.")
    if response.status_code != 200:
        raise SourceError(f"{where} answered {endpoint} with HTTP {response.status_code}.")
    try:
        data = json.loads(body)
    except ValueError:
        kind = response.headers.get("Content-Type", "unknown type")
        raise SourceError(f"{where} answered {endpoint} with {kind}, not JSON: is the URL Scrapyd's?") from None
    if not isinstance(data, dict) or data.get("status") != "ok":
        message = data.get("message", "no message") if isinstance(data, dict) else "not an object"
        raise SourceError(f"{where} answered {endpoint} with an error: {str(message).strip()}.")
    return data


def _listed(data, key, where, endpoint):
    """``data[key]``, a list of objects (jobs) or of names (projects); SourceError for anything else."""
    value = data.get(key)
    if not isinstance(value, list):
        shown = "no" if key not in data else f"{type(value).__name__ if value is not None else 'a null'}"
        raise SourceError(f"{where} answered {endpoint} with {shown} {key!r} list, so its jobs cannot be known.")
    return value


def _jobs(listed, key, where):
    jobs = _listed(listed, key, where, "listjobs.json")
    if not all(isinstance(job, dict) for job in jobs):
        raise SourceError(f"{where} answered listjobs.json with a {key!r} list that holds something other than jobs.")
    return jobs


def _started(text):
    """Scrapyd's start_time (local time, no zone) as an aware datetime, or None."""
    try:
        return datetime.datetime.fromisoformat(str(text)).astimezone()
    except ValueError:
        return None


def jobs(settings, now=None):
    """``{"url", "running": [...], "pending": [...]}`` across all projects; SourceError when unreadable."""
    if requests is None:
        raise missing_package("requests")
    url = settings.url
    auth = (settings.username, settings.password or "") if settings.username else None
    now = datetime.datetime.now().astimezone() if now is None else now
    running, pending = [], []
    # One deadline for every call of this read: however Scrapyd answers, the check ends in TIMEOUT seconds.
    deadline = time.monotonic() + TIMEOUT
    where = f"Scrapyd at {settings.shown_url}"
    for project in _listed(_call(url, "listprojects.json", auth, deadline), "projects", where, "listprojects.json"):
        listed = _call(url, "listjobs.json", auth, deadline, params={"project": project})
        for job in _jobs(listed, "running", where):
            started = _started(job.get("start_time"))
            running.append({
                "project": project,
                "spider": job.get("spider"),
                "job": job.get("id"),
                "pid": job.get("pid"),
                "started": started.isoformat(timespec="seconds") if started else None,
                "running_for": int((now - started).total_seconds()) if started else None,
            })
        for job in _jobs(listed, "pending", where):
            pending.append({"project": project, "spider": job.get("spider"), "job": job.get("id")})
    return {"url": settings.shown_url, "running": running, "pending": pending}


def _launched_by_scrapyd(pid):
    """Whether ``pid``'s parent is a live Scrapyd (which lists its own crawls), not init after a crash."""
    try:
        return any("scrapyd" in arg for arg in proc.cmdline(proc.parent(pid)))
    except OSError:
        return False


def crawl_processes():
    """
    Every ``scrapyd.runner crawl`` process on this machine: pid, spider, job, started, running for,
    and ``orphaned`` when no Scrapyd is its parent any more.
    """
    found = []
    now = time.time()
    for pid in proc.pids():
        try:
            args = proc.cmdline(pid)
            if "scrapyd.runner" not in args or "crawl" not in args:
                continue
            start = proc.started(pid)
        except OSError:
            continue  # the process ended while we looked
        after = args.index("crawl") + 1
        found.append({
            "pid": pid,
            "spider": args[after] if after < len(args) else None,
            "job": next((arg.split("=", 1)[1] for arg in args if arg.startswith("_job=")), None),
            "started": datetime.datetime.fromtimestamp(start).astimezone().isoformat(timespec="seconds"),
            "running_for": proc.seconds_since(start, now),
            "orphaned": not _launched_by_scrapyd(pid),
        })
    return found


def unlisted(listed_pids):
    """
    Crawl processes that Scrapyd does not list: not among ``listed_pids`` and no longer launched by
    a live Scrapyd (a crawl whose parent is another Scrapyd on this machine is that one's job).
    """
    listed = set(listed_pids or ())
    return [crawl for crawl in crawl_processes() if crawl["pid"] not in listed and crawl["orphaned"]]


def read(settings):
    """Running and pending jobs, and crawl processes Scrapyd does not list; SourceError when unreadable."""
    try:
        report = jobs(settings)
    except SourceError as exc:
        # Crawl processes are found without Scrapyd: they still count while Scrapyd cannot be read.
        raise SourceError(str(exc), {"url": settings.shown_url, "unlisted": unlisted([])}) from None
    report["unlisted"] = unlisted([job["pid"] for job in report["running"]])
    return report


def reasons(report):
    """One sentence per job or crawl that a deployment would interrupt."""
    found = [
        f"Scrapyd job {job['job']} of spider {job['spider']} (project {job['project']}) has been running "
        f"for {duration(job['running_for'])}."
        for job in report.get("running", [])
    ]
    found += [
        f"Scrapyd job {job['job']} of spider {job['spider']} (project {job['project']}) is waiting to run."
        for job in report.get("pending", [])
    ]
    found += [
        f"Crawl process {crawl['pid']} of spider {crawl['spider']} (job {crawl['job']}) has been running for "
        f"{duration(crawl['running_for'])} but Scrapyd does not list it."
        for crawl in report.get("unlisted", [])
    ]
    return found
