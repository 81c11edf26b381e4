"""Key files: an ECDSA P-256 signing key pair in PEM and a 256-bit data key written as 64 hex characters.

    gpuvision keys generate --out keys/    ->  keys/signing.key (private, PKCS#8), keys/signing.pub, keys/data.key

Files are created owner-only (0600; the directory 0700 when it is made here) and never overwritten. The data key is
read from a file or from GPUVISION_DATA_KEY, never from the command line, where other users of the machine can read
it (`ps`, shell history).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..errors import BadInput, NotFound, UserError, require
from . import need

SIGNING_KEY, PUBLIC_KEY, DATA_KEY = "signing.key", "signing.pub", "data.key"
DATA_KEY_ENV = "GPUVISION_DATA_KEY"
# The curves the OpenSSF model-signing library accepts (it refuses Ed25519 and RSA).
CURVES = ("secp256r1", "secp384r1", "secp521r1")
MAX_KEY_FILE = 64 << 10
log = logging.getLogger(__name__)


def generate(out: str | Path) -> dict[str, Path]:
    """Write a new signing key pair and data key into `out`; refuses if any of the three files exists."""
    ec = need("cryptography.hazmat.primitives.asymmetric.ec")
    pem = need("cryptography.hazmat.primitives.serialization")
    out = Path(out)
    paths = {name: out / name for name in (SIGNING_KEY, PUBLIC_KEY, DATA_KEY)}
    existing = [str(p) for p in paths.values() if p.exists() or p.is_symlink()]
    require(not existing, f"{', '.join(existing)} already exist; keys are never overwritten: choose another --out "
            "or move the old keys away first", BadInput)
    private = ec.generate_private_key(ec.SECP256R1())
    contents = {
        SIGNING_KEY: private.private_bytes(pem.Encoding.PEM, pem.PrivateFormat.PKCS8, pem.NoEncryption()),
        PUBLIC_KEY: private.public_key().public_bytes(pem.Encoding.PEM, pem.PublicFormat.SubjectPublicKeyInfo),
        DATA_KEY: (os.urandom(32).hex() + "\n").encode(),
    }
    written = []
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, blob in contents.items():
            # O_EXCL: a file that appeared since the check above is not replaced either
            fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            written.append(paths[name])
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
    except OSError as e:
        for path in written:
            path.unlink(missing_ok=True)
        raise UserError(f"--out {out}: cannot write the keys there ({e.strerror})") from e
    return paths


def _read(path: str, what: str, secret: bool) -> bytes:
    file = Path(path)
    require(file.is_file(), f"{what} {path}: no such file", NotFound)
    require(file.stat().st_size <= MAX_KEY_FILE, f"{what} {path}: too large for a key file", BadInput)
    if secret and file.stat().st_mode & 0o077:
        log.warning("%s is readable by other users of this machine; `chmod 600 %s`", path, path)
    return file.read_bytes()


def check_private_key(path: str) -> None:
    """Refuse, in one line, a file that is not an unencrypted elliptic-curve private key in PEM."""
    ec = need("cryptography.hazmat.primitives.asymmetric.ec")
    pem = need("cryptography.hazmat.primitives.serialization")
    blob = _read(path, "--signing-key", secret=True)
    try:
        key = pem.load_pem_private_key(blob, password=None)
    except TypeError as e:  # the key is protected by a password
        raise BadInput(f"--signing-key {path}: a password-protected key; give an unencrypted PEM key") from e
    except ValueError as e:
        raise BadInput(f"--signing-key {path}: not a PEM private key") from e
    _check_curve(isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name, f"--signing-key {path}")


def public_key_pem(private_key: str) -> bytes:
    """The PEM public key of a private key file (to check a signature just made with it)."""
    pem = need("cryptography.hazmat.primitives.serialization")
    key = pem.load_pem_private_key(_read(private_key, "--signing-key", secret=True), password=None)
    return key.public_key().public_bytes(pem.Encoding.PEM, pem.PublicFormat.SubjectPublicKeyInfo)


def check_public_key(path: str) -> None:
    """Refuse, in one line, a file that is not an elliptic-curve public key in PEM."""
    ec = need("cryptography.hazmat.primitives.asymmetric.ec")
    pem = need("cryptography.hazmat.primitives.serialization")
    try:
        key = pem.load_pem_public_key(_read(path, "--pubkey", secret=False))
    except ValueError as e:
        raise BadInput(f"--pubkey {path}: not a PEM public key") from e
    _check_curve(isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name, f"--pubkey {path}")


def _check_curve(curve: str | bool, what: str) -> None:
    require(curve in CURVES, f"{what}: not an elliptic-curve key on {', '.join(CURVES)}; OpenSSF model signing "
            "takes only those (not Ed25519 or RSA): `gpuvision keys generate` makes one", BadInput)


def read_data_key(path: str | None) -> bytes | None:
    """The 32-byte data key from `path` (a file of 64 hex characters), else from $GPUVISION_DATA_KEY, else None."""
    if path:
        text, where = _read(path, "--data-key", secret=True).decode("ascii", "replace"), f"--data-key {path}"
    elif os.environ.get(DATA_KEY_ENV):
        text, where = os.environ[DATA_KEY_ENV], DATA_KEY_ENV
    else:
        return None
    # The message never repeats the file's content: it may be a key of another kind.
    require(re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()) is not None, f"{where}: a data key is 64 hex characters "
            "(256 bits); `gpuvision keys generate` makes one", BadInput)
    return bytes.fromhex(text.strip())
