"""
Reading the "Deploy token" Google Doc: pure functions from the Docs API's document JSON to the
``Held by:`` line, the name on it, and the UTF-16 indexes of that name (the Docs API counts UTF-16
code units, so an emoji counts two).
"""

import dataclasses

from deploytoken import model

MARKER = "Held by:"


@dataclasses.dataclass
class HeldLine:
    """The name on the ``Held by:`` line and where it sits in the Doc (UTF-16 indexes)."""

    name: str
    start: int
    end: int
    revision: str | None

    @property
    def free(self):
        return self.name.casefold() == model.NOBODY.casefold()


def utf16_len(text):
    return sum(2 if ord(char) > 0xFFFF else 1 for char in text)


def find_held_line(document, where="the deploy token Doc"):
    """The one ``Held by:`` line of ``document``; a StoreError saying what to fix otherwise."""
    found = []
    in_tables = []
    for element in (document.get("body") or {}).get("content") or []:
        if "paragraph" in element:
            line = _held_in_paragraph(element["paragraph"], where)
            if line:
                found.append(line)
        elif "table" in element and _table_has_marker(element["table"]):
            in_tables.append(element)
    if in_tables:
        raise model.StoreError(
            f"{where} has its '{MARKER}' line inside a table: move it to a plain paragraph of its own."
        )
    if not found:
        raise model.StoreError(
            f"{where} has no '{MARKER}' line: add a paragraph reading '{MARKER} {model.NOBODY}'."
        )
    if len(found) > 1:
        raise model.StoreError(
            f"{where} has {len(found)} '{MARKER}' lines: keep exactly one and delete the others."
        )
    name, start, end, suggested = found[0]
    if suggested:
        raise model.StoreError(
            f"{where} has a pending suggestion on its '{MARKER}' line: accept or reject it in the Doc."
        )
    if not name:
        raise model.StoreError(
            f"{where} has an empty '{MARKER}' line: write a name after it, or '{model.NOBODY}'."
        )
    return HeldLine(name=name, start=start, end=end, revision=document.get("revisionId"))


def _held_in_paragraph(paragraph, where):
    """(name, start, end, has_suggestion) when this paragraph is the marker line, else None."""
    runs = [element for element in paragraph.get("elements") or [] if "textRun" in element]
    if not runs:
        return None
    # Style changes split a line into several runs: join them to read the line as a person does.
    text = "".join(run["textRun"].get("content", "") for run in runs)
    stripped = text.lstrip()
    if not stripped.startswith(MARKER):
        return None
    start = runs[0].get("startIndex", 0)
    before = text[: len(text) - len(stripped)] + MARKER
    rest = text[len(before) :]
    name = rest.strip()
    lead = rest[: len(rest) - len(rest.lstrip())]
    name_start = start + utf16_len(before) + utf16_len(lead)
    suggested = any(
        run["textRun"].get("suggestedInsertionIds") or run["textRun"].get("suggestedDeletionIds") for run in runs
    ) or bool(paragraph.get("suggestedParagraphStyleChanges"))
    return name, name_start, name_start + utf16_len(name), suggested


def _table_has_marker(table):
    for row in table.get("tableRows") or []:
        for cell in row.get("tableCells") or []:
            for element in cell.get("content") or []:
                if "paragraph" in element:
                    text = "".join(
                        run.get("textRun", {}).get("content", "") for run in element["paragraph"].get("elements") or []
                    )
                    if text.lstrip().startswith(MARKER):
                        return True
                if "table" in element and _table_has_marker(element["table"]):
                    return True
    return False


def replace_name_requests(line, new_name):
    """The batchUpdate requests that put ``new_name`` in place of the name, touching nothing else.

    The new text goes in right after the old name, so it takes the old name's style rather than the
    style of ``Held by:``; then the old name (whose indexes the insert did not move) is deleted.
    """
    return [
        {"insertText": {"location": {"index": line.end}, "text": new_name}},
        {"deleteContentRange": {"range": {"startIndex": line.start, "endIndex": line.end}}},
    ]
