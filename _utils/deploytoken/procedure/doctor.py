"""
``salt-run deploytoken.doctor``: what is right and what to fix in one operator's (or one master's)
set-up, one finding per line. Each check is a plain function of what the runner gathered (the
config files, the settings, the store, the keys on this machine, each server's facts from
``deploytoken.procedure.facts``), so every finding can be tested without Salt.
"""

import glob
import os
import pwd
import re
import stat

import yaml

from deploytoken import sshkey
from deploytoken.chat import notify

OK, WARNING, PROBLEM = "ok", "warning", "problem"
# The keys ssh offers when it is told none (ssh_config(5), IdentityFile), in its order.
DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_dsa")
# What a roster entry or ssh_priv says when ssh is to choose the key itself.
SSH_CHOOSES = (None, "", "agent-forwarding")


def finding(level, text):
    return {"level": level, "text": text}


def report(findings):
    """The runner's answer: one line per finding, exit status 0 only when every one is ok."""
    counts = {level: sum(1 for found in findings if found["level"] == level) for level in (OK, WARNING, PROBLEM)}
    return {
        "findings": [f"{found['level']}: {found['text']}" for found in findings],
        "warnings": counts[WARNING],
        "problems": counts[PROBLEM],
        "retcode": 0 if counts[OK] == len(findings) else 1,
    }


# ---- the configuration files ------------------------------------------------------------------


def config_files(conf_file):
    """The master file and the ``master.d/*.conf`` files Salt reads with it."""
    if not conf_file:
        return []
    return [conf_file] + sorted(glob.glob(os.path.join(os.path.dirname(conf_file), "master.d", "*.conf")))


def deploytoken_blocks(paths):
    """Findings about the ``deploytoken:`` blocks of ``paths``. Salt skips a file whose YAML holds a key
    twice, and runs on without its settings (the ext_pillar silently off), so the files are read here."""
    findings, defining = [], []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                node = yaml.compose(handle)
        except OSError as exc:
            findings.append(finding(PROBLEM, f"{path} cannot be read ({exc.strerror}), so Salt runs without it."))
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            findings.append(finding(PROBLEM, f"{path} is not valid YAML{where}, so Salt skips the whole file: "
                                    "fix it."))
            continue
        keys = [key.value for key, _ in node.value] if isinstance(node, yaml.MappingNode) else []
        top = [key for key in keys if isinstance(key, str)]
        twice = sorted({key for key in top if top.count(key) > 1})
        if twice:
            findings.append(finding(PROBLEM, f"{path} defines {', '.join(k + ':' for k in twice)} more than once, so "
                                    "Salt skips the whole file (and the ext_pillar with it): merge them into one "
                                    "block."))
        if "deploytoken" in top:
            defining.append(path)
    if len(defining) > 1:
        findings.append(finding(PROBLEM, f"deploytoken: is defined in {' and '.join(defining)}; Salt keeps only one of "
                                "them: keep one deploytoken: block, in one file."))
    if not findings:
        shown = defining[0] if defining else "no file (all defaults)"
        findings.append(finding(OK, f"One deploytoken: block, in {shown}."))
    return findings


def ext_pillar(entries, conf_file):
    """Whether the deploytoken ext_pillar is on: without it the guard blocks every run."""
    if any(isinstance(entry, dict) and "deploytoken" in entry for entry in entries or []):
        return finding(OK, "The deploytoken ext_pillar is configured.")
    return finding(PROBLEM, f"The deploytoken ext_pillar is not configured, so deploytoken.held blocks every run: add "
                   f"ext_pillar: [{{deploytoken: {{}}}}] to {conf_file}.")


# ---- the clone of a deploy repository ----------------------------------------------------------------


def clone_top(conf_file):
    """The top folder of the deploy repository whose ``salt-config/master`` is ``conf_file`` (a ``Saltfile``
    beside the config folder), or None on a master or any other set-up."""
    if not conf_file:
        return None
    top = os.path.dirname(os.path.dirname(os.path.abspath(conf_file)))
    return top if os.path.isfile(os.path.join(top, "Saltfile")) else None


def working_folder(top, cwd):
    """Whether salt-run runs in the top folder of the clone: Salt looks for the Saltfile only in the folder it
    runs in and resolves the master file's relative paths (``root_dir: .salt``) from there."""
    if os.path.realpath(cwd) == os.path.realpath(top):
        return finding(OK, f"You run Salt from the top folder of your clone, {top}.")
    stray = os.path.join(cwd, ".salt")
    remove = f", and remove the {stray} folder Salt made here" if os.path.isdir(stray) else ""
    return finding(PROBLEM, f"You ran this from {cwd}, not from {top}, the top folder of your clone: Salt reads the "
                   f"Saltfile and the relative paths of salt-config/master from the folder it runs in: cd {top} and "
                   f"run every salt-run and salt-ssh from there{remove}.")


def not_under_sudo(login):
    """Run in a clone under sudo: ssh reads root's keys and known_hosts, and Salt writes root's files in the
    clone's ``.salt/``, which the person's own runs then cannot write."""
    return finding(PROBLEM, f"You ran this under sudo: in your clone, run salt-run and salt-ssh as yourself "
                   f"({login}), never with sudo (ssh would use root's keys and known_hosts, and Salt leaves files in "
                   ".salt that only root can write); then, as yourself, sudo chown -R $USER: .salt")


def salt_files_owner(root_dir, uid, shown):
    """Whether every file of Salt's ``root_dir`` (the clone's ``.salt/``) belongs to ``uid``, who runs Salt. A
    run under sudo leaves root's files there, after which Salt cannot write its cache and every run warns
    ``Failed to open log file``. ``shown``: how the fix names the folder (``.salt`` from the top folder)."""
    others = {}
    for folder, dirs, files in os.walk(root_dir):
        for path in ([folder] if folder == root_dir else []) + [os.path.join(folder, name) for name in dirs + files]:
            try:
                owner = os.lstat(path).st_uid
            except OSError:  # gone meanwhile
                continue
            if owner != uid:
                others.setdefault(owner, []).append(path)
    if not others:
        return finding(OK, f"Every file in {root_dir} is yours.")
    count = sum(len(paths) for paths in others.values())
    owners = " and ".join(_user_name(owner) for owner in sorted(others))
    first = min(min(paths) for paths in others.values())
    return finding(PROBLEM, f"{count} file{'s' if count > 1 else ''} in {root_dir} belong{'s' if count == 1 else ''} "
                   f"to {owners}, not to you (left by a run under sudo; {first} first), so Salt cannot write its cache "
                   f"and log there (Failed to open log file): sudo chown -R $USER: {shown}")


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# ---- the store ------------------------------------------------------------------------------------


def store(settings, location, identity, error, ssh):
    """Whether the store can be read, and whether it is one the whole team shares.

    ``ssh``: this machine deploys with salt-ssh (a roster, or ``deploytoken:ssh``), so a SQLite file here
    is this operator's own token.
    """
    if error and settings.backend == "postgres" and NO_PASSWORD in error:
        return [finding(PROBLEM, (
            f"The token store cannot be read: PostgreSQL asks for a password and you gave none ({NO_PASSWORD}): "
            f"add the line {pgpass_line(settings.section('postgres'))} with the team's password to your ~/.pgpass "
            "and chmod 600 ~/.pgpass (docs/stores.md, \"Setting up the database\")."))]
    if error:
        return [finding(PROBLEM, f"The token store cannot be read: {error}")]
    found = [finding(OK, f"The token store {identity['name']} can be read.")]
    if settings.backend == "sqlite" and ssh:
        found.append(finding(WARNING, (
            f"The token store is the SQLite file {location} on this machine: every operator who runs salt-ssh "
            "from their own machine has a token of their own there, and the first to deploy claims the servers "
            "for it. Use a store the team shares (deploytoken:backend postgres or google) unless everyone runs "
            "salt-ssh with this one configuration on this machine.")))
    return found


NO_PASSWORD = "fe_sendauth: no password supplied"


def pgpass_line(section):
    """The ``~/.pgpass`` line (``host:port:dbname:user:PASSWORD``) for a ``deploytoken:postgres:`` block."""
    # Imported here: a master on another store never loads psycopg.
    from psycopg import conninfo

    params = conninfo.conninfo_to_dict(section.get("dsn") or "")
    params.update({key: value for key, value in section.items() if key in ("host", "port", "dbname", "user")})
    user = params.get("user") or "*"
    fields = [params.get("host") or "localhost", params.get("port") or "5432", params.get("dbname") or user, user]
    return ":".join(str(field).replace("\\", "\\\\").replace(":", "\\:") for field in fields) + ":PASSWORD"


# ---- the chat ------------------------------------------------------------------------------------


def chat(webhook, daemon_user):
    """Whether the chat of ``deploytoken:notify`` can be posted to by the master, which runs as
    ``daemon_user``. A webhook that cannot be used drops every message with only a WARNING in the
    master's log, so it is checked here: the URL file exists, is its own, other users cannot read it,
    and it holds a URL that parses."""
    if webhook is None:
        return finding(OK, "No chat is configured (deploytoken:notify), so nothing is posted.")
    if webhook.url_file is None:
        return finding(OK, f"The {webhook.kind} webhook URL is in the master config; it parses.")
    try:
        info = os.stat(webhook.url_file)
    except OSError as exc:
        return finding(PROBLEM, f"The chat's webhook URL file {webhook.url_file} cannot be read ({exc.strerror}), so "
                       "every chat message is dropped: write the webhook URL in it as one line, then chmod 600 "
                       f"{webhook.url_file}; or remove deploytoken:notify.")
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    if daemon_user and owner != daemon_user:
        return finding(PROBLEM, f"The chat's webhook URL file {webhook.url_file} is owned by {owner}, not by "
                       f"{daemon_user} who runs the master: chown {daemon_user} {webhook.url_file}.")
    try:
        notify.webhook_url(webhook)
    except notify.WebhookError as exc:
        return finding(PROBLEM, f"The chat cannot be posted to, so every chat message is dropped: {exc}.")
    return finding(OK, f"The chat's webhook URL file {webhook.url_file} is {daemon_user or owner}'s, mode "
                   f"{stat.S_IMODE(info.st_mode):04o}, and holds a {webhook.kind} webhook URL.")


# ---- the person and their key -----------------------------------------------------------------


def person(login, settings, block_file, ssh=False, emails=False):
    """Whether ``login`` is in ``deploytoken:people``; the fix asks only for what this set-up uses: the
    SSH keys under salt-ssh, the email with the Google store writing as each person's own account.

    ``block_file``: the file holding the ``deploytoken:`` block (``block_file``), where the fix goes.
    """
    if login in settings.people:
        return finding(OK, f"You ({login}) are in deploytoken:people as {settings.people[login]}.")
    wanted = ["name: ..."] + (["email: ..."] if emails else []) + (["ssh_keys: [...]"] if ssh else [])
    entry = f"{{{', '.join(wanted)}}}" if len(wanted) > 1 else '"Your Name"'
    keys = " and no key is yours" if ssh else ""
    return finding(PROBLEM, f"You ({login}) are not in deploytoken:people, so the guard names you by your login "
                   f"only{keys}: add {login}: {entry} under deploytoken: people: in {block_file}.")


def people_have_emails(settings):
    """Whether ``deploytoken:people`` needs each person's email: the Google store writing as their own account."""
    if settings.backend != "google":
        return False
    from deploytoken.stores.google import client  # Google's client library only where the Google store is used

    return client.uses_user_credentials(settings.section("google"))


def block_file(paths, conf_file):
    """The file whose ``deploytoken:`` block a fix goes into: the first of ``paths`` that has one, else
    ``master.d/deploytoken.conf`` beside ``conf_file`` on a master (where the example goes), else ``conf_file``."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                node = yaml.compose(handle)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(node, yaml.MappingNode) and any(key.value == "deploytoken" for key, _ in node.value):
            return path
    if conf_file and os.path.basename(conf_file) == "master" and os.path.isdir(os.path.join(
            os.path.dirname(conf_file), "master.d")):
        return os.path.join(os.path.dirname(conf_file), "master.d", "deploytoken.conf")
    return conf_file


def key_files(priv, home):
    """The private keys ssh logs in with: ``priv`` (a roster entry's ``priv`` or ``ssh_priv``), or where ssh
    chooses (``agent-forwarding``, nothing said) the default keys under ``home`` that exist."""
    if priv not in SSH_CHOOSES:
        priv = str(priv)
        return [os.path.join(home, priv[2:]) if priv.startswith("~/") else priv]
    return [path for path in (os.path.join(home, ".ssh", name) for name in DEFAULT_KEYS) if os.path.exists(path)]


def login_keys(login, settings, keys, home, sudo):
    """Whether the public half of a key in ``keys`` (private key paths) is listed for ``login``.

    ``home``: the home ssh reads (root's under sudo, which ``sudo`` says).
    """
    under_sudo = f" (under sudo, ~ is {home})" if sudo else ""
    if not keys:
        return finding(PROBLEM, f"No SSH key was found in {home}/.ssh{under_sudo}, so salt-ssh has no key of yours to "
                       "log in with: make one with ssh-keygen -t ed25519 and list its .pub line under "
                       f"deploytoken: people: {login}: ssh_keys.")
    seen = []
    for key in keys:
        try:
            with open(f"{key}.pub", encoding="utf-8") as handle:
                line = handle.read().strip()
        except OSError:
            seen.append(f"{key} (no {key}.pub next to it)")
            continue
        fingerprint = sshkey.fingerprint(line)
        owner = settings.ssh_keys.get(fingerprint)
        if owner == login:
            return finding(OK, f"The key you log in with, {key} ({fingerprint}), is listed for you.")
        seen.append(f"{key} ({fingerprint}{', listed for ' + owner if owner else ''})")
    return finding(PROBLEM, f"The key you log in with{under_sudo}, {', '.join(seen)}, is not listed for {login}, so "
                   f"the guard blocks your runs: add the line of its .pub file under deploytoken: people: {login}: "
                   "ssh_keys, or log in with a key listed there.")


def home_of_this_process():
    """The home ssh reads: the effective user's own, whatever ``$HOME`` says (so root's under sudo)."""
    return pwd.getpwuid(os.geteuid()).pw_dir


# ---- each server ------------------------------------------------------------------------------------


def target(name, facts, login, settings, identity, ssh, entry=None):
    """Findings about one server from its ``deploytoken.facts`` answer (a string or None: it did not answer).

    ``entry``: the server's roster entry under salt-ssh (``host``, ``port``, ``user``), for the fixes.
    """
    if not isinstance(facts, dict) or "sources" not in facts:
        known = ssh_failure(name, str(facts or ""), entry or {}) if ssh else None
        if known:
            return [finding(PROBLEM, known)]
        if ssh and "is not available" not in str(facts):
            return [finding(PROBLEM, f"{name} did not answer deploytoken.facts ({_shown(facts)}): check that it is up "
                            f"and that you can log in to it: {_ssh_command(name, entry or {})}")]
        # Under salt-ssh the server's modules are the ones salt-ssh's thin took from the installed package.
        modules = ("deploytoken is installed in the Python that runs your salt-ssh (then run salt-ssh -t once)"
                   if ssh else "its modules are synced")
        return [finding(PROBLEM, f"{name} did not answer deploytoken.facts ({_shown(facts)}): check that it is up, "
                        f"that you can log in to it, and that {modules}.")]
    found = []
    if ssh:
        found.append(_exposed_key(name, facts.get("ssh_auth"), login, settings))
    found.append(_remembered(name, facts, identity))
    states = facts.get("sources") or {}
    unreadable = [finding(PROBLEM, (
        f"{name}: the busy check cannot read {source}: {state.get('error')} Fix kingfisher:{source}: in {name}'s "
        f"pillar, or turn the source off there (kingfisher: {{{source}: false}}) if {name} has none."))
        for source, state in sorted(states.items()) if state.get("status") == "unreadable"]
    readable = sorted(source for source, state in states.items() if state.get("status") == "readable")
    off = sorted(source for source, state in states.items() if state.get("status") == "off")
    return found + (unreadable or [finding(OK, (
        f"{name}: the busy check reads {', '.join(readable) or 'no source'}"
        f"{'; turned off: ' + ', '.join(off) if off else ''}."))])


def _exposed_key(name, ssh_auth, login, settings):
    if ssh_auth is None:
        return finding(PROBLEM, f"sshd on {name} does not say which key logged in, so the guard cannot tell whose key "
                       f"it was: add ExposeAuthInfo yes to {name}'s /etc/ssh/sshd_config and reload sshd.")
    owners = [settings.ssh_keys.get(key) for key in ssh_auth]
    if login in owners:
        return finding(OK, f"{name}: sshd exposes the key that logged in, and it is yours.")
    shown = ", ".join(f"{key}{' (' + owner + ')' if owner else ''}" for key, owner in zip(ssh_auth, owners))
    return finding(PROBLEM, f"{name}: the key that logged in ({shown or 'none'}) is not listed for {login}, so the "
                   f"guard blocks your runs: list it under deploytoken: people: {login}: ssh_keys, or log in with "
                   "your own key.")


def _remembered(name, facts, identity):
    remembered = facts.get("remembered")
    if not remembered:
        return finding(OK, f"{name} remembers no token store yet; its next deployment makes it obey "
                       f"{identity['name'] if identity else 'the store it comes from'}.")
    if identity is None or remembered.get("id") == identity["id"]:
        return finding(OK, f"{name} obeys the token store {remembered.get('name')}.")
    return finding(PROBLEM, f"{name} obeys the token store {remembered.get('name')}, not this one "
                   f"({identity['name']}), so the guard blocks every run from here: use the store the team shares, "
                   f"or, if the team moved to {identity['name']} on purpose, remove {facts.get('memory')} on {name}.")


# What salt-ssh says instead of an answer, with the team's fix: (pattern, sentence). The sentence is formatted
# with the server's name, its ssh command and its host as known_hosts names it; the first match wins.
SSH_FAILURES = (
    (r"REMOTE HOST IDENTIFICATION HAS CHANGED",
     "{name}'s host key is not the one your known_hosts holds (the server was reinstalled, or something poses as "
     "it), so ssh refused to log in: ask whoever runs {name}; once sure, ssh-keygen -R '{known}', then {ssh} once "
     "and check the fingerprint it shows."),
    (r"host key needs to be accepted|Host key verification failed|authenticity of host",
     "{name}'s host key is not known to you yet, so ssh refused to log in: run {ssh} once, check the fingerprint "
     "it shows against the one the team publishes and answer yes (not salt-ssh -i, which accepts any host key)."),
    (r"KeyError: 'LD_LIBRARY_PATH'",
     "salt-ssh could not start on {name}: root's PATH there starts with a python3 that is not the system's (a "
     "pyenv shim): add set_path: /usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin to {name}'s entry in the roster."),
    (r"Permission denied \(publickey",
     "{name} refused your SSH key: ask whoever runs {name} to add your key's .pub line to root's "
     "~/.ssh/authorized_keys there, then check that {ssh} logs you in."),
    (r"fe_sendauth: no password supplied",
     "PostgreSQL on {name} asked for a password and none was given (fe_sendauth: no password supplied): add "
     "the line host:port:dbname:user:password to the ~/.pgpass of the user who connects, mode 0600 "
     "(docs/stores.md, \"Setting up the database\")."),
)


def ssh_failure(name, text, entry):
    """The team's fix, in one sentence, for what salt-ssh said instead of ``name``'s answer (``text``: its
    output, a traceback included), or None when it is none of the known failures.

    ``entry``: the server's roster entry (``host``, ``port``, ``user``).
    """
    for pattern, sentence in SSH_FAILURES:
        if re.search(pattern, text):
            host, port = entry.get("host") or name, str(entry.get("port") or 22)
            known = host if port == "22" else f"[{host}]:{port}"
            return sentence.format(name=name, ssh=_ssh_command(name, entry), known=known)
    return None


def _ssh_command(name, entry):
    return f"ssh -p {entry.get('port') or 22} {entry.get('user') or 'root'}@{entry.get('host') or name}"


def _shown(answer):
    """The answer on one line; of a traceback, its last line only."""
    text = str(answer) if answer not in (None, "") else "no answer"
    if "Traceback (most recent call last)" in text:
        text = [line for line in text.splitlines() if line.strip()][-1]
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."
