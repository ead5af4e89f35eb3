"""Federation transactions: building outgoing ones, checking incoming ones (pure).

Spec: server-server API §"Transactions" and ``PUT /_matrix/federation/v1/send/{txnId}``
(https://spec.matrix.org/v1.16/server-server-api/#put_matrixfederationv1sendtxnid):

    "Transactions are limited in size; they can have at most 50 PDUs and 100 EDUs."

Request body: ``origin`` (string), ``origin_server_ts`` (integer, ms), ``pdus`` (array, at most
50) and optionally ``edus`` (array, at most 100, each ``{"edu_type", "content"}``).

Error choices for an incoming transaction (the spec names none):

* Malformed body, wrong field types or more than 50 PDUs / 100 EDUs: **400 M_BAD_JSON**.
  The limits are ``maxItems`` in the body's schema, so breaking them is a schema violation
  ("valid JSON, but malformed"), and sytest ("Server correctly handles transactions that break
  edu limits") expects HTTP 400. ``M_TOO_LARGE`` was not chosen: it describes a request that
  is too large in bytes, usually with 413.
* Body ``origin`` differs from the authenticated X-Matrix origin: **403 M_FORBIDDEN**. The
  request is well-formed and authenticated; the sender is just not allowed to speak for
  another server.

Checks on each PDU and EDU (format, signatures, auth rules) are not done here: a bad PDU fails
on its own (§"Checks performed on receipt of a PDU") and never the whole transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from refserver.errors import M_BAD_JSON, ProtocolError
from refserver.types import JsonDict, JsonValue

#: Spec §"Transactions": at most 50 PDUs per transaction.
MAX_PDUS: Final = 50
#: Spec §"Transactions": at most 100 EDUs per transaction.
MAX_EDUS: Final = 100


class TransactionError(ProtocolError, ValueError):
    """An incoming transaction body is rejected as a whole; carries its HTTP status + errcode."""

    errcode = M_BAD_JSON
    status = 400

    def __init__(self, errcode: str, message: str, status: int = 400) -> None:
        super().__init__(f"{errcode}: {message}", errcode=errcode, status=status)
        self.message = message


@dataclass(frozen=True)
class Transaction:
    """An outgoing transaction. ``destination`` and ``txn_id`` go in the URL, not the body.

    A retry sends the same object again: same ``txn_id``, same content (spec: "must wait and
    retry for a 200 OK response before sending a transaction with a different txnId").
    """

    origin: str
    destination: str
    txn_id: str
    origin_server_ts: int
    pdus: Sequence[JsonDict]
    edus: Sequence[JsonDict]

    def __post_init__(self) -> None:
        if len(self.pdus) > MAX_PDUS or len(self.edus) > MAX_EDUS:
            raise ValueError(
                f"transaction holds {len(self.pdus)} PDUs and {len(self.edus)} EDUs; "
                f"the limits are {MAX_PDUS} and {MAX_EDUS}"
            )

    def to_json(self) -> JsonDict:
        """The request body of ``PUT /_matrix/federation/v1/send/{txnId}``."""
        return {
            "origin": self.origin,
            "origin_server_ts": self.origin_server_ts,
            "pdus": list(self.pdus),
            "edus": list(self.edus),
        }


@dataclass(frozen=True)
class ParsedTransaction:
    """An incoming transaction body whose envelope passed :func:`validate_incoming_transaction`."""

    origin: str
    origin_server_ts: int
    pdus: list[JsonDict]
    edus: list[JsonDict]


def validate_incoming_transaction(body: JsonValue, *, origin_from_header: str) -> ParsedTransaction:
    """Check the envelope of a ``PUT /send/{txnId}`` body (see the module docstring).

    ``origin_from_header`` is the origin authenticated by X-Matrix. Unknown top-level keys are
    ignored. Raises :class:`TransactionError` (400 ``M_BAD_JSON`` or 403 ``M_FORBIDDEN``).
    """
    if not isinstance(body, dict):
        raise _bad_json("transaction body must be a JSON object")
    origin = body.get("origin")
    if not isinstance(origin, str):
        raise _bad_json("'origin' must be a string")
    origin_server_ts = body.get("origin_server_ts")
    if not isinstance(origin_server_ts, int) or isinstance(origin_server_ts, bool):
        raise _bad_json("'origin_server_ts' must be an integer")
    pdus = _list_of_objects(body, "pdus", required=True)
    edus = _list_of_objects(body, "edus", required=False)
    if len(pdus) > MAX_PDUS:
        raise _bad_json(f"transaction has {len(pdus)} PDUs; at most {MAX_PDUS} are allowed")
    if len(edus) > MAX_EDUS:
        raise _bad_json(f"transaction has {len(edus)} EDUs; at most {MAX_EDUS} are allowed")
    if origin != origin_from_header:
        raise TransactionError(
            "M_FORBIDDEN",
            f"transaction origin {origin!r} does not match the authenticated server "
            f"{origin_from_header!r}",
            status=403,
        )
    return ParsedTransaction(origin=origin, origin_server_ts=origin_server_ts, pdus=pdus, edus=edus)


def _list_of_objects(body: JsonDict, key: str, *, required: bool) -> list[JsonDict]:
    if key not in body and not required:
        return []
    value = body.get(key)
    if not isinstance(value, list):
        raise _bad_json(f"{key!r} must be a list")
    if not all(isinstance(item, dict) for item in value):
        raise _bad_json(f"every item of {key!r} must be a JSON object")
    return value


def _bad_json(message: str) -> TransactionError:
    return TransactionError("M_BAD_JSON", message, status=400)
