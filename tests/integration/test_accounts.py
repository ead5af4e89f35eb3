"""Registration, login, tokens and logout over real HTTP (CS API "Account registration",
"Login", "User-Interactive Authentication API")."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.servers import ServerProcess

#: Builds a /login body from a localpart and the full user ID.
LoginForm = Callable[[str, str], dict[str, object]]


def _error(r: httpx.Response, status: int, errcode: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["errcode"] == errcode


def test_register_without_auth_gets_the_uia_401_shape(server: ServerProcess, username: str) -> None:
    r = httpx.post(server.url("/v3/register"), json={"username": username, "password": "pw"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["flows"] == [{"stages": ["m.login.dummy"]}]
    assert body["params"] == {}
    assert isinstance(body["session"], str) and body["session"]
    # Nothing was created yet.
    r2 = httpx.get(server.url("/v3/register/available"), params={"username": username})
    assert r2.json() == {"available": True}

    # Completing the dummy stage with that session registers the user.
    r = httpx.post(
        server.url("/v3/register"),
        json={
            "username": username,
            "password": "pw",
            "auth": {"type": "m.login.dummy", "session": body["session"]},
            "refresh_token": True,
            "initial_device_display_name": "js",
        },
    )
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"user_id", "access_token", "device_id"}


def test_register_rejects_unknown_auth_type(server: ServerProcess, username: str) -> None:
    r = httpx.post(
        server.url("/v3/register"),
        json={"username": username, "auth": {"type": "m.login.recaptcha"}},
    )
    assert r.status_code == 401
    assert r.json()["flows"] == [{"stages": ["m.login.dummy"]}] and "errcode" in r.json()
    assert httpx.get(
        server.url("/v3/register/available"), params={"username": username}
    ).json() == {"available": True}


@pytest.mark.parametrize("bad", ["Alice", "al ice", "al:ice", "@alice", "", "é"])
def test_invalid_usernames_are_refused_before_uia(server: ServerProcess, bad: str) -> None:
    r = httpx.post(server.url("/v3/register"), json={"username": bad, "password": "pw"})
    _error(r, 400, "M_INVALID_USERNAME")
    _error(
        httpx.get(server.url("/v3/register/available"), params={"username": bad}),
        400,
        "M_INVALID_USERNAME",
    )


def test_taken_username_is_refused_before_uia(server: ServerProcess, username: str) -> None:
    server.register(username)
    _error(
        httpx.post(server.url("/v3/register"), json={"username": username}), 400, "M_USER_IN_USE"
    )
    _error(
        httpx.get(server.url("/v3/register/available"), params={"username": username}),
        400,
        "M_USER_IN_USE",
    )


def test_generated_localpart_and_inhibit_login(server: ServerProcess) -> None:
    r = httpx.post(
        server.url("/v3/register"), json={"auth": {"type": "m.login.dummy"}, "inhibit_login": True}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"user_id"}
    assert body["user_id"].startswith("@") and body["user_id"].endswith(f":{server.server_name}")


def test_guest_registration_is_refused(server: ServerProcess) -> None:
    r = httpx.post(server.url("/v3/register"), params={"kind": "guest"}, json={})
    _error(r, 403, "M_GUEST_ACCESS_FORBIDDEN")


def test_registration_can_be_switched_off(make_server: Callable[..., ServerProcess]) -> None:
    srv = make_server({("registration", "enabled"): "false"})
    r = httpx.post(
        srv.url("/v3/register"), json={"username": "x", "auth": {"type": "m.login.dummy"}}
    )
    _error(r, 403, "M_FORBIDDEN")
    r = httpx.post(srv.url("/v3/register"), json={"username": "x"})
    _error(r, 403, "M_FORBIDDEN")


@pytest.mark.parametrize(
    "form",
    [
        lambda u, full: {"identifier": {"type": "m.id.user", "user": u}},
        lambda u, full: {"identifier": {"type": "m.id.user", "user": full}},
        lambda u, full: {"user": u},  # matrix-js-sdk loginWithPassword
    ],
    ids=["localpart", "full-user-id", "legacy-user"],
)
def test_login_forms(server: ServerProcess, username: str, form: LoginForm) -> None:
    user_id, _ = server.register(username, "pw-login")
    body = {"type": "m.login.password", "password": "pw-login", **form(username, user_id)}
    # An Authorization header on /login is ignored (js-sdk and mautrix send one).
    r = httpx.post(server.url("/v3/login"), json=body, headers={"Authorization": "Bearer stale"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["user_id"] == user_id and out["device_id"] and out["access_token"]
    who = httpx.get(
        server.url("/v3/account/whoami"), headers={"Authorization": f"Bearer {out['access_token']}"}
    )
    assert who.json() == {"user_id": user_id, "device_id": out["device_id"], "is_guest": False}


def test_login_failures(server: ServerProcess, username: str) -> None:
    server.register(username, "right")
    url = server.url("/v3/login")
    ident = {"type": "m.id.user", "user": username}
    _error(
        httpx.post(
            url, json={"type": "m.login.password", "identifier": ident, "password": "wrong"}
        ),
        403,
        "M_FORBIDDEN",
    )
    _error(
        httpx.post(
            url,
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "nobody-here"},
                "password": "x",
            },
        ),
        403,
        "M_FORBIDDEN",
    )
    _error(httpx.post(url, json={"type": "m.login.token", "token": "x"}), 400, "M_UNKNOWN")
    _error(
        httpx.post(url, json={"type": "m.login.password", "password": "right"}), 400, "M_BAD_JSON"
    )
    _error(
        httpx.post(url, json={"type": "m.login.password", "identifier": ident}), 400, "M_BAD_JSON"
    )
    assert httpx.get(url).json() == {"flows": [{"type": "m.login.password"}]}


def test_login_with_same_device_id_replaces_its_token(server: ServerProcess, username: str) -> None:
    server.register(username, "pw")
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": username},
        "password": "pw",
        "device_id": "KEEPME",
    }
    first = httpx.post(server.url("/v3/login"), json=body).json()
    second = httpx.post(server.url("/v3/login"), json=body).json()
    assert first["device_id"] == second["device_id"] == "KEEPME"

    def who(token: str) -> httpx.Response:
        return httpx.get(
            server.url("/v3/account/whoami"), headers={"Authorization": f"Bearer {token}"}
        )

    _error(who(first["access_token"]), 401, "M_UNKNOWN_TOKEN")
    assert who(second["access_token"]).status_code == 200


def test_logout_and_logout_all(server: ServerProcess, username: str) -> None:
    _, t1 = server.register(username, "pw")
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": username},
        "password": "pw",
    }
    t2 = httpx.post(server.url("/v3/login"), json=login).json()["access_token"]
    t3 = httpx.post(server.url("/v3/login"), json=login).json()["access_token"]

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    # nio: empty body with a JSON content type; js-sdk: no body, no content type.
    r = httpx.post(
        server.url("/v3/logout"), headers={**auth(t1), "Content-Type": "application/json"}
    )
    assert (r.status_code, r.json()) == (200, {})
    _error(httpx.get(server.url("/v3/account/whoami"), headers=auth(t1)), 401, "M_UNKNOWN_TOKEN")
    assert httpx.get(server.url("/v3/account/whoami"), headers=auth(t2)).status_code == 200

    r = httpx.post(server.url("/v3/logout/all"), headers=auth(t2))
    assert (r.status_code, r.json()) == (200, {})
    for t in (t2, t3):
        _error(httpx.get(server.url("/v3/account/whoami"), headers=auth(t)), 401, "M_UNKNOWN_TOKEN")


def test_tokens(server: ServerProcess, username: str) -> None:
    _, token = server.register(username)
    _error(httpx.get(server.url("/v3/account/whoami")), 401, "M_MISSING_TOKEN")
    _error(
        httpx.get(server.url("/v3/account/whoami"), headers={"Authorization": "Bearer rs_nope"}),
        401,
        "M_UNKNOWN_TOKEN",
    )
    # The deprecated query-parameter form still works in v1.16.
    assert (
        httpx.get(server.url("/v3/account/whoami"), params={"access_token": token}).status_code
        == 200
    )
    assert len(token) >= 32  # ≥ 128 random bits, url-safe base64


def test_login_and_register_are_rate_limited(make_server: Callable[..., ServerProcess]) -> None:
    srv = make_server(
        {
            ("rate_limits.login", "burst"): "2",
            ("rate_limits.login", "per_second"): "0.1",
            ("rate_limits.register", "burst"): "2",
            ("rate_limits.register", "per_second"): "0.1",
        }
    )
    srv.register("first")
    srv.register("second")
    r = httpx.post(
        srv.url("/v3/register"), json={"username": "third", "auth": {"type": "m.login.dummy"}}
    )
    _error(r, 429, "M_LIMIT_EXCEEDED")
    assert int(r.headers["Retry-After"]) >= 1
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "first"},
        "password": "correct horse",
    }
    assert httpx.post(srv.url("/v3/login"), json=login).status_code == 200
    assert httpx.post(srv.url("/v3/login"), json=login).status_code == 200
    _error(httpx.post(srv.url("/v3/login"), json=login), 429, "M_LIMIT_EXCEEDED")
    # Nothing was created by the refused registration.
    assert httpx.get(srv.url("/v3/profile/@third:" + srv.server_name)).status_code == 404
