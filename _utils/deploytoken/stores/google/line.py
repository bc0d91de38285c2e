"""
The Google store's ``Held by:`` line: reading it, writing a name under compare-and-swap, and the claim
behind the name.

The Doc only holds a name. The claim id, since, reason, login and caller of a claim we write are noted in
a small state file just before the write: when the Doc shows a name with no such claim, a person typed it
by hand, and it gets a claim id ``hand-<hash>`` made from the name and the revision at which we first saw
it (stable while the name stays, so ``release force=True claim=...`` works). Known limit: if a person
types back exactly the name of our last claim, that claim is assumed.
"""

import dataclasses
import hashlib

from deploytoken import cache, model
from deploytoken.stores.google import client
from deploytoken.stores.google import doc as gdoc

HOLDING_FIELDS = tuple(field.name for field in dataclasses.fields(model.Holding))


class DocLine:
    def __init__(self, api, local, document_id, people, cache_seconds):
        self.api = api
        self.local = local
        self.document_id = document_id
        self.people = people
        self.cache_seconds = cache_seconds
        self.where = f"The deploy token Doc {document_id}"

    def read_cached(self):
        """The line as read at most ``cache_seconds`` ago (for status callers)."""
        data = cache.cached(self.local.path("read.json"), self.cache_seconds, lambda: vars(self.read()))
        return gdoc.HeldLine(**data)

    def read(self):
        document = self.api.call(self.api.docs.documents().get(documentId=self.document_id), "read", self.where)
        line = gdoc.find_held_line(document, self.where)
        if not line.revision:
            if self.api.user:
                fix = "ask the Doc's owner to share it with your Google account as Editor."
            else:
                fix = "share the Doc with the service account's client_email as Editor."
            account = "your Google account" if self.api.user else "this service account"
            raise model.StoreError(
                f"{self.where} gives no revision id to {account}, so it cannot be changed safely: {fix}"
            )
        return line

    def write(self, line, name, holding):
        """One guarded write; True when it is in the Doc, False when someone else wrote first."""
        body = {
            "requests": gdoc.replace_name_requests(line, name),
            "writeControl": {"requiredRevisionId": line.revision},
        }
        request = self.api.docs.documents().batchUpdate(documentId=self.document_id, body=body)
        cache.forget(self.local.path("read.json"))
        if holding is not None:
            # Noted before the write, so a reader that sees our name in the Doc before we hear back
            # (another process, or us after a lost answer) still knows the claim behind it.
            self._update_state(lambda state: state["claims"].append(_holding_dict(holding)))
        try:
            self.api.call(request, "write", self.where)
        except client.Ambiguous:
            # The write may have been applied before the answer was lost: the Doc tells.
            after = self.read()
            if after.revision == line.revision or after.name != name:
                return self._abandon(holding)
        except client.Stale:
            if self.read().revision == line.revision:
                self._abandon(holding)
                raise model.StoreError(
                    f"{self.where} rejected the change of its '{gdoc.MARKER}' line: check that line by hand."
                ) from None
            return self._abandon(holding)

        def written(state):
            state["claims"] = [_holding_dict(holding)] if holding is not None else []

        self._update_state(written)
        return True

    def holding(self, line):
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

    def _abandon(self, holding):
        if holding is not None:
            self._update_state(
                lambda state: state.update(claims=[c for c in state["claims"] if c["claim"] != holding.claim])
            )
        return False

    def _update_state(self, change):
        """Run ``change(state)`` on the local state file under its lock, and save it."""
        with self.local.locked("state"):
            state = self.local.load_kept("state.json") or {}
            if state.get("document") != self.document_id or "claims" not in state:
                state = {"document": self.document_id, "claims": []}
            change(state)
            self.local.save("state.json", state)


def _holding_dict(holding):
    return {key: getattr(holding, key) for key in HOLDING_FIELDS}
