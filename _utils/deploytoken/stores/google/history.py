"""
The Google store's history: rows of the "Deploy history" Sheet, written through a local spool.

A history row is written to the spool before it is appended to the Sheet and removed once the Sheet has
it; a row whose append failed is appended again later only after checking the Sheet for its claim id, so
it is never lost and never doubled. A release spools its row as tentative before the Doc is written: the
row is delivered once the Doc no longer shows its claim.

A Sheet whose ``history_range`` spans only the eleven columns of the layout before ``kind`` and ``until``
keeps working in that layout: its rows are read as their claims say (``model.kind_of``), and an override
is written with its planned end as ``released``, as it was then.
"""

import dataclasses
import re
import secrets

from deploytoken import model
from deploytoken.stores.google import client

SPOOL = "spool.json"


class SheetHistory:
    def __init__(self, api, local, spreadsheet_id, history_range, line):
        self.api = api
        self.local = local
        self.spreadsheet_id = spreadsheet_id
        self.history_range = check_history_range(history_range)
        self.columns = model.HistoryRow.COLUMNS[:range_width(history_range) or len(model.HistoryRow.COLUMNS)]
        self.line = line  # the Doc line decides when a tentative row is settled
        self.where = f"The deploy history Sheet {spreadsheet_id}"

    def rows(self, limit):
        """Rows of the Sheet, newest first, after the spooled rows (marked ``pending``)."""
        spooled = [entry for entry in self.local.load_kept(SPOOL) or [] if not entry.get("tentative")]
        pending = [dict(entry, pending=True) for entry in reversed(spooled)]
        rows = [dict(_row_from_cells(cells), pending=False) for cells in reversed(self._sheet_rows())]
        rows = [row for row in rows if row["claim"] != "claim"]
        return [HistoryEntry.of(entry) for entry in (pending + rows)[:limit]]

    def spool_tentative(self, row):
        """Note ``row`` before the Doc is written; return the ticket of this note.

        Several processes may release the same claim at once: each notes its own row, and only the one
        whose write ends the claim delivers it, so a note never replaces another process's row.
        """
        ticket = secrets.token_hex(8)
        with self.local.locked("spool"):
            spool = self.local.load_kept(SPOOL) or []
            self.local.save(SPOOL, spool + [dict(row.to_dict(), tentative=ticket)])
        return ticket

    def unspool(self, ticket):
        """Drop our tentative note: the release did not happen."""
        with self.local.locked("spool"):
            spool = [entry for entry in self.local.load_kept(SPOOL) or [] if entry.get("tentative") != ticket]
            self.local.save(SPOOL, spool)

    def deliver(self, row, ticket):
        """Our write ended ``row``'s claim: make its row final and deliver the spool."""
        with self.local.locked("spool"):
            spool = self.local.load_kept(SPOOL) or []
            # Our note still tentative: no flush settled it since the claim ended, and only a settled or
            # delivered row is ever appended, so the Sheet cannot have it yet.
            unseen = any(entry.get("tentative") == ticket for entry in spool)
            spool = [entry for entry in spool if entry["claim"] != row.claim] + [row.to_dict()]
            self.local.save(SPOOL, spool)
            self._flush_locked(known_absent={row.claim} if unseen else set())

    def append(self, row):
        """Spool ``row`` (a row of its own, not a release's) and deliver the spool; return whether ``row`` is
        still spooled. A row whose claim the Sheet has already is not appended again."""
        with self.local.locked("spool"):
            spool = [entry for entry in self.local.load_kept(SPOOL) or [] if entry["claim"] != row.claim]
            self.local.save(SPOOL, spool + [row.to_dict()])
            self._flush_locked(known_absent=set())
            return any(entry["claim"] == row.claim for entry in self.local.load_kept(SPOOL) or [])

    def flush(self):
        """Append the spooled rows the Sheet does not have yet; return how many are still pending."""
        with self.local.locked("spool"):
            return self._flush_locked(known_absent=set())

    def _sheet_rows(self):
        request = self.api.sheets.spreadsheets().values().get(
            spreadsheetId=self.spreadsheet_id, range=self.history_range
        )
        return self.api.call(request, "read", self.where).get("values") or []

    def _flush_locked(self, known_absent):
        """Deliver the spool (we hold its lock); rows in ``known_absent`` need no check of the Sheet."""
        spool = self.local.load_kept(SPOOL) or []
        if not spool:
            return 0
        delivered = set()
        try:
            spool = self._settle_tentative(spool)
            rows = [entry for entry in spool if not entry.get("tentative")]
            if any(entry["claim"] not in known_absent for entry in rows):
                delivered = {cells[0] for cells in self._sheet_rows() if cells}
            for entry in rows:
                if entry["claim"] not in delivered:
                    if not self._append(entry):
                        break
                    delivered.add(entry["claim"])
        except model.StoreError:
            pass  # the rows stay spooled; the next runner call tries again
        remaining = [entry for entry in spool if entry["claim"] not in delivered]
        self.local.save(SPOOL, remaining)
        return sum(1 for entry in remaining if not entry.get("tentative"))

    def _settle_tentative(self, spool):
        """Make a tentative row (a release cut short) final once the Doc no longer shows its claim."""
        if not any(entry.get("tentative") for entry in spool):
            return spool
        current = self.line.holding(self.line.read())
        settled = []
        for entry in spool:
            if entry.get("tentative"):
                if current is not None and current.claim == entry["claim"]:
                    # Not released yet, maybe under way: kept, so that a release cut short right after
                    # its write still has its row; a release that completes replaces it with its own.
                    settled.append(entry)
                    continue
                entry = {key: value for key, value in entry.items() if key != "tentative"}
            if not any(kept["claim"] == entry["claim"] and not kept.get("tentative") for kept in settled):
                settled.append(entry)
        self.local.save(SPOOL, settled)
        return settled

    def _append(self, entry):
        """Append one row; after a failure whose effect is unknown, look for its claim before trying again."""
        if "until" not in self.columns and entry.get("kind") == model.OVERRIDE:
            entry = dict(entry, released=entry.get("until"))  # the old layout's one place for an override's end
        cells = [_cell(entry.get(column)) for column in self.columns]
        for attempt in range(client.TRANSIENT_ATTEMPTS):
            if attempt:
                self.api.pause(attempt)
                if any(row and row[0] == entry["claim"] for row in self._sheet_rows()):
                    return True
            request = self.api.sheets.spreadsheets().values().append(
                spreadsheetId=self.spreadsheet_id,
                range=self.history_range,
                valueInputOption="RAW",
                insertDataOption="INSERT_ROWS",
                body={"values": [cells]},
            )
            try:
                self.api.call(request, "write", self.where)
                return True
            except client.Ambiguous:
                continue
        return False


@dataclasses.dataclass
class HistoryEntry(model.HistoryRow):
    """A HistoryRow that also says whether it is still waiting in the local spool."""

    pending: bool = False

    @classmethod
    def of(cls, data):
        fields = {column: data.get(column) for column in model.HistoryRow.COLUMNS}
        return cls(**fields, pending=data.get("pending", False))


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


_A1_COLUMNS = re.compile(r"^(?:.+!)?\$?([A-Za-z]{1,3})\$?\d*:\$?([A-Za-z]{1,3})\$?\d*$")


def _column_number(letters):
    number = 0
    for letter in letters.upper():
        number = number * 26 + ord(letter) - ord("A") + 1
    return number


# The columns of a Sheet made before rows had a kind and an until: still read and written in that layout.
OLD_WIDTH = 11


def range_width(text):
    """How many columns a range like ``'Deploy history'!A:M`` spans; None for a named range."""
    found = _A1_COLUMNS.match(text.strip())
    if not found:
        return None
    return _column_number(found.group(2)) - _column_number(found.group(1)) + 1


def check_history_range(text):
    """A range like ``'Deploy history'!A:M`` must hold every history column, or the first eleven of a Sheet
    made before kind and until (a named range is taken as is)."""
    width = range_width(text)
    if width is not None and width < OLD_WIDTH:
        raise model.InputError(
            f"deploytoken:google:history_range {text!r} spans {width} columns, but a history row has "
            f"{len(model.HistoryRow.COLUMNS)} ({', '.join(model.HistoryRow.COLUMNS)}): use e.g. "
            "\"'Deploy history'!A:M\"."
        )
    return text
