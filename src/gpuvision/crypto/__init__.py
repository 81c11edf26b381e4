"""Keys, signatures and encryption for model directories, with no knowledge of what a model directory is.

    keys.py      an ECDSA P-256 signing key pair (PEM) and a 256-bit data key (hex), owner-only files
    signing.py   signatures in the OpenSSF model-signing format (an in-toto statement of every file's sha256 in a
                 Sigstore bundle, made with a local key): written and checked by the `model_signing` library
    aead.py      AES-256-GCM (the `cryptography` library): a fresh nonce per file, associated data bound by the caller

The libraries are the `gpuvision[security]` extra; without them these functions raise one clear Unsupported error.
`artifact.ModelDir` is what plugs them into every read.
"""

from __future__ import annotations

import importlib

from ..errors import Unsupported


def need(module: str):
    """Import one of the security extra's modules, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise Unsupported(f"signing and encryption need the security extra ({e.name} is missing): "
                          "pip install 'gpuvision[security]'") from e
