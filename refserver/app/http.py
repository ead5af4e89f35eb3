"""The Quart-Trio app: blueprints, one JSON error handler, CORS, body limits.

CS API "API Standards": every response is JSON, errors are ``{errcode, error}``; unknown
endpoints are 404 ``M_UNRECOGNIZED`` and wrong methods 405 ``M_UNRECOGNIZED`` — never
Quart's HTML pages. Every path answers ``OPTIONS`` preflights without running endpoint
logic, and every response carries the recommended CORS headers.

An error answered before the request body was read in full (404, 405, 413, a 401 from a
missing token) closes the connection (``Connection: close``): HTTP/1.1 would otherwise have
to wait for the rest of that body before the next request on the connection, and a client
sending it slowly, or never, would hold the connection with no answer (RFC 9112 §9.3,
§9.6 allows closing). quart-trio cancels the request's tasks as soon as the response is
sent, which would cancel hypercorn's close of the connection midway; the final send is
therefore shielded (:class:`_ShieldFinalSend`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Blueprint, Request, Response, request
from quart.json.provider import DefaultJSONProvider
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from refserver.crypto.canonical_json import encode_canonical_json
from refserver.errors import (
    M_NOT_JSON,
    M_TOO_LARGE,
    M_UNKNOWN,
    M_UNRECOGNIZED,
    MatrixError,
    ProtocolError,
)

log = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}


def _json_error(error: MatrixError | ProtocolError) -> Response:
    """The one mapping from an error to CS API "Standard error response" JSON."""
    response = Response(
        _dumps(error.to_json()), status=error.status, content_type="application/json"
    )
    if isinstance(error, MatrixError):
        response.headers.update(error.headers)
    return response


def _dumps(body: object) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


class _JsonProvider(DefaultJSONProvider):
    """Response bodies as quart encodes them, except that a value too deep for the
    recursive encoder (one stored before the parse-time nesting limits, docs/limits.md) is
    encoded without recursion instead of failing the whole response."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        try:
            return super().dumps(obj, **kwargs)
        except RecursionError:
            return encode_canonical_json(obj).decode("utf-8")


class _ShieldFinalSend:
    """ASGI middleware: the last ``http.response.body`` message of a ``Connection: close``
    response is sent in a shielded scope.

    For a ``Connection: close`` response hypercorn closes the socket inside that send; without
    the shield the cancellation quart-trio issues once the response is out interrupts it and
    the connection stays open, waiting for a body that may never come.
    """

    def __init__(self, app: Callable[[Any, Any, Any], Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self._app(scope, receive, send)
            return

        closing = False

        async def shielded_send(message: Any) -> None:
            nonlocal closing
            if message.get("type") == "http.response.start":
                closing = any(
                    name.lower() == b"connection" and value.lower() == b"close"
                    for name, value in message.get("headers", ())
                )
            final = message.get("type") == "http.response.body" and not message.get("more_body")
            if final and closing:
                # Only a closing response: a keep-alive one must stay cancellable, or its
                # task would outlive a client that went away (a connection in CLOSE-WAIT).
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await self._app(scope, receive, shielded_send)


def _body_read(req: Request) -> bool:
    """Whether the request's body has arrived in full (trivially so if it declared none)."""
    if req.content_length == 0 or (
        req.content_length is None and "chunked" not in req.headers.get("Transfer-Encoding", "")
    ):
        return True
    # quart sets ``_complete`` once the last body chunk arrived; treat anything else as unread.
    complete = getattr(req.body, "_complete", None)
    is_set = getattr(complete, "is_set", None)
    return bool(is_set()) if callable(is_set) else False


def create_app(
    blueprints: list[Blueprint], *, max_body_bytes: int, name: str = "refserver"
) -> QuartTrio:
    app = QuartTrio(name)
    app.json = _JsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    for bp in blueprints:
        app.register_blueprint(bp)
    app.asgi_app = _ShieldFinalSend(app.asgi_app)  # type: ignore[method-assign]

    @app.before_request
    async def preflight() -> Response | None:
        # Runs before routing errors are raised, so OPTIONS works on every path.
        if request.method == "OPTIONS":
            return Response("{}", status=200, content_type="application/json")
        return None

    @app.after_request
    async def cors(response: Response) -> Response:
        response.headers.update(CORS_HEADERS)
        if response.status_code >= 400 and not _body_read(request):
            response.headers["Connection"] = "close"
        return response

    # One handler for both client-facing kinds. quart-trio's handle_user_exception unwraps
    # an ExceptionGroup (an error raised inside a nursery) before looking handlers up, so a
    # domain error from a child task still answers with its own status and errcode.
    async def on_client_error(error: MatrixError | ProtocolError) -> Response:
        return _json_error(error)

    async def on_http_exception(error: HTTPException) -> Response:
        if isinstance(error, NotFound):
            return _json_error(MatrixError(404, M_UNRECOGNIZED, "unrecognized request"))
        if isinstance(error, MethodNotAllowed):
            return _json_error(
                MatrixError(405, M_UNRECOGNIZED, "method not allowed on this endpoint")
            )
        if isinstance(error, RequestEntityTooLarge):
            return _json_error(
                MatrixError(413, M_TOO_LARGE, f"request body larger than {max_body_bytes} bytes")
            )
        status = error.code or 500
        errcode = M_NOT_JSON if status == 400 else M_UNKNOWN
        return _json_error(MatrixError(status, errcode, error.description or error.name))

    async def on_unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path, exc_info=error)
        return _json_error(MatrixError(500, M_UNKNOWN, "internal server error"))

    app.register_error_handler(MatrixError, on_client_error)
    app.register_error_handler(ProtocolError, on_client_error)
    app.register_error_handler(HTTPException, on_http_exception)
    app.register_error_handler(Exception, on_unexpected)
    return app
