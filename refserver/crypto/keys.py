"""Server signing keys in Synapse's file format (I/O at the edges: read/write a key file).

Server-server API, "Publishing Keys": key IDs are ``ed25519:<version>`` with the version
matching ``[a-zA-Z0-9_]``. The file holds one line per key,
``ed25519 <key_version> <unpadded base64 seed>``, exactly as Synapse writes it, so keys can
move between the two servers.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import signedjson.key

from refserver.types import JsonValue

SigningKey = JsonValue  # nacl.signing.SigningKey with .alg and .version (signedjson)
_KEY_VERSION_RE = re.compile(r"^[a-zA-Z0-9_]+$")


class KeyFileError(Exception):
    """A signing key file is missing, malformed or would be overwritten."""


def new_key_version() -> str:
    """A fresh key version, e.g. ``a_Xy3z`` (the ``[a-zA-Z0-9_]`` grammar)."""
    return "a_" + "".join(
        secrets.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        for _ in range(4)
    )


def generate_key_file(path: Path, *, version: str | None = None) -> SigningKey:
    """Create ``path`` with a new ed25519 key; refuse to overwrite an existing file."""
    version = version or new_key_version()
    if not _KEY_VERSION_RE.match(version):
        raise KeyFileError(f"invalid key version {version!r}: must match [a-zA-Z0-9_]+")
    key = signedjson.key.generate_signing_key(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: never clobber a key another process just wrote; 0600: it is a secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"refusing to overwrite existing signing key {path}") from None
    with os.fdopen(fd, "w") as f:
        signedjson.key.write_signing_keys(f, [key])
    return key


def read_key_file(path: Path) -> list[SigningKey]:
    """All keys in ``path``; the first is the one used for signing."""
    try:
        with path.open() as f:
            keys = list(signedjson.key.read_signing_keys(f))
    except FileNotFoundError:
        raise KeyFileError(f"signing key file {path} not found (run `refserver init`)") from None
    except Exception as exc:  # signedjson raises assorted errors on bad content
        raise KeyFileError(f"cannot read signing key file {path}: {exc}") from exc
    if not keys:
        raise KeyFileError(f"signing key file {path} holds no key")
    return keys


def key_id(key: SigningKey) -> str:
    return f"{key.alg}:{key.version}"


def verify_key_base64(key: SigningKey) -> str:
    return str(signedjson.key.encode_verify_key_base64(signedjson.key.get_verify_key(key)))
