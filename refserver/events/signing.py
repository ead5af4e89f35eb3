"""Hashing and signing events; checking received events' signatures and hashes (pure).

Spec: server-server API §"Signing Events" (§"Adding hashes and signatures to outgoing
events", §"Validating hashes and signatures on received events"); appendices §"Signing JSON".

Outgoing: content hash → redact a copy → sign the redacted copy → copy ``signatures`` back.
Incoming: redact → check the required servers' signatures (drop the event on failure) →
recompute the content hash (on mismatch, keep only the redacted copy).

Verify keys come in as an argument: fetching them and dropping keys that had expired before
the event's ``origin_server_ts`` is the keyring's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from signedjson.types import SigningKey, VerifyKey

from refserver.crypto.signing import SignatureError, sign_json, verify_json_for_entity
from refserver.events.hashing import check_content_hash, content_hash_base64
from refserver.events.redaction import redact
from refserver.events.room_versions import RoomVersion
from refserver.ids import InvalidId, UserId
from refserver.types import JsonDict, JsonValue, copy_json


class EventSignatureError(SignatureError):
    """A required signature on an event is missing or wrong. errcode hint: M_FORBIDDEN.

    Server-server API §"Checks performed on receipt of a PDU", step 2: an event that fails
    the signature checks is dropped.
    """


def add_content_hash(pdu: Mapping[str, JsonValue]) -> JsonDict:
    """Return a deep copy of ``pdu`` with ``hashes.sha256`` set to its content hash."""
    hashed: JsonDict = copy_json(dict(pdu))
    hashed["hashes"] = {"sha256": content_hash_base64(pdu)}
    return hashed


def add_hashes_and_signatures(
    pdu: Mapping[str, JsonValue],
    room_version: RoomVersion,
    *,
    signing_name: str,
    signing_key: SigningKey,
) -> JsonDict:
    """Return a copy of ``pdu`` with its content hash and ``signing_name``'s signature.

    Server-server API §"Adding hashes and signatures to outgoing events":

    1. Compute the content hash and store it in ``hashes``.
    2. Apply the room version's redaction algorithm to a copy.
    3. Sign the redacted copy (appendices §"Signing JSON").
    4. Copy the ``signatures`` of the redacted copy onto the full event.

    Existing signatures (for example the joining server's, when a resident server co-signs a
    restricted join) are kept.
    """
    hashed = add_content_hash(pdu)
    signed_redacted = sign_json(redact(hashed, room_version), signing_name, signing_key)
    hashed["signatures"] = signed_redacted["signatures"]
    return hashed


def sign_event(
    pdu: Mapping[str, JsonValue],
    room_version: RoomVersion,
    *,
    signing_name: str,
    signing_key: SigningKey,
) -> JsonDict:
    """Add ``signing_name``'s signature to an already hashed event, keeping ``hashes``.

    For co-signing another server's event (``send_join`` for restricted joins, ``invite``).
    """
    signed_redacted = sign_json(redact(pdu, room_version), signing_name, signing_key)
    signed: JsonDict = copy_json(dict(pdu))
    signed["signatures"] = signed_redacted["signatures"]
    return signed


def required_signing_servers(pdu: Mapping[str, JsonValue]) -> set[str]:
    """Servers whose signature an event needs (room versions 3+).

    Server-server API §"Validating hashes and signatures on received events":

    - "The sender's server, unless the invite was created as a result of 3rd party invite."
    - rooms/v8+ auth rules: a join carrying ``join_authorised_via_users_server`` must also be
      signed by that user's server.

    Raises :class:`EventSignatureError` if ``sender`` or the authorising user is not a valid
    user ID (there is then no server to check).
    """
    content = pdu.get("content")
    content = content if isinstance(content, Mapping) else {}
    is_member = pdu.get("type") == "m.room.member"
    membership = content.get("membership")
    servers: set[str] = set()
    # Synapse's `_is_invite_via_3pid`: such invites may arrive signed by another server; the
    # auth rules check the third-party signature instead.
    if not (is_member and membership == "invite" and "third_party_invite" in content):
        servers.add(_server_of(pdu.get("sender"), "sender"))
    authoriser = content.get("join_authorised_via_users_server")
    if is_member and membership == "join" and authoriser is not None:
        servers.add(_server_of(authoriser, "join_authorised_via_users_server"))
    return servers


def _server_of(user_id: JsonValue, field: str) -> str:
    try:
        return UserId.parse(user_id).server_name
    except InvalidId:
        raise EventSignatureError(f"{field} is not a valid user ID: {user_id!r}") from None


def verify_event_signatures(
    pdu: Mapping[str, JsonValue],
    room_version: RoomVersion,
    verify_keys: Mapping[str, Mapping[str, VerifyKey]],
) -> None:
    """Check the signatures of every server in :func:`required_signing_servers`.

    "The event is redacted following the redaction algorithm, and the resultant object is
    checked for a signature from the originating server [...] this step should succeed
    whether we have been sent the full event or a redacted copy."

    ``verify_keys`` maps server name → key ID → verify key, holding only keys valid at the
    event's ``origin_server_ts``. Raises :class:`EventSignatureError` naming the server.
    """
    redacted = redact(pdu, room_version)
    for server in sorted(required_signing_servers(pdu)):
        try:
            verify_json_for_entity(redacted, server, verify_keys.get(server, {}))
        except SignatureError as exc:
            raise EventSignatureError(f"event signature check failed for {server}: {exc}") from exc


class KeptPdu(NamedTuple):
    """What receipt checks 2 and 3 keep of a PDU."""

    pdu: JsonDict
    redacted: bool  # the content hash did not match: ``pdu`` is the redacted copy


def check_signatures_and_hashes(
    pdu: Mapping[str, JsonValue],
    room_version: RoomVersion,
    verify_keys: Mapping[str, Mapping[str, VerifyKey]],
) -> KeptPdu:
    """Receipt checks 2 and 3 together; returns the PDU to keep.

    Server-server API §"Checks performed on receipt of a PDU": "2. Passes signature checks,
    otherwise it is dropped. 3. Passes hash checks, otherwise it is redacted before being
    processed further." Raises :class:`EventSignatureError` for step 2; for step 3 returns the
    redacted copy instead of the full event.
    """
    verify_event_signatures(pdu, room_version, verify_keys)
    if check_content_hash(pdu):
        return KeptPdu(copy_json(dict(pdu)), redacted=False)
    return KeptPdu(redact(pdu, room_version), redacted=True)
