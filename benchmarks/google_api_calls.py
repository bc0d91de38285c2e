"""
How many Google API calls does the Google token store make?

Against the fake Docs/Sheets server of the test suite (tests/fake_google.py) with the real client,
count the requests of one acquire, one release (Doc write + history row), of 20 status reads by
separate store objects (as separate salt-run or pillar processes would be) without the read cache
(the baseline) and with it, and of a waiter (``acquire wait=True``, the default ``interval=10``) while
someone else holds the token, per minute of its wait (a wait of 10 minutes, on a clock of the
benchmark's own so that it takes no time), against Google's quotas (per minute and user: 300 reads, 60
writes).

Run with the project's venv: ``.venv/bin/python benchmarks/google_api_calls.py``
"""

import json
import pathlib
import shutil
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))
sys.path.insert(0, str(REPO / "tests"))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from deploytoken import commands as token  # noqa: E402
from deploytoken import settings as token_settings  # noqa: E402
from deploytoken import stores as token_stores  # noqa: E402
from fake_google import FakeGoogle  # noqa: E402
from google_fixtures import HEADER, HISTORY_RANGE, free_doc  # noqa: E402

STATUS_READS = 20
WAIT_MINUTES = 10
READS_PER_MINUTE, WRITES_PER_MINUTE = 300, 60  # Docs and Sheets quotas per user


def key_file(directory, url):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = f"{directory}/key.json"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"type": "service_account", "private_key": pem, "private_key_id": "bench",
                   "client_email": "bench@example.iam.gserviceaccount.com", "token_uri": url + "token"}, handle)
    return path


def main():
    fake = FakeGoogle()
    url = fake.serve()
    directory = tempfile.mkdtemp(prefix="dtg-bench-", dir="/tmp")
    try:
        fake.add_document("doc", free_doc())
        fake.add_sheet("sheet", [HEADER])
        config = {"service_account_file": key_file(directory, url), "document_id": "doc", "spreadsheet_id": "sheet",
                  "history_range": HISTORY_RANGE, "api_endpoint": url}

        def store(**extra):
            settings = token_settings.Settings(
                cachedir=f"{directory}/cache", backend="google", sections={"google": dict(config, **extra)}
            )
            return token_stores.open_store(settings)

        def api_calls(action):
            before = {op: count for op, count in fake.calls.items() if op != "token"}
            action()
            return sum(fake.calls[op] - count for op, count in before.items())

        people = {"alice": "Alice Smith"}
        shared = store(cache_seconds=0)
        acquire = api_calls(lambda: token.acquire(shared, "alice", people, reason="benchmark"))
        release = api_calls(lambda: token.release(shared, "alice", people, note="benchmark"))
        cached = api_calls(lambda: [token.status(store(cache_seconds=30)) for _ in range(STATUS_READS)])
        uncached = api_calls(lambda: [token.status(store(cache_seconds=0)) for _ in range(STATUS_READS)])
        token.acquire(shared, "bob", people, reason="benchmark")
        waited = {"seconds": 0.0}
        before = dict(fake.calls)
        answer = token.acquire(store(), "alice", people, wait=True, timeout=WAIT_MINUTES * 60,
                               clock=lambda: waited["seconds"],
                               sleep=lambda seconds: waited.__setitem__("seconds", waited["seconds"] + seconds))
        assert not answer.get("acquired"), answer
        waiter = {op: (fake.calls[op] - before[op]) / WAIT_MINUTES for op in fake.calls if op != "token"}
        reads = waiter["docs.get"] + waiter["values.get"]
        writes = waiter["docs.batchUpdate"] + waiter["values.append"]
        print(f"API calls per acquire:                     {acquire}")
        print(f"API calls per release (Doc + history row): {release}")
        print(f"API calls for {STATUS_READS} status reads, no cache:     {uncached}")
        print(f"API calls for {STATUS_READS} status reads, 30 s cache:   {cached}")
        print(f"Read cache saves {uncached / max(cached, 1):.0f}x the Doc reads")
        print(f"API calls per minute of one waiter (interval=10, someone else holding): {reads:.1f} reads, "
              f"{writes:.1f} writes ({', '.join(f'{op} {count:.1f}' for op, count in waiter.items() if count)}); "
              f"quota per user and minute {READS_PER_MINUTE} reads, {WRITES_PER_MINUTE} writes: "
              f"{int(READS_PER_MINUTE // max(reads, 0.1))} waiters at once within the reads")
    finally:
        fake.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
