"""
Seal the ``deploytoken`` pillar so that the guard believes only what the master wrote.

Salt merges a command-line ``pillar=`` over the ext_pillar's data, on the master and again on the
minion, so anyone allowed to publish a job could otherwise write "Bob holds the token" into Bob's
own run. The ext_pillar signs its data with the master's own key (``master.pem``); the minion checks
the signature with the master's public key it already keeps (``minion_master.pub``). Under salt-ssh
the target has no master key: there the data carries a digest, which catches a ``pillar=`` given by
mistake, not someone who rebuilds it on purpose (they are root on the target anyway).
"""

import base64
import binascii
import functools
import hashlib
import json
import logging
import os

import salt.crypt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

ALGORITHM = salt.crypt.PKCS1v15_SHA224
log = logging.getLogger(__name__)
SEAL_KEYS = ("digest", "signature")
# What a seal is for, inside what is signed, so that data sealed for one purpose never passes as another
# (a minion's own signed pillar re-sent as a chat event, say).
PILLAR = "deploytoken pillar"


def event_purpose(tag):
    """The purpose of a chat event: its tag is signed with it."""
    return f"deploytoken event {tag}"


def canonical(data, purpose=PILLAR):
    """The bytes that are sealed: the purpose, then every field but the seals, in one fixed spelling."""
    fields = {key: value for key, value in data.items() if key not in SEAL_KEYS}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"{purpose}\n{text}".encode()


def seal(data, master_key=None, purpose=PILLAR):
    """``data`` with its digest, and its signature when the master's private key is given."""
    message = canonical(data, purpose)
    sealed = dict(data, digest=hashlib.sha256(message).hexdigest(), signature=None)
    if master_key:
        try:
            key = _private_key(master_key, os.stat(master_key).st_mtime_ns)
        except (OSError, ValueError, TypeError) as exc:  # unreadable, or protected by a passphrase
            log.warning("deploytoken: cannot sign with the master's key %s: %s", master_key, exc)
            return sealed  # unsigned: the guard says so, and nothing deploys
        signature = key.sign(message, padding.PKCS1v15(), hashes.SHA224())  # salt.crypt's PKCS1v15_SHA224
        sealed["signature"] = base64.b64encode(signature).decode()
    return sealed


@functools.lru_cache(maxsize=4)
def _private_key(path, modified):
    """The master's own key (a root-only file), loaded once per version of the file and without the
    consistency check that Salt's loader runs, which takes about 0.2 s for a 4096-bit key in every
    master worker: signing is then about a millisecond."""
    with open(path, "rb") as handle:
        return serialization.load_pem_private_key(handle.read(), password=None, unsafe_skip_rsa_key_validation=True)


def intact(data, master_public_key=None, purpose=PILLAR):
    """Whether ``data`` is as the master wrote it for ``purpose``: signed by the master when the master's
    public key is given (a minion of a master), else with its own digest (a salt-ssh target)."""
    message = canonical(data, purpose)
    if master_public_key is None:
        return data.get("digest") == hashlib.sha256(message).hexdigest()
    try:
        signature = base64.b64decode(data.get("signature") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        return False
    if not signature:
        return False
    try:
        return bool(salt.crypt.verify_signature(master_public_key, message, signature, algorithm=ALGORITHM))
    except Exception:  # a damaged signature or key file: not the master's word either way
        return False
