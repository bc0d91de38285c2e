"""The Google store against the fake Docs/Sheets server, through the real googleapiclient."""

import pytest

from conftest import PEOPLE
from deploytoken import commands as token_store
from deploytoken import model
from deploytoken.stores.google import doc as gdoc
from google_fixtures import HEADER, free_doc
from google_fixtures import google_store as store_for


def holding(name="Alice Smith", claim="c1", login="alice"):
    return model.Holding(holder=name, login=login, caller=login, claim=claim, since="2026-01-01T00:00:00Z",
                         reason="upgrade")


def test_acquire_writes_name_and_status_reads_it_back(fake_google, google_config):
    store = store_for(google_config)
    assert store.read() is None
    wanted = holding()
    assert store.acquire(wanted) == wanted
    assert fake_google.held_text(google_config["document_id"]) == "Held by: Alice Smith\n"
    assert store.read() == wanted


def test_release_writes_nobody_and_one_history_row(fake_google, google_config):
    store = store_for(google_config)
    result = token_store.acquire(store, "alice", PEOPLE, reason="upgrade")
    released = token_store.release(store, "alice", PEOPLE, note="done")
    assert released["message"].startswith(f"Released the deploy token at {model.clock(released['released'])}, ")
    assert fake_google.held_text(google_config["document_id"]) == "Held by: Nobody\n"
    rows = fake_google.rows(google_config["spreadsheet_id"])
    assert [row[0] for row in rows[1:]] == [result["claim"]]
    history = store.history(10)
    assert history[0].claim == result["claim"] and history[0].note == "done"
    assert (history[0].released, history[0].kind) == (released["released"], "holding")
    assert history[0].to_dict()["pending"] is False


def test_release_of_ended_claim_is_a_conflict(fake_google, google_config):
    store = store_for(google_config)
    store.acquire(holding())
    with pytest.raises(model.ClaimConflict, match="Claim other has already ended"):
        store.release("other", _row("other"))
    assert store.flush() == 0


def test_text_and_style_elsewhere_untouched_with_emoji_and_accents(fake_google, google_config):
    document_id = google_config["document_id"]
    fake_google.add_document(document_id, free_doc(before="Déploiement 🚀 token — ☃\n"))
    store = store_for(google_config)
    store.acquire(holding("Carol Díaz 🎉", "c1", "carol"))
    runs = fake_google.runs(document_id)
    assert runs[0] == [{"text": "Déploiement 🚀 token — ☃\n"}]
    assert runs[1] == [{"text": "Held by: "}, {"text": "Carol Díaz 🎉\n", "style": {"bold": True}}]
    assert store.read().claim == "c1"
    store.release("c1", _row("c1"))
    assert fake_google.runs(document_id)[1][1] == {"text": "Nobody\n", "style": {"bold": True}}


def test_hand_typed_name_is_the_holder_and_can_be_forced(fake_google, google_config):
    store = store_for(google_config)
    store.acquire(holding())
    fake_google.hand_edit(google_config["document_id"], "Bob Jones")
    current = store.read()
    assert current.holder == "Bob Jones" and current.login == "bob"
    assert current.claim.startswith("hand-") and store.read().claim == current.claim
    refused = token_store.acquire(store, "alice", PEOPLE)
    assert refused["retcode"] == 1 and "Bob Jones" in refused["message"]
    forced = token_store.release(store, "alice", PEOPLE, force=True, reason="Bob is away", claim=current.claim)
    assert forced["kind"] == "forced" and forced["released"] <= model.isoformat(model.utcnow())
    assert fake_google.held_text(google_config["document_id"]) == "Held by: Nobody\n"


def test_hand_release_to_nobody_is_respected(fake_google, google_config):
    store = store_for(google_config)
    store.acquire(holding())
    fake_google.hand_edit(google_config["document_id"], "Nobody")
    assert store.read() is None


def test_split_runs_are_joined(fake_google, google_config):
    document_id = google_config["document_id"]
    fake_google.add_document(document_id, [[{"text": "Held "}, {"text": "by: Ali", "style": {"italic": True}},
                                            {"text": "ce Smith\n"}]])
    store = store_for(google_config)
    assert store.read().holder == "Alice Smith"


def test_status_reads_are_cached(fake_google, google_config):
    store = store_for(google_config, cache_seconds=30)
    before = fake_google.calls["docs.get"]
    for _ in range(5):
        store_for(google_config, cache_seconds=30).read()
    assert fake_google.calls["docs.get"] - before == 1
    store.acquire(holding())
    assert store.read().holder == "Alice Smith"


def test_append_failure_spools_row_then_flush_delivers_once(fake_google, google_config):
    store = store_for(google_config)
    store.acquire(holding())
    fake_google.inject("values.append", "error", code=500, count=10)
    store.release("c1", _row("c1"))
    assert fake_google.held_text(google_config["document_id"]) == "Held by: Nobody\n"
    pending = store.history(5)
    assert pending[0].claim == "c1" and pending[0].to_dict()["pending"] is True
    assert store.flush() == 0
    claims = [row[0] for row in fake_google.rows(google_config["spreadsheet_id"])]
    assert claims.count("c1") == 1


def test_append_committed_then_503_is_not_doubled(fake_google, google_config):
    store = store_for(google_config)
    store.acquire(holding())
    fake_google.inject("values.append", "commit_then_error", code=503)
    store.release("c1", _row("c1"))
    claims = [row[0] for row in fake_google.rows(google_config["spreadsheet_id"])]
    assert claims.count("c1") == 1
    assert store.flush() == 0


def test_write_committed_then_503_still_acquires(fake_google, google_config):
    store = store_for(google_config)
    fake_google.inject("docs.batchUpdate", "commit_then_error", code=503)
    assert store.acquire(holding()).claim == "c1"
    assert store.read().claim == "c1"


def test_write_applied_but_doc_unreachable_after_keeps_our_claim(fake_google, google_config):
    store = store_for(google_config)
    fake_google.inject("docs.batchUpdate", "commit_then_error", code=503, then=("docs.get", "error", 503, 5))
    with pytest.raises(model.StoreError, match=r"did not answer after 5 tries \(HTTP 503\): try again later\.$"):
        store.acquire(holding())
    assert store.read().claim == "c1"


def test_release_cut_short_after_the_write_still_delivers_its_row_once(fake_google, google_config):
    store = store_for(google_config)
    store.acquire(holding())
    fake_google.inject("docs.batchUpdate", "commit_then_error", code=503, then=("docs.get", "error", 503, 5))
    with pytest.raises(model.StoreError, match="did not answer"):
        store.release("c1", _row("c1"))
    assert fake_google.held_text(google_config["document_id"]) == "Held by: Nobody\n"
    assert store.flush() == 0
    assert store.flush() == 0
    claims = [row[0] for row in fake_google.rows(google_config["spreadsheet_id"])]
    assert claims.count("c1") == 1


def test_release_refused_by_a_stale_doc_leaves_no_row(fake_google, google_config):
    store = store_for(google_config)
    store.acquire(holding())
    fake_google.inject("docs.batchUpdate", "edit_between", name="Bob Jones")
    with pytest.raises(model.ClaimConflict, match="now held by Bob Jones"):
        store.release("c1", _row("c1"))
    assert store.flush() == 0
    assert [row[0] for row in fake_google.rows(google_config["spreadsheet_id"])] == ["claim"]


def test_edit_between_read_and_write_respects_the_other_person(fake_google, google_config):
    store = store_for(google_config)
    fake_google.inject("docs.batchUpdate", "edit_between", name="Bob Jones")
    current = store.acquire(holding())
    assert current.holder == "Bob Jones" and current.claim.startswith("hand-")


def test_spurious_revision_bump_and_transient_errors_are_retried(fake_google, google_config):
    store = store_for(google_config)
    fake_google.inject("docs.batchUpdate", "bump")
    fake_google.inject("docs.get", "error", code=429)
    fake_google.inject("docs.get", "reset")
    assert store.acquire(holding()).claim == "c1"


@pytest.mark.parametrize(
    "blocks, sentence",
    [
        ([[{"text": "Nothing here\n"}]], "has no 'Held by:' line: add a paragraph reading 'Held by: Nobody'"),
        (free_doc() + free_doc("Bob"), "has 2 'Held by:' lines: keep exactly one"),
        ([{"table": [["Held by: Nobody\n"]]}], "inside a table: move it to a plain paragraph"),
        ([[{"text": "Held by: "}, {"text": "Bob\n", "suggestedInsertionIds": ["s1"]}]],
         "pending suggestion on its 'Held by:' line: accept or reject it"),
    ],
)
def test_bad_docs_give_their_sentence_and_change_nothing(fake_google, google_config, blocks, sentence):
    document_id = google_config["document_id"]
    fake_google.add_document(document_id, blocks)
    before = fake_google.runs(document_id)
    store = store_for(google_config)
    with pytest.raises(model.StoreError, match=sentence):
        store.acquire(holding())
    assert fake_google.runs(document_id) == before


def test_viewer_only_account_is_told_to_become_editor(fake_google, google_config):
    fake_google.viewer_only.add(google_config["document_id"])
    with pytest.raises(model.StoreError, match="share the Doc with the service account's client_email as Editor"):
        store_for(google_config).acquire(holding())


@pytest.mark.parametrize(
    "change, sentence",
    [
        ({"document_id": "missing"}, r"The deploy token Doc missing does not exist \(HTTP 404\)"),
        ({"spreadsheet_id": "missing"}, r"The deploy history Sheet missing does not exist \(HTTP 404\)"),
    ],
)
def test_wrong_ids_give_their_sentence(fake_google, google_config, change, sentence):
    store = store_for(google_config, **change)
    with pytest.raises(model.StoreError, match=sentence):
        store.read() if "document_id" in change else store.history(5)


def test_missing_key_file_and_unreadable_json(google_config, tmp_path):
    with pytest.raises(model.InputError, match="service account key file /nonexistent.json does not exist"):
        store_for(google_config, service_account_file="/nonexistent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(model.InputError, match="cannot be read as JSON"):
        store_for(google_config, service_account_file=str(bad))
    with pytest.raises(model.InputError, match="deploytoken:google:document_id is missing"):
        store_for(google_config, document_id="")


def test_parser_gives_utf16_indexes():
    document = {"revisionId": "r", "body": {"content": [
        {"endIndex": 1, "sectionBreak": {}},
        {"startIndex": 1, "paragraph": {"elements": [{"startIndex": 1, "textRun": {"content": "🚀\n"}}]}},
        {"startIndex": 4, "paragraph": {"elements": [{"startIndex": 4, "textRun": {"content": "Held by:  Zoë 🎉\n"}}]}},
    ]}}
    line = gdoc.find_held_line(document)
    assert (line.name, line.start, line.end) == ("Zoë 🎉", 14, 20)


def _row(claim):
    return model.HistoryRow(claim=claim, holder="Alice Smith", login="alice", caller="alice",
                            acquired="2026-01-01T00:00:00Z", released="2026-01-01T01:00:00Z", duration=3600)


def test_damaged_spool_is_named_and_kept(fake_google, google_config):
    store = store_for(google_config)
    token_store.acquire(store, "alice", PEOPLE)
    spool = store.sheet.local.path("spool.json")
    with open(spool, "w") as handle:
        handle.write('[{"claim": "lost?", ')
    with pytest.raises(model.StoreError, match=f"The file {spool} is damaged .* left untouched"):
        token_store.release(store, "alice", PEOPLE)
    with open(spool) as handle:
        assert handle.read() == '[{"claim": "lost?", '
    assert fake_google.held_text(google_config["document_id"]) == "Held by: Alice Smith\n"


@pytest.mark.parametrize("history_range", ["'Deploy history'!A:H", "Sheet1!$B$1:$K"])
def test_history_range_too_narrow_is_refused(fake_google, google_config, history_range):
    with pytest.raises(model.InputError, match=r"spans (8|10) columns, but a history row has 13 \(claim, holder"):
        store_for(google_config, history_range=history_range)
    assert fake_google.held_text(google_config["document_id"]) == "Held by: Nobody\n"


@pytest.mark.parametrize("history_range", ["'Deploy history'!A:M", "'Deploy history'!A:K", "History!B2:Z",
                                           "deploy_history_named_range"])
def test_history_ranges_wide_enough_or_named_are_taken(fake_google, google_config, history_range):
    assert store_for(google_config, history_range=history_range).history_range == history_range


OLD_HEADER = HEADER[:11]


def test_a_sheet_in_the_layout_before_kinds_reads_and_keeps_its_layout(fake_google, google_config):
    """A Sheet of eleven columns (no kind, no until; an override's planned end in released) and its range
    A:K: its rows read with their kinds, and new rows are written in its layout."""
    sheet = google_config["spreadsheet_id"]
    fake_google.add_sheet(sheet, [OLD_HEADER, [
        "0123456789abcdef", "Alice Smith", "alice", "alice", "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z", "3600",
        "upgrade", "done", "", ""], [
        "fedcba9876543210", "Bob Jones", "bob", "bob", "2026-01-02T10:00:00Z", "2026-01-02T10:30:00Z", "1800",
        "", "", "Carol Díaz (carol)", "Bob is away"], [
        "override-00000000000000aa", "Carol Díaz", "carol", "carol", "2026-01-03T10:00:00Z", "2026-01-03T11:00:00Z",
        "3600", "db down", "Override of the deploy token guard on *", "", ""], [
        "override-00000000000000aa.cancel", "Carol Díaz", "carol", "carol", "2026-01-03T10:00:00Z",
        "2026-01-03T10:20:00Z", "1200", "db down", "cancelled", "Alice Smith", "db back"], [
        "override-00000000000000bb", "Carol Díaz", "carol", "carol", "2026-01-04T10:00:00Z", "2999-01-01T00:00:00Z",
        "", "long", "Override of the deploy token guard on db1", "", ""]])
    store = store_for(google_config, history_range="'Deploy history'!A:K")
    rows = token_store.history(store)
    assert [row["kind"] for row in rows] == ["override", "override_cancelled", "override", "forced", "holding"]
    running, cancel, cancelled = rows[:3]
    assert (running["until"], running["released"]) == ("2999-01-01T00:00:00Z", None)
    assert (cancelled["acquired"], cancelled["until"], cancelled["released"], cancelled["duration"]) == (
        "2026-01-03T10:00:00Z", "2026-01-03T11:00:00Z", "2026-01-03T10:20:00Z", 1200)
    assert [row.claim for row in store.overrides(model.utcnow())] == ["override-00000000000000bb"]

    token_store.acquire(store, "alice", PEOPLE)
    token_store.release(store, "alice", PEOPLE, note="new")
    row = model.HistoryRow(claim="override-00000000000000cc", holder="Bob Jones", login="bob", caller="bob",
                           acquired="2026-02-01T10:00:00Z", released=None, duration=None, kind="override",
                           until="2999-02-01T00:00:00Z")
    store.append_history(row)
    written = fake_google.rows(sheet)[-2:]
    assert [len(cells) for cells in written] == [11, 11]
    assert written[1][5] == "2999-02-01T00:00:00Z"  # the old layout's place for an override's end
    assert [(row["kind"], row["note"]) for row in token_store.history(store, 2)] == [
        ("override", ""), ("holding", "new")]
    assert token_store.history(store, 1)[0]["until"] == "2999-02-01T00:00:00Z"


def test_identity_is_the_doc(google_config):
    document_id = google_config["document_id"]
    assert store_for(google_config).identity == {"id": f"google:{document_id}", "name": f"Google Doc {document_id}"}


def test_a_late_duplicate_release_keeps_the_pending_row_of_the_real_one(fake_google, google_config):
    store = store_for(google_config)
    store.acquire(holding())
    fake_google.inject("values.append", "error", code=500, count=10)
    store.release("c1", _row("c1"))
    with pytest.raises(model.ClaimConflict, match="Claim c1 has already ended"):
        store_for(google_config).release("c1", _row("c1"))
    fake_google.faults["values.append"].clear()
    assert store.flush() == 0
    assert [row[0] for row in fake_google.rows(google_config["spreadsheet_id"])] == ["claim", "c1"]
