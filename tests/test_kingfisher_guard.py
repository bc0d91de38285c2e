"""The decision of the kingfisher.* guards and the consent they accept: pure functions, no daemon."""

import pytest
from salt.exceptions import SaltException

from deploytoken import model
from deploytoken.kingfisher import guard as kf_guard
from deploytoken.kingfisher.errors import InputError
from deploytoken.procedure import setup


def test_kingfisher_guard_blocks_passes_with_consent_and_reports_none_in_test_mode():
    reasons = ["Scrapyd job j1 of spider s (project p) has been running for 5 min."]
    blocked = kf_guard.decide(reasons, None, "Scrapyd job")
    assert blocked["result"] is False and blocked["comment"].startswith(reasons[0] + " Deploying now would interrupt")
    assert kf_guard.decide(reasons, None, "Scrapyd job", test=True)["result"] is None
    consent = kf_guard.check_consent(" Dana Lee: restartable ")
    passed = kf_guard.decide(reasons, consent, "Scrapyd job")
    assert passed == {"result": True, "comment": f"CONSENT: PASSED although {reasons[0]} "
                      "Consent recorded with the deploy token: 'Dana Lee: restartable'."}
    assert kf_guard.decide([], None, "long query") == {"result": True,
                                                       "comment": "No long query would be interrupted."}


@pytest.mark.parametrize("consent", ["fine by me", ": why", "Dana:", "Dana: a\nb", 42, ["Dana: why"]])
def test_kingfisher_consent_needs_a_manager_and_a_reason(consent):
    with pytest.raises(InputError) as info:
        kf_guard.check_consent(consent)
    assert str(info.value) == (
        f"The kingfisher consent {consent!r} must name the data support manager and why, on one line, "
        "as given with salt-run deploytoken.setup consent='Dana Lee: the crawl can be restarted'."
    )


@pytest.mark.parametrize("consent", [None, "", "Dana Lee: the crawl restarts", "  Dana Lee :  it restarts  "])
def test_setup_and_the_guards_read_a_consent_alike(consent):
    assert kf_guard.check_consent(consent) == setup.check_consent(consent)


def test_kingfisher_errors_are_salt_errors_of_their_own():
    error = InputError("x")
    assert isinstance(error, SaltException) and not isinstance(error, model.DeploytokenError)
