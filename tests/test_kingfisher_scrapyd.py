"""scrapyd_jobs against a real Scrapyd with a real spider (see kingfisher_fixtures.scrapyd_busy)."""

import contextlib
import http.server
import json
import threading
import time

import pytest

from deploytoken.kingfisher import busy as busy_check
from deploytoken.kingfisher import scrapyd
from deploytoken.kingfisher.errors import InputError, SourceError


def settings(url, username=None, password=None):
    return scrapyd.Settings.parse({"url": url, "username": username, "password": password})


@contextlib.contextmanager
def answering(body, content_type, routes=None):
    """A web server on 127.0.0.1 that answers a GET with ``routes[path?query]``, else with ``body``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write((routes or {}).get(self.path, body).encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_running_and_pending_jobs_are_listed(scrapyd_busy):
    report = scrapyd.jobs(settings(scrapyd_busy.url, scrapyd_busy.username, scrapyd_busy.password))
    (running,) = report["running"]
    assert running["job"] == scrapyd_busy.running and running["pid"] == scrapyd_busy.pid
    assert running["project"] == "dtkproject" and running["spider"] == "sleeper"
    assert running["running_for"] >= 0 and running["started"]
    assert report["pending"] == [{"project": "dtkproject", "spider": "sleeper", "job": scrapyd_busy.pending}]
    assert scrapyd_busy.password not in json.dumps(report)


def test_crawl_of_a_live_scrapyd_is_not_reported_as_unlisted(scrapyd_busy):
    crawl = next(crawl for crawl in scrapyd.crawl_processes() if crawl["pid"] == scrapyd_busy.pid)
    assert crawl["orphaned"] is False and crawl["job"] == scrapyd_busy.running
    assert scrapyd_busy.pid not in [crawl["pid"] for crawl in scrapyd.unlisted([])]


def test_wrong_password_is_a_clear_error(scrapyd_busy):
    with pytest.raises(SourceError) as info:
        scrapyd.jobs(settings(scrapyd_busy.url, scrapyd_busy.username, "wrong"))
    assert str(info.value) == (
        f"Scrapyd at {scrapyd_busy.url} refused the username and password (HTTP 401): check kingfisher:scrapyd."
    )


def test_a_scrapyd_name_that_does_not_resolve_is_named_as_dns():
    with pytest.raises(SourceError) as info:
        scrapyd.jobs(settings("http://nonexistent.invalid:6800", None, None))
    assert str(info.value) == ("Scrapyd at http://nonexistent.invalid:6800 cannot be reached: the name "
                               "nonexistent.invalid cannot be resolved (DNS).")


def test_https_to_a_plain_http_server_is_named_as_tls(fake_google):
    # Scrapyd itself waits for a line that a TLS hello never sends; this server answers at once.
    with pytest.raises(SourceError, match=r"cannot be reached: the TLS handshake with 127\.0\.0\.1 failed \("):
        scrapyd.jobs(settings(fake_google.url.replace("http://", "https://").rstrip("/")))


def test_stopped_scrapyd_is_unknown_and_its_orphaned_crawl_is_reported(make_scrapyd):
    server = make_scrapyd(jobs=1)
    server.kill()
    refused = rf"^Scrapyd at {server.url} cannot be reached: 127\.0\.0\.1 refused the connection "
    with pytest.raises(SourceError, match=refused):
        scrapyd.jobs(settings(server.url, server.username, server.password))
    report = busy_check.read("scrapyd", settings(server.url, server.username, server.password))
    assert report["status"] == "unknown"
    orphan = next(crawl for crawl in report["unlisted"] if crawl["pid"] == server.pid)
    assert orphan["spider"] == "sleeper" and orphan["job"] == server.running and orphan["orphaned"] is True
    decided = busy_check.decide({"scrapyd": report})
    assert decided["busy"] is True and decided["sources"]["scrapyd"]["status"] == "busy"
    assert decided["reasons"][0].startswith("scrapyd cannot be read, so it counts as busy: Scrapyd at ")
    assert f"Crawl process {server.pid} of spider sleeper (job {server.running})" in " ".join(decided["reasons"])


def test_html_answer_is_a_clear_error():
    with answering("<html><body>Welcome</body></html>", "text/html") as url:
        with pytest.raises(SourceError) as info:
            scrapyd.jobs(settings(url))
    assert str(info.value) == (
        f"Scrapyd at {url} answered listprojects.json with text/html, not JSON: is the URL Scrapyd's?"
    )


def test_status_error_answer_is_a_clear_error():
    body = json.dumps({"status": "error", "message": "project 'x' not found"})
    with answering(body, "application/json") as url:
        with pytest.raises(SourceError) as info:
            scrapyd.jobs(settings(url))
    assert str(info.value) == f"Scrapyd at {url} answered listprojects.json with an error: project 'x' not found."


def test_scrapyd_1_2_answers_are_read_per_project():
    # Scrapyd 1.2: listjobs.json needs a project, and its jobs carry no "project" field.
    routes = {
        "/listprojects.json": json.dumps({"status": "ok", "projects": ["kingfisher", "other"]}),
        "/listjobs.json?project=kingfisher": json.dumps({
            "status": "ok",
            "running": [{"id": "j1", "spider": "zambia", "pid": 7, "start_time": "2020-01-01 10:00:00.123456"}],
            "pending": [{"id": "j2", "spider": "chile"}],
            "finished": [],
        }),
        "/listjobs.json?project=other": json.dumps({"status": "ok", "running": [], "pending": [], "finished": []}),
    }
    with answering(json.dumps({"status": "error", "message": "project required"}), "application/json",
                   routes) as url:
        report = scrapyd.jobs(settings(url))
    (running,) = report["running"]
    assert running["project"] == "kingfisher" and running["job"] == "j1" and running["pid"] == 7
    assert running["started"].startswith("2020-01-01T10:00:00") and running["running_for"] > 3600
    assert report["pending"] == [{"project": "kingfisher", "spider": "chile", "job": "j2"}]


@contextlib.contextmanager
def dripping(body, every):
    """A web server on 127.0.0.1 that sends ``body`` one byte every ``every`` seconds (each wait shorter than
    any per-read timeout), as a stalled proxy or an overloaded Scrapyd can."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for byte in body.encode():
                if stop.is_set():
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                stop.wait(every)

        def log_message(self, *args):
            pass

    stop = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def test_a_scrapyd_that_drips_its_answer_is_unknown_within_one_deadline(monkeypatch):
    monkeypatch.setattr(scrapyd, "TIMEOUT", 3)
    # 31 bytes, one every 0.5 s: 15 s in all, each read well within requests' own timeout.
    with dripping('{"status": "ok", "projects": []}'[:31], 0.5) as url:
        start = time.monotonic()
        report = busy_check.read("scrapyd", settings(url))
        took = time.monotonic() - start
    assert took < 3 + 1.5, f"the read took {took:.1f} s"
    assert report["status"] == "unknown"
    assert report["error"] == f"Scrapyd at {url} did not answer listprojects.json within 3 seconds."


@pytest.mark.parametrize("answer, sentence", [
    ('{"status": "ok", "running": null, "pending": [], "finished": []}',
     "answered listjobs.json with a null 'running' list, so its jobs cannot be known."),
    ('{"status": "ok", "pending": [], "finished": []}',
     "answered listjobs.json with no 'running' list, so its jobs cannot be known."),
    ('{"status": "ok", "running": [null], "pending": [], "finished": []}',
     "answered listjobs.json with a 'running' list that holds something other than jobs."),
])
def test_a_null_or_missing_job_list_is_one_clear_sentence(answer, sentence):
    routes = {"/listprojects.json": '{"status": "ok", "projects": ["p"]}', "/listjobs.json?project=p": answer}
    with answering("{}", "application/json", routes) as url:
        report = busy_check.read("scrapyd", settings(url))
    assert report["status"] == "unknown" and "TypeError" not in report["error"]
    assert report["error"] == f"Scrapyd at {url} {sentence}"


@pytest.mark.parametrize(
    "url", ["localhost:6800", "ftp://localhost:6800", "http://", "http://host:port", "http://a b", "http://h/?q=1", 5,
            "http://[::1", "http://[::1]:99999"]
)
def test_malformed_url_is_refused(url):
    with pytest.raises(InputError) as info:
        settings(url)
    assert str(info.value) == f"The Scrapyd URL {url!r} is not valid: give one like http://localhost:6800."


@pytest.mark.parametrize("url, shown", [
    ("kfuser:S3cretPW@127.0.0.1:9", "***@127.0.0.1:9"),
    ("http://kfuser:S3c/retPW@127.0.0.1:9", "http://***@127.0.0.1:9"),
    ("http://kfuser:S3c#retPW@127.0.0.1:9", "http://***@127.0.0.1:9"),
    ("http://kfuser:S3cretPW@[::1", "http://***@[::1"),
])
def test_a_refused_url_never_shows_its_password(url, shown):
    """Without a scheme, with "/" or "#" in the password, or with a broken IPv6 address."""
    with pytest.raises(InputError) as info:
        settings(url)
    assert str(info.value) == f"The Scrapyd URL {shown!r} is not valid: give one like http://localhost:6800."
    assert "S3c" not in str(info.value)
