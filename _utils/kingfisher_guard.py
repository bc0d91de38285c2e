"""
The decision behind the ``kingfisher.no_*`` states: block while someone's work would be
interrupted, unless the data support manager's consent is recorded in pillar.
"""

import deploytoken_consent as consents
import deploytoken_model as model
from kingfisher_errors import InputError


def check_consent(consent):
    """``"<data support manager>: <why>"``, or None when no consent is given."""
    try:
        return consents.parse(consent)
    except (consents.Incomplete, model.InputError):
        raise InputError(
            f"The kingfisher consent {consent!r} must name the data support manager and why, on one line, "
            "e.g. kingfisher: consent: 'Dana Lee: the crawl can be restarted'."
        ) from None


def decide(reasons, consent, what, test=False):
    """``{"result", "comment"}`` for a guard whose checks found ``reasons`` (sentences naming owners)."""
    if not reasons:
        return {"result": True, "comment": f"No {what} would be interrupted."}
    found = " ".join(reasons)
    if consent:
        verb = "would pass" if test else "PASSED"
        return {"result": True, "comment": f"CONSENT: {verb} although {found} Consent recorded in pillar: {consent!r}."}
    return {
        "result": None if test else False,
        "comment": f"{found} Deploying now would interrupt this work: wait until it ends, or record the data "
        "support manager's consent in pillar (kingfisher: consent: '<manager>: <why>').",
    }
