"""Why a connection failed, found deep inside the HTTP clients' wrappers: pure function, no network."""

import errno
import socket
import ssl

import pytest
import requests

from deploytoken import network


def wrapped(inner):
    """``inner`` as requests hands it over: raised from inside another exception's handling."""
    try:
        try:
            raise inner
        except OSError as exc:
            raise requests.ConnectionError(exc) from exc
    except requests.ConnectionError as outer:
        return outer


@pytest.mark.parametrize("inner, phrase", [
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "the name h cannot be resolved (DNS)"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "h refused the connection (nothing listens there)"),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), "there is no network route to h"),
    (TimeoutError("timed out"), "h did not answer in time"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
     "the TLS handshake with h failed ([SSL: WRONG_VERSION_NUMBER] wrong version number"),
])
def test_each_cause_has_its_own_phrase(inner, phrase):
    assert network.cause(wrapped(inner), "h").startswith(phrase)


def test_an_error_that_is_not_the_network_has_no_cause():
    assert network.cause(ValueError("bad grant"), "h") is None
