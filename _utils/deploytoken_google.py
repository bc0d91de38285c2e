"""
The Google token store: the "Deploy token" Doc is the one truth (``Held by: <name>``), the "Deploy
history" Sheet is the history.

- Every write to the Doc is a compare-and-swap (``writeControl.requiredRevisionId``); a stale revision
  means someone else wrote first: re-read and decide again, a bounded number of times.
- The Doc only holds a name. The claim id, since, reason, login and caller of a claim we write are noted
  in a small state file in the master's cachedir just before the write: when the Doc shows a name with no
  such claim, a person typed it by hand, and it gets a claim id ``hand-<hash>`` made from the name and the
  revision at which we first saw it (stable while the name stays, so ``release force=True claim=...``
  works). Known limit: if a person types back exactly the name of our last claim, that claim is assumed.
- A history row is written to a local spool before it is appended to the Sheet and removed once the
  Sheet has it; a row whose append failed is appended again later only after checking the Sheet for its
  claim id, so it is never lost and never doubled.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import socket
import time

import deploytoken_gdoc as gdoc
import deploytoken_model as model

try:
    import google.auth.exceptions
    import google_auth_httplib2
    import httplib2
    from google.oauth2 import service_account
    from googleapiclient import discovery, errors
except ImportError:  # the sqlite backend works without the Google client
    discovery = None

SCOPES = ["https://www.googleapis.com/auth/documents", "https://www.googleapis.com/auth/spreadsheets"]
CAS_ATTEMPTS = 8
TRANSIENT_ATTEMPTS = 5


def open_store(config, cachedir):
    return GoogleStore(config, cachedir)


class GoogleStore:
    backend = "google"

    def __init__(self, config, cachedir):
        if discovery is None:
            raise model.InputError(
                "deploytoken:backend is google, but google-api-python-client is not installed on the master."
            )
        if not isinstance(config, dict):
            raise model.InputError("deploytoken:google must be a mapping.")
        for key in ("document_id", "spreadsheet_id", "history_range"):
            if not config.get(key) or not isinstance(config.get(key), str):
                raise model.InputError(f"deploytoken:google:{key} is missing: set it in the master config.")
        self.document_id = config["document_id"]
        self.spreadsheet_id = config["spreadsheet_id"]
        self.history_range = _check_history_range(config["history_range"])
        self.location = f"https://docs.google.com/document/d/{self.document_id}"
        self.where = f"The deploy token Doc {self.document_id}"
        self.people = config.get("people") or {}
        self.cache_seconds = model.check_seconds(config.get("cache_seconds", 2), "deploytoken:google:cache_seconds")
        self.backoff = model.check_seconds(config.get("backoff", 0.5), "deploytoken:google:backoff")
        self.timeout = model.check_seconds(config.get("timeout", 20), "deploytoken:google:timeout", minimum=1)
        self.state_dir = os.path.join(cachedir, "deploytoken-google")
        os.makedirs(self.state_dir, exist_ok=True)
        self.calls = 0
        credentials = _credentials(config)
        options = {"api_endpoint": config["api_endpoint"]} if config.get("api_endpoint") else None

        def build(api, version):
            http = google_auth_httplib2.AuthorizedHttp(credentials, http=httplib2.Http(timeout=self.timeout))
            return discovery.build(
                api, version, http=http, static_discovery=True, client_options=options, cache_discovery=False
            )

        self.docs = build("docs", "v1")
        self.sheets = build("sheets", "v4")

    @property
    def identity(self):
        return {"id": f"google:{self.document_id}", "name": f"Google Doc {self.document_id}"}

    # -- the store interface ---------------------------------------------------------------

    def read(self):
        """The current holding (briefly cached for status callers), or None when the Doc says Nobody."""
        with self._locked("read"):
            cached = _load(self._path("read.json"))
            fresh = cached and time.time() - cached["at"] < self.cache_seconds
            if fresh and cached.get("document") == self.document_id:
                line = gdoc.HeldLine(**cached["line"])
            else:
                line = self._read_line()
                _save(self._path("read.json"), {"document": self.document_id, "at": time.time(), "line": vars(line)})
        return self._holding(line)

    def acquire(self, holding):
        """Write ``holding``'s name if the Doc says Nobody; return whoever holds the token afterwards."""
        self.flush_spool()
        for attempt in range(CAS_ATTEMPTS):
            line = self._read_line()
            if not line.free:
                return self._holding(line)
            if self._write_name(line, holding.holder, holding):
                return holding
            self._pause(attempt)
        raise model.StoreError(
            f"{self.where} kept changing while writing it ({CAS_ATTEMPTS} tries): try again in a minute."
        )

    def release(self, claim, row):
        """Write Nobody if ``claim`` is still the current claim, then append ``row`` to the Sheet.

        The row is spooled as tentative before the Doc is written: if this process dies or the Doc stops
        answering after the write, the next flush finds the claim gone from the Doc and delivers the row.
        """
        self.flush_spool()
        self._spool(row, tentative=True)
        try:
            for attempt in range(CAS_ATTEMPTS):
                line = self._read_line()
                current = None if line.free else self._holding(line)
                if current is None or current.claim != claim:
                    raise model.ClaimConflict(model.claim_ended(claim, current))
                if self._write_name(line, model.NOBODY, None):
                    break
                self._pause(attempt)
            else:
                raise model.StoreError(
                    f"{self.where} kept changing while writing it ({CAS_ATTEMPTS} tries): try again in a minute."
                )
        except model.ClaimConflict:
            self._unspool(row.claim)
            raise
        with self._locked("spool"):
            spool = _load_kept(self._path("spool.json")) or []
            ours = [entry for entry in spool if entry["claim"] == row.claim and entry.get("tentative")]
            # Still tentative in the spool: nobody else delivered it, so the Sheet cannot have it yet.
            spool = [entry for entry in spool if entry["claim"] != row.claim] + [row.to_dict()]
            _save(self._path("spool.json"), spool)
            self._flush_locked(known_absent={row.claim} if ours else set())
        return row

    def _spool(self, row, tentative):
        with self._locked("spool"):
            spool = [entry for entry in _load_kept(self._path("spool.json")) or [] if entry["claim"] != row.claim]
            _save(self._path("spool.json"), spool + [dict(row.to_dict(), tentative=tentative)])

    def _unspool(self, claim):
        with self._locked("spool"):
            spool = [entry for entry in _load_kept(self._path("spool.json")) or [] if entry["claim"] != claim]
            _save(self._path("spool.json"), spool)

    def history(self, limit):
        """Rows of the Sheet, newest first, after the spooled rows (marked ``pending``)."""
        self.flush_spool()
        spooled = [entry for entry in _load_kept(self._path("spool.json")) or [] if not entry.get("tentative")]
        pending = [dict(entry, pending=True) for entry in reversed(spooled)]
        rows = [dict(_row_from_cells(cells), pending=False) for cells in reversed(self._sheet_rows())]
        rows = [row for row in rows if row["claim"] != "claim"]
        return [_HistoryEntry(entry) for entry in (pending + rows)[:limit]]

    def flush_spool(self):
        """Append the spooled history rows the Sheet does not have yet; return how many are still pending."""
        with self._locked("spool"):
            return self._flush_locked(known_absent=set())

    # -- the Doc ---------------------------------------------------------------------------

    def _read_line(self):
        document = self._call(self.docs.documents().get(documentId=self.document_id), "read", self.where)
        line = gdoc.find_held_line(document, self.where)
        if not line.revision:
            raise model.StoreError(
                f"{self.where} gives no revision id to this service account, so it cannot be changed safely: "
                "share the Doc with the service account's client_email as Editor."
            )
        return line

    def _write_name(self, line, name, holding):
        """One guarded write; True when it is in the Doc, False when someone else wrote first."""
        body = {
            "requests": gdoc.replace_name_requests(line, name),
            "writeControl": {"requiredRevisionId": line.revision},
        }
        request = self.docs.documents().batchUpdate(documentId=self.document_id, body=body)
        self._forget_read()
        if holding is not None:
            # Noted before the write, so a reader that sees our name in the Doc before we hear back
            # (another process, or us after a lost answer) still knows the claim behind it.
            self._update_state(lambda state: state["claims"].append(_holding_dict(holding)))
        try:
            self._call(request, "write", self.where)
        except _Ambiguous:
            # The write may have been applied before the answer was lost: the Doc tells.
            after = self._read_line()
            if after.revision == line.revision or after.name != name:
                return self._abandon(holding)
        except _Stale:
            if self._read_line().revision == line.revision:
                self._abandon(holding)
                raise model.StoreError(
                    f"{self.where} rejected the change of its '{gdoc.MARKER}' line: check that line by hand."
                ) from None
            return self._abandon(holding)

        def written(state):
            state["claims"] = [_holding_dict(holding)] if holding is not None else []

        self._update_state(written)
        return True

    def _abandon(self, holding):
        if holding is not None:
            self._update_state(
                lambda state: state.update(claims=[c for c in state["claims"] if c["claim"] != holding.claim])
            )
        return False

    def _holding(self, line):
        """The holding behind the Doc's name: a claim we wrote under that name, else a hand-typed one."""
        if line.free:
            return None
        found = {}

        def look(state):
            ours = [claim for claim in state["claims"] if claim["holder"] == line.name]
            if ours:
                found.update(ours[0])
                return
            hand = state.get("hand") or {}
            if hand.get("name") != line.name:
                digest = hashlib.sha256(f"{line.name}\0{line.revision}".encode()).hexdigest()[:16]
                hand = state["hand"] = {"name": line.name, "claim": f"hand-{digest}"}
            found.update(holder=line.name, login=model.login_for_name(line.name, self.people), claim=hand["claim"])

        self._update_state(look)
        return model.Holding(**found)

    def _update_state(self, change):
        """Run ``change(state)`` on the local state file under its lock, and save it."""
        with self._locked("state"):
            state = _load_kept(self._path("state.json")) or {}
            if state.get("document") != self.document_id or "claims" not in state:
                state = {"document": self.document_id, "claims": []}
            change(state)
            _save(self._path("state.json"), state)

    def _forget_read(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path("read.json"))

    # -- the Sheet -------------------------------------------------------------------------

    def _sheet_rows(self):
        where = f"The deploy history Sheet {self.spreadsheet_id}"
        request = self.sheets.spreadsheets().values().get(spreadsheetId=self.spreadsheet_id, range=self.history_range)
        return self._call(request, "read", where).get("values") or []

    def _flush_locked(self, known_absent):
        """Deliver the spool (we hold its lock); rows in ``known_absent`` need no check of the Sheet."""
        spool = _load_kept(self._path("spool.json")) or []
        if not spool:
            return 0
        where = f"The deploy history Sheet {self.spreadsheet_id}"
        delivered = set()
        try:
            spool = self._settle_tentative(spool)
            if any(entry["claim"] not in known_absent for entry in spool):
                delivered = {cells[0] for cells in self._sheet_rows() if cells}
            for entry in spool:
                if entry["claim"] not in delivered:
                    if not self._append(entry, where):
                        break
                    delivered.add(entry["claim"])
        except model.StoreError:
            pass  # the rows stay spooled; the next runner call tries again
        remaining = [entry for entry in spool if entry["claim"] not in delivered]
        _save(self._path("spool.json"), remaining)
        return len(remaining)

    def _settle_tentative(self, spool):
        """Keep a tentative row (a release cut short) only once the Doc no longer shows its claim."""
        if not any(entry.get("tentative") for entry in spool):
            return spool
        line = self._read_line()
        current = None if line.free else self._holding(line)
        settled = []
        for entry in spool:
            if entry.get("tentative"):
                if current is not None and current.claim == entry["claim"]:
                    continue
                entry = {key: value for key, value in entry.items() if key != "tentative"}
            settled.append(entry)
        _save(self._path("spool.json"), settled)
        return settled

    def _append(self, entry, where):
        """Append one row; after a failure whose effect is unknown, look for its claim before trying again."""
        cells = [_cell(entry.get(column)) for column in model.HistoryRow.COLUMNS]
        for attempt in range(TRANSIENT_ATTEMPTS):
            if attempt:
                self._pause(attempt)
                if any(row and row[0] == entry["claim"] for row in self._sheet_rows()):
                    return True
            request = self.sheets.spreadsheets().values().append(
                spreadsheetId=self.spreadsheet_id,
                range=self.history_range,
                valueInputOption="RAW",
                insertDataOption="INSERT_ROWS",
                body={"values": [cells]},
            )
            try:
                self._call(request, "write", where)
                return True
            except _Ambiguous:
                continue
        return False

    # -- calls -----------------------------------------------------------------------------

    def _call(self, request, kind, where):
        """Execute with truncated exponential backoff on transient errors; our sentences for the rest.

        A write that fails transiently is never repeated here (``_Ambiguous``): the caller re-reads.
        """
        for attempt in range(TRANSIENT_ATTEMPTS):
            self.calls += 1
            try:
                return request.execute(num_retries=0)
            except errors.HttpError as exc:
                status = exc.status_code
                if status == 400 and kind == "write" and "requiredRevisionId" in (request.body or ""):
                    raise _Stale() from exc
                if status != 429 and status < 500:
                    raise model.StoreError(_permanent(where, status, exc)) from exc
                problem = f"HTTP {status}"
            except (socket.timeout, ConnectionError, OSError, httplib2.HttpLib2Error) as exc:
                problem = type(exc).__name__
            except google.auth.exceptions.GoogleAuthError as exc:
                raise model.StoreError(
                    f"{where} cannot be reached: the service account's key was refused ({exc}); "
                    "create a new key and set deploytoken:google:service_account_file."
                ) from exc
            if kind == "write":
                raise _Ambiguous(problem)
            if attempt + 1 < TRANSIENT_ATTEMPTS:
                self._pause(attempt)
        raise model.StoreError(f"{where} did not answer after {TRANSIENT_ATTEMPTS} tries ({problem}): try again later.")

    def _pause(self, attempt):
        # Truncated exponential backoff with full jitter, so racing masters spread out.
        time.sleep(random.uniform(0, min(8.0, self.backoff * 2**attempt)))

    def _path(self, name):
        return os.path.join(self.state_dir, f"{self.document_id}.{name}")

    @contextlib.contextmanager
    def _locked(self, name):
        with open(self._path(name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


_HOLDING_FIELDS = ("holder", "login", "caller", "claim", "since", "reason")


def _holding_dict(holding):
    return {key: getattr(holding, key) for key in _HOLDING_FIELDS}


class _Stale(Exception):
    """The guarded write was refused: the Doc changed since we read it."""


class _Ambiguous(Exception):
    """A write failed in a way that may or may not have applied it."""


class _HistoryEntry(model.HistoryRow):
    """A HistoryRow that also says whether it is still waiting in the local spool."""

    def __init__(self, data):
        super().__init__(**{column: data.get(column) for column in model.HistoryRow.COLUMNS})
        self.pending = data.get("pending", False)

    def to_dict(self):
        return dict(super().to_dict(), pending=self.pending)


def _permanent(where, status, exc):
    if status == 403:
        return f"{where} refused this service account (HTTP 403): share it with the key's client_email as Editor."
    if status == 404:
        return f"{where} does not exist (HTTP 404): check its id in deploytoken:google in the master config."
    if status == 401:
        return f"{where} refused the service account's credentials (HTTP 401): create a new key."
    reason = getattr(exc, "reason", "") or ""
    return f"{where} rejected the request (HTTP {status}: {reason}); nothing was changed."


def _credentials(config):
    info = config.get("service_account_info")
    path = config.get("service_account_file")
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


def _cell(value):
    return "" if value is None else value


def _row_from_cells(cells):
    data = dict(zip(model.HistoryRow.COLUMNS, list(cells) + [""] * len(model.HistoryRow.COLUMNS)))
    data = {key: (None if value == "" and key not in ("reason", "note") else value) for key, value in data.items()}
    if data.get("duration") is not None:
        try:
            data["duration"] = int(data["duration"])
        except (TypeError, ValueError):
            data["duration"] = None
    return data


def _load(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):
        return None


_A1_COLUMNS = re.compile(r"^(?:.+!)?\$?([A-Za-z]{1,3})\$?\d*:\$?([A-Za-z]{1,3})\$?\d*$")


def _column_number(letters):
    number = 0
    for letter in letters.upper():
        number = number * 26 + ord(letter) - ord("A") + 1
    return number


def _check_history_range(text):
    """A range like ``'Deploy history'!A:K`` must hold every history column (a named range is taken as is)."""
    found = _A1_COLUMNS.match(text.strip())
    if found:
        width = _column_number(found.group(2)) - _column_number(found.group(1)) + 1
        needed = len(model.HistoryRow.COLUMNS)
        if width < needed:
            raise model.InputError(
                f"deploytoken:google:history_range {text!r} spans {width} columns, but a history row has "
                f"{needed} ({', '.join(model.HistoryRow.COLUMNS)}): use e.g. \"'Deploy history'!A:K\"."
            )
    return text


def _load_kept(path):
    """The spool and the noted claims keep what Google does not have yet: damaged means stop, never start afresh."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise model.StoreError(
            f"The file {path} is damaged ({exc}); it keeps deploy history rows or claims not yet written to "
            "Google, so it was left untouched: repair it, or move it aside once its rows are in the Sheet."
        ) from exc


def _save(path, data):
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)
