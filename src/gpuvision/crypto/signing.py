"""Signatures in the OpenSSF model-signing format, made and checked by the `model_signing` library (1.1.1).

A signature is a Sigstore bundle whose DSSE envelope holds an in-toto statement listing the sha256 of every file of
the directory (model.sig itself excepted), signed with a local elliptic-curve key: no network, no transparency log.
The stock tool accepts it:

    model_signing verify key MODEL_DIR --public_key signing.pub --signature MODEL_DIR/model.sig
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ..errors import IntegrityError, require
from . import need
from .keys import check_private_key, check_public_key

SIGNATURE = "model.sig"


def sign_directory(directory: Path, private_key: str, signature: Path) -> None:
    """Sign every file of `directory` but model.sig with `private_key`, writing the bundle to `signature` (the
    caller moves it into place). The library hashes the files itself, so the stock verifier agrees."""
    check_private_key(private_key)
    hashing, signing = need("model_signing.hashing"), need("model_signing.signing")
    # Nothing is left out but the signature: not even git's files, which a model directory never holds.
    files = hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)
    config = signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(files)
    try:
        config.sign(directory, signature)
    except (OSError, ValueError) as e:  # a file that vanished or turned into a link while it was hashed
        raise IntegrityError(f"{directory}: cannot sign it ({_first_line(e)})") from e


def signed_digests(signature: Path, public_key: str) -> dict[str, str]:
    """{file name: sha256 hex} as signed in `signature`, once the signature is checked with `public_key`.

    The public `model_signing.verifying` API hashes the whole directory again and returns nothing. This runs the
    same library's verifier on the bundle alone and returns what it signs, so the caller binds the signature to the
    manifest it already holds in memory (each file is then verified as it is read): nothing is hashed twice, and a
    file swapped between the check and the read is still caught."""
    check_public_key(public_key)
    ec_key = need("model_signing._signing.sign_ec_key")
    bundle = need("model_signing._signing.sign_sigstore_pb")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the library prints its warning about old bundles on stdout
            signed = ec_key.Verifier(Path(public_key)).verify(bundle.Signature.read(signature))
        method = signed.serialization_type.get("method")
        digests = {r.identifier: r.digest for r in signed.resource_descriptors()}
    except Exception as e:  # a bad bundle raises ValueError, KeyError, InvalidSignature, pydantic's errors...
        raise IntegrityError(f"{signature} does not verify with {public_key} ({_first_line(e)}); refusing the "
                             "model") from e
    require(method == "files" and all(d.algorithm == "sha256" for d in digests.values()),
            f"{signature}: signed file by file with sha256 is expected, not {method}; sign with `gpuvision sign`",
            IntegrityError)
    return {name: digest.digest_hex for name, digest in digests.items()}


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
