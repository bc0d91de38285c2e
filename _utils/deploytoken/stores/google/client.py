"""
What the parts of the Google store share: the credentials (a service account's key, or a person's own
Google account through application default credentials), the Docs and Sheets clients, one way to call
them (bounded retries, our sentences).
"""

import json
import random
import socket
import time
import urllib.parse

from deploytoken import model, network

try:
    import google.auth
    import google.auth.exceptions
    import google.auth.jwt
    import google_auth_httplib2
    import httplib2
    from google.oauth2 import service_account
    from googleapiclient import discovery, errors
except ImportError:  # the sqlite backend works without the Google client
    discovery = None

SCOPES = ["https://www.googleapis.com/auth/documents", "https://www.googleapis.com/auth/spreadsheets"]
# A person grants these once; ``openid email`` puts the account's email in the ID token of every refresh.
USER_LOGIN = "gcloud auth application-default login --scopes=" + ",".join(
    ["openid", "https://www.googleapis.com/auth/userinfo.email"] + SCOPES
)
TRANSIENT_ATTEMPTS = 5


class Stale(Exception):
    """The guarded write was refused: the Doc changed since we read it."""


class Ambiguous(Exception):
    """A write failed in a way that may or may not have applied it."""


class Client:
    """The Docs and Sheets clients of one store, and the calls through them."""

    def __init__(self, section):
        if discovery is None:
            raise model.InputError(
                "deploytoken:backend is google, but google-api-python-client is not installed on the master."
            )
        self.backoff = model.check_seconds(section.get("backoff", 0.5), "deploytoken:google:backoff")
        self.timeout = model.check_seconds(section.get("timeout", 20), "deploytoken:google:timeout", minimum=1)
        self.user = uses_user_credentials(section)
        self.credentials = _user_credentials() if self.user else _service_account_credentials(section)
        if section.get("token_uri"):
            # google-auth always sends a person's refresh token to Google's own endpoint; a proxy (or
            # the local fake in tests) is named here.
            self.credentials = self.credentials.with_token_uri(section["token_uri"])
        self._email = None
        options = {"api_endpoint": section["api_endpoint"]} if section.get("api_endpoint") else None

        def build(api, version):
            http = google_auth_httplib2.AuthorizedHttp(self.credentials, http=httplib2.Http(timeout=self.timeout))
            return discovery.build(
                api, version, http=http, static_discovery=True, client_options=options, cache_discovery=False
            )

        self.docs = build("docs", "v1")
        self.sheets = build("sheets", "v4")

    @property
    def account_email(self):
        """The email of a person's own Google account (the ID token's ``email``); None for a service account."""
        if not self.user:
            return None
        if self._email is None:
            if not self.credentials.valid or not getattr(self.credentials, "id_token", None):
                try:
                    self.credentials.refresh(google_auth_httplib2.Request(httplib2.Http(timeout=self.timeout)))
                except (google.auth.exceptions.GoogleAuthError, OSError, httplib2.HttpLib2Error) as exc:
                    raise model.StoreError(self._auth_failed(exc)) from exc
            # Straight from the token endpoint over TLS, like the access token: no signature to check.
            id_token = self.credentials.id_token
            claims = google.auth.jwt.decode(id_token, verify=False) if id_token else {}
            if not claims.get("email"):
                raise model.StoreError(
                    f"Your Google credentials do not say which account they belong to: run {USER_LOGIN}"
                )
            self._email = claims["email"]
        return self._email

    def call(self, request, kind, where):
        """Execute with truncated exponential backoff on transient errors; our sentences for the rest.

        A write that fails transiently is never repeated here (``Ambiguous``): the caller re-reads.
        """
        for attempt in range(TRANSIENT_ATTEMPTS):
            try:
                return request.execute(num_retries=0)
            except errors.HttpError as exc:
                status = exc.status_code
                if status == 400 and kind == "write" and "requiredRevisionId" in (request.body or ""):
                    raise Stale() from exc
                if status != 429 and status < 500:
                    raise model.StoreError(self._permanent(where, status, exc)) from exc
                problem = f"HTTP {status}"
            except (socket.timeout, ConnectionError, OSError, httplib2.HttpLib2Error) as exc:
                problem = network.cause(exc, _host(request.uri)) or type(exc).__name__
            except google.auth.exceptions.GoogleAuthError as exc:
                raise model.StoreError(f"{where} cannot be reached: {self._auth_failed(exc)}") from exc
            if kind == "write":
                raise Ambiguous(problem)
            if attempt + 1 < TRANSIENT_ATTEMPTS:
                self.pause(attempt)
        raise model.StoreError(f"{where} did not answer after {TRANSIENT_ATTEMPTS} tries ({problem}): try again later.")

    def _auth_failed(self, exc):
        """Why the credentials could not be used: the network on the way to Google's token endpoint, or
        Google refusing them (only then is logging in again the fix)."""
        host = _host(getattr(self.credentials, "_token_uri", None) or "oauth2.googleapis.com")
        cause = network.cause(exc, host)
        if cause:
            return f"Google's token endpoint cannot be reached, so the credentials were not checked: {cause}"
        return _refused(self.user, exc)

    def pause(self, attempt):
        # Truncated exponential backoff with full jitter, so racing masters spread out.
        time.sleep(random.uniform(0, min(8.0, self.backoff * 2**attempt)))

    def share_hint(self):
        """How to let these credentials write a Doc or Sheet."""
        if self.user:
            return "ask its owner to share it with your Google account as Editor"
        return "share it with the key's client_email as Editor"

    def _permanent(self, where, status, exc):
        account = "your Google account" if self.user else "this service account"
        if status == 403:
            return f"{where} refused {account} (HTTP 403): {self.share_hint()}."
        if status == 404:
            return f"{where} does not exist (HTTP 404): check its id in deploytoken:google in the master config."
        if status == 401:
            if self.user:
                return f"{where} refused your Google account's credentials (HTTP 401): run {USER_LOGIN} again."
            return f"{where} refused the service account's credentials (HTTP 401): create a new key."
        reason = getattr(exc, "reason", "") or ""
        return f"{where} rejected the request (HTTP {status}: {reason}); nothing was changed."


def _host(uri):
    return urllib.parse.urlsplit(uri).hostname or uri


def _refused(user, exc):
    if user:
        return f"your Google credentials were refused ({exc}); run {USER_LOGIN}"
    return (
        f"the service account's key was refused ({exc}); "
        "create a new key and set deploytoken:google:service_account_file."
    )


def uses_user_credentials(section):
    """Whether the Google store writes as each person's own account, which deploytoken:people then names by email."""
    kind = section.get("credentials")
    if kind not in (None, "user", "service_account"):
        raise model.InputError(f"deploytoken:google:credentials must be user or service_account, got {kind!r}.")
    if kind is None:
        return section.get("service_account_info") is None and not section.get("service_account_file")
    return kind == "user"


def _user_credentials():
    """A person's application default credentials (``gcloud auth application-default login``)."""
    try:
        credentials, _project = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise model.InputError(
            "deploytoken:google has no service_account_file and no Google credentials of yours were found "
            f"({exc}): run {USER_LOGIN}"
        ) from None
    return credentials


def _service_account_credentials(section):
    info = section.get("service_account_info")
    path = section.get("service_account_file")
    if info is None and not path:
        raise model.InputError(
            "deploytoken:google needs service_account_file (the path of the key's JSON) or service_account_info."
        )
    if info is None:
        try:
            with open(path, encoding="utf-8") as handle:
                info = json.load(handle)
        except FileNotFoundError:
            raise model.InputError(
                f"The service account key file {path} does not exist: fix deploytoken:google:service_account_file."
            ) from None
        except (OSError, ValueError) as exc:
            raise model.InputError(
                f"The service account key file {path} cannot be read as JSON ({exc}): download the key again."
            ) from None
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            raise model.InputError("deploytoken:google:service_account_info is not valid JSON.") from None
    try:
        return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    except (ValueError, KeyError, TypeError) as exc:
        raise model.InputError(
            f"The service account key is not a usable service account key ({exc}): download the key again."
        ) from None
