"""
SSH public keys as people list them and as sshd exposes them: both come down to the key's
``SHA256:`` fingerprint (what ``ssh-keygen -lf`` prints), which is what we compare.
"""

import base64
import binascii
import hashlib


def fingerprint(text):
    """``SHA256:...`` of a public key line (``ssh-ed25519 AAAA... comment``, options allowed before it)
    or of a fingerprint given as such; None when ``text`` is neither."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text.startswith("SHA256:") and len(text) > len("SHA256:") and " " not in text:
        return text
    words = text.split()
    for kind, blob in zip(words, words[1:]):
        if kind.startswith(("ssh-", "ecdsa-", "sk-")):
            try:
                raw = base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError):
                return None
            return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    return None


def logged_in_keys(path):
    """Fingerprints of the public keys in sshd's ``$SSH_USER_AUTH`` file (``ExposeAuthInfo yes``):
    lines ``publickey ssh-ed25519 AAAA...``. An empty list when the file cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except (OSError, TypeError):
        return []
    found = []
    for line in lines:
        method, _, key = line.partition(" ")
        if method == "publickey":
            value = fingerprint(key)
            if value and value not in found:
                found.append(value)
    return found
