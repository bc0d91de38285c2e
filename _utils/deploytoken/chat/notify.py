"""
Tell the team's chat what happened to the deploy token, through an incoming webhook (Slack, Google Chat,
Microsoft Teams or Mattermost).

.. code-block:: yaml

    deploytoken:
      notify:
        kind: slack                                 # slack, google_chat, teams or mattermost
        url_file: /etc/salt/deploytoken-webhook     # or url: ...
        timeout: 5                                  # seconds per attempt
        retries: 2                                  # further attempts after a 429, a 5xx or no answer

The webhook URL is a secret (whoever has it may post as us), so it is read from its file at each post
and never appears in what we return, log or say: sentences name the kind and the file instead.
A post never raises: a failure comes back as a sentence, after a bounded number of attempts.
"""

import dataclasses
import logging
import os
import stat
import time
import urllib.parse

import requests

from deploytoken import model
from deploytoken.model import describe, human_duration

log = logging.getLogger(__name__)

KINDS = ("slack", "google_chat", "teams", "mattermost")
TIMEOUT = 5
MAX_TIMEOUT = 30
RETRIES = 2
MAX_RETRIES = 5
BACKOFF = 0.5
MAX_BACKOFF = 5
MAX_URL_LENGTH = 2048
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class WebhookError(Exception):
    """The webhook cannot be used as configured; the message never contains the URL."""


@dataclasses.dataclass(frozen=True)
class Webhook:
    kind: str
    url_file: str | None = None
    url: str | None = dataclasses.field(default=None, repr=False)
    timeout: float = TIMEOUT
    retries: int = RETRIES

    @property
    def where(self):
        """How sentences name the webhook: its kind and file, never its URL."""
        return f"the {self.kind} webhook" + (f" in {self.url_file}" if self.url_file else "")

    def longest(self):
        """The longest a post can take, in seconds: every attempt timing out, every pause at its cap."""
        return (self.retries + 1) * self.timeout + self.retries * MAX_BACKOFF


def from_config(block):
    """``Webhook`` from the ``deploytoken:notify`` block, or None when there is none."""
    if block is None:
        return None
    if not isinstance(block, dict):
        raise model.InputError("deploytoken:notify must be a mapping with kind and url_file (or url).")
    kind = str(block.get("kind") or "").strip().lower().replace(" ", "_").replace("-", "_")
    if kind not in KINDS:
        raise model.InputError(f"deploytoken:notify:kind must be one of {', '.join(KINDS)}; got {block.get('kind')!r}.")
    url, url_file = block.get("url"), block.get("url_file")
    if (url is None) == (url_file is None):
        raise model.InputError("deploytoken:notify needs exactly one of url_file (recommended) and url.")
    if url_file is not None and not (isinstance(url_file, str) and os.path.isabs(url_file)):
        raise model.InputError(f"deploytoken:notify:url_file must be an absolute path; got {url_file!r}.")
    if url is not None:
        try:
            _check_url(url)
        except WebhookError as exc:
            raise model.InputError(f"deploytoken:notify:url {exc}") from None
    timeout = model.check_seconds(block.get("timeout", TIMEOUT), "deploytoken:notify:timeout", minimum=0.1)
    if timeout > MAX_TIMEOUT:
        raise model.InputError(f"deploytoken:notify:timeout is at most {MAX_TIMEOUT} seconds; got {timeout}.")
    retries = model.check_count(block.get("retries", RETRIES), "deploytoken:notify:retries", minimum=0)
    if retries > MAX_RETRIES:
        raise model.InputError(f"deploytoken:notify:retries is at most {MAX_RETRIES}; got {retries}.")
    return Webhook(kind=kind, url_file=url_file, url=url, timeout=timeout, retries=retries)


def _check_url(url):
    """https, or http to this machine only (a local relay): the URL is a secret not to send in clear."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or any(char.isspace() for char in url):
        raise WebhookError("is not a webhook URL (one line of text, no spaces).")
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK)):
        raise WebhookError("must be an https:// URL (http:// only to 127.0.0.1).")
    return url


def webhook_url(webhook):
    """The webhook's URL, checked; ``WebhookError`` (which never holds the URL) when it cannot be used."""
    if webhook.url is not None:
        return webhook.url
    try:
        with open(webhook.url_file, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if mode & 0o044:
                raise WebhookError(f"the webhook URL file {webhook.url_file} can be read by other users (mode "
                                   f"{stat.S_IMODE(mode):04o}): anyone who reads it can post as us; chmod 600 it")
            url = handle.read(MAX_URL_LENGTH + 2).strip()
    except OSError as exc:
        raise WebhookError(f"the webhook URL file {webhook.url_file} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise WebhookError(f"the webhook URL file {webhook.url_file} is not text") from None
    try:
        return _check_url(url)
    except WebhookError as exc:
        raise WebhookError(f"the webhook URL in {webhook.url_file} {str(exc).rstrip('.')}") from None


# ---- posting ----------------------------------------------------------------------------------


def payload(kind, text):
    """The JSON body each kind of incoming webhook expects for one plain message."""
    if kind == "teams":  # Teams' Workflows webhooks take an Adaptive Card
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": [{"type": "TextBlock", "text": text, "wrap": True}],
        }
        attachment = {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
        return {"type": "message", "attachments": [attachment]}
    # A reason or note must not ping the whole channel: Slack and Google Chat read <...> as a mention or
    # a link, Mattermost reads @channel, @all and @here (a zero-width space after @ keeps the text readable).
    if kind in ("slack", "google_chat"):
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if kind == "mattermost":
        text = text.replace("@", "@\u200b")
    return {"text": text}


def post(webhook, text, sleep=time.sleep):
    """Post ``text``; retry a 429, a 5xx or no answer at most ``webhook.retries`` times.

    Returns ``{"posted", "attempts", "message"}``; never raises, never names the URL.
    """
    try:
        url = webhook_url(webhook)
    except WebhookError as exc:
        return _dropped(webhook, str(exc), 0)
    body = payload(webhook.kind, text)
    attempts = webhook.retries + 1
    for attempt in range(1, attempts + 1):
        pause = min(MAX_BACKOFF, BACKOFF * 2 ** (attempt - 1))
        try:
            # stream: the answer's body is never read, however long the server makes it.
            with requests.post(url, json=body, timeout=webhook.timeout, allow_redirects=False, stream=True) as answer:
                status, retry_after = answer.status_code, answer.headers.get("Retry-After")
        except requests.RequestException as exc:
            # The exception's text carries the URL: name only what kind of failure it was.
            problem = f"{webhook.where} could not be reached ({type(exc).__name__})"
        else:
            if status < 300:
                return {"posted": True, "attempts": attempt, "message": f"Posted to {webhook.where}."}
            problem = f"{webhook.where} answered HTTP {status}"
            if status != 429 and status < 500:
                return _dropped(webhook, problem, attempt)
            pause = _retry_after(retry_after, pause)
        if attempt < attempts:
            log.info("deploytoken: %s; trying again in %s s (attempt %d of %d).", problem, pause, attempt + 1, attempts)
            sleep(pause)
    return _dropped(webhook, problem, attempts)


def _retry_after(header, default):
    if header is None:
        return default
    try:
        return min(MAX_BACKOFF, max(0.0, float(header)))
    except ValueError:  # an HTTP date: keep our own pause
        return default


def _dropped(webhook, problem, attempts):
    tries = f" after {attempts} attempt(s)" if attempts else ""
    message = f"The chat message was not posted: {problem}{tries}; it was dropped."
    log.warning("deploytoken: %s", message)
    return {"posted": False, "attempts": attempts, "message": message}


# ---- what happened, in the CLI's words --------------------------------------------------------


def message(tag, data, waiters=(), now=None):
    """The chat sentence for a ``deploytoken/*`` event, or None for an event we do not announce."""
    event = tag.removeprefix("deploytoken/")
    if event == "acquired":
        holding = model.Holding(**{field: data.get(field) for field in ("holder", "login", "caller", "claim", "since")},
                                reason=data.get("reason") or "")
        return f"The deploy token is held by {describe(holding, now)} (claim {holding.claim})."
    if event in ("released", "forced"):
        if event == "forced":
            text = (f"{data.get('forced_by')} forced the release of the deploy token held by {data.get('holder')} "
                    f"for {human_duration(data.get('duration'))}, because: \"{data.get('force_reason')}\"")
        else:
            text = f"Released the deploy token held by {data.get('holder')} for {human_duration(data.get('duration'))}"
        if data.get("reason"):
            text += f' ("{data["reason"]}")'
        if data.get("note"):
            text += f'; note: "{data["note"]}"'
        text += ". The deploy token is free."
        if waiters:
            text += f" Waiting for it: {', '.join(waiters)}."
        return text
    if event == "override":
        until = model.parse_time(data.get("until"))
        until = until.strftime("%Y-%m-%d %H:%M UTC") if until else "an unknown time"
        store = (data.get("store") or {}).get("name") or "its token store"
        return (f"OVERRIDE {data.get('id')} by {data.get('by')}: until {until} the deploy token guard lets every "
                f"deployment on {data.get('targets')} through, whoever holds the token, on servers that obey "
                f"{store}, because: \"{data.get('reason')}\".")
    if event == "override/cancelled":
        who = (data.get("cancelled") or {}).get("by") or data.get("by")
        why = (data.get("cancelled") or {}).get("reason")
        return (f"{who} cancelled OVERRIDE {data.get('id')} on {data.get('targets')}"
                + (f' ("{why}")' if why else "") + ": the deploy token guard checks the deploy token again.")
    if event == "setup_stopped":
        return f"{data.get('person')}: {data.get('message')}"
    return None
