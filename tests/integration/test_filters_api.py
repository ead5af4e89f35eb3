"""Filters and push rules over real HTTP (CS API "Filtering", "Push Rules: API").

matrix-js-sdk needs both answered before it starts syncing (its ``startClient`` uploads a filter
and fetches push rules first).
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from tests.servers import ServerProcess

V3 = "/_matrix/client/v3"
R0 = "/_matrix/client/r0"
JS_SDK_FILTER = {"room": {"timeline": {"unread_thread_notifications": True}}}


class Client:
    def __init__(self, server: ServerProcess, user_id: str, token: str) -> None:
        self.server, self.user_id = server, user_id
        self.headers = {"Authorization": f"Bearer {token}"}

    def filter_url(self, user_id: str | None = None, *, prefix: str = V3) -> str:
        target = quote(user_id or self.user_id, safe="")
        return f"{self.server.base_url}{prefix}/user/{target}/filter"

    def upload(self, body: object, **kw: str) -> httpx.Response:
        return httpx.post(self.filter_url(**kw), json=body, headers=self.headers)

    def download(self, filter_id: str, **kw: str) -> httpx.Response:
        return httpx.get(f"{self.filter_url(**kw)}/{filter_id}", headers=self.headers)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.server.base_url}{path}", headers=self.headers)


@pytest.fixture
def alice(server: ServerProcess, username: str) -> Client:
    return Client(server, *server.register(username))


@pytest.mark.parametrize("prefix", [V3, R0])
def test_uploaded_filter_comes_back_unchanged(alice: Client, prefix: str) -> None:
    body = {
        "room": {"timeline": {"limit": 20, "types": ["m.room.*"]}, "include_leave": True},
        "event_fields": ["type", "content"],
        "org.matrix.msc4429.profile_fields": {"ids": ["m.tz"]},
    }
    r = alice.upload(body, prefix=prefix)
    assert r.status_code == 200, r.text
    filter_id = r.json()["filter_id"]
    assert isinstance(filter_id, str) and not filter_id.startswith("{")
    r = alice.download(filter_id, prefix=prefix)
    assert r.status_code == 200, r.text
    assert r.json() == body


def test_js_sdk_startup_filter_is_accepted(alice: Client) -> None:
    r = alice.upload(JS_SDK_FILTER)
    assert r.status_code == 200, r.text
    assert alice.download(r.json()["filter_id"]).json() == JS_SDK_FILTER


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"room": {"timeline": "not_an_object"}}, "M_BAD_JSON"),
        ({"presence": {"types": "m.presence"}}, "M_BAD_JSON"),
        ({"room": {"timeline": {"limit": -1}}}, "M_INVALID_PARAM"),
        ({"event_format": "xml"}, "M_INVALID_PARAM"),
        ([], "M_BAD_JSON"),
    ],
)
def test_invalid_filter_is_400(alice: Client, body: object, errcode: str) -> None:
    r = alice.upload(body)
    assert r.status_code == 400, r.text
    assert r.json()["errcode"] == errcode


def test_filter_body_that_is_not_json_is_400_m_not_json(alice: Client) -> None:
    r = httpx.post(
        alice.filter_url(),
        content=b"{nope",
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["errcode"] == "M_NOT_JSON"


def test_uploading_for_another_user_is_403(alice: Client, server: ServerProcess) -> None:
    other = f"@someone-else:{server.server_name}"
    r = alice.upload({}, user_id=other)
    assert r.status_code == 403
    assert r.json()["errcode"] == "M_FORBIDDEN"


def test_reading_another_users_filter_is_403(
    alice: Client, server: ServerProcess, username: str
) -> None:
    bob = Client(server, *server.register(username + "b"))
    filter_id = bob.upload({"room": {"timeline": {"limit": 1}}}).json()["filter_id"]
    r = alice.download(filter_id, user_id=bob.user_id)
    assert r.status_code == 403
    assert r.json()["errcode"] == "M_FORBIDDEN"


@pytest.mark.parametrize("filter_id", ["999999", "not-a-number", "{}"])
def test_unknown_filter_id_is_404(alice: Client, filter_id: str) -> None:
    r = alice.download(quote(filter_id, safe=""))
    assert r.status_code == 404
    assert r.json()["errcode"] == "M_NOT_FOUND"


def test_filters_need_an_access_token(alice: Client) -> None:
    r = httpx.post(alice.filter_url(), json={})
    assert r.status_code == 401
    assert r.json()["errcode"] == "M_MISSING_TOKEN"


@pytest.mark.parametrize("path", [f"{V3}/pushrules/", f"{V3}/pushrules", f"{R0}/pushrules/"])
def test_push_rules_list_the_server_defaults(alice: Client, path: str) -> None:
    r = alice.get(path)
    assert r.status_code == 200, r.text
    ruleset = r.json()["global"]
    assert set(ruleset) == {"override", "content", "room", "sender", "underride"}
    override_ids = [rule["rule_id"] for rule in ruleset["override"]]
    assert override_ids[0] == ".m.rule.master"
    assert ruleset["override"][0]["enabled"] is False
    assert ".m.rule.is_user_mention" in override_ids
    invite = next(r for r in ruleset["override"] if r["rule_id"] == ".m.rule.invite_for_me")
    assert {"kind": "event_match", "key": "state_key", "pattern": alice.user_id} in invite[
        "conditions"
    ]
    assert [rule["rule_id"] for rule in ruleset["underride"]][-1] == ".m.rule.encrypted"


def test_push_rules_global_ruleset(alice: Client) -> None:
    r = alice.get(f"{V3}/pushrules/global/")
    assert r.status_code == 200, r.text
    assert r.json()["override"][0]["rule_id"] == ".m.rule.master"


def test_push_rules_need_an_access_token(alice: Client) -> None:
    r = httpx.get(f"{alice.server.base_url}{V3}/pushrules/")
    assert r.status_code == 401
