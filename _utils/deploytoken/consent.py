"""
The data support manager's consent, ``"<manager>: <why>"`` on one line, as both the Setup and the
Kingfisher guards read it. Each caller words its own refusal, with an example of where it is written.

A consent is given with ``salt-run deploytoken.setup consent=`` and written with the claim it was given
for, at the end of the claim's reason (``new spider [consent: Dana Lee: fine]``), so the history keeps it
and the ext_pillar hands it, signed, to the Kingfisher guards. Only setup writes that mark: a reason
holding it is refused.
"""

from deploytoken import model


class Incomplete(ValueError):
    """The consent does not name both the manager and why; ``text`` is what was given, stripped."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text


def parse(consent):
    """
    ``"<manager>: <why>"`` with each part stripped, or None when no consent is given. Raises
    ``model.InputError`` for text that is not one printable line, ``Incomplete`` for a missing part.
    """
    if consent is None or consent == "":
        return None
    text = model.check_text(consent, "consent")
    manager, colon, why = text.partition(":")
    if not colon or not manager.strip() or not why.strip():
        raise Incomplete(text)
    return f"{manager.strip()}: {why.strip()}"


MARK = "[consent:"


def recorded(reason, consent):
    """The reason written with the claim: ``reason``, then the consent when there is one."""
    return f"{reason} {MARK} {consent}]".strip() if consent else reason


def of_reason(reason):
    """The consent ``recorded`` wrote into a claim's ``reason``, or None."""
    if not isinstance(reason, str) or not reason.endswith("]"):
        return None
    _, mark, consent = reason.rpartition(f"{MARK} ")
    try:
        return parse(consent[:-1]) if mark else None
    except ValueError:
        return None
