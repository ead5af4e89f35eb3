"""HTTP hygiene: JSON errors (never HTML), 404/405 M_UNRECOGNIZED, body limits, CORS."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from urllib.parse import quote

import httpx
import pytest

from tests.servers import ServerProcess


def _json_error(r: httpx.Response, status: int, errcode: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["errcode"] == errcode and isinstance(body["error"], str)


def test_versions_lists_every_version_and_msc4133(server: ServerProcess) -> None:
    body = httpx.get(server.url("/versions"), headers={"Authorization": "Bearer ignored"}).json()
    assert body["versions"] == [f"v1.{n}" for n in range(1, 17)]
    assert body["unstable_features"]["uk.tcpip.msc4133"] is True


def test_well_known_client(server: ServerProcess) -> None:
    r = httpx.get(f"{server.base_url}/.well-known/matrix/client")
    assert r.json() == {"m.homeserver": {"base_url": server.base_url}}
    assert r.headers["access-control-allow-origin"] == "*"


def test_capabilities_are_honest(server: ServerProcess, username: str) -> None:
    _, token = server.register(username)
    _json_error(httpx.get(server.url("/v3/capabilities")), 401, "M_MISSING_TOKEN")
    caps = httpx.get(
        server.url("/v3/capabilities"), headers={"Authorization": f"Bearer {token}"}
    ).json()["capabilities"]
    assert caps["m.profile_fields"] == {"enabled": True}
    assert caps["uk.tcpip.msc4133.profile_fields"] == {"enabled": True}
    assert caps["m.set_displayname"] == {"enabled": True}
    assert caps["m.set_avatar_url"] == {"enabled": True}
    assert caps["m.change_password"] == {"enabled": False}


@pytest.mark.parametrize("path", ["/v3/nonexistent", "/v3/profile", "/unstable/foo/bar"])
def test_unknown_endpoint_is_404_unrecognized(server: ServerProcess, path: str) -> None:
    _json_error(httpx.get(server.url(path)), 404, "M_UNRECOGNIZED")
    _json_error(httpx.get(f"{server.base_url}/not-matrix-at-all"), 404, "M_UNRECOGNIZED")


def test_wrong_method_is_405_unrecognized(server: ServerProcess) -> None:
    _json_error(httpx.delete(server.url("/versions")), 405, "M_UNRECOGNIZED")
    _json_error(httpx.get(server.url("/v3/logout")), 405, "M_UNRECOGNIZED")
    _json_error(httpx.put(server.url("/v3/login"), json={}), 405, "M_UNRECOGNIZED")


@pytest.mark.parametrize(
    ("content", "errcode"),
    [
        (b"not json", "M_NOT_JSON"),
        (b'{"type": "m.login.password",', "M_NOT_JSON"),
        (b"[1, 2]", "M_BAD_JSON"),
        (b'"string"', "M_BAD_JSON"),
        (b'{"type": "m.login.password", "x": 0.5}', "M_BAD_JSON"),
        (b'{"type": "m.login.password", "x": 1e3}', "M_BAD_JSON"),
        (b'{"type": "m.login.password", "x": 99999999999999999999}', "M_BAD_JSON"),
        (b'{"x": Infinity}', "M_BAD_JSON"),
    ],
)
def test_bad_bodies(server: ServerProcess, content: bytes, errcode: str) -> None:
    r = httpx.post(
        server.url("/v3/login"), content=content, headers={"Content-Type": "application/json"}
    )
    _json_error(r, 400, errcode)


def test_oversized_body_is_413_too_large(server: ServerProcess, username: str) -> None:
    user_id, token = server.register(username)
    big = b'{"org.example.big": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    r = httpx.put(
        server.url(f"/v3/profile/{user_id}/org.example.big"),
        content=big,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    _json_error(r, 413, "M_TOO_LARGE")
    assert httpx.get(server.url(f"/v3/profile/{user_id}")).json() == {}


def test_cors_preflight_on_every_path(server: ServerProcess) -> None:
    for path in ["/v3/login", "/v3/profile/@x:y/displayname", "/v3/does/not/exist", "/versions"]:
        r = httpx.options(
            server.url(path),
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"},
        )
        assert r.status_code == 200, path
        assert r.headers["access-control-allow-origin"] == "*"
        assert "PUT" in r.headers["access-control-allow-methods"]
        assert "Authorization" in r.headers["access-control-allow-headers"]


def test_cors_headers_on_errors_too(server: ServerProcess) -> None:
    r = httpx.get(server.url("/v3/nonexistent"))
    assert r.headers["access-control-allow-origin"] == "*"


def test_empty_successes_are_exactly_empty_objects(server: ServerProcess, username: str) -> None:
    user_id, token = server.register(username)
    r = httpx.put(
        server.url(f"/v3/profile/{user_id}/displayname"),
        json={"displayname": "n"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.content.strip() == b"{}" and r.headers["content-type"].startswith("application/json")


def test_domain_errors_answer_their_own_status_and_errcode(
    server: ServerProcess, username: str
) -> None:
    """Errors raised by pure code (InvalidToken, FilterError, InvalidId, UnsupportedRoomVersion,
    InvalidPdu, ProfileFieldError, XMatrixError) reach clients through the one mapping at the
    HTTP edge with the status and errcode of CS API "Standard error response"."""
    user_id, token = server.register(username)
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.post(server.url("/v3/createRoom"), json={}, headers=auth)
    assert r.status_code == 200, r.text
    room = quote(r.json()["room_id"], safe="")
    cases: list[tuple[str, httpx.Response, int, str]] = [
        ("stream token", httpx.get(server.url("/v3/sync?since=bogus"), headers=auth), 400,
         "M_INVALID_PARAM"),
        ("inline filter", httpx.get(server.url("/v3/sync"), params={"filter": "{nope"},
         headers=auth), 400, "M_NOT_JSON"),
        ("messages token", httpx.get(server.url(f"/v3/rooms/{room}/messages?from=bogus"),
         headers=auth), 400, "M_INVALID_PARAM"),
        ("invitee user ID", httpx.post(server.url(f"/v3/rooms/{room}/invite"),
         json={"user_id": "bob"}, headers=auth), 400, "M_INVALID_PARAM"),
        ("room version", httpx.post(server.url("/v3/createRoom"), json={"room_version": "99"},
         headers=auth), 400, "M_UNSUPPORTED_ROOM_VERSION"),
        ("event size", httpx.put(server.url(f"/v3/rooms/{room}/state/m.room.topic"),
         json={"topic": "x" * 70000}, headers=auth), 413, "M_TOO_LARGE"),
        ("profile key", httpx.put(server.url(f"/v3/profile/{quote(user_id)}/Bad.Key"),
         json={"Bad.Key": 1}, headers=auth), 400, "M_INVALID_PARAM"),
        ("federation auth", httpx.get(
            f"{server.federation_url}/_matrix/federation/v1/query/profile",
            params={"user_id": user_id},
            verify=ssl.create_default_context(cafile=str(server.ca_pem)),
        ), 401, "M_UNAUTHORIZED"),
    ]  # fmt: skip
    for what, response, status, errcode in cases:
        assert response.status_code == status, f"{what}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/json"), what
        body = response.json()
        assert body["errcode"] == errcode, f"{what}: expected {errcode}, got {body}"
        assert isinstance(body["error"], str) and body["error"], f"{what}: {body}"


def _answer_or_close_after_early_error(server: ServerProcess, request_line: str) -> bytes:
    """Send ``request_line`` with a 100 kB Content-Length and only part of the body, then a
    second request on the same connection; return everything the server sent until it closed
    the connection or went quiet for 30 s."""
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"{request_line} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
            + b'{"a": "'
            + b"x" * 1000
        )
        # The rest of the body never comes (a slow or stalled client); a second request
        # follows on the same connection.
        sock.sendall(f"GET /_matrix/client/versions HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"unstable_features" in received:
                    break
        except TimeoutError:
            pytest.fail(
                "the connection neither answered the second request nor was closed within"
                f" 30 s; received so far: {received[:400]!r}"
            )
        return received


@pytest.mark.parametrize(
    "request_line",
    [
        "PUT /_matrix/client/v3/nonexistent",  # 404 before the body is read
        "POST /_matrix/client/versions",  # 405 before the body is read
        "PUT /_matrix/client/v3/profile/@nobody:example.org/displayname",  # 401, no token
    ],
)
def test_early_error_does_not_hang_the_connection(server: ServerProcess, request_line: str) -> None:
    """A request refused before its body arrives must not hold the connection: the server
    either closes it (``Connection: close``) or answers the next request."""
    received = _answer_or_close_after_early_error(server, request_line)
    first = received.split(b"\r\n\r\n", 1)[0].lower()
    assert first.startswith(b"http/1.1 4"), received[:400]
    if b"unstable_features" not in received:
        assert b"connection: close" in first, received[:400]


def test_answered_connections_are_released_when_the_client_closes(
    make_server: Callable[..., ServerProcess],
) -> None:
    """Every connection a client closes is closed by the server too: with a limit of 8
    connections per address, 60 requests on 60 successive connections (successes, bad bodies,
    unknown paths) all get answers. A response whose task outlived its client (a connection
    left in CLOSE-WAIT) would use up the limit after 8."""
    srv = make_server({("limits", "max_connections_per_address"): "8"})
    _, token = srv.register("alice")
    auth = {"Authorization": f"Bearer {token}"}
    requests = [
        ("POST", "/v3/createRoom", b"{}"),
        ("POST", "/v3/createRoom", b"[1, 2]"),
        ("POST", "/v3/createRoom", b"{"),
        ("GET", "/v3/no/such/endpoint", b""),
        ("GET", "/v3/account/whoami", b""),
    ] * 12
    for n, (method, path, body) in enumerate(requests):
        with httpx.Client(headers=auth, timeout=10) as http:
            r = http.request(method, srv.url(path), content=body)
        assert r.status_code < 500, f"request {n} ({method} {path}): {r.status_code} {r.text}"
