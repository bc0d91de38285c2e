"""Errors of the Kingfisher busy checks; each message is one sentence a person can act on."""

from deploytoken_model import DeploytokenError, InputError

__all__ = ["InputError", "SourceError"]


class SourceError(DeploytokenError):
    """A source (Scrapyd, a tmux server, PostgreSQL) cannot be read; the caller counts it as busy."""
