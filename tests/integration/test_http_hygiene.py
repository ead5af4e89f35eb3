"""HTTP hygiene: JSON errors (never HTML), 404/405 M_UNRECOGNIZED, body limits, CORS."""

from __future__ import annotations

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
