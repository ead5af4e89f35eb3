"""Client-facing errors: :class:`MatrixError` and the :class:`ProtocolError` base.

Client-server API, "Standard error response": every error is ``{"errcode", "error"}`` with a
meaningful HTTP status. Two kinds of exception carry one:

- :class:`MatrixError`: made by a service or route for one situation (status, errcode and
  message given per instance, plus optional extra keys, headers or a whole body).
- :class:`ProtocolError`: the base of the small domain errors raised by pure code and storage
  (``InvalidId``, ``InvalidPdu``, ``AuthError``, ``FilterError``, …). Each subclass carries
  the status and errcode a client sees, as h11's ``ProtocolError.error_status_hint`` does.

The HTTP edge (``refserver.app.http``) maps both to the JSON body in one place, so a service
lets a domain error propagate unless it deliberately changes its meaning (for example a
remote server's failure becomes 502, never the remote's own error).

::

    Exception
    ├── MatrixError
    └── ProtocolError
        ├── InvalidId, InvalidToken              (ids, streams)
        ├── CanonicalJsonError                   (crypto)
        ├── InvalidPdu, AuthError, UnsupportedRoomVersion   (events)
        ├── ProfileFieldError                    (profiles.fields)
        ├── FilterError                          (sync.filter)
        ├── XMatrixError, TransactionError       (federation, pure)
        ├── UserExists                           (storage)
        └── DroppedPdu, PduRejected              (federation services)
"""

from __future__ import annotations

from refserver.types import JsonDict

# Errcodes used by refserver (CS API "Common error codes", "Other error codes").
M_FORBIDDEN = "M_FORBIDDEN"
M_UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
M_MISSING_TOKEN = "M_MISSING_TOKEN"
M_BAD_JSON = "M_BAD_JSON"
M_NOT_JSON = "M_NOT_JSON"
M_NOT_FOUND = "M_NOT_FOUND"
M_LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
M_GUEST_ACCESS_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
M_UNRECOGNIZED = "M_UNRECOGNIZED"
M_UNKNOWN = "M_UNKNOWN"
M_UNAUTHORIZED = "M_UNAUTHORIZED"
M_USER_IN_USE = "M_USER_IN_USE"
M_INVALID_USERNAME = "M_INVALID_USERNAME"
M_INVALID_PARAM = "M_INVALID_PARAM"
M_MISSING_PARAM = "M_MISSING_PARAM"
M_TOO_LARGE = "M_TOO_LARGE"
M_KEY_TOO_LARGE = "M_KEY_TOO_LARGE"
M_PROFILE_TOO_LARGE = "M_PROFILE_TOO_LARGE"
M_UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
M_INCOMPATIBLE_ROOM_VERSION = "M_INCOMPATIBLE_ROOM_VERSION"
M_ROOM_IN_USE = "M_ROOM_IN_USE"
M_INVALID_ROOM_STATE = "M_INVALID_ROOM_STATE"
M_NOT_JOINED = "M_NOT_JOINED"
M_UNABLE_TO_AUTHORISE_JOIN = "M_UNABLE_TO_AUTHORISE_JOIN"


class MatrixError(Exception):
    """CS API "Standard error response": HTTP status + ``{errcode, error}`` (+ extra keys)."""

    def __init__(
        self,
        status: int,
        errcode: str,
        error: str,
        *,
        extra: JsonDict | None = None,
        headers: dict[str, str] | None = None,
        body: JsonDict | None = None,
    ) -> None:
        super().__init__(f"{errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra or {}
        self.headers = headers or {}
        #: Replaces the standard body (user-interactive auth answers 401 with its flows).
        self.body = body

    def to_json(self) -> JsonDict:
        if self.body is not None:
            return self.body
        return {"errcode": self.errcode, "error": self.error, **self.extra}


class ProtocolError(Exception):
    """A domain error that carries what a client should see.

    Subclasses set ``errcode`` and ``status`` as class attributes; an instance may override
    them (``errcode=``, ``status=``) where one class covers several errcodes (profile
    fields, filters, PDUs). :attr:`error` is the human-readable message.
    """

    errcode: str = M_UNKNOWN
    status: int = 400

    def __init__(
        self, message: str, *, errcode: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        if errcode is not None:
            self.errcode = errcode
        if status is not None:
            self.status = status

    @property
    def error(self) -> str:
        return str(self)

    def to_json(self) -> JsonDict:
        return {"errcode": self.errcode, "error": self.error}


def bad_json(error: str) -> MatrixError:
    return MatrixError(400, M_BAD_JSON, error)


def forbidden(error: str) -> MatrixError:
    return MatrixError(403, M_FORBIDDEN, error)


def not_found(error: str) -> MatrixError:
    return MatrixError(404, M_NOT_FOUND, error)


def limit_exceeded(retry_after_s: float) -> MatrixError:
    """429 M_LIMIT_EXCEEDED with ``Retry-After`` (and the deprecated ``retry_after_ms``)."""
    return MatrixError(
        429,
        M_LIMIT_EXCEEDED,
        "too many requests; try again later",
        extra={"retry_after_ms": int(retry_after_s * 1000) + 1},
        headers={"Retry-After": str(int(retry_after_s) + 1)},
    )
