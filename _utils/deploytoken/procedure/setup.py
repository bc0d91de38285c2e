"""
The team's Setup as one command: update the deploy repositories, check that Kingfisher is not busy,
take the deploy token. Every argument is checked before the first step does anything. Asking the
minions is the one step that needs Salt: the runner hands it in as ``check_busy``, so this module
decides the order and when to stop, and knows nothing of Salt.
"""

import secrets

from deploytoken import commands as token
from deploytoken import consent as consents
from deploytoken import model
from deploytoken.kingfisher import busy as busy_check
from deploytoken.kingfisher import errors, scrapyd
from deploytoken.procedure import repos

REFUSED = 1
# Salt's target types (salt.utils.minions.CkMinions): an unknown one would match no minion, which
# setup would only find out after updating the repositories.
TARGET_TYPES = (
    "glob", "pcre", "list", "grain", "grain_pcre", "pillar", "pillar_pcre", "pillar_exact", "compound",
    "compound_pillar_exact", "nodegroup", "ipcidr", "range",
)
CONSENT_EXAMPLE = "consent='Dana Lee: the crawl can be restarted tomorrow'"
# The longest note of a setup_stopped history row: whole reasons up to here, then how many more.
MAX_NOTE = 2000
# busy_args that only widen the check: anything else changes what the targets check (fewer tmux users,
# PostgreSQL not asked, a higher threshold, another Scrapyd), which is a consent in disguise.
WIDENING = {"postgres": ("auto", "always")}


def check_targets(targets):
    """``None`` (no Kingfisher check) or a non-empty target expression."""
    if targets is None:
        return None
    if not isinstance(targets, str) or not targets.strip():
        raise model.InputError(
            f"targets is empty: give the Kingfisher minions to check, e.g. targets='collect*', or leave it out; "
            f"got {targets!r}."
        )
    return model.check_text(targets, "targets")


def check_tgt_type(tgt_type):
    if tgt_type not in TARGET_TYPES:
        raise model.InputError(f"tgt_type must be one of {', '.join(TARGET_TYPES)}; got {tgt_type!r}.")
    return tgt_type


def check_busy_args(busy_args, targets, consent=None):
    """``{}`` or a mapping of arguments that ``kingfisher.busy`` takes, given with ``targets``. Arguments that
    change what the targets check (``narrowing``) need ``consent``: InputError without it."""
    if busy_args is None:
        return {}
    if not isinstance(busy_args, dict):
        raise model.InputError(
            f"busy_args must be a mapping of kingfisher.busy arguments, got {model.shown(busy_args)}."
        )
    if targets is None:
        raise model.InputError(
            "busy_args are passed to kingfisher.busy on the targets, but no targets were given: add "
            "targets='collect*', or leave busy_args out."
        )
    try:
        busy_check.check_arguments(busy_args)
    except errors.InputError as exc:
        raise model.InputError(f"busy_args: {exc}") from None
    narrowed = narrowing(busy_args)
    if narrowed and not consent:
        raise model.InputError(
            f"busy_args {narrowed} change what kingfisher.busy checks on the targets, so the check could miss "
            "someone's work: that needs the data support manager's consent, recorded with the claim, as "
            f"{CONSENT_EXAMPLE}; or leave them out (settings belong in the minions' config or pillar). Only "
            "busy_args='{\"postgres\": \"always\"}' needs none."
        )
    return busy_args


def narrowing(busy_args):
    """The busy_args that change what the check reads, as written in the history (a password hidden, a
    URL's credentials too), e.g. ``users='alice', postgres='never'``; empty when they only widen it."""
    shown = []
    for key, value in (busy_args or {}).items():
        if value is None or value in WIDENING.get(key, ()):
            continue
        if key == "password":
            value = "***"
        elif key == "url":
            value = scrapyd.redact(value)
        shown.append(f"{key}={value!r}")
    return ", ".join(shown)


def check_consent(consent):
    """``None`` or ``"<manager>: <why>"``, both parts present, one line."""
    try:
        return consents.parse(consent)
    except consents.Incomplete as exc:
        raise model.InputError(
            f"consent must name the data support manager who agreed and why, as consent='<manager>: <why>', "
            f"e.g. {CONSENT_EXAMPLE}; got {exc.text!r}."
        ) from None


def verdicts(returns):
    """Per minion: busy or not, and why, from ``LocalClient.cmd(..., full_return=True)`` answers.

    A minion that did not answer, or whose ``kingfisher.busy`` failed, counts as busy (unknown).
    """
    found = {}
    for minion, answer in sorted(returns.items()):
        report = answer.get("ret") if isinstance(answer, dict) else None
        if answer is False or answer is None:
            found[minion] = _unknown(f"{minion} did not answer, so it counts as busy.")
        elif isinstance(report, dict) and isinstance(report.get("busy"), bool):
            reasons = [str(reason) for reason in report.get("reasons") or []]
            if report["busy"] and not reasons:
                reasons = [f"{minion} says it is busy."]
            found[minion] = {"busy": report["busy"], "answered": True, "reasons": reasons,
                             "summary": str(report.get("summary") or "")}
        else:
            found[minion] = _unknown(f"{minion} could not run kingfisher.busy, so it counts as busy: {report}")
    return found


def _unknown(sentence):
    return {"busy": True, "answered": False, "reasons": [sentence]}


def run(store, caller, people, paths, targets, tgt_type, reason, consent, busy_args, check_busy, progress, notify,
        **acquire_args):
    """Update ``paths``; check ``targets`` unless None; take the token. Returns one summary dict.

    ``check_busy(targets, tgt_type, busy_args)`` -> ``{minion: full return}`` of ``kingfisher.busy``;
    ``acquire_args``: ``name``, ``wait``, ``timeout``, ``interval`` as for ``deploytoken.commands.request``.
    ``notify(tag, data)`` hears ``deploytoken/acquired`` once the token is taken, and
    ``deploytoken/setup_stopped`` when Kingfisher is busy and there is no consent.
    """
    targets = check_targets(targets)
    tgt_type = check_tgt_type(tgt_type)
    consent = check_consent(consent)
    busy_args = check_busy_args(busy_args, targets, consent)
    narrowed = narrowing(busy_args)
    recorded = f"{consent} (busy check narrowed with busy_args {narrowed})" if narrowed else consent
    asked = token.request(caller, people, reason=reason, consent=recorded, **acquire_args)
    reason = model.check_text(reason, "reason")
    paths = repos.check_paths(paths)
    summary = {"repos": None, "kingfisher": None, "consent": recorded, "token": None, "done": False}

    progress(f"Step 1 of 3: updating {model.counted(len(paths), 'repository', 'repositories')}.")
    summary["repos"] = repos.update_each(paths, progress)
    if not summary["repos"]["ok"]:
        problems = summary["repos"]["problems"]
        counted = model.counted(len(problems), "repository problem", "repository problems")
        return _stop(summary, f"Setup stopped: {counted}: " + " ".join(problems))

    if targets is None:
        progress("Step 2 of 3: no targets given, Kingfisher is not checked.")
    else:
        progress(f"Step 2 of 3: asking {targets} whether Kingfisher is busy.")
        returns = check_busy(targets, tgt_type, busy_args)
        if not returns:
            return _stop(summary, f"Setup stopped: no minion matches targets {targets!r}.")
        summary["kingfisher"] = verdicts(returns)
        busy = {minion: found for minion, found in summary["kingfisher"].items() if found["busy"]}
        for minion, found in summary["kingfisher"].items():
            # The summary names the sources checked and skipped; an older minion's answer has none.
            progress(f"{minion}: {found.get('summary') or ('Busy.' if found['busy'] else 'Not busy.')}")
            for said in found["reasons"] if found["busy"] else []:
                progress(f"    {_sentence(said)}")
        if busy and not consent:
            reasons = [f"{minion}: {_sentence(said)}" for minion, found in busy.items() for said in found["reasons"]]
            stopped = _stop(
                summary,
                "\n".join(["Setup stopped: Kingfisher is busy.", *reasons,
                           f"Ask the owners, or the data support manager, and run again with {CONSENT_EXAMPLE}."]),
            )
            _record_stop(store, asked, reason, _note(reasons), stopped)
            if notify:
                whose = {minion: found["reasons"] for minion, found in busy.items()}
                notify("deploytoken/setup_stopped", {"person": asked.shown, "login": asked.login, "targets": targets,
                                                     "reason": reason, "busy": whose, "message": stopped["message"]})
            return stopped
        if busy:
            progress(f"Kingfisher is busy, going ahead with the consent of {consent}.")

    progress("Step 3 of 3: taking the deploy token.")
    summary["token"] = token.take(store, asked, progress=progress, notify=notify)
    if summary["token"].get("retcode"):
        return _stop(summary, "Setup stopped: " + summary["token"]["message"], summary["token"]["retcode"])
    summary["done"] = True
    summary["message"] = "Setup done: repositories updated" + ("; Kingfisher checked" if targets else "") + (
        ". " + summary["token"]["message"])
    return summary


def _record_stop(store, asked, reason, why, stopped):
    """One history row (kind ``setup_stopped``) for a setup that a busy server stopped: nothing was taken,
    but the team sees who wanted to deploy, when, and what was in the way."""
    row = model.HistoryRow(
        claim=model.SETUP_PREFIX + secrets.token_hex(8), holder=asked.shown, login=asked.login, caller=asked.caller,
        acquired=None, released=model.isoformat(model.utcnow()), duration=None, reason=reason,
        note=why,
        kind=model.SETUP_STOPPED,
    )
    try:
        store.append_history(row)
    except model.StoreError as exc:  # the stop stands; only its row is missing (or waits in a spool)
        stopped["message"] += f" The history could not record this stop: {exc}"


def _sentence(text):
    """``text`` ending in a full stop, so that the next sentence does not run on from it."""
    text = str(text).rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _note(reasons):
    """The history note of a stopped setup: what was busy, each reason whole (none is cut off in the middle),
    as many as fit in ``MAX_NOTE`` characters, then how many more there were."""
    note = "Setup stopped: Kingfisher is busy."
    for number, said in enumerate(reasons):
        more = len(reasons) - number - 1
        if len(note) + 1 + len(said) > MAX_NOTE - (40 if more else 0):
            return f"{note} And {model.counted(len(reasons) - number, 'more reason', 'more reasons')}."
        note += " " + said
    return note


def _stop(summary, message, retcode=REFUSED):
    summary["message"] = message
    summary["retcode"] = retcode
    return summary
