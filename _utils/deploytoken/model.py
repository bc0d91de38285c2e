"""
The deploy token's vocabulary: who holds it (``Holding``), what the history keeps (``HistoryRow``),
our error types, and the checks every input goes through before a store is touched.

Plain Python, imported by name by the runner, the ext_pillar, the states and every store.
"""

import dataclasses
import datetime
import math
import os
import pwd
import re
import unicodedata

from salt.exceptions import SaltException

MAX_NAME_LENGTH = 80
MAX_TEXT_LENGTH = 500
NOBODY = "Nobody"
MAX_TIMEOUT = 24 * 3600
# A waiter in line shows it is alive at least every WAITER_HEARTBEAT seconds; one unseen for WAITER_STALE
# seconds (a stopped process, a lost connection) loses its place on every store, and the line moves on.
WAITER_HEARTBEAT = 5
WAITER_STALE = 30
MAX_INTERVAL = 3600
MAX_LIMIT = 10000
# Claim ids: 16 hex digits, or ``hand-`` and 16 hex digits for a name typed in the Google Doc.
CLAIM_SHAPE = re.compile(r"(hand-)?[0-9a-f]{16}")


class DeploytokenError(SaltException):
    """Base of our errors: the message is one sentence a person can act on."""


class InputError(DeploytokenError):
    """An argument or a setting is not acceptable; nothing was changed."""


class StoreError(DeploytokenError):
    """The token store cannot be read or written; nothing was changed."""


class ClaimConflict(DeploytokenError):
    """A release or force named a claim that is not the current one."""


def no_such_claim(claim):
    """The sentence for a release that names a claim id that was never given out."""
    return (
        f"There is no claim {claim}: it is not the current claim and not in the deploy history; "
        "see salt-run deploytoken.status. Nothing was changed."
    )


def claim_ended(claim, current):
    """The sentence for a release that names a claim which is no longer the current one."""
    if current is None:
        return f"Claim {claim} has already ended: nobody holds the deploy token now. Nothing was changed."
    return (
        f"Claim {claim} has already ended: the deploy token is now held by {current.holder} "
        f"under claim {current.claim}. Nothing was changed."
    )


@dataclasses.dataclass
class Holding:
    """Who holds the token now. ``claim``/``since`` may be unknown for a name typed by hand."""

    holder: str
    login: str | None = None
    caller: str | None = None
    claim: str | None = None
    since: str | None = None
    reason: str = ""

    def to_dict(self):
        return dataclasses.asdict(self)


# What a history row records, in its column ``kind``.
HOLDING = "holding"  # a claim its holder gave back
FORCED = "forced"  # a claim someone else ended (release force=True): forced_by, force_reason
OVERRIDE = "override"  # an override of the guard: acquired its start, until its planned end, released its end
OVERRIDE_CANCELLED = "override_cancelled"  # an override ended early: released when, forced_by who, force_reason why
SETUP_STOPPED = "setup_stopped"  # a setup stopped by a busy Kingfisher server: released when, note why
WAITED = "waited"  # a wait in the line (acquire wait=True): acquired when it began, released when it ended
KINDS = (HOLDING, FORCED, OVERRIDE, OVERRIDE_CANCELLED, SETUP_STOPPED, WAITED)

OVERRIDE_PREFIX = "override-"
CANCEL_SUFFIX = ".cancel"
SETUP_PREFIX = "setup-"
WAIT_PREFIX = "wait-"


@dataclasses.dataclass
class HistoryRow:
    """One row of the history: a finished claim, an override, its cancellation, a stopped setup, a wait (``kind``).
    Times are when things happened; an override's planned end is its ``until``."""

    claim: str | None
    holder: str
    login: str | None
    caller: str | None
    acquired: str | None
    released: str | None
    duration: int | None
    reason: str = ""
    note: str = ""
    forced_by: str | None = None
    force_reason: str | None = None
    kind: str | None = None
    until: str | None = None

    # The order of a Sheet's columns: the first eleven are those of a Sheet made before kind and until.
    COLUMNS = (
        "claim",
        "holder",
        "login",
        "caller",
        "acquired",
        "released",
        "duration",
        "reason",
        "note",
        "forced_by",
        "force_reason",
        "kind",
        "until",
    )

    def __post_init__(self):
        # A row written before rows had a kind (an older store, an old Sheet, a row spooled by older code):
        # its claim says what it is, and an override's released, then its planned end, is its until.
        if not self.kind:
            self.kind = kind_of(self.claim, self.forced_by)
            if self.kind == OVERRIDE and self.until is None:
                self.until, self.released, self.duration = self.released, None, None

    def to_dict(self):
        return dataclasses.asdict(self)


def kind_of(claim, forced_by):
    """The kind of a row written without one, from its claim."""
    claim = claim or ""
    if claim.startswith(OVERRIDE_PREFIX):
        return OVERRIDE_CANCELLED if claim.endswith(CANCEL_SUFFIX) else OVERRIDE
    if claim.startswith(SETUP_PREFIX):
        return SETUP_STOPPED
    if claim.startswith(WAIT_PREFIX):
        return WAITED
    return FORCED if forced_by else HOLDING


def active_overrides(rows, now):
    """The override rows among ``rows`` that still run at ``now`` and whose cancellation row (claim
    ``override-<id>.cancel``) is not among them; what ``overrides()`` of a store returns, for a store that
    cannot ask its backend."""
    claims = {row.claim for row in rows}
    now_text = isoformat(now)
    return [row for row in rows
            if row.kind == OVERRIDE and (row.until or "") > now_text and row.claim + CANCEL_SUFFIX not in claims]


def settle(rows, now):
    """``rows`` of a store's history (newest first) as people read them: an override's ``released`` is its
    actual end, the time of its cancellation or, once past, its planned end, and None while it runs. The
    stores keep only what was known when each row was written; a cancellation is always written after its
    override, so any newest-first slice that holds an override holds its cancellation too."""
    cancelled = {row.claim.removesuffix(CANCEL_SUFFIX): row.released for row in rows
                 if row.kind == OVERRIDE_CANCELLED and row.claim}
    now_text = isoformat(now)
    settled = []
    for row in rows:
        if row.kind == OVERRIDE:
            end = cancelled.get(row.claim) or (row.until if row.until and row.until <= now_text else None)
            row = dataclasses.replace(row, released=end, duration=seconds_between(row.acquired, end))
        settled.append(row)
    return settled


# ---- time -------------------------------------------------------------------------------------


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def isoformat(moment):
    return moment.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text):
    """ISO 8601 (as we write it) to an aware datetime; None when missing or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def seconds_between(start, end):
    start, end = parse_time(start), parse_time(end)
    if start is None or end is None:
        return None
    return max(0, int((end - start).total_seconds()))


def counted(number, one, many):
    """``1 repository``, ``4 repositories``."""
    return f"{number} {one if number == 1 else many}"


def human_duration(seconds):
    """``42 s``, ``38 min``, ``3 h 05 min``, ``2 d 4 h``."""
    if seconds is None:
        return "an unknown time"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def clock(text):
    """``2026-11-26 14:02 UTC``, or ``an unknown time``."""
    moment = parse_time(text)
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "an unknown time"


def since_text(since, now=None):
    """``2026-11-26 14:02 UTC (38 min)``, or ``an unknown time`` (a name typed by hand)."""
    moment = parse_time(since)
    if moment is None:
        return "an unknown time"
    age = max(0, int(((now or utcnow()) - moment).total_seconds()))
    return f"{clock(since)} ({human_duration(age)})"


def describe(holding, now=None):
    """``Alice Smith (alice) since 2026-11-26 14:02 UTC (38 min): "upgrade postgres"``: the runner's
    refusals and the state guard both name the holder this way."""
    text = holding.holder
    if holding.login and holding.login != holding.holder:
        text += f" ({holding.login})"
    text += f" since {since_text(holding.since, now)}"
    if holding.reason:
        text += f': "{holding.reason}"'
    return text


# ---- checks on input --------------------------------------------------------------------------


def _has_control(text):
    return any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in text)


def check_name(name, what="name"):
    """A holder's name as it will be written in the token; returns it stripped."""
    if not isinstance(name, str):
        raise InputError(f"The {what} must be text, got {name!r}.")
    stripped = name.strip()
    if not stripped:
        raise InputError(f"The {what} is empty: give the person's name, e.g. name='Alice Smith'.")
    if _has_control(stripped):
        raise InputError(
            f"The {what} {name!r} contains a control character or line break: "
            "a name must be a single line of printable text."
        )
    if len(stripped) > MAX_NAME_LENGTH:
        raise InputError(
            f"The {what} is {len(stripped)} characters long; at most {MAX_NAME_LENGTH} are allowed."
        )
    if reads_as_nobody(stripped):
        raise InputError(
            f"The {what} cannot be {stripped!r}: it reads as {NOBODY!r}, and the token reads "
            f"'Held by: {NOBODY}' when it is free."
        )
    if _confusables().is_dangerous(stripped):
        raise InputError(
            f"The {what} {stripped!r} mixes scripts with letters that look alike (e.g. a Cyrillic 'о' among "
            "Latin letters): write it in one script."
        )
    return stripped


def reads_as_nobody(name):
    """Whether a person would read ``name`` as "Nobody": after compatibility decomposition, without
    accents, punctuation or spaces, each letter is that of "Nobody" or one of its Unicode TR39
    confusables (``confusables.txt``, as packaged by confusable_homoglyphs), in either case."""
    letters = [char for char in unicodedata.normalize("NFKD", name) if char.isalnum()]
    if len(letters) != len(NOBODY):
        return False
    return all(_looks_like(char, wanted) for char, wanted in zip(letters, NOBODY))


def _looks_like(char, wanted):
    for case in {wanted.lower(), wanted.upper()}:
        if char == case:
            return True
        if any(glyph["c"].strip("\u200e") == case for glyph in _confusables().confusables_data.get(char, ())):
            return True
    return False


def _confusables():
    # Imported when a name is checked (on the master), not when the guard or the Kingfisher checks load
    # this module on a minion or a salt-ssh target, which need not have the package.
    from confusable_homoglyphs import confusables

    return confusables


def check_text(text, what):
    """A reason or note: optional, one line, bounded."""
    if text is None:
        return ""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise InputError(f"The {what} must be text, got {text!r}.")
    text = str(text).strip()
    if _has_control(text):
        raise InputError(f"The {what} must be a single line of printable text, without line breaks.")
    if len(text) > MAX_TEXT_LENGTH:
        raise InputError(f"The {what} is {len(text)} characters long; at most {MAX_TEXT_LENGTH} are allowed.")
    return text


def check_seconds(value, what, minimum=0, maximum=None):
    """A number of seconds in range (Salt may hand us a string or a number)."""
    number = _number(value)
    if number is None or number < minimum or (maximum is not None and number > maximum):
        raise InputError(f"The {what} must be a number of seconds, {_range(minimum, maximum)}; got {shown(value)}.")
    return number


def check_count(value, what, minimum=1, maximum=None):
    number = _number(value)
    if number is None or number != int(number) or number < minimum or (maximum is not None and number > maximum):
        raise InputError(f"The {what} must be a whole number, {_range(minimum, maximum)}; got {shown(value)}.")
    return int(number)


def shown(value, most=40):
    """``repr(value)``, cut short: a refusal should not echo a thousand digits."""
    text = repr(value)
    # One ellipsis character: a sentence ending on the cut value must not end in "....".
    return text if len(text) <= most else text[:most] + "\u2026"


def _range(minimum, maximum):
    return f"at least {minimum}" if maximum is None else f"at least {minimum} and at most {maximum}"


def check_flag(value, what):
    """``True``/``False`` as Salt's command line may spell them."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "yes", "1"):
        return True
    if str(value).lower() in ("false", "no", "0", "none", ""):
        return False
    raise InputError(f"{what} must be True or False, got {value!r}.")


def check_claim(claim):
    """``None`` or a claim id as the stores give them out."""
    if claim is None:
        return None
    text = str(claim).strip()
    if not CLAIM_SHAPE.fullmatch(text):
        raise InputError(
            f"The claim {text!r} is not a claim id: claims are 16 hex digits (or hand- and 16 hex digits), "
            "as salt-run deploytoken.status shows them."
        )
    return text


def _number(value):
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        return None
    return number if math.isfinite(number) else None


# ---- identity ---------------------------------------------------------------------------------


def login_of(user):
    """Salt's ``__user__`` (``root``, ``sudo_alice``, ``alice``) to the login of the person."""
    if not user:
        return None
    user = str(user)
    if user.startswith("sudo_") and len(user) > len("sudo_"):
        return user[len("sudo_") :]
    return user


def local_login():
    """The person at this terminal: ``SUDO_USER`` first (sudo keeps it), else the login name."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        return sudo_user
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


def display_name(login, people):
    """The name written in the token for a login, from ``deploytoken: people:``."""
    people = people or {}
    return str(people.get(login) or login)


def login_for_name(name, people):
    """The login whose display name is ``name`` (a name typed by hand), or None."""
    for login, shown in (people or {}).items():
        if str(shown).casefold() == str(name).casefold() or str(login).casefold() == str(name).casefold():
            return str(login)
    return None


def same_person(holding, login, name):
    """Whether the current holding belongs to this login / display name."""
    if holding.login and login:
        return holding.login == login
    return holding.holder.casefold() == str(name).casefold()
