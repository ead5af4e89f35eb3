"""Content hash, reference hash, event IDs and v12 room IDs (pure).

Spec: server-server API §"Calculating the content hash for an event",
§"Calculating the reference hash for an event"; rooms/fragments/v4-event-ids.md;
rooms/v12 (MSC4291, room IDs).

- The *content hash* covers the whole, unredacted event minus ``unsigned``, ``signatures``
  and ``hashes``; it is stored in ``hashes.sha256`` as standard unpadded base64.
- The *reference hash* covers the redacted event minus ``signatures``, ``age_ts`` and
  ``unsigned``; from room version 4 on, the event ID is ``$`` + its URL-safe unpadded base64.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from refserver.crypto.canonical_json import decode_base64, encode_base64, encode_canonical_json
from refserver.events.redaction import redact
from refserver.events.room_versions import RoomVersion
from refserver.types import JsonValue

# §"Calculating the content hash": "any existing unsigned, signatures, and hashes members are
# removed".
_CONTENT_HASH_EXCLUDED = frozenset({"unsigned", "signatures", "hashes"})
# §"Calculating the reference hash": "The signatures, age_ts, and unsigned properties are
# removed from the event, if present" (after redaction, which already drops the latter two).
_REFERENCE_HASH_EXCLUDED = frozenset({"signatures", "age_ts", "unsigned"})


def compute_content_hash(pdu: Mapping[str, JsonValue]) -> bytes:
    """The SHA-256 content hash of ``pdu`` (raw digest).

    Server-server API §"Calculating the content hash for an event": remove ``unsigned``,
    ``signatures`` and ``hashes``, encode as canonical JSON, hash with SHA-256.
    """
    stripped = {k: v for k, v in pdu.items() if k not in _CONTENT_HASH_EXCLUDED}
    return hashlib.sha256(encode_canonical_json(stripped)).digest()


def content_hash_base64(pdu: Mapping[str, JsonValue]) -> str:
    """The value for ``hashes.sha256``: the content hash in standard unpadded base64."""
    return encode_base64(compute_content_hash(pdu))


def check_content_hash(pdu: Mapping[str, JsonValue]) -> bool:
    """True iff ``pdu["hashes"]["sha256"]`` matches the recomputed content hash.

    Server-server API §"Validating hashes and signatures on received events": "The content
    hash in the hashes property of the received event is base64-decoded, and the two are
    compared for equality." A missing or undecodable hash counts as a mismatch.
    """
    hashes = pdu.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    if not isinstance(claimed, str):
        return False
    try:
        claimed_digest = decode_base64(claimed)
    except ValueError:
        return False
    return hmac.compare_digest(claimed_digest, compute_content_hash(pdu))


def compute_reference_hash(pdu: Mapping[str, JsonValue], room_version: RoomVersion) -> bytes:
    """The SHA-256 reference hash of ``pdu`` (raw digest).

    Server-server API §"Calculating the reference hash for an event":

    1. The event is put through the redaction algorithm.
    2. The ``signatures``, ``age_ts`` and ``unsigned`` properties are removed.
    3. The event is converted into canonical JSON.
    4. A sha256 hash is calculated on the resulting JSON object.
    """
    redacted = redact(pdu, room_version)
    stripped = {k: v for k, v in redacted.items() if k not in _REFERENCE_HASH_EXCLUDED}
    return hashlib.sha256(encode_canonical_json(stripped)).digest()


def compute_event_id(pdu: Mapping[str, JsonValue], room_version: RoomVersion) -> str:
    """``$`` + URL-safe unpadded base64 of the reference hash (room versions 4+).

    rooms/fragments/v4-event-ids.md: "The event ID is the reference hash of the event encoded
    using a variation of Unpadded Base64 which replaces the 62nd and 63rd characters with -
    and _ instead of using + and /." Every room version refserver supports (10–12) uses this.
    """
    return "$" + encode_base64(compute_reference_hash(pdu, room_version), urlsafe=True)
