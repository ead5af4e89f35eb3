"""The one client-facing error type.

Client-server API, "Standard error response": every error is ``{"errcode", "error"}`` with a
meaningful HTTP status. Pure code raises its own small errors carrying an errcode hint; the
service layer decides what reaches a client as a :class:`MatrixError`.
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
