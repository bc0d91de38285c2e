"""
What do chat notifications and reminders cost?

1. Sealing one event with a 2048-bit master key (added to every acquire/release) against one
   acquire + release cycle on the embedded SQLite store (the call it is added to).
2. ``deploytoken.chat.remind.remind`` when no reminder is due (what the schedule runs every few minutes)
   against a bare read of the token (``store.read()``).
3. One post to a loopback webhook through ``deploytoken.chat.notify.post`` against a bare
   ``requests.post`` of the same body.

Run with the project's venv: ``.venv/bin/python benchmarks/notify.py [--runs N]``
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import requests
import salt.crypt

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))
sys.path.insert(0, str(REPO / "tests"))

from deploytoken import commands as token  # noqa: E402
from deploytoken import settings as token_settings  # noqa: E402
from deploytoken.chat import notify  # noqa: E402
from deploytoken.chat import remind  # noqa: E402
from deploytoken.guard import seal  # noqa: E402
from deploytoken.stores import sqlite as sqlite_store  # noqa: E402
from webhook_server import Webhook  # noqa: E402


def median(action, runs):
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def report(what, figure, baseline, base_name):
    print(f"{what}: {figure * 1000:.3f} ms; {base_name}: {baseline * 1000:.3f} ms; ratio {figure / baseline:.2f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    runs = parser.parse_args().runs
    hook = Webhook()
    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        salt.crypt.write_keys(folder, "master", 2048)
        (root / "webhook").write_text(hook.url)
        (root / "webhook").chmod(0o600)
        store = sqlite_store.SqliteStore(str(root / "token.sqlite"))
        event = {"holder": "Alice Smith", "login": "alice", "claim": "3f9c0a1b2c3d4e5f", "reason": "benchmark"}

        def cycle():
            token.acquire(store, "alice", {}, reason="benchmark")
            token.release(store, "alice", {}, note="benchmark")

        report("seal one event", median(lambda: seal.seal(event, str(root / "master.pem")), runs),
               median(cycle, runs), "acquire + release")

        config = token_settings.from_opts({"cachedir": folder, "deploytoken": {"remind_after": "4h"}})
        token.acquire(store, "alice", {}, reason="benchmark")
        report("remind, nothing due", median(lambda: remind.remind(config, store), runs),
               median(store.read, runs), "store.read()")

        webhook = notify.Webhook(kind="slack", url_file=str(root / "webhook"))
        body = notify.payload("slack", "benchmark")
        report("post to a loopback webhook", median(lambda: notify.post(webhook, "benchmark"), runs),
               median(lambda: requests.post(hook.url, json=body, timeout=5), runs), "bare requests.post")
    hook.close()


if __name__ == "__main__":
    main()
