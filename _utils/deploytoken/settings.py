"""
The ``deploytoken:`` block of the master config (or, under salt-ssh, of the operator's config), read
and checked once, at the edge, into one ``Settings`` object that the rest of the code trusts.

.. code-block:: yaml

    deploytoken:
      backend: sqlite                 # the key of a store in deploytoken.stores.BACKENDS
      sqlite: {path: ...}             # each backend's own block, checked by that store
      people:
        alice: "Alice Smith"          # login: display name, or:
        bob:
          name: "Bob Jones"
          email: bob@example.org      # the Google account of a person (Google user credentials)
          ssh_keys:                   # salt-ssh: the keys that may log in as this person
            - "ssh-ed25519 AAAAC3... bob@laptop"
            - "SHA256:Xq3..."
      pillar_cache: 2                 # seconds the ext_pillar keeps a store read
      pillar_max_age: 300             # seconds the guard accepts token data after it was issued
      repos: [/srv/deploy, ...]       # what update_repos and setup bring up to date
      ssh: False                      # setup asks targets through salt-ssh's roster instead of minions
      notify:                         # chat messages through an incoming webhook (deploytoken.chat.notify)
        kind: slack                   # slack, google_chat, teams or mattermost
        url_file: /etc/salt/deploytoken-webhook   # or url: ...; the file keeps the secret out of the config
        timeout: 5                    # seconds per attempt
        retries: 2                    # further attempts after a 429, a 5xx or no answer
      remind_after: 4h                # remind the holder once the token is held this long (s, m, h, d)
      remind_every: 4h                # and again after each such period (default: remind_after)
"""

import dataclasses
import os
import re

from deploytoken import model, sshkey
from deploytoken.chat import notify as chat

DEFAULT_BACKEND = "sqlite"
PILLAR_CACHE = 2
PILLAR_MAX_AGE = 300
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])")


@dataclasses.dataclass(frozen=True)
class Settings:
    cachedir: str
    backend: str = DEFAULT_BACKEND
    sections: dict = dataclasses.field(default_factory=dict)
    people: dict = dataclasses.field(default_factory=dict)
    emails: dict = dataclasses.field(default_factory=dict)
    ssh_keys: dict = dataclasses.field(default_factory=dict)
    pillar_cache: float = PILLAR_CACHE
    pillar_max_age: float = PILLAR_MAX_AGE
    repos: list | None = None
    ssh: bool = False
    notify: chat.Webhook | None = None
    remind_after: float | None = None
    remind_every: float | None = None

    def section(self, name):
        """A backend's own block (``deploytoken:<name>:``), a dict, possibly empty."""
        return self.sections.get(name) or {}


def from_opts(opts):
    """``Settings`` from Salt's opts; InputError naming the first setting that is wrong."""
    config = opts.get("deploytoken")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise model.InputError("The deploytoken setting in the master config must be a mapping.")
    backend = config.get("backend") or DEFAULT_BACKEND
    if not isinstance(backend, str):
        raise model.InputError(f"deploytoken:backend must be the name of a store, got {backend!r}.")
    sections = {}
    for key, value in config.items():
        if isinstance(value, dict) and key not in ("people", "notify"):  # notify: its URL must stay out of reprs
            sections[key] = value
    for key in ("sqlite", "google", "postgres"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise model.InputError(f"deploytoken:{key} must be a mapping.")
    people, emails, ssh_keys = _people(config.get("people"))
    remind_after = duration(config.get("remind_after"), "deploytoken:remind_after")
    return Settings(
        cachedir=str(opts.get("cachedir") or ""),
        backend=backend,
        sections=sections,
        people=people,
        emails=emails,
        ssh_keys=ssh_keys,
        pillar_cache=model.check_seconds(config.get("pillar_cache", PILLAR_CACHE), "deploytoken:pillar_cache"),
        pillar_max_age=model.check_seconds(
            config.get("pillar_max_age", PILLAR_MAX_AGE), "deploytoken:pillar_max_age", minimum=1
        ),
        repos=_repos(config.get("repos")),
        ssh=model.check_flag(config.get("ssh", False), "deploytoken:ssh"),
        notify=chat.from_config(config.get("notify")),
        remind_after=remind_after,
        remind_every=duration(config.get("remind_every"), "deploytoken:remind_every") or remind_after,
    )


def _people(people):
    """``login -> display name``, ``email -> login`` and ``SSH key fingerprint -> login``."""
    if people is None:
        return {}, {}, {}
    if not isinstance(people, dict):
        raise model.InputError("deploytoken:people must map login names to display names.")
    names, emails, keys = {}, {}, {}
    for login, entry in people.items():
        login = str(login)
        if isinstance(entry, dict):
            name = entry.get("name") or login
            email = entry.get("email")
            if email is not None:
                if not isinstance(email, str) or "@" not in email:
                    raise model.InputError(f"deploytoken:people:{login}:email must be an email address, got {email!r}.")
                emails[email.strip().casefold()] = login
            found = entry.get("ssh_keys") or []
            if isinstance(found, str):
                found = [found]
            if not isinstance(found, list):
                raise model.InputError(f"deploytoken:people:{login}:ssh_keys must be a list of public keys.")
            for key in found:
                fingerprint = sshkey.fingerprint(key)
                if fingerprint is None:
                    raise model.InputError(
                        f"deploytoken:people:{login}:ssh_keys has {str(key)[:40]!r}, which is neither a public key "
                        "line (ssh-ed25519 AAAA... comment) nor a fingerprint (SHA256:...)."
                    )
                if keys.get(fingerprint, login) != login:
                    raise model.InputError(
                        f"The SSH key {fingerprint} is listed for both {keys[fingerprint]} and {login} in "
                        "deploytoken:people: a key must belong to one person."
                    )
                keys[fingerprint] = login
        else:
            name = entry
        names[login] = str(name)
    return names, emails, keys


def _repos(repos):
    if repos is None:
        return None
    if isinstance(repos, str):
        repos = [repos]
    if not isinstance(repos, list) or not all(isinstance(path, str) and os.path.isabs(path) for path in repos):
        raise model.InputError("deploytoken:repos must be a list of absolute paths of git checkouts.")
    return list(repos)


def duration(value, what):
    """``4h``, ``30m``, ``90s``, ``1d``, ``1h30m`` or a number of seconds, in seconds; None when unset."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        parts = DURATION_PART.findall(text)
        if not parts or "".join(DURATION_PART.sub("", text).split()):
            raise model.InputError(f"{what} must be a duration such as 4h, 30m or 90s; got {value!r}.")
        seconds = sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)
    if not 0 < seconds < float("inf"):
        raise model.InputError(f"{what} must be longer than 0 seconds; got {value!r}.")
    return seconds
