"""The Quart-Trio app: blueprints, one JSON error handler, CORS, body limits.

CS API "API Standards": every response is JSON, errors are ``{errcode, error}``; unknown
endpoints are 404 ``M_UNRECOGNIZED`` and wrong methods 405 ``M_UNRECOGNIZED`` — never
Quart's HTML pages. Every path answers ``OPTIONS`` preflights without running endpoint
logic, and every response carries the recommended CORS headers.
"""

from __future__ import annotations

import json
import logging

from quart import Blueprint, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

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


def create_app(
    blueprints: list[Blueprint], *, max_body_bytes: int, name: str = "refserver"
) -> QuartTrio:
    app = QuartTrio(name)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    for bp in blueprints:
        app.register_blueprint(bp)

    @app.before_request
    async def preflight() -> Response | None:
        # Runs before routing errors are raised, so OPTIONS works on every path.
        if request.method == "OPTIONS":
            return Response("{}", status=200, content_type="application/json")
        return None

    @app.after_request
    async def cors(response: Response) -> Response:
        response.headers.update(CORS_HEADERS)
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
