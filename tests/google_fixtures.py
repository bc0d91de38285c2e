"""
Fixtures for the Google store: one fake Docs/Sheets server per test module, a service account key made
for the test run (its token_uri points at the fake), and a fresh Doc, Sheet and cachedir per test.
"""

import itertools
import json
import shutil
import tempfile

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import PEOPLE
from deploytoken import settings as token_settings
from deploytoken import stores as token_stores
from fake_google import FakeGoogle

HISTORY_RANGE = "'Deploy history'!A:M"
HEADER = ["claim", "holder", "login", "caller", "acquired", "released", "duration", "reason", "note",
          "forced_by", "force_reason", "kind", "until"]
_ids = itertools.count(1)


def free_doc(name="Nobody", before="Deploy token for the collect servers.\n"):
    return [[{"text": before}], [{"text": "Held by: "}, {"text": name + "\n", "style": {"bold": True}}],
            [{"text": "Please use salt-run deploytoken.acquire.\n"}]]


def google_settings(config, people=PEOPLE, **extra):
    """The settings of the Google store for ``google_config`` (with ``extra`` keys changed)."""
    section = dict(config, **extra)
    cachedir = section.pop("cachedir")
    return token_settings.Settings(cachedir=cachedir, backend="google", sections={"google": section},
                                   people=people)


def google_store(config, people=PEOPLE, **extra):
    """The Google store for ``google_config`` (with ``extra`` keys changed), opened as the runner opens it."""
    return token_stores.open_store(google_settings(config, people, **extra))


@pytest.fixture(scope="module")
def fake_google():
    fake = FakeGoogle()
    url = fake.serve()
    fake.url = url
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def google_key_info():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "deploytoken-test",
        "private_key_id": "test-key",
        "private_key": pem,
        "client_email": "deploytoken@deploytoken-test.iam.gserviceaccount.com",
        "client_id": "1",
    }


@pytest.fixture
def google_config(fake_google, google_key_info):
    """A fresh Doc (free) and Sheet (with a header row) on the fake, and the store's config for them."""
    for queued in fake_google.faults.values():
        queued.clear()  # a fault left over from the previous test must not hit this one
    directory = tempfile.mkdtemp(prefix="dtg-", dir="/tmp")
    number = next(_ids)
    document_id, spreadsheet_id = f"doc{number}", f"sheet{number}"
    fake_google.add_document(document_id, free_doc())
    fake_google.add_sheet(spreadsheet_id, [HEADER])
    key_file = f"{directory}/key.json"
    with open(key_file, "w", encoding="utf-8") as handle:
        json.dump(dict(google_key_info, token_uri=fake_google.url + "token"), handle)
    config = {
        "service_account_file": key_file,
        "document_id": document_id,
        "spreadsheet_id": spreadsheet_id,
        "history_range": HISTORY_RANGE,
        "api_endpoint": fake_google.url,
        "backoff": 0.01,
        "cache_seconds": 0,
        "cachedir": f"{directory}/cache",
    }
    yield config
    shutil.rmtree(directory, ignore_errors=True)
