"""
A local stand-in for the Google Docs and Sheets APIs and the OAuth token endpoint, on 127.0.0.1.

It keeps what our store relies on: revision ids that change on every edit, batchUpdates applied one at
a time, a stale ``requiredRevisionId`` refused with 400 and nothing applied, UTF-16 indexes, a line split
into several styled runs, suggestions, tables, and viewer-only access (no revisionId, 403 on writes).
Faults are queued per operation: an HTTP error, "apply then answer 503", a connection reset, an edit by
someone else just before a write, or a revision bump with no visible change.
"""

import base64
import copy
import http.server
import itertools
import json
import threading
import urllib.parse

OPS = ("token", "docs.get", "docs.batchUpdate", "values.get", "values.append")


def utf16_len(text):
    return sum(2 if ord(char) > 0xFFFF else 1 for char in text)


def _py_offset(text, units):
    """The Python string offset of a UTF-16 offset inside ``text``."""
    count = 0
    for position, char in enumerate(text):
        if count >= units:
            return position
        count += 2 if ord(char) > 0xFFFF else 1
    return len(text)


class FakeGoogle:
    """The documents, sheets and faults; ``serve()`` starts the HTTP server in a thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.documents = {}
        self.sheets = {}
        self.faults = {op: [] for op in OPS}
        self.calls = {op: 0 for op in OPS}
        self.viewer_only = set()
        self.accounts = {}  # refresh token -> email of a person's own Google account
        self._revisions = itertools.count(1)
        self.server = None

    # -- set-up from tests -----------------------------------------------------------------

    def add_document(self, document_id, blocks):
        """``blocks``: paragraphs as lists of runs ``{"text", "style"?, "suggestedInsertionIds"?}``,
        or ``{"table": [[cell text, ...], ...]}``. Each paragraph's last run should end with a newline."""
        with self.lock:
            self.documents[document_id] = {"blocks": copy.deepcopy(blocks), "revision": self._next_revision()}

    def add_sheet(self, spreadsheet_id, rows=()):
        with self.lock:
            self.sheets[spreadsheet_id] = [list(row) for row in rows]

    def hand_edit(self, document_id, name):
        """What a person typing in the Doc does: put ``name`` on the Held by line."""
        with self.lock:
            self._set_name(self.documents[document_id], name)

    def held_text(self, document_id):
        with self.lock:
            for block in self.documents[document_id]["blocks"]:
                if isinstance(block, list):
                    text = "".join(run["text"] for run in block)
                    if text.startswith("Held by:"):
                        return text
        return None

    def runs(self, document_id):
        with self.lock:
            return copy.deepcopy(self.documents[document_id]["blocks"])

    def rows(self, spreadsheet_id):
        with self.lock:
            return [list(row) for row in self.sheets[spreadsheet_id]]

    def inject(self, op, kind, code=503, name=None, count=1, then=None):
        """Queue ``count`` faults for the next requests of ``op``.

        kind: ``error`` (answer ``code``, apply nothing), ``commit_then_error`` (apply, then answer
        ``code``), ``reset`` (close the connection, apply nothing), ``edit_between`` (a person writes
        ``name`` just before this write), ``bump`` (the revision changes with no visible edit).
        ``then``: ``(op, kind, code, count)`` queued once this fault has fired, to hit the requests after it.
        """
        with self.lock:
            self.faults[op].extend([{"kind": kind, "code": code, "name": name, "then": then}] * count)

    def serve(self):
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # -- the model -------------------------------------------------------------------------

    def _next_revision(self):
        return f"rev{next(self._revisions):06d}"

    def _set_name(self, document, name):
        for block in document["blocks"]:
            if isinstance(block, list) and "".join(run["text"] for run in block).startswith("Held by:"):
                block[:] = [{"text": "Held by: "}, {"text": name + "\n"}]
        document["revision"] = self._next_revision()

    def render(self, document_id, editor=True):
        document = self.documents[document_id]
        content = [{"endIndex": 1, "sectionBreak": {}}]
        index = 1
        for block in document["blocks"]:
            if isinstance(block, dict):
                start = index
                index += 1
                rows = []
                for row in block["table"]:
                    index += 1
                    cells = []
                    for text in row:
                        index += 1
                        paragraph, index = _paragraph([{"text": text}], index)
                        cells.append({"content": [paragraph]})
                    rows.append({"tableCells": cells})
                index += 1
                content.append({"startIndex": start, "endIndex": index, "table": {"tableRows": rows}})
            else:
                paragraph, index = _paragraph(block, index)
                content.append(paragraph)
        body = {"documentId": document_id, "title": "Deploy token", "body": {"content": content}}
        if editor:
            body["revisionId"] = document["revision"]
        return body

    def batch_update(self, document_id, body):
        """Apply a batchUpdate or answer (status, error message)."""
        document = self.documents[document_id]
        required = (body.get("writeControl") or {}).get("requiredRevisionId")
        if required is not None and required != document["revision"]:
            return 400, "The required revision ID does not match the latest revision."
        blocks = copy.deepcopy(document["blocks"])
        for request in body.get("requests") or []:
            error = _apply(blocks, request)
            if error:
                return 400, error
        document["blocks"] = blocks
        document["revision"] = self._next_revision()
        return 200, {"documentId": document_id, "replies": [{} for _ in body.get("requests") or []],
                     "writeControl": {"requiredRevisionId": document["revision"]}}


def _paragraph(runs, index):
    elements = []
    start = index
    for run in runs:
        text_run = {"content": run["text"], "textStyle": run.get("style") or {}}
        for key in ("suggestedInsertionIds", "suggestedDeletionIds"):
            if run.get(key):
                text_run[key] = run[key]
        end = index + utf16_len(run["text"])
        elements.append({"startIndex": index, "endIndex": end, "textRun": text_run})
        index = end
    return {"startIndex": start, "endIndex": index, "paragraph": {"elements": elements}}, index


def _locate(blocks, index):
    """(block, offset inside it) for a UTF-16 index in a top-level paragraph, or None."""
    position = 1
    for block in blocks:
        length = _block_length(block)
        if position <= index < position + length:
            # Edits inside tables are not modelled: our store never makes them.
            return (block, index - position) if isinstance(block, list) else None
        position += length
    return None


def _block_length(block):
    if isinstance(block, list):
        return sum(utf16_len(run["text"]) for run in block)
    return 2 + sum(1 + sum(1 + utf16_len(text) for text in row) for row in block["table"])


def _apply(blocks, request):
    if "insertText" in request:
        index = request["insertText"]["location"]["index"]
        text = request["insertText"]["text"]
        found = _locate(blocks, index)
        if found is None:
            return f"Invalid insertion index {index}."
        block, offset = found
        # Inserted text takes the style of the character before it (of the first run at a line start).
        position = 0
        for run in block:
            length = utf16_len(run["text"])
            if offset <= position + length and (offset > position or position == 0):
                cut = _py_offset(run["text"], offset - position)
                run["text"] = run["text"][:cut] + text + run["text"][cut:]
                return None
            position += length
        return f"Invalid insertion index {index}."
    if "deleteContentRange" in request:
        span = request["deleteContentRange"]["range"]
        start, end = span["startIndex"], span["endIndex"]
        found = _locate(blocks, start)
        if found is None or end <= start:
            return f"Invalid deletion range {start}-{end}."
        block, offset = found
        stop = offset + end - start
        if stop >= sum(utf16_len(run["text"]) for run in block):
            return "The range cannot include the paragraph's final newline."
        position = 0
        for run in block:
            length = utf16_len(run["text"])
            low, high = max(offset, position), min(stop, position + length)
            if low < high:
                run["text"] = run["text"][: _py_offset(run["text"], low - position)] + run["text"][
                    _py_offset(run["text"], high - position) :
                ]
            position += length
        block[:] = [run for run in block if run["text"]]
        return None
    return "Unsupported request."


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def _handle(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        op, target = _route(method, path)
        if op is None:
            return self._error(404, f"No route for {method} {path}.")
        fake = self.fake
        with fake.lock:
            fake.calls[op] += 1
            fault = fake.faults[op].pop(0) if fake.faults[op] else None
            if fault and fault["then"]:
                then_op, kind, code, count = fault["then"]
                fake.faults[then_op][:0] = [{"kind": kind, "code": code, "name": None, "then": None}] * count
        if fault and fault["kind"] == "reset":
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        if fault and fault["kind"] == "error":
            return self._error(fault["code"], "Injected fault.")
        if op == "token":
            return self._token(fake, urllib.parse.parse_qs(raw.decode()))
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            return self._error(401, "Request is missing required authentication credential.")
        body = json.loads(raw or b"{}")
        with fake.lock:
            status, answer = self._serve(fake, op, target, body, fault)
        if fault and fault["kind"] == "commit_then_error":
            return self._error(fault["code"], "Injected fault after the change was applied.")
        if status != 200:
            return self._error(status, answer)
        return self._json(200, answer)

    def _serve(self, fake, op, target, body, fault):
        if op.startswith("docs."):
            if target not in fake.documents:
                return 404, f"Requested entity was not found: {target}."
            document = fake.documents[target]
            if op == "docs.get":
                return 200, fake.render(target, editor=target not in fake.viewer_only)
            if target in fake.viewer_only:
                return 403, "The caller does not have permission."
            if fault and fault["kind"] == "edit_between":
                fake._set_name(document, fault["name"])
            if fault and fault["kind"] == "bump":
                document["revision"] = fake._next_revision()
            return fake.batch_update(target, body)
        spreadsheet, _, _ = target.partition("|")
        if spreadsheet not in fake.sheets:
            return 404, f"Requested entity was not found: {spreadsheet}."
        rows = fake.sheets[spreadsheet]
        if op == "values.get":
            return 200, {"range": target.partition("|")[2], "majorDimension": "ROWS",
                         "values": [[str(cell) for cell in row] for row in rows]}
        rows.extend(list(row) for row in body.get("values") or [])
        return 200, {"spreadsheetId": spreadsheet, "updates": {"updatedRows": len(body.get("values") or [])}}

    def _token(self, fake, form):
        """A service account's JWT grant, or a person's refresh token: its accounts were granted ``openid
        email``, so the answer has an ID token unless the request narrows the scopes without ``openid``."""
        answer = {"access_token": "fake-access-token", "expires_in": 3600, "token_type": "Bearer"}
        if form.get("grant_type") == ["refresh_token"]:
            email = fake.accounts.get((form.get("refresh_token") or [""])[0])
            if email is None:
                return self._json(400, {"error": "invalid_grant", "error_description": "Token has been revoked."})
            if "scope" not in form or "openid" in form["scope"][0].split():
                answer["id_token"] = _unsigned_jwt({"iss": "https://accounts.google.com", "email": email,
                                                    "email_verified": True})
        return self._json(200, answer)

    def _json(self, status, data):
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status, message):
        names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED"}
        self._json(status, {"error": {"code": status, "message": message, "status": names.get(status, "UNAVAILABLE")}})


def _unsigned_jwt(claims):
    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{part('unsigned')}"


def _route(method, path):
    """(operation, target) for a request path; target is the document id, or 'sheet|range'."""
    if method == "POST" and path == "/token":
        return "token", None
    if path.startswith("/v1/documents/"):
        rest = path[len("/v1/documents/") :]
        if method == "POST" and rest.endswith(":batchUpdate"):
            return "docs.batchUpdate", rest[: -len(":batchUpdate")]
        if method == "GET":
            return "docs.get", rest
    if path.startswith("/v4/spreadsheets/") and "/values/" in path:
        spreadsheet, _, cell_range = path[len("/v4/spreadsheets/") :].partition("/values/")
        if method == "POST" and cell_range.endswith(":append"):
            return "values.append", f"{spreadsheet}|{cell_range[: -len(':append')]}"
        if method == "GET":
            return "values.get", f"{spreadsheet}|{cell_range}"
    return None, None
