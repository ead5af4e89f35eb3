"""Signing JSON and checking signatures (pure).

Spec: appendices §"Signing JSON" and §"Checking for a signature".

Signing (:func:`sign_json`, as ``signedjson`` does it but without recursion over the value):

1. Remove ``signatures`` and ``unsigned``.
2. Encode the rest as canonical JSON and sign it with ed25519.
3. Add the unpadded base64 signature at ``signatures[<entity>][<alg>:<version>]``, keeping
   existing signatures.
4. Put ``unsigned`` back.

Keys are ``signedjson`` key objects (``nacl`` keys with ``.alg`` and ``.version``);
loading and generating them lives in :mod:`refserver.crypto.keys`, not here.
"""

from __future__ import annotations

from collections.abc import Mapping

from signedjson.types import BaseKey, SigningKey, VerifyKey

from refserver.crypto.canonical_json import decode_base64, encode_base64, encode_canonical_json
from refserver.types import JsonDict, JsonValue

#: Appendices §"Signing Details": ed25519 is the only algorithm in use.
SUPPORTED_ALGORITHMS = frozenset({"ed25519"})


class SignatureError(ValueError):
    """A signature is missing, malformed or does not verify. errcode hint: M_FORBIDDEN."""

    errcode = "M_FORBIDDEN"


def key_id_of(key: BaseKey) -> str:
    """The key ID ``<algorithm>:<version>``, e.g. ``ed25519:1``."""
    return f"{key.alg}:{key.version}"


def sign_json(obj: Mapping[str, JsonValue], signing_name: str, signing_key: SigningKey) -> JsonDict:
    """Return a copy of ``obj`` with a signature from ``signing_name`` added.

    Appendices §"Signing JSON". ``obj`` itself is not modified; existing signatures are kept.
    Signing only touches the top level (``signatures`` and ``unsigned``), so the copy is
    shallow apart from ``signatures``: no recursion over a value an input could nest deeply.
    """
    message = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    signature = signing_key.sign(encode_canonical_json(message)).signature
    existing = obj.get("signatures")
    signatures: JsonDict = {}
    if isinstance(existing, Mapping):
        signatures = {
            entity: dict(sigs) if isinstance(sigs, Mapping) else sigs
            for entity, sigs in existing.items()
        }
    by_entity = signatures.get(signing_name)
    if not isinstance(by_entity, dict):
        by_entity = signatures[signing_name] = {}
    by_entity[key_id_of(signing_key)] = encode_base64(signature)
    signed: JsonDict = dict(obj)
    signed["signatures"] = signatures
    return signed


def get_signature(obj: Mapping[str, JsonValue], entity: str, key_id: str) -> str | None:
    """The base64 signature ``obj["signatures"][entity][key_id]``, or ``None`` if absent."""
    signatures = obj.get("signatures")
    if not isinstance(signatures, Mapping):
        return None
    by_entity = signatures.get(entity)
    if not isinstance(by_entity, Mapping):
        return None
    signature = by_entity.get(key_id)
    return signature if isinstance(signature, str) else None


def signature_key_ids(obj: Mapping[str, JsonValue], entity: str) -> list[str]:
    """Key IDs of ``entity``'s signatures on ``obj`` that use a supported algorithm.

    Checking step 2: "Removes any signatures with an algorithm it doesn't understand".
    A caller uses this to know which verify keys to fetch.
    """
    signatures = obj.get("signatures")
    if not isinstance(signatures, Mapping):
        return []
    by_entity = signatures.get(entity)
    if not isinstance(by_entity, Mapping):
        return []
    return sorted(
        key_id
        for key_id in by_entity
        if isinstance(key_id, str) and key_id.split(":", 1)[0] in SUPPORTED_ALGORITHMS
    )


def verify_signed_json(
    obj: Mapping[str, JsonValue], signing_name: str, verify_key: VerifyKey
) -> None:
    """Check ``signing_name``'s signature on ``obj`` made with ``verify_key``.

    Appendices §"Checking for a signature", steps 4–6: decode the signature, remove
    ``signatures`` and ``unsigned``, encode as canonical JSON and verify.
    Raises :class:`SignatureError` if the signature is missing, malformed or wrong.
    """
    key_id = key_id_of(verify_key)
    signature_b64 = get_signature(obj, signing_name, key_id)
    if signature_b64 is None:
        raise SignatureError(f"no signature from {signing_name} with key {key_id}")
    try:
        signature = decode_base64(signature_b64)
    except ValueError:
        raise SignatureError(f"signature from {signing_name} ({key_id}) is not base64") from None
    message = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    try:
        verify_key.verify(encode_canonical_json(message), signature)
    except Exception as exc:  # nacl raises BadSignatureError or ValueError (bad length)
        raise SignatureError(
            f"signature from {signing_name} ({key_id}) does not verify: {exc}"
        ) from None


def verify_json_for_entity(
    obj: Mapping[str, JsonValue], entity: str, verify_keys: Mapping[str, VerifyKey]
) -> list[str]:
    """Check that ``obj`` carries at least one valid signature from ``entity``.

    Appendices §"Checking for a signature":

    1. Take ``signatures[entity]``, or fail.
    2. Drop signatures with unknown algorithms; fail if none remain.
    3. Find a verify key for the remaining key IDs, or fail.
    4.–6. Decode and verify (:func:`verify_signed_json`).

    ``verify_keys`` maps key ID → key and must hold only keys valid for ``obj`` (the caller
    filters out keys that expired before ``origin_server_ts``). Signatures from key IDs not in
    ``verify_keys`` are ignored; every signature whose key *is* known must verify, as Synapse
    does, so one bad signature is never masked by a good one. Returns the key IDs checked.
    """
    key_ids = signature_key_ids(obj, entity)
    if not key_ids:
        raise SignatureError(f"no supported signature from {entity}")
    known = [key_id for key_id in key_ids if key_id in verify_keys]
    if not known:
        raise SignatureError(f"no known verify key for {entity} among {key_ids}")
    for key_id in known:
        verify_signed_json(obj, entity, verify_keys[key_id])
    return known
