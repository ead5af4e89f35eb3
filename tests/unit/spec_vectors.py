"""Loading the spec test vectors in ``tests/unit/vectors/`` and the appendix signing key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from signedjson.key import decode_signing_key_base64, decode_verify_key_base64
from signedjson.types import SigningKey, VerifyKey

VECTORS_DIR = Path(__file__).parent / "vectors"


def load_vectors(name: str) -> Any:
    """The parsed JSON of ``tests/unit/vectors/<name>.json``."""
    return json.loads((VECTORS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def spec_signing_key() -> SigningKey:
    """The appendix key, ed25519:1 of ``domain`` (appendices, "Cryptographic Test Vectors")."""
    key = load_vectors("appendix_signing")["key"]
    return decode_signing_key_base64(key["algorithm"], key["version"], key["signing_key_seed"])


def spec_verify_key() -> VerifyKey:
    key = load_vectors("appendix_signing")["key"]
    return decode_verify_key_base64(key["algorithm"], key["version"], key["verify_key"])


def other_signing_key(version: str = "1") -> SigningKey:
    """A second fixed key (a different seed), for "wrong key" tests."""
    return decode_signing_key_base64("ed25519", version, "A" * 43)
