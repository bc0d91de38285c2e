"""The deploytoken settings, read once, and the SSH key fingerprints people list."""

import subprocess

import pytest

from deploytoken import model
from deploytoken import settings as token_settings
from deploytoken import sshkey


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", str(path)], check=True)
    printed = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    return path.with_suffix(".pub").read_text().strip(), printed.split()[1]


def test_a_public_key_line_and_its_fingerprint_name_the_same_key(keypair):
    line, printed = keypair
    assert sshkey.fingerprint(line) == printed
    assert sshkey.fingerprint(printed) == printed
    assert sshkey.fingerprint('from="10.0.0.1" ' + line) == printed
    assert sshkey.fingerprint("ssh-ed25519 not-base64!") is None
    assert sshkey.fingerprint("alice@laptop") is None


def test_sshd_auth_info_gives_the_fingerprints_of_public_keys_only(keypair, tmp_path):
    line, printed = keypair
    auth = tmp_path / "auth"
    auth.write_text(f"password\npublickey {' '.join(line.split()[:2])}\n")
    assert sshkey.logged_in_keys(str(auth)) == [printed]
    assert sshkey.logged_in_keys(str(tmp_path / "missing")) == []


def test_people_may_list_names_emails_and_keys(keypair):
    line, printed = keypair
    found = token_settings.from_opts({"cachedir": "/c", "deploytoken": {"people": {
        "alice": {"name": "Alice Smith", "email": "Alice@Example.org", "ssh_keys": [line]},
        "bob": "Bob Jones",
    }}})
    assert found.people == {"alice": "Alice Smith", "bob": "Bob Jones"}
    assert found.emails == {"alice@example.org": "alice"}
    assert found.ssh_keys == {printed: "alice"}
    assert found.backend == "sqlite" and found.pillar_cache == 2 and found.pillar_max_age == 300


@pytest.mark.parametrize(
    "config, sentence",
    [
        ("sqlite", "The deploytoken setting in the master config must be a mapping."),
        ({"people": ["alice"]}, "deploytoken:people must map login names to display names."),
        ({"people": {"alice": {"ssh_keys": ["alice@laptop"]}}}, "deploytoken:people:alice:ssh_keys has 'alice@laptop'"),
        ({"people": {"alice": {"email": "alice"}}}, "deploytoken:people:alice:email must be an email address"),
        ({"people": {"alice": {"ssh_keys": ["SHA256:k"]}, "bob": {"ssh_keys": ["SHA256:k"]}}},
         "The SSH key SHA256:k is listed for both alice and bob in deploytoken:people"),
        ({"pillar_max_age": 0}, "The deploytoken:pillar_max_age must be a number of seconds, at least 1"),
        ({"repos": ["relative"]}, "deploytoken:repos must be a list of absolute paths"),
        ({"ssh": "maybe"}, "deploytoken:ssh must be True or False, got 'maybe'."),
    ],
)
def test_a_wrong_setting_is_named(config, sentence):
    with pytest.raises(model.InputError) as raised:
        token_settings.from_opts({"cachedir": "/c", "deploytoken": config})
    assert str(raised.value).startswith(sentence)
