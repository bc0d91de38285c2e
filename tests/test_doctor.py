"""``deploytoken.doctor``: each check on real files, real keys, a real SQLite store and the real facts of
this machine, then through the real ``salt-run`` and ``salt-ssh`` of an operator, and of a master with its minion."""

import json
import os
import pathlib
import pwd
import shutil
import subprocess

import pytest

from conftest import MINION_ID, REPO, as_user
from deploytoken import settings as token_settings
from deploytoken.chat import notify as chat
from deploytoken.guard import held as guard
from deploytoken.procedure import doctor, facts
from deploytoken.stores.sqlite import SqliteStore
from kingfisher_fixtures import RUNUSER
from ssh_fixtures import SYSTEM_PATH

ALL_OFF = {"kingfisher:scrapyd": False, "kingfisher:tmux": False, "kingfisher:postgres": False}


def settings_of(tmp_path, **deploytoken):
    return token_settings.from_opts({"cachedir": str(tmp_path), "deploytoken": deploytoken})


def lookup_in(values):
    """Salt's ``config.get`` over ``values`` (what the server's config and pillar say)."""
    return lambda key, default=None: values.get(key, default)


def make_key(tmp_path, name="id_ed25519"):
    path = tmp_path / ".ssh" / name
    path.parent.mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ada@laptop", "-f", str(path)], check=True)
    return path, path.with_suffix(".pub").read_text().strip()


def only(findings):
    (found,) = findings
    return found


def test_a_deploytoken_block_given_twice_in_one_file_or_in_two_files_is_a_problem(tmp_path):
    master = tmp_path / "master"
    master.write_text("deploytoken:\n  backend: postgres\next_pillar:\n  - deploytoken: {}\n"
                      "deploytoken:\n  people: {ada: Ada}\n")
    found = only(doctor.deploytoken_blocks([str(master)]))
    assert found == doctor.finding("problem", (
        f"{master} defines deploytoken: more than once, so Salt skips the whole file (and the ext_pillar with "
        "it): merge them into one block."))

    master.write_text("deploytoken:\n  backend: postgres\n")
    (tmp_path / "master.d").mkdir()
    (tmp_path / "master.d" / "deploytoken.conf").write_text("deploytoken:\n  people: {ada: Ada}\n")
    paths = doctor.config_files(str(master))
    assert paths == [str(master), str(tmp_path / "master.d" / "deploytoken.conf")]
    assert only(doctor.deploytoken_blocks(paths))["text"] == (
        f"deploytoken: is defined in {master} and {tmp_path / 'master.d' / 'deploytoken.conf'}; Salt keeps only one "
        "of them: keep one deploytoken: block, in one file.")

    (tmp_path / "master.d" / "deploytoken.conf").write_text("other: 1\n")
    assert doctor.deploytoken_blocks(paths) == [doctor.finding("ok", f"One deploytoken: block, in {master}.")]
    (tmp_path / "master.d" / "deploytoken.conf").write_text("other: [1\n")
    assert only(doctor.deploytoken_blocks(paths))["text"] == (
        f"{tmp_path / 'master.d' / 'deploytoken.conf'} is not valid YAML (line 2), so Salt skips the whole file: "
        "fix it.")


def test_without_the_ext_pillar_the_fix_is_named():
    assert doctor.ext_pillar([{"git": "x"}], "/srv/salt-config/master") == doctor.finding("problem", (
        "The deploytoken ext_pillar is not configured, so deploytoken.held blocks every run: add "
        "ext_pillar: [{deploytoken: {}}] to /srv/salt-config/master."))
    assert doctor.ext_pillar([{"deploytoken": {}}], "m")["level"] == "ok"


def test_a_private_sqlite_store_with_salt_ssh_is_a_warning_naming_the_risk(tmp_path):
    store = SqliteStore(str(tmp_path / "token.sqlite"))
    settings = settings_of(tmp_path, sqlite={"path": store.path})
    readable, warning = doctor.store(settings, store.location, store.identity, None, ssh=True)
    assert readable == doctor.finding("ok", f"The token store {store.identity['name']} can be read.")
    assert warning == doctor.finding("warning", (
        f"The token store is the SQLite file {store.path} on this machine: every operator who runs salt-ssh from "
        "their own machine has a token of their own there, and the first to deploy claims the servers for it. Use "
        "a store the team shares (deploytoken:backend postgres or google) unless everyone runs salt-ssh with this "
        "one configuration on this machine."))
    assert doctor.report([readable, warning])["retcode"] == 1
    assert doctor.store(settings, store.location, store.identity, None, ssh=False) == [readable]
    assert doctor.report([readable]) == {"findings": [f"ok: {readable['text']}"], "warnings": 0, "problems": 0,
                                         "retcode": 0}


def test_a_person_missing_from_people_is_told_what_to_add_where_and_only_what_is_used(tmp_path):
    settings = settings_of(tmp_path, people={"ada": "Ada Lovelace"})
    assert doctor.person("ada", settings, "salt-config/master")["level"] == "ok"
    assert doctor.person("zed", settings, "/etc/salt/master.d/deploytoken.conf") == doctor.finding("problem", (
        'You (zed) are not in deploytoken:people, so the guard names you by your login only: add zed: "Your Name" '
        "under deploytoken: people: in /etc/salt/master.d/deploytoken.conf."))
    assert doctor.person("zed", settings, "salt-config/master", ssh=True)["text"] == (
        "You (zed) are not in deploytoken:people, so the guard names you by your login only and no key is yours: "
        "add zed: {name: ..., ssh_keys: [...]} under deploytoken: people: in salt-config/master.")
    assert "add zed: {name: ..., email: ..., ssh_keys: [...]} " in doctor.person(
        "zed", settings, "salt-config/master", ssh=True, emails=True)["text"]
    assert not doctor.people_have_emails(settings)
    google = {"document_id": "d", "spreadsheet_id": "s", "history_range": "'Deploy history'!A:K"}
    assert doctor.people_have_emails(settings_of(tmp_path, backend="google", google=google))
    assert not doctor.people_have_emails(settings_of(
        tmp_path, backend="google", google=dict(google, service_account_file="/etc/salt/sa.json")))


def test_the_fix_goes_to_the_file_with_the_deploytoken_block(tmp_path):
    master = tmp_path / "master"
    master.write_text("log_level: info\n")
    (tmp_path / "master.d").mkdir()
    conf = tmp_path / "master.d" / "deploytoken.conf"
    assert doctor.block_file(doctor.config_files(str(master)), str(master)) == str(conf)  # where the example goes
    conf.write_text("deploytoken:\n  people: {ada: Ada}\n")
    assert doctor.block_file(doctor.config_files(str(master)), str(master)) == str(conf)
    conf.unlink()
    master.write_text("deploytoken: {}\n")
    assert doctor.block_file(doctor.config_files(str(master)), str(master)) == str(master)


def webhook(tmp_path, text, mode=0o600, **block):
    path = tmp_path / "webhook"
    path.write_text(text)
    path.chmod(mode)
    return chat.from_config(dict({"kind": "slack", "url_file": str(path)}, **block))


def test_the_chat_webhook_file_is_checked_so_no_message_is_dropped_silently(tmp_path):
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert doctor.chat(None, me) == doctor.finding("ok", "No chat is configured (deploytoken:notify), so nothing is "
                                                   "posted.")
    missing = chat.from_config({"kind": "slack", "url_file": str(tmp_path / "nowhere")})
    assert doctor.chat(missing, me) == doctor.finding("problem", (
        f"The chat's webhook URL file {tmp_path / 'nowhere'} cannot be read (No such file or directory), so every "
        f"chat message is dropped: write the webhook URL in it as one line, then chmod 600 {tmp_path / 'nowhere'}; "
        "or remove deploytoken:notify."))
    found = doctor.chat(webhook(tmp_path, "https://hooks.example.org/T0/B0/x\n", 0o640), me)
    assert found["level"] == "problem" and found["text"].startswith("The chat cannot be posted to, so every chat "
                                                                    "message is dropped: ")
    assert "(mode 0640)" in found["text"] and "chmod 600" in found["text"]
    found = doctor.chat(webhook(tmp_path, "http://hooks.example.org/x\n"), me)
    assert found["text"].endswith("must be an https:// URL (http:// only to 127.0.0.1).") and "hooks" not in \
        found["text"].split("URL in")[0]
    assert doctor.chat(webhook(tmp_path, "https://hooks.example.org/T0/B0/x\n"), "nobody-else") == doctor.finding(
        "problem", f"The chat's webhook URL file {tmp_path / 'webhook'} is owned by {me}, not by nobody-else who runs "
        f"the master: chown nobody-else {tmp_path / 'webhook'}.")
    assert doctor.chat(webhook(tmp_path, "https://hooks.example.org/T0/B0/x\n"), me) == doctor.finding(
        "ok", f"The chat's webhook URL file {tmp_path / 'webhook'} is {me}'s, mode 0600, and holds a slack webhook "
        "URL.")


def test_the_key_this_person_logs_in_with_must_be_listed_for_them(tmp_path):
    key, public = make_key(tmp_path)
    mine = settings_of(tmp_path, people={"ada": {"name": "Ada", "ssh_keys": [public]}})
    assert doctor.key_files("agent-forwarding", str(tmp_path)) == [str(key)]  # where ssh chooses: its defaults
    assert doctor.key_files("~/.ssh/id_ed25519", str(tmp_path)) == [str(key)]
    listed = doctor.login_keys("ada", mine, [str(key)], str(tmp_path), sudo=False)
    assert listed["level"] == "ok" and listed["text"].startswith(f"The key you log in with, {key} (SHA256:")

    others = settings_of(tmp_path, people={"ada": "Ada", "ben": {"name": "Ben", "ssh_keys": [public]}})
    found = doctor.login_keys("ada", others, [str(key)], str(tmp_path), sudo=True)
    assert found["level"] == "problem"
    assert found["text"].startswith(f"The key you log in with (under sudo, ~ is {tmp_path}), {key} (SHA256:")
    assert found["text"].endswith(", listed for ben), is not listed for ada, so the guard blocks your runs: add the "
                                  "line of its .pub file under deploytoken: people: ada: ssh_keys, or log in with a "
                                  "key listed there.")
    assert doctor.login_keys("ada", mine, [], "/nowhere", sudo=False)["text"] == (
        "No SSH key was found in /nowhere/.ssh, so salt-ssh has no key of yours to log in with: make one with "
        "ssh-keygen -t ed25519 and list its .pub line under deploytoken: people: ada: ssh_keys.")


def test_a_target_whose_sshd_does_not_expose_the_key_is_a_problem(tmp_path):
    settings = settings_of(tmp_path, people={"ada": "Ada"})
    opts = {"deploytoken": {"store_memory": str(tmp_path / "store.json")}}
    found = facts.gather(opts, {}, lookup_in(ALL_OFF))  # no SSH_USER_AUTH: sshd without ExposeAuthInfo
    assert found["ssh_auth"] is None and found["remembered"] is None
    exposed, remembered, sources = doctor.target("kf", found, "ada", settings, None, ssh=True)
    assert exposed == doctor.finding("problem", (
        "sshd on kf does not say which key logged in, so the guard cannot tell whose key it was: add "
        "ExposeAuthInfo yes to kf's /etc/ssh/sshd_config and reload sshd."))
    assert remembered["level"] == "ok" and sources == doctor.finding(
        "ok", "kf: the busy check reads no source; turned off: postgres, scrapyd, tmux.")


def test_a_target_that_remembers_another_store_is_a_problem(tmp_path):
    store = SqliteStore(str(tmp_path / "token.sqlite"))
    memory = tmp_path / "memory" / "store.json"
    guard.remember_store(str(memory), {"id": "postgres:0123", "name": "PostgreSQL deploytoken@db:5432/deploy"}, "ada")
    found = facts.gather({"deploytoken": {"store_memory": str(memory)}}, {}, lookup_in(ALL_OFF))
    _, remembered, _ = doctor.target("kf", found, "ada", settings_of(tmp_path), store.identity, ssh=True)
    assert remembered == doctor.finding("problem", (
        f"kf obeys the token store PostgreSQL deploytoken@db:5432/deploy, not this one ({store.identity['name']}), so "
        "the guard blocks every run from here: use the store the team shares, or, if the team moved to "
        f"{store.identity['name']} on purpose, remove {memory} on kf."))
    guard.remember_store(str(memory), store.identity, "ada")
    found = facts.gather({"deploytoken": {"store_memory": str(memory)}}, {}, lookup_in(ALL_OFF))
    assert doctor.target("kf", found, "ada", settings_of(tmp_path), store.identity, ssh=False)[0] == doctor.finding(
        "ok", f"kf obeys the token store {store.identity['name']}.")


def test_a_source_the_busy_check_cannot_read_names_the_setting_to_fix(tmp_path):
    lookup = lookup_in(dict(ALL_OFF, **{"kingfisher:scrapyd": None, "kingfisher:scrapyd:url": "ftp://x"}))
    found = facts.gather({"deploytoken": {"store_memory": str(tmp_path / "m.json")}}, {}, lookup)
    assert found["sources"]["scrapyd"]["status"] == "unreadable"
    problem = doctor.target("kf", found, "ada", settings_of(tmp_path), None, ssh=False)[-1]
    assert problem["level"] == "problem"
    assert problem["text"].startswith(f"kf: the busy check cannot read scrapyd: {found['sources']['scrapyd']['error']}")
    assert problem["text"].endswith("Fix kingfisher:scrapyd: in kf's pillar, or turn the source off there "
                                    "(kingfisher: {scrapyd: false}) if kf has none.")


ENTRY = {"host": "kf.example.org", "port": 2222, "user": "root"}


def test_a_server_that_does_not_answer_is_a_problem(tmp_path):
    assert doctor.target("kf", "ssh: connect to host kf.example.org port 2222: Connection refused", "ada",
                         settings_of(tmp_path), None, ssh=True, entry=ENTRY) == [doctor.finding("problem", (
                             "kf did not answer deploytoken.facts (ssh: connect to host kf.example.org port 2222: "
                             "Connection refused): check that it is up and that you can log in to it: ssh -p 2222 "
                             "root@kf.example.org"))]
    assert doctor.target("kf", "'deploytoken.facts' is not available.", "ada", settings_of(tmp_path), None,
                         ssh=True, entry=ENTRY)[0]["text"].endswith(
        "check that it is up, that you can log in to it, and that deploytoken is installed in the Python that runs "
        "your salt-ssh (then run salt-ssh -t once).")
    assert doctor.target("kf", None, "ada", settings_of(tmp_path), None, ssh=False)[0]["text"].endswith(
        "check that it is up, that you can log in to it, and that its modules are synced.")


# What salt-ssh returned instead of an answer, as seen (salt/client/ssh/shell.py, its shim, ssh and libpq).
UNKNOWN_HOST_KEY = """The host key needs to be accepted, to auto accept run salt-ssh with the -i flag:
The authenticity of host '[kf.example.org]:2222 ([203.0.113.7]:2222)' can't be established.
ED25519 key fingerprint is SHA256:4vF0m6L0nVhQb0Ixm9mKkD0zX9H6d0w2pWJ1x1Yt3nE.
This key is not known by any other names.
Are you sure you want to continue connecting (yes/no/[fingerprint])? """
CHANGED_HOST_KEY = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Host key verification failed."""
PYENV_SHIM = """Traceback (most recent call last):
  File "<string>", line 4, in <module>
  File "<string>", line 4, in <listcomp>
  File "<frozen os>", line 679, in __getitem__
KeyError: 'LD_LIBRARY_PATH'
ERROR: Unable to locate appropriate python command"""
NO_PG_PASSWORD = ('the server refused this role (connection failed: connection to server at "127.0.0.1", port 5432 '
                  'failed: fe_sendauth: no password supplied)')


@pytest.mark.parametrize("text, sentence", [
    (UNKNOWN_HOST_KEY,
     "kf's host key is not known to you yet, so ssh refused to log in: run ssh -p 2222 root@kf.example.org once, "
     "check the fingerprint it shows against the one the team publishes and answer yes (not salt-ssh -i, which "
     "accepts any host key)."),
    ("Host key verification failed.",
     "kf's host key is not known to you yet, so ssh refused to log in: run ssh -p 2222 root@kf.example.org once, "
     "check the fingerprint it shows against the one the team publishes and answer yes (not salt-ssh -i, which "
     "accepts any host key)."),
    (CHANGED_HOST_KEY,
     "kf's host key is not the one your known_hosts holds (the server was reinstalled, or something poses as it), "
     "so ssh refused to log in: ask whoever runs kf; once sure, ssh-keygen -R '[kf.example.org]:2222', then ssh -p "
     "2222 root@kf.example.org once and check the fingerprint it shows."),
    (PYENV_SHIM,
     "salt-ssh could not start on kf: root's PATH there starts with a python3 that is not the system's (a pyenv "
     "shim): add set_path: /usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin to kf's entry in the roster."),
    ("root@127.0.0.1: Permission denied (publickey).",
     "kf refused your SSH key: ask whoever runs kf to add your key's .pub line to root's ~/.ssh/authorized_keys "
     "there, then check that ssh -p 2222 root@kf.example.org logs you in."),
    (NO_PG_PASSWORD,
     "PostgreSQL on kf asked for a password and none was given (fe_sendauth: no password supplied): add the line "
     "host:port:dbname:user:password to the ~/.pgpass of the user who connects, mode 0600 (docs/stores.md, "
     "\"Setting up the database\")."),
])
def test_a_known_salt_ssh_failure_is_told_as_the_teams_fix_in_one_sentence(tmp_path, text, sentence):
    assert doctor.ssh_failure("kf", text, ENTRY) == sentence
    assert doctor.target("kf", text, "ada", settings_of(tmp_path), None, ssh=True, entry=ENTRY) == [
        doctor.finding("problem", sentence)]


def test_an_unknown_failure_shows_a_tracebacks_last_line_only(tmp_path):
    text = 'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\nOSError: [Errno 28] disk full\n'
    assert doctor.ssh_failure("kf", text, ENTRY) is None
    (found,) = doctor.target("kf", text, "ada", settings_of(tmp_path), None, ssh=True, entry={})
    assert found["text"] == ("kf did not answer deploytoken.facts (OSError: [Errno 28] disk full): check that it is "
                             "up and that you can log in to it: ssh -p 22 root@kf")


def test_a_store_without_its_password_names_the_pgpass_line_to_add(tmp_path):
    settings = settings_of(tmp_path, backend="postgres", postgres={
        "dsn": "host=db.example.org port=5433 dbname=deploytoken user=deploytoken sslmode=verify-full"})
    assert doctor.store(settings, None, None, NO_PG_PASSWORD, ssh=True) == [doctor.finding("problem", (
        "The token store cannot be read: PostgreSQL asks for a password and you gave none (fe_sendauth: no password "
        "supplied): add the line db.example.org:5433:deploytoken:deploytoken:PASSWORD with the team's password to "
        "your ~/.pgpass and chmod 600 ~/.pgpass (docs/stores.md, \"Setting up the database\")."))]
    assert doctor.pgpass_line({"host": "/run/post:gres", "dbname": "dt", "user": "dt"}) == (
        "/run/post\\:gres:5432:dt:dt:PASSWORD")


def clone(tmp_path):
    top = tmp_path / "deploy"
    for folder in ("salt-config", "salt", ".salt/cache/proc"):
        (top / folder).mkdir(parents=True)
    (top / "Saltfile").write_text("salt-ssh:\n  config_dir: salt-config\n")
    (top / "salt-config" / "master").write_text("root_dir: .salt\n")
    return top


def test_salt_runs_from_the_top_folder_of_the_clone_only(tmp_path):
    top = clone(tmp_path)
    conf = str(top / "salt-config" / "master")
    assert doctor.clone_top(conf) == str(top) and doctor.clone_top(str(tmp_path / "master")) is None
    assert doctor.working_folder(str(top), str(top)) == doctor.finding(
        "ok", f"You run Salt from the top folder of your clone, {top}.")
    (top / "salt" / ".salt").mkdir()  # what salt-run -c ../salt-config leaves in a subfolder
    assert doctor.working_folder(str(top), str(top / "salt")) == doctor.finding("problem", (
        f"You ran this from {top / 'salt'}, not from {top}, the top folder of your clone: Salt reads the Saltfile and "
        f"the relative paths of salt-config/master from the folder it runs in: cd {top} and run every salt-run and "
        f"salt-ssh from there, and remove the {top / 'salt' / '.salt'} folder Salt made here."))


def test_files_a_run_under_sudo_left_in_the_clones_salt_folder_are_found_with_the_fix(tmp_path, operators):
    top = clone(tmp_path)
    (top / ".salt" / "log").mkdir()
    (top / ".salt" / "log" / "master").write_text("")  # as root, like a run under sudo
    ada = pwd.getpwnam(operators["ada"].login)
    subprocess.run(["chown", "-R", f"{ada.pw_name}:", str(top / ".salt" / "cache")], check=True)
    found = doctor.salt_files_owner(str(top / ".salt"), ada.pw_uid, ".salt")
    assert found == doctor.finding("problem", (
        f"3 files in {top / '.salt'} belong to root, not to you (left by a run under sudo; {top / '.salt'} first), so "
        "Salt cannot write its cache and log there (Failed to open log file): sudo chown -R $USER: .salt"))
    subprocess.run(["chown", "-R", f"{ada.pw_name}:", str(top / ".salt")], check=True)
    assert doctor.salt_files_owner(str(top / ".salt"), ada.pw_uid, ".salt")["level"] == "ok"
    assert doctor.not_under_sudo("ada")["text"].endswith("then, as yourself, sudo chown -R $USER: .salt")


@pytest.fixture
def private_ada(ssh_world, operators, tmp_path):
    """ada on a private SQLite store, her pillar turning off the Kingfisher sources kf lacks (its tmux is
    read), kf remembering no store: the store's path."""
    private = tmp_path / "private.sqlite"
    ssh_world.configure(operators["ada"], {"sqlite": {"path": str(private)}})
    pillar = ssh_world.confdir(operators["ada"]) / "pillar"
    (pillar / "top.sls").write_text("base:\n  kf:\n    - kf\n")
    (pillar / "kf.sls").write_text("kingfisher: {scrapyd: false, postgres: false}\n")
    ssh_world.forget_memory()
    yield private
    for name in ("top.sls", "kf.sls"):
        (pillar / name).unlink()
    ssh_world.forget_memory()


@pytest.mark.parametrize("ssh", [False, True])
def test_doctor_through_salt_run_names_the_private_store_and_checks_the_target(
    ssh_world, operators, private_ada, ssh
):
    ada = operators["ada"]
    ran = ssh_world.salt_run(ada, "deploytoken.doctor", f"ssh={ssh}")
    assert ran.returncode == 1, ran
    lines = ran.data["findings"]
    assert any(line.startswith(f"warning: The token store is the SQLite file {private_ada} on this "
                               "machine: ") for line in lines), lines
    assert f"ok: You ({ada.login}) are in deploytoken:people as Ada Lovelace." in lines
    if ssh:
        assert ran.data["warnings"] == 1 and ran.data["problems"] == 0, "\n".join(lines)
        assert any(line.startswith(f"ok: The key you log in with, {ada.key} (SHA256:") for line in lines), lines
        assert "ok: kf: sshd exposes the key that logged in, and it is yours." in lines
        assert "ok: kf: the busy check reads tmux; turned off: postgres, scrapyd." in lines
    else:  # no master runs for this configuration, so no minion can answer
        assert lines[-1] == "problem: No server matches '*' among this master's accepted minions."


def test_doctor_through_salt_ssh_tells_an_unknown_host_key_as_the_ssh_to_run_once(
    ssh_world, operators, private_ada, sshd, tmp_path
):
    ada = operators["ada"]
    master = ssh_world.confdir(ada) / "master"
    before = master.read_text()
    unknown = tmp_path / "known_hosts"
    unknown.touch()
    master.write_text(before.replace(str(sshd.known_hosts), str(unknown)))
    try:
        ran = ssh_world.salt_run(ada, "deploytoken.doctor", "ssh=True")
    finally:
        master.write_text(before)
    assert ran.returncode == 1, ran
    assert (f"problem: kf's host key is not known to you yet, so ssh refused to log in: run ssh -p {sshd.port} "
            "root@127.0.0.1 once, check the fingerprint it shows against the one the team publishes and answer yes "
            "(not salt-ssh -i, which accepts any host key).") in ran.data["findings"], ran.data["findings"]
    assert "Traceback" not in ran.stdout and "-i flag" not in ran.stdout


@pytest.fixture
def ada_clone(operators):
    """The example deploy repository as ada's clone in her home, its store a PostgreSQL that refuses at once."""
    ada = operators["ada"]
    top = pathlib.Path(pwd.getpwnam(ada.login).pw_dir) / "deploy"
    shutil.copytree(REPO / "examples" / "deploy-repo", top)
    master = top / "salt-config" / "master"
    master.write_text(master.read_text().replace("host=db.example.org port=5432", "host=127.0.0.1 port=1"))
    subprocess.run(["chown", "-R", f"{ada.login}:", str(top)], check=True)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def as_ada(operators, operator_bin, cwd, *args, sudo=False):
    login = operators["ada"].login
    command = [RUNUSER, "-u", login, "--", *(["sudo", "-n", "--"] if sudo else []), str(operator_bin / "salt-run"),
               "--out=json", "--log-level=quiet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, cwd=cwd,
                          env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": pwd.getpwnam(login).pw_dir})


def findings_of(done):
    assert done.stdout.startswith("{"), done
    return json.loads(done.stdout)["findings"]


def test_in_a_clone_doctor_finds_a_run_under_sudo_and_the_root_files_it_left(operators, operator_bin, ada_clone):
    ada = operators["ada"].login
    lines = findings_of(as_ada(operators, operator_bin, ada_clone, "deploytoken.doctor", "targets=none"))
    assert f"ok: Every file in {ada_clone / '.salt'} is yours." in lines, lines
    lines = findings_of(as_ada(operators, operator_bin, ada_clone, "deploytoken.doctor", "targets=none", sudo=True))
    assert f"ok: You run Salt from the top folder of your clone, {ada_clone}." in lines, lines
    assert (f"problem: You ran this under sudo: in your clone, run salt-run and salt-ssh as yourself ({ada}), never "
            "with sudo (ssh would use root's keys and known_hosts, and Salt leaves files in .salt that only root can "
            "write); then, as yourself, sudo chown -R $USER: .salt") in lines, lines

    lines = findings_of(as_ada(operators, operator_bin, ada_clone, "deploytoken.doctor", "targets=none"))
    (owned,) = [line for line in lines if f" in {ada_clone / '.salt'} belong" in line]
    assert owned.startswith("problem: ") and owned.endswith(
        "so Salt cannot write its cache and log there (Failed to open log file): sudo chown -R $USER: .salt"), owned

    subprocess.run([RUNUSER, "-u", ada, "--", "sudo", "-n", "chown", "-R", f"{ada}:", ".salt"], cwd=ada_clone,
                   check=True)
    lines = findings_of(as_ada(operators, operator_bin, ada_clone, "deploytoken.doctor", "targets=none"))
    assert f"ok: Every file in {ada_clone / '.salt'} is yours." in lines, lines
    assert not [line for line in lines if "sudo" in line], lines


def test_from_a_subfolder_of_the_clone_salt_run_fails_as_the_docs_say_and_doctor_says_where_to_run(
    operators, operator_bin, ada_clone
):
    sub = ada_clone / "salt"
    done = as_ada(operators, operator_bin, sub, "deploytoken.doctor")
    assert done.returncode != 0 and "CONFIG '/etc/salt' directory does not exist" in done.stdout + done.stderr, done
    done = as_ada(operators, operator_bin, sub, "-c", "../salt-config", "deploytoken.doctor")
    assert done.returncode != 0 and "FileNotFoundError" in done.stdout + done.stderr, done
    assert (sub / ".salt").is_dir()
    # Once Salt can run there at all, doctor says where to run from.
    subprocess.run([RUNUSER, "-u", operators["ada"].login, "--", "mkdir", "-p", ".salt/cache/proc"], cwd=sub,
                   check=True)
    lines = findings_of(as_ada(operators, operator_bin, sub, "-c", "../salt-config", "deploytoken.doctor",
                               "targets=none"))
    assert (f"problem: You ran this from {sub}, not from {ada_clone}, the top folder of your clone: Salt reads the "
            f"Saltfile and the relative paths of salt-config/master from the folder it runs in: cd {ada_clone} and run "
            f"every salt-run and salt-ssh from there, and remove the {sub / '.salt'} folder Salt made here.") in lines


def test_doctor_with_a_master_asks_its_minions(salt_run, salt_minion):
    ran = as_user(salt_run, "alice", "deploytoken.doctor")
    assert isinstance(ran.data, dict), ran
    lines = ran.data["findings"]
    assert "ok: The deploytoken ext_pillar is configured." in lines
    assert "ok: You (alice) are in deploytoken:people as Alice Smith." in lines
    assert not any("SQLite file" in line or "sshd" in line or "key you log in with" in line for line in lines), lines
    assert any(line.startswith(f"ok: {MINION_ID} ") and " token store" in line for line in lines), lines
    # The shared minion has no Scrapyd of its own at the default address: named with the setting to fix.
    scrapyd = [line for line in lines if line.startswith(f"problem: {MINION_ID}: the busy check cannot read scrapyd: ")]
    assert len(scrapyd) == 1 and ran.returncode == 1, lines


@pytest.mark.parametrize("args", [("targets=a\x07b",), ("targets=",), ("tgt_type=globb",), ("ssh=maybe",)])
def test_a_mistyped_argument_is_bad_input_before_any_check(salt_run, args):
    # The CLI, not the shared in-process runner: made this early in the session, its loaded modules would be
    # taken over by the in-process runner the fuzz loads later on another master's config.
    ret = salt_run.run("deploytoken.doctor", *args)
    assert ret.returncode == 2 and "findings" not in ret.data, ret.data
    assert ret.data["error"].endswith("."), ret.data
