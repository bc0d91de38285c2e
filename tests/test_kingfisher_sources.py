"""The source registry, settings read once at the edge, Scrapyd credentials never shown, and a
missing third-party package on a salt-ssh target: no daemon, except a real Scrapyd where named."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest
from salt.exceptions import CommandExecutionError

from deploytoken.kingfisher import busy as busy_check
from deploytoken.kingfisher import scrapyd, sources
from deploytoken.kingfisher.errors import InputError, SourceError
from kingfisher_fixtures import lean_python

REPO = pathlib.Path(__file__).resolve().parent.parent


def defaults(key, default):
    return default


def test_every_source_has_settings_with_defaults_a_reader_reasons_and_wording():
    assert list(sources.SOURCES) == ["scrapyd", "tmux", "postgres"]
    for name, source in sources.SOURCES.items():
        parsed = sources.settings(name, {}, defaults)
        assert dataclasses.is_dataclass(parsed) and callable(source.read) and source.what
        assert source.reasons({}) == []


def test_settings_take_arguments_first_then_config_by_key():
    asked = []

    def lookup(key, default):
        asked.append(key)
        return {"kingfisher:postgres:threshold": "600"}.get(key, default)

    parsed = sources.settings("postgres", {"port": "5433", "user": None}, lookup)
    assert (parsed.threshold, parsed.port, parsed.user) == (600.0, 5433, "postgres")
    assert asked == ["kingfisher:postgres", "kingfisher:postgres:threshold", "kingfisher:postgres:socket_dir",
                     "kingfisher:postgres:user", "kingfisher:postgres:runas"]


def test_unknown_source_and_unknown_setting_are_one_sentence():
    with pytest.raises(InputError) as info:
        sources.get("celery")
    assert str(info.value) == "There is no Kingfisher source 'celery'; the sources are scrapyd, tmux, postgres."
    with pytest.raises(InputError) as info:
        sources.settings("tmux", {"user": "alice"}, defaults)
    assert str(info.value) == "tmux has no setting 'user'; its settings are users."


def test_a_source_turned_off_is_skipped_and_named_in_the_summary():
    def lookup(key, default):
        return {"kingfisher:scrapyd": False, "kingfisher:postgres": False}.get(key, default)

    parsed = {name: sources.settings(name, {"url": "http://127.0.0.1:1"} if name == "scrapyd" else {},
                                     lookup) for name in ("scrapyd", "postgres")}
    assert parsed == {"scrapyd": None, "postgres": None}
    report = busy_check.decide({name: busy_check.read(name, value) for name, value in parsed.items()})
    assert report["busy"] is False and report["reasons"] == []
    assert report["sources"]["scrapyd"] == {"status": "skipped", "why": "turned off: kingfisher:scrapyd is false"}
    assert report["summary"] == (
        "Not busy: checked nothing; skipped scrapyd (turned off: kingfisher:scrapyd is false) and postgres "
        "(turned off: kingfisher:postgres is false).")


def test_a_source_switch_that_is_neither_settings_nor_false_is_refused():
    with pytest.raises(InputError) as info:
        sources.settings("tmux", {}, lambda key, default: "off" if key == "kingfisher:tmux" else default)
    assert str(info.value) == "kingfisher:tmux must be its settings or false (turned off); got 'off'."


def test_source_errors_are_command_errors():
    assert isinstance(SourceError("x"), CommandExecutionError)


# Scrapyd credentials written in the URL


SECRET_URL = "http://kf:s3cret@127.0.0.1:1"


def test_credentials_in_a_bad_url_are_not_echoed():
    with pytest.raises(InputError) as info:
        scrapyd.Settings.parse({"url": "http://kf:s3cret@host:port"})
    assert str(info.value) == (
        "The Scrapyd URL 'http://***@host:port' is not valid: give one like http://localhost:6800.")


def test_credentials_in_the_url_are_not_in_errors_reports_or_repr():
    settings = scrapyd.Settings.parse({"url": SECRET_URL})
    assert "s3cret" not in repr(settings)
    with pytest.raises(SourceError) as info:
        scrapyd.jobs(settings)
    assert str(info.value) == (
        "Scrapyd at http://***@127.0.0.1:1 cannot be reached: 127.0.0.1 refused the connection "
        "(nothing listens there).")
    report = busy_check.decide({"scrapyd": busy_check.read("scrapyd", settings)})
    assert report["busy"] is True and report["sources"]["scrapyd"]["url"] == "http://***@127.0.0.1:1"
    assert "s3cret" not in json.dumps(report)


def test_credentials_in_the_url_still_log_in_but_are_not_returned(scrapyd_busy):
    host = scrapyd_busy.url.split("://", 1)[1]
    url = f"http://{scrapyd_busy.username}:{scrapyd_busy.password}@{host}"
    report = scrapyd.read(scrapyd.Settings.parse({"url": url}))
    assert scrapyd_busy.running in [job["job"] for job in report["running"]]
    assert report["url"] == f"http://***@{host}" and scrapyd_busy.password not in json.dumps(report)


# A salt-ssh target runs the modules with its own Python, which may lack requests or psycopg


READ_ALL = """
import json
from deploytoken.kingfisher import busy as busy_check
from deploytoken.kingfisher import sources
given = {"scrapyd": {}, "postgres": {"socket_dir": "/tmp/dtk-nowhere", "port": 1, "runas": ""}}
for name, settings in given.items():
    settings = sources.settings(name, settings, lambda key, default: default)
    print(json.dumps(busy_check.read(name, settings)))
"""


def test_missing_requests_is_one_sentence_and_postgres_falls_back_to_psql(tmp_path):
    scrapyd, postgres = (json.loads(line) for line in lean_python(tmp_path, READ_ALL).splitlines())
    assert scrapyd["status"] == "unknown"
    assert scrapyd["error"] == (
        f"The Python package requests cannot be imported by {sys.executable}: install it for that Python.")
    assert postgres["status"] == "unknown"
    assert postgres["error"].startswith(
        'PostgreSQL at /tmp/dtk-nowhere port 1 cannot be queried: no server listens on that socket (is PostgreSQL '
        'running?) (connection to server on socket "/tmp/dtk-nowhere/.s.PGSQL.1" failed: No such file or '
        'directory'), "psql's own sentence, led by its cause"
    assert busy_check.decide({"postgres": postgres})["busy"] is True


def test_loading_the_kingfisher_sources_imports_no_postgresql_client():
    # The runner on the master loads them for their settings and sentences (deploytoken.setup): psycopg is
    # imported only when PostgreSQL is read.
    code = (
        "import sys; sys.path.insert(0, '_utils'); "
        "import deploytoken.procedure.setup, deploytoken.kingfisher.postgres; "
        "print([m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_binary')])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
