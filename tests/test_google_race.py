"""Many acquirers under injected faults, and many faults in a row: one holder, every history row once."""

import random

import racing
from deploytoken import commands as token_store
from deploytoken import model
from google_fixtures import google_settings
from google_fixtures import google_store as _store

RACERS = 50


def run_race(config):
    """50 racers, each the store's own acquire of a holding of its own: (number, holder seen, claim seen,
    won) or, for a racer that failed, (None, None, None, False, its sentence)."""
    outcomes = racing.run(racing.write_holding, [(google_settings(config), number) for number in range(RACERS)])
    return [(*value, None) if kind == "ok" else (None, None, None, False, value) for kind, value in outcomes]


def held_name(fake, config):
    return fake.held_text(config["document_id"])[len("Held by: ") : -1]


def test_fifty_acquirers_with_faults_end_with_exactly_one_holder(fake_google, google_config):
    # Without faults, the race is in the store conformance suite.
    for op, kind, code in [("docs.batchUpdate", "commit_then_error", 503), ("docs.batchUpdate", "error", 429),
                           ("docs.get", "error", 500), ("docs.get", "reset", 0), ("docs.batchUpdate", "bump", 0)]:
        fake_google.inject(op, kind, code=code, count=4)
    answers = run_race(google_config)
    holder = held_name(fake_google, google_config)
    winners = [number for number, _, _, won, _ in answers if won]
    assert len(winners) == 1 and holder == f"Racer {winners[0]}"
    failures = [error for *_, error in answers if error]
    assert all(error.endswith(".") and error.count(". ") == 0 and "\n" not in error for error in failures), failures
    # Every loser names the winner and the winner's claim, not a hand-typed guess.
    assert {(seen, claim) for _, seen, claim, _, error in answers if not error} == {(holder, f"claim{winners[0]}")}


def test_fifty_acquirers_respect_a_hand_typed_holder(fake_google, google_config):
    fake_google.hand_edit(google_config["document_id"], "Dana Typed")
    fake_google.inject("docs.batchUpdate", "edit_between", name="Erin Typed")
    answers = run_race(google_config)
    assert not [number for number, _, _, won, _ in answers if won]
    assert held_name(fake_google, google_config) == "Dana Typed"


def test_over_a_hundred_faults_never_two_holders_nor_lost_or_doubled_rows(fake_google, google_config):
    chooser = random.Random(3)
    store = _store(google_config)
    people = {"alice": "Alice Smith"}
    kinds = [("error", 503), ("error", 429), ("error", 500), ("reset", 0), ("commit_then_error", 503)]
    ops = ["docs.get", "docs.batchUpdate", "values.get", "values.append"]
    injected, released, sentences = 0, [], []

    def attempt(action):
        for _ in range(10):
            try:
                return action()
            except model.StoreError as exc:
                sentences.append(str(exc))
        raise AssertionError("the store never recovered")

    for _ in range(30):
        for _ in range(4):
            op = chooser.choice(ops)
            kind, code = chooser.choice(kinds if op.endswith(("batchUpdate", "append")) else kinds[:4])
            fake_google.inject(op, kind, code=code)
            injected += 1
        result = attempt(lambda: token_store.acquire(store, "alice", people, reason="fault drill"))
        assert result["acquired"] is True, result
        assert held_name(fake_google, google_config) == "Alice Smith"
        outcome = attempt(lambda: token_store.release(store, "alice", people, note="done"))
        if outcome.get("released"):
            released.append(result["claim"])
        assert held_name(fake_google, google_config) == "Nobody"
    assert injected >= 100
    for op in ops:
        fake_google.faults[op].clear()
    assert store.flush() == 0
    claims = [row[0] for row in fake_google.rows(google_config["spreadsheet_id"])[1:]]
    assert sorted(claims) == sorted(set(claims))
    assert set(released) <= set(claims)
    assert all("\n" not in sentence and sentence.endswith(".") for sentence in sentences)
