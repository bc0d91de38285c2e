"""
The decision behind the ``kingfisher.no_*`` states: block while someone's work would be
interrupted, unless the data support manager's consent is recorded with the deploy token's claim
(``salt-run deploytoken.setup consent=``, kept in the history and carried in the master-signed token data).
"""

from deploytoken import consent as consents
from deploytoken import model
from deploytoken.kingfisher.errors import InputError


def check_consent(consent):
    """``"<data support manager>: <why>"``, or None when no consent is given."""
    try:
        return consents.parse(consent)
    except (consents.Incomplete, model.InputError):
        raise InputError(
            f"The kingfisher consent {consent!r} must name the data support manager and why, on one line, "
            "as given with salt-run deploytoken.setup consent='Dana Lee: the crawl can be restarted'."
        ) from None


def decide(reasons, consent, what, test=False, typed=None):
    """``{"result", "comment"}`` for a guard whose checks found ``reasons`` (sentences naming owners).

    ``consent`` comes from the token data the guard believes; ``typed`` is a ``kingfisher:consent`` found in
    the job's pillar, which anyone who can run ``salt`` may type and which is therefore not obeyed.
    """
    if not reasons:
        return {"result": True, "comment": f"No {what} would be interrupted."}
    found = " ".join(reasons)
    if consent:
        verb = "would pass" if test else "PASSED"
        return {"result": True, "comment": f"CONSENT: {verb} although {found} Consent recorded with the deploy "
                f"token: {consent!r}."}
    ignored = (f" The pillar key kingfisher:consent ({typed!r}) is not obeyed: a consent is given when taking "
               "the token, so the history keeps it." if typed is not None else "")
    return {
        "result": None if test else False,
        "comment": f"{found} Deploying now would interrupt this work: wait until it ends, or take the deploy token "
        "with the data support manager's consent (salt-run deploytoken.setup reason='...' "
        f"consent='<manager>: <why>').{ignored}",
    }
