"""The Google store with a person's own Google account (application default credentials of the
authorized-user kind, as ``gcloud auth application-default login`` writes them), against the fake."""

import json
import urllib.parse

import pytest

from conftest import PEOPLE
from deploytoken import commands as token
from deploytoken import model
from deploytoken import settings as token_settings
from google_fixtures import google_store
from kingfisher_fixtures import free_port


@pytest.fixture
def user_config(fake_google, google_config, tmp_path, monkeypatch):
    """``google_config`` without a service account; the person's credentials file is found through
    GOOGLE_APPLICATION_CREDENTIALS, its token endpoint on the fake."""
    fake_google.accounts["refresh-alice"] = "Alice.Smith@example.org"
    credentials = tmp_path / "application_default_credentials.json"
    credentials.write_text(json.dumps({
        "type": "authorized_user", "client_id": "deploytoken-test.apps.googleusercontent.com",
        "client_secret": "test-secret", "refresh_token": "refresh-alice", "token_uri": fake_google.url + "token",
    }))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    config = {key: value for key, value in google_config.items() if key != "service_account_file"}
    return dict(config, token_uri=fake_google.url + "token")


def test_user_credentials_acquire_and_release_recording_the_email(fake_google, user_config):
    store = google_store(user_config)
    assert store.account_email == "Alice.Smith@example.org"
    taken = token.acquire(store, "alice", PEOPLE, reason="upgrade")
    assert taken["changed"] and taken["caller"] == "Alice.Smith@example.org"
    assert fake_google.held_text(user_config["document_id"]) == "Held by: Alice Smith\n"
    assert token.acquire(google_store(user_config), "alice", PEOPLE)["changed"] is False
    released = token.release(google_store(user_config), "alice", PEOPLE, note="done")
    assert released["released"] and released["caller"] == "Alice.Smith@example.org"
    header, row = fake_google.rows(user_config["spreadsheet_id"])
    assert dict(zip(header, row))["caller"] == "Alice.Smith@example.org"


def test_the_email_maps_to_a_login_through_people():
    settings = token_settings.from_opts({"cachedir": "/tmp", "deploytoken": {
        "people": {"alice": {"name": "Alice Smith", "email": "Alice.Smith@example.org"}}}})
    assert settings.emails["Alice.Smith@example.org".casefold()] == "alice"


def test_credentials_user_is_chosen_even_with_a_key_file(fake_google, user_config, google_config):
    store = google_store(user_config, service_account_file=google_config["service_account_file"], credentials="user")
    assert store.account_email == "Alice.Smith@example.org"
    assert google_store(google_config).account_email is None


def test_revoked_user_credentials_give_the_login_command(fake_google, user_config):
    del fake_google.accounts["refresh-alice"]
    with pytest.raises(model.StoreError, match=r"your Google credentials were refused .*gcloud auth "
                       r"application-default login --scopes=openid,https://www.googleapis.com/auth/userinfo.email,"):
        google_store(user_config).account_email


def test_unknown_credentials_kind_is_refused(google_config):
    with pytest.raises(model.InputError, match="deploytoken:google:credentials must be user or service_account"):
        google_store(google_config, credentials="oauth")


@pytest.mark.parametrize("where, sentence", [
    ("http://nonexistent.invalid/token", "the name nonexistent.invalid cannot be resolved (DNS)"),
    ("http://127.0.0.1:{closed}/token", "127.0.0.1 refused the connection (nothing listens there)"),
    ("https://127.0.0.1:{fake}/token", "the TLS handshake with 127.0.0.1 failed ("),
])
def test_a_network_failure_is_not_called_refused_credentials(fake_google, user_config, where, sentence):
    token_uri = where.format(closed=free_port(), fake=urllib.parse.urlsplit(fake_google.url).port)
    with pytest.raises(model.StoreError) as info:
        google_store(dict(user_config, token_uri=token_uri)).account_email
    message = str(info.value)
    assert message.startswith(f"Google's token endpoint cannot be reached, so the credentials were not checked: "
                              f"{sentence}"), message
    assert "refused (" not in message and "gcloud" not in message
