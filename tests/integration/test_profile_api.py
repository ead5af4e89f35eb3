"""The Matrix 1.16 profile API over real HTTP: extended fields and every error case.

Each error case asserts the status, the errcode, and that the profile did not change.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import httpx
import pytest

from tests.servers import ServerProcess

V3 = "/_matrix/client/v3"
UNSTABLE = "/_matrix/client/unstable/uk.tcpip.msc4133"


class Profiles:
    """Raw profile calls for one user."""

    def __init__(self, server: ServerProcess, user_id: str, token: str) -> None:
        self.server, self.user_id, self.token = server, user_id, token
        self.headers = {"Authorization": f"Bearer {token}"}

    def url(self, key: str | None = None, *, prefix: str = V3, user_id: str | None = None) -> str:
        path = f"{self.server.base_url}{prefix}/profile/{quote(user_id or self.user_id, safe='')}"
        return path if key is None else f"{path}/{quote(key, safe='')}"

    def put(self, key: str, body: object, **kw: str) -> httpx.Response:
        return httpx.put(self.url(key, **kw), json=body, headers=self.headers)

    def put_raw(self, key: str, content: bytes) -> httpx.Response:
        return httpx.put(
            self.url(key),
            content=content,
            headers={**self.headers, "Content-Type": "application/json"},
        )

    def get(self, key: str | None = None, **kw: str) -> httpx.Response:
        return httpx.get(self.url(key, **kw))

    def delete(self, key: str, **kw: str) -> httpx.Response:
        return httpx.delete(self.url(key, **kw), headers=self.headers)

    def snapshot(self) -> dict[str, object]:
        r = self.get()
        assert r.status_code == 200, r.text
        profile: dict[str, object] = r.json()
        return profile


@pytest.fixture
def alice(server: ServerProcess, username: str) -> Profiles:
    user_id, token = server.register(username)
    p = Profiles(server, user_id, token)
    assert p.put("displayname", {"displayname": "Alice"}).status_code == 200
    return p


@pytest.mark.parametrize("prefix", [V3, UNSTABLE])
def test_set_get_delete_extended_fields(alice: Profiles, prefix: str) -> None:
    custom = {"languages": ["en-GB", "fr"], "level": 3, "nested": {"ok": True, "none": None}}
    assert alice.put("m.tz", {"m.tz": "Europe/London"}, prefix=prefix).json() == {}
    assert alice.put("org.example.info", {"org.example.info": custom}, prefix=prefix).json() == {}

    assert alice.get("m.tz", prefix=prefix).json() == {"m.tz": "Europe/London"}
    assert alice.get("org.example.info", prefix=prefix).json() == {"org.example.info": custom}
    assert alice.get(prefix=prefix).json() == {
        "displayname": "Alice",
        "m.tz": "Europe/London",
        "org.example.info": custom,
    }

    r = alice.delete("org.example.info", prefix=prefix)
    assert (r.status_code, r.json()) == (200, {})
    r = alice.get("org.example.info", prefix=prefix)
    assert (r.status_code, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    # Deleting again: the field does not exist, still 200 {}.
    r = alice.delete("org.example.info", prefix=prefix)
    assert (r.status_code, r.json()) == (200, {})
    assert alice.delete("m.tz", prefix=prefix).status_code == 200
    assert alice.get(prefix=prefix).json() == {"displayname": "Alice"}


def test_r0_alias_serves_displayname(alice: Profiles) -> None:
    r = alice.put("displayname", {"displayname": "Alice R0"}, prefix="/_matrix/client/r0")
    assert r.status_code == 200
    assert alice.get("displayname", prefix="/_matrix/client/r0").json() == {
        "displayname": "Alice R0"
    }


def test_unset_fields_are_omitted_never_null(alice: Profiles) -> None:
    assert alice.put("avatar_url", {"avatar_url": "mxc://example.org/abc"}).status_code == 200
    assert alice.put("avatar_url", {"avatar_url": None}).status_code == 200  # null clears it
    body = alice.get().json()
    assert "avatar_url" not in body and None not in body.values()


def test_key_with_maximum_length_is_accepted(alice: Profiles) -> None:
    key = "a." + "b" * 253  # exactly 255 bytes
    assert alice.put(key, {key: 1}).status_code == 200
    assert alice.get(key).json() == {key: 1}


def _assert_error(r: httpx.Response, status: int, errcode: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["errcode"] == errcode and isinstance(body["error"], str)


@pytest.mark.parametrize(
    ("key", "body", "status", "errcode"),
    [
        ("displayname", {}, 400, "M_MISSING_PARAM"),
        ("displayname", {"avatar_url": "mxc://a/b"}, 400, "M_MISSING_PARAM"),
        ("displayname", {"displayname": "x", "extra": 1}, 400, "M_BAD_JSON"),
        ("displayname", {"displayname": 42}, 400, "M_BAD_JSON"),
        ("displayname", ["not", "an", "object"], 400, "M_BAD_JSON"),
        ("avatar_url", {"avatar_url": "https://example.org/a.png"}, 400, "M_BAD_JSON"),
        ("avatar_url", {"avatar_url": 7}, 400, "M_BAD_JSON"),
        ("m.tz", {"m.tz": 3}, 400, "M_BAD_JSON"),
        ("org.example.f", {"org.example.f": None}, 400, "M_BAD_JSON"),
        ("Org.Example", {"Org.Example": 1}, 400, "M_INVALID_PARAM"),
        ("nodot", {"nodot": 1}, 400, "M_INVALID_PARAM"),
        ("org.exa-mple", {"org.exa-mple": 1}, 400, "M_INVALID_PARAM"),
        ("a." + "b" * 254, {"a." + "b" * 254: 1}, 400, "M_KEY_TOO_LARGE"),
    ],
)
def test_put_errors_change_nothing(
    alice: Profiles, key: str, body: object, status: int, errcode: str
) -> None:
    before = alice.snapshot()
    _assert_error(alice.put(key, body), status, errcode)
    assert alice.snapshot() == before


@pytest.mark.parametrize(
    ("raw", "errcode"),
    [
        (b'{"org.example.f": 1.5}', "M_BAD_JSON"),
        (b'{"org.example.f": 9007199254740992}', "M_BAD_JSON"),
        (b'{"org.example.f": -9007199254740992}', "M_BAD_JSON"),
        (b'{"org.example.f": NaN}', "M_BAD_JSON"),
        (b'{"org.example.f": ', "M_NOT_JSON"),
        (b"\xff\xfe", "M_NOT_JSON"),
        (b"", "M_NOT_JSON"),
    ],
)
def test_put_bad_json_changes_nothing(alice: Profiles, raw: bytes, errcode: str) -> None:
    before = alice.snapshot()
    _assert_error(alice.put_raw("org.example.f", raw), 400, errcode)
    assert alice.snapshot() == before


def test_largest_safe_integer_is_accepted(alice: Profiles) -> None:
    r = alice.put_raw("org.example.big", b'{"org.example.big": 9007199254740991}')
    assert r.status_code == 200
    assert alice.get("org.example.big").json() == {"org.example.big": 9007199254740991}


def test_profile_too_large_changes_nothing(alice: Profiles) -> None:
    assert alice.put("org.example.a", {"org.example.a": "x" * 40000}).status_code == 200
    before = alice.snapshot()
    _assert_error(
        alice.put("org.example.b", {"org.example.b": "y" * 30000}), 400, "M_PROFILE_TOO_LARGE"
    )
    assert alice.snapshot() == before
    # Replacing the big field with something that fits is fine: the limit is on the result.
    assert alice.put("org.example.a", {"org.example.a": "x" * 60000}).status_code == 200


def test_only_the_owner_may_write(server: ServerProcess, alice: Profiles, username: str) -> None:
    _, mallory_token = server.register(username + "m")
    mallory = Profiles(server, alice.user_id, mallory_token)
    before = alice.snapshot()
    _assert_error(mallory.put("displayname", {"displayname": "pwned"}), 403, "M_FORBIDDEN")
    _assert_error(mallory.delete("displayname"), 403, "M_FORBIDDEN")
    assert alice.snapshot() == before


def test_writes_need_a_valid_token(alice: Profiles) -> None:
    before = alice.snapshot()
    r = httpx.put(alice.url("displayname"), json={"displayname": "anon"})
    _assert_error(r, 401, "M_MISSING_TOKEN")
    r = httpx.put(
        alice.url("displayname"),
        json={"displayname": "anon"},
        headers={"Authorization": "Bearer nope"},
    )
    _assert_error(r, 401, "M_UNKNOWN_TOKEN")
    r = httpx.delete(alice.url("displayname"), headers={"Authorization": "Bearer nope"})
    _assert_error(r, 401, "M_UNKNOWN_TOKEN")
    assert alice.snapshot() == before


def test_missing_field_and_unknown_user_are_404(alice: Profiles, server: ServerProcess) -> None:
    _assert_error(alice.get("m.tz"), 404, "M_NOT_FOUND")
    ghost = f"@ghost-{id(alice)}:{server.server_name}"
    _assert_error(alice.get(user_id=ghost), 404, "M_NOT_FOUND")
    _assert_error(alice.get("displayname", user_id=ghost), 404, "M_NOT_FOUND")


def test_get_with_invalid_key_or_user_id(alice: Profiles) -> None:
    _assert_error(alice.get("Bad.Key"), 400, "M_INVALID_PARAM")
    _assert_error(alice.get(user_id="not-a-user-id"), 400, "M_INVALID_PARAM")
    _assert_error(alice.delete("Bad.Key"), 400, "M_INVALID_PARAM")


def test_whole_profile_replace_is_not_supported(alice: Profiles) -> None:
    r = httpx.put(alice.url(), json={"displayname": "x"}, headers=alice.headers)
    _assert_error(r, 405, "M_UNRECOGNIZED")
    r = httpx.patch(alice.url(), json={"displayname": "x"}, headers=alice.headers)
    _assert_error(r, 405, "M_UNRECOGNIZED")


def test_field_policy_from_config_is_enforced_and_advertised(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server({("profile", "disallowed_fields"): '["avatar_url", "org.example.locked"]'})
    user_id, token = srv.register("policy")
    p = Profiles(srv, user_id, token)
    _assert_error(p.put("avatar_url", {"avatar_url": "mxc://a/b"}), 403, "M_FORBIDDEN")
    _assert_error(p.put("org.example.locked", {"org.example.locked": 1}), 403, "M_FORBIDDEN")
    _assert_error(p.delete("avatar_url"), 403, "M_FORBIDDEN")
    assert p.put("displayname", {"displayname": "ok"}).status_code == 200
    assert p.snapshot() == {"displayname": "ok"}
    caps = httpx.get(srv.url("/v3/capabilities"), headers=p.headers).json()["capabilities"]
    assert caps["m.profile_fields"] == {
        "enabled": True,
        "disallowed": ["avatar_url", "org.example.locked"],
    }
    assert caps["uk.tcpip.msc4133.profile_fields"] == caps["m.profile_fields"]
    assert caps["m.set_avatar_url"] == {"enabled": False}
    assert caps["m.set_displayname"] == {"enabled": True}


def test_profile_writes_are_rate_limited(make_server: Callable[..., ServerProcess]) -> None:
    srv = make_server(
        {
            ("rate_limits.profile_write", "burst"): "3",
            ("rate_limits.profile_write", "per_second"): "0.1",
        }
    )
    user_id, token = srv.register("busy")
    p = Profiles(srv, user_id, token)
    for n in range(3):
        assert p.put("m.tz", {"m.tz": f"Etc/GMT+{n}"}).status_code == 200
    r = p.put("m.tz", {"m.tz": "UTC"})
    _assert_error(r, 429, "M_LIMIT_EXCEEDED")
    assert int(r.headers["Retry-After"]) >= 1
    assert p.snapshot() == {"m.tz": "Etc/GMT+2"}


def _nested(levels: int) -> bytes:
    """A profile body whose value is ``levels`` arrays deep (the body itself is one more)."""
    return b'{"org.example.x": ' + b"[" * levels + b"]" * levels + b"}"


def test_deeply_nested_value_is_refused_and_not_stored(alice: Profiles) -> None:
    """A ~1.2 kB value nested 490 levels deep once crashed the server when it was signed
    into a transaction; it is now refused at parse time (docs/limits.md) and not stored."""
    body = _nested(490)
    assert 900 < len(body) < 1300
    before = alice.snapshot()
    _assert_error(alice.put_raw("org.example.x", body), 400, "M_BAD_JSON")
    assert alice.snapshot() == before
    assert alice.get("org.example.x").status_code == 404


def test_nesting_at_the_limit_is_accepted(alice: Profiles) -> None:
    # 63 arrays inside the body object: 64 levels, the limit.
    assert alice.put_raw("org.example.x", _nested(63)).status_code == 200
    value: object = alice.get("org.example.x").json()["org.example.x"]
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    assert depth == 63
    _assert_error(alice.put_raw("org.example.x", _nested(64)), 400, "M_BAD_JSON")
