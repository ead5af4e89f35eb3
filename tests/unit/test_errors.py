"""Domain errors carry their client-facing status and errcode; the HTTP edge maps them once.

CS API "Standard error response": ``{"errcode", "error"}`` with a meaningful HTTP status.
"""

from __future__ import annotations

import importlib
import json
import pkgutil

import pytest
import trio
from quart import Blueprint

import refserver
from refserver.app.http import create_app
from refserver.errors import MatrixError, ProtocolError
from refserver.events.auth_state import AuthError
from refserver.events.format import InvalidPdu
from refserver.ids import UserId


def _all_protocol_errors() -> list[type[ProtocolError]]:
    for info in pkgutil.walk_packages(refserver.__path__, "refserver."):
        importlib.import_module(info.name)
    found: list[type[ProtocolError]] = []
    pending = list(ProtocolError.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}")


PROTOCOL_ERRORS = _all_protocol_errors()


def test_the_domain_errors_are_protocol_errors() -> None:
    names = {cls.__name__ for cls in PROTOCOL_ERRORS}
    expected = {
        "InvalidId",
        "InvalidToken",
        "CanonicalJsonError",
        "InvalidPdu",
        "AuthError",
        "UnsupportedRoomVersion",
        "ProfileFieldError",
        "FilterError",
        "XMatrixError",
        "TransactionError",
        "UserExists",
        "DroppedPdu",
        "PduRejected",
    }
    assert expected <= names, f"not ProtocolError subclasses: {sorted(expected - names)}"


@pytest.mark.parametrize("cls", PROTOCOL_ERRORS, ids=lambda c: c.__name__)
def test_every_protocol_error_has_a_matrix_errcode_and_an_error_status(
    cls: type[ProtocolError],
) -> None:
    assert cls.errcode.startswith("M_"), f"{cls.__name__}.errcode = {cls.errcode!r}"
    assert 400 <= cls.status < 600, f"{cls.__name__}.status = {cls.status}"
    assert cls.errcode != "M_UNKNOWN", f"{cls.__name__} does not set its own errcode"


def test_an_instance_may_override_the_class_errcode_and_status() -> None:
    too_large = InvalidPdu("event is too large", errcode="M_TOO_LARGE")
    assert (too_large.status, too_large.errcode) == (413, "M_TOO_LARGE")
    bad = InvalidPdu("missing content")
    assert (bad.status, bad.errcode) == (400, "M_BAD_JSON")
    assert InvalidPdu.errcode == "M_BAD_JSON", "an instance override leaked into the class"


def test_an_auth_error_shows_the_rule_message_not_the_rule_number() -> None:
    exc = AuthError("4.3.3", "sender is not joined")
    assert exc.to_json() == {"errcode": "M_FORBIDDEN", "error": "sender is not joined"}
    assert exc.status == 403


# -- the one mapping at the HTTP edge ------------------------------------------------------


def _app_raising() -> Blueprint:
    bp = Blueprint("raising", __name__)

    @bp.get("/domain")
    async def domain() -> dict[str, str]:
        UserId.parse("not-a-user-id")
        return {}

    @bp.get("/matrix")
    async def matrix() -> dict[str, str]:
        raise MatrixError(429, "M_LIMIT_EXCEEDED", "slow down", headers={"Retry-After": "2"})

    @bp.get("/in-nursery")
    async def in_nursery() -> dict[str, str]:
        async def fail() -> None:
            raise InvalidPdu("event is too large", errcode="M_TOO_LARGE")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
        return {}

    @bp.get("/bug")
    async def bug() -> dict[str, str]:
        raise KeyError("a bug")

    return bp


@pytest.mark.parametrize(
    ("path", "status", "errcode"),
    [
        ("/domain", 400, "M_INVALID_PARAM"),
        ("/matrix", 429, "M_LIMIT_EXCEEDED"),
        ("/in-nursery", 413, "M_TOO_LARGE"),
        ("/bug", 500, "M_UNKNOWN"),
    ],
)
async def test_the_http_edge_answers_every_error_as_matrix_error_json(
    path: str, status: int, errcode: str
) -> None:
    app = create_app([_app_raising()], max_body_bytes=1024)
    async with app.test_app() as test_app:
        response = await test_app.test_client().get(path)
        body = json.loads(await response.get_data(as_text=True))
    assert (response.status_code, body.get("errcode")) == (status, errcode), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert response.headers["Content-Type"] == "application/json"
    if path == "/matrix":
        assert response.headers["Retry-After"] == "2"
