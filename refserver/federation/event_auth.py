"""Checks on receipt of a PDU (server-server API §"Checks performed on receipt of a PDU").

1. valid format for the room version, else drop;
2. signatures, else drop;
3. content hash, else redact and continue;
4. auth rules against the event's ``auth_events``, else reject;
5. auth rules against the state before the event, else reject;
6. auth rules against the current state, else soft-fail.

Steps 1–3 are :func:`check_pdu`; steps 4–6 need stored state and live in the handler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from refserver.errors import M_INVALID_PARAM, ProtocolError
from refserver.events.format import InvalidPdu, check_pdu_format
from refserver.events.hashing import compute_event_id
from refserver.events.model import Event
from refserver.events.room_versions import RoomVersion
from refserver.events.signing import EventSignatureError, check_signatures_and_hashes
from refserver.federation.keyring import Keyring
from refserver.types import JsonDict

log = logging.getLogger(__name__)


class DroppedPdu(ProtocolError):
    """Failed step 1 or 2: the PDU is dropped, never stored.

    Where a peer sent the PDU as a request body (``/send_join``, ``/invite``), that request
    is refused with 400 ``M_INVALID_PARAM``.
    """

    errcode = M_INVALID_PARAM
    status = 400


@dataclass(frozen=True)
class CheckedPdu:
    event: Event
    redacted: bool  # step 3 failed: we keep the redacted form


async def check_pdu(keyring: Keyring, pdu: JsonDict, room_version: RoomVersion) -> CheckedPdu:
    """Steps 1–3. Returns the event (redacted if its content hash failed)."""
    try:
        check_pdu_format(pdu, room_version)
    except InvalidPdu as exc:
        raise DroppedPdu(f"invalid PDU: {exc}") from None
    verify_keys = await keyring.keys_for_event(pdu)
    try:
        kept = check_signatures_and_hashes(pdu, room_version, verify_keys)
    except EventSignatureError as exc:
        raise DroppedPdu(str(exc)) from None
    if kept.redacted:
        log.warning("content hash mismatch: keeping the redacted form of a PDU")
    event = Event(compute_event_id(kept.pdu, room_version), room_version, kept.pdu)
    return CheckedPdu(event, kept.redacted)
