"""``salt-run deploytoken.*`` end to end with the google backend: the real salt-run against the real test
master, whose deploytoken settings point at the fake Docs/Sheets server."""

import pytest

from conftest import PEOPLE

pytestmark = [pytest.mark.daemons]


@pytest.fixture
def google_run(salt_run_with, google_config):
    google = {key: value for key, value in google_config.items() if key != "cachedir"}
    return salt_run_with({"backend": "google", "google": google, "people": PEOPLE})


def as_user(cli, login, *args):
    return cli.run(*args, env={"SUDO_USER": login})


def held(fake_google, google_config):
    return fake_google.held_text(google_config["document_id"])


def test_full_cycle_through_the_cli(google_run, fake_google, google_config):
    taken = as_user(google_run, "alice", "deploytoken.acquire", "reason=upgrade postgres")
    assert taken.returncode == 0, taken
    assert taken.data["holder"] == "Alice Smith" and taken.data["login"] == "alice" and taken.data["changed"]
    assert held(fake_google, google_config) == "Held by: Alice Smith\n"

    refused = as_user(google_run, "bob", "deploytoken.acquire", "reason=my turn")
    assert refused.returncode == 1, refused
    assert refused.data["message"].startswith("Deploy token is held by Alice Smith (alice) since ")

    status = as_user(google_run, "carol", "deploytoken.status")
    assert status.data["backend"] == "google" and status.data["claim"] == taken.data["claim"]

    released = as_user(google_run, "alice", "deploytoken.release", "note=done")
    assert released.returncode == 0, released
    assert held(fake_google, google_config) == "Held by: Nobody\n"
    history = as_user(google_run, "carol", "deploytoken.history")
    assert history.data[0]["claim"] == taken.data["claim"] and history.data[0]["pending"] is False
    assert history.data[0]["note"] == "done"


def test_hand_typed_holder_refuses_and_can_be_forced(google_run, fake_google, google_config):
    fake_google.hand_edit(google_config["document_id"], "Bob Jones")
    status = as_user(google_run, "carol", "deploytoken.status")
    assert status.data["holder"] == "Bob Jones" and status.data["login"] == "bob"
    refused = as_user(google_run, "alice", "deploytoken.acquire")
    assert refused.returncode == 1 and "Bob Jones (bob)" in refused.data["message"]
    forced = as_user(google_run, "alice", "deploytoken.release", "force=True", "reason=Bob is away")
    assert forced.returncode == 0, forced
    assert held(fake_google, google_config) == "Held by: Nobody\n"


def test_unreachable_sheet_spools_the_row_and_flush_delivers_it(google_run, fake_google, google_config):
    taken = as_user(google_run, "alice", "deploytoken.acquire")
    fake_google.inject("values.append", "error", code=503, count=5)
    fake_google.inject("values.get", "error", code=503, count=5)
    released = as_user(google_run, "alice", "deploytoken.release")
    assert released.returncode == 0, released
    flushed = as_user(google_run, "alice", "deploytoken.flush")
    assert flushed.returncode == 0 and flushed.data["pending"] == 0, flushed
    claims = [row[0] for row in fake_google.rows(google_config["spreadsheet_id"])]
    assert claims.count(taken.data["claim"]) == 1


def test_bad_doc_gives_one_sentence_and_exit_2(google_run, fake_google, google_config):
    fake_google.add_document(google_config["document_id"], [[{"text": "No marker here\n"}]])
    ret = as_user(google_run, "alice", "deploytoken.acquire")
    assert ret.returncode == 2
    assert ret.data["error"] == (
        f"The deploy token Doc {google_config['document_id']} has no 'Held by:' line: "
        "add a paragraph reading 'Held by: Nobody'."
    )
