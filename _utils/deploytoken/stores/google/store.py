"""
The Google token store: the "Deploy token" Doc is the one truth (``Held by: <name>``), the "Deploy
history" Sheet is the history.

- Every write to the Doc is a compare-and-swap (``writeControl.requiredRevisionId``); a stale revision
  means someone else wrote first: re-read and decide again, a bounded number of times
  (``deploytoken.stores.google.line``).
- History rows go through a local spool, never lost and never doubled (``deploytoken.stores.google.history``).
- Credentials are a service account's key, or a person's own Google account, whose email is then
  recorded as the caller of each claim (``deploytoken.stores.google.client``).
"""

import dataclasses

from deploytoken import model
from deploytoken.stores.google import client
from deploytoken.stores.google import files as google_files
from deploytoken.stores.google import history
from deploytoken.stores.google import line as doc_line
from deploytoken.stores.noline import NoWaitingLine

CAS_ATTEMPTS = 8


class GoogleStore(NoWaitingLine):
    backend = "google"

    def __init__(self, section, cachedir, people):
        for key in ("document_id", "spreadsheet_id", "history_range"):
            if not section.get(key) or not isinstance(section.get(key), str):
                raise model.InputError(f"deploytoken:google:{key} is missing: set it in the master config.")
        self.document_id = section["document_id"]
        self.location = f"https://docs.google.com/document/d/{self.document_id}"
        self.identity = {"id": f"google:{self.document_id}", "name": f"Google Doc {self.document_id}"}
        history.check_history_range(section["history_range"])
        cache_seconds = model.check_seconds(section.get("cache_seconds", 2), "deploytoken:google:cache_seconds")
        self.api = client.Client(section)
        local = google_files.LocalFiles(cachedir, self.document_id)
        self.line = doc_line.DocLine(self.api, local, self.document_id, people, cache_seconds)
        self.sheet = history.SheetHistory(
            self.api, local, section["spreadsheet_id"], section["history_range"], self.line
        )

    @classmethod
    def from_settings(cls, settings):
        # ``people`` maps a name typed by hand in the Doc back to a login.
        return cls(settings.section("google"), settings.cachedir, settings.people)

    @property
    def account_email(self):
        """The Google account of the person writing (user credentials), None with a service account."""
        return self.api.account_email

    @property
    def history_range(self):
        return self.sheet.history_range

    # -- the store interface ---------------------------------------------------------------

    def read(self):
        """The current holding (briefly cached for status callers), or None when the Doc says Nobody."""
        return self.line.holding(self.line.read_cached())

    def acquire(self, holding):
        """Write ``holding``'s name if the Doc says Nobody; return whoever holds the token afterwards."""
        self.flush()
        if self.account_email:
            holding = dataclasses.replace(holding, caller=self.account_email)
        for attempt in range(CAS_ATTEMPTS):
            line = self.line.read()
            if not line.free:
                return self.line.holding(line)
            if self.line.write(line, holding.holder, holding):
                return holding
            self.api.pause(attempt)
        raise model.StoreError(self._kept_changing())

    def release(self, claim, row):
        """Write Nobody if ``claim`` is still the current claim, then append ``row`` to the Sheet.

        The row is spooled as tentative before the Doc is written: if this process dies or the Doc stops
        answering after the write, the next flush finds the claim gone from the Doc and delivers the row.
        """
        self.flush()
        ticket = self.sheet.spool_tentative(row)
        try:
            for attempt in range(CAS_ATTEMPTS):
                line = self.line.read()
                current = self.line.holding(line)
                if current is None or current.claim != claim:
                    raise model.ClaimConflict(model.claim_ended(claim, current))
                if self.line.write(line, model.NOBODY, None):
                    break
                self.api.pause(attempt)
            else:
                raise model.StoreError(self._kept_changing())
        except model.ClaimConflict:
            self.sheet.unspool(ticket)
            raise
        self.sheet.deliver(row, ticket)
        return row

    def history(self, limit):
        """Rows of the Sheet, newest first, after the spooled rows (marked ``pending``)."""
        self.flush()
        return self.sheet.rows(limit)

    def flush(self):
        """Append the spooled history rows the Sheet does not have yet; return how many are still pending."""
        return self.sheet.flush()

    def append_history(self, row):
        """Spool ``row`` and deliver it unless the Sheet has its claim already; True once it is in the Sheet.
        While the Sheet cannot be reached the row stays spooled here (``flush`` delivers it later) and this
        says so with a StoreError, so a caller does not take it as written."""
        if self.sheet.append(row):
            raise model.StoreError(
                f"{self.sheet.where} cannot be reached: the row {row.claim} is kept on this machine until the next "
                "salt-run deploytoken.flush writes it."
            )
        return True

    def overrides(self, now):
        """The override rows still running at ``now`` without a cancellation row, from the whole Sheet and
        the rows spooled here: one Sheets read (``values.get`` of the history range) per call."""
        rows = [model.HistoryRow(*(getattr(row, column) for column in model.HistoryRow.COLUMNS))
                for row in reversed(self.sheet.rows(None))]
        return model.active_overrides(rows, now)

    def _kept_changing(self):
        return f"{self.line.where} kept changing while writing it ({CAS_ATTEMPTS} tries): try again in a minute."
