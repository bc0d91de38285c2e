"""
Errors of the Kingfisher busy checks; each message is one sentence a person can act on.

They are Salt's own exception types too, so the execution module and the states let them through
unchanged, and Salt prints either as a failed command with its sentence. An InputError is deliberately
not a SaltInvocationError: that one is a TypeError too, for which salt-call prints the function's whole
docstring as usage text to stdout, even with --out=json.
"""

import sys

from salt.exceptions import CommandExecutionError, SaltException


class KingfisherError(SaltException):
    """Base of the Kingfisher errors."""


class InputError(KingfisherError, CommandExecutionError):
    """An argument or a setting is not acceptable; nothing was read or run."""


class SourceError(KingfisherError, CommandExecutionError):
    """
    A source (Scrapyd, a tmux server, PostgreSQL) cannot be read; the caller counts it as busy.
    ``detail`` is what could still be found without it, kept in the "unknown" report.
    """

    def __init__(self, message, detail=None):
        super().__init__(message)
        self.detail = detail or {}


def missing_package(package):
    """The sentence for a third-party package this Python cannot import (salt-ssh targets use their own)."""
    return SourceError(
        f"The Python package {package} cannot be imported by {sys.executable}: install it for that Python."
    )
