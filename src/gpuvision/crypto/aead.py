"""AES-256-GCM (authenticated encryption) of whole files, with the `cryptography` library.

A sealed file is MAGIC, a 12-byte nonce drawn fresh for each file, then the ciphertext with its 16-byte tag. The
caller binds it to where it belongs with associated data (a model directory binds its manifest and the file's
name): any changed bit, a wrong key or a file moved into another context fails the tag, and nothing is returned.
Random 96-bit nonces are safe for up to 2^32 files per key (NIST SP 800-38D), far beyond what one key encrypts.
"""

from __future__ import annotations

import hashlib
import os

from ..errors import IntegrityError, require
from . import need

SCHEME = "AES-256-GCM"
MAGIC = b"gpuvision-aes256gcm-1\n"
NONCE_BYTES, TAG_BYTES = 12, 16
EXPORTED = b"gpuvision exported model file"  # the associated data of a single exported file (no manifest)


def key_id(key: bytes) -> str:
    """A public name for a data key: it tells which key a model needs without revealing anything of the key."""
    return hashlib.sha256(b"gpuvision data key id\0" + key).hexdigest()[:16]


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    aesgcm = need("cryptography.hazmat.primitives.ciphers.aead").AESGCM(key)
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + aesgcm.encrypt(nonce, plaintext, associated)


def unseal(key: bytes, sealed: bytes, associated: bytes, what: str) -> bytes:
    """The plaintext of `sealed`; a wrong key or any change is one IntegrityError naming `what`."""
    aead = need("cryptography.hazmat.primitives.ciphers.aead")
    exceptions = need("cryptography.exceptions")
    start = len(MAGIC) + NONCE_BYTES
    require(sealed.startswith(MAGIC) and len(sealed) >= start + TAG_BYTES, f"{what} is not encrypted by gpuvision",
            IntegrityError)
    try:
        return aead.AESGCM(key).decrypt(sealed[len(MAGIC) : start], sealed[start:], associated)
    except exceptions.InvalidTag as e:
        raise IntegrityError(f"{what} does not decrypt with this data key: a wrong key, or it (or the manifest it is "
                             "bound to) was changed; refusing it") from e
