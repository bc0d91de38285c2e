"""
Why a connection failed, as a phrase a person can act on: the name does not resolve (DNS), nothing
listens there (refused), no route to it (unreachable), no answer in time (timeout), or the TLS
handshake failed. HTTP clients wrap the operating system's error several layers deep (google-auth's
TransportError, httplib2, requests and urllib3), so the whole chain is searched.
"""

import errno
import re
import socket
import ssl

UNREACHABLE = (errno.ENETUNREACH, errno.EHOSTUNREACH)


def _chain(exc, seen=None):
    """``exc`` and every exception it wraps (cause, context, arguments, urllib3's ``reason``), outermost first."""
    seen = set() if seen is None else seen
    if not isinstance(exc, BaseException) or id(exc) in seen:
        return
    seen.add(id(exc))
    yield exc
    for inner in (exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args):
        yield from _chain(inner, seen)


def kind(exc):
    """``dns``, ``refused``, ``unreachable``, ``timeout``, ``tls``, or None when no network cause is found."""
    for err in _chain(exc):
        name = type(err).__name__
        if isinstance(err, socket.gaierror) or name in ("ServerNotFoundError", "NameResolutionError"):
            return "dns"
        if isinstance(err, ssl.SSLError) or name == "SSLError":
            return "tls"
        if isinstance(err, ConnectionRefusedError):
            return "refused"
        if isinstance(err, OSError) and err.errno in UNREACHABLE:
            return "unreachable"
        if isinstance(err, TimeoutError) or "Timeout" in name:
            return "timeout"
    return None


def cause(exc, host):
    """One phrase naming why ``host`` could not be reached, or None when it was not the network."""
    found = kind(exc)
    if found == "tls":
        detail = next((str(err) for err in _chain(exc) if isinstance(err, ssl.SSLError)), "")
        return f"the TLS handshake with {host} failed" + (f" ({detail})" if detail else "")
    return {
        "dns": f"the name {host} cannot be resolved (DNS)",
        "refused": f"{host} refused the connection (nothing listens there)",
        "unreachable": f"there is no network route to {host}",
        "timeout": f"{host} did not answer in time",
    }.get(found)


# libpq says why in its message (the same words through psycopg and psql); the first matching rule wins.
POSTGRES_CAUSES = (
    (r"failed to resolve host|could not translate host name", "the host name cannot be resolved (DNS)"),
    (r"Connection refused", "the server refused the connection (nothing listens on that port)"),
    (r"No such file or directory", "no server listens on that socket (is PostgreSQL running?)"),
    (r"Network is unreachable|No route to host", "there is no network route to the server"),
    (r"timeout expired", "the server did not answer within the connect timeout"),
    (r"SSL|certificate", "the TLS connection failed"),
    (r'database ".*" does not exist', "there is no such database"),
    (r'authentication failed|no password supplied|no pg_hba\.conf entry|role ".*" does not exist',
     "the server refused this role"),
)


def postgres_cause(message):
    """``message`` (libpq's first line) led by a phrase naming the cause, or as it is when none is known."""
    for pattern, phrase in POSTGRES_CAUSES:
        if re.search(pattern, message):
            return f"{phrase} ({message})"
    return message
