"""The inspector's HTTP API on a real ``refserver run`` with ``[inspector] enabled``
(docs/inspector.md): panels from the server's own state, the event feed as JSON and as
Server-Sent Events, the destination switch, and Matrix errors for bad requests.

The page itself, in a browser, against ``refserver demo``: tests/browser/test_inspector.py.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_msc4259 import User, register, share_room
from tests.servers import ServerProcess, free_port, stop_all, wait_until


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """hs1 with its inspector on, hs2 without."""
    base = tmp_path_factory.mktemp("inspector")
    port = free_port()
    hs1 = ServerProcess(
        base / "hs1",
        settings={("inspector", "enabled"): "true", ("inspector", "port"): str(port)},
        ca_dir=base / "ca",
    )
    hs2 = ServerProcess(base / "hs2", ca_dir=base / "ca")
    servers = [hs1, hs2]
    try:
        for srv in servers:
            srv.init()
            srv.start()
        yield hs1, hs2
    finally:
        stop_all(servers)


def page(hs1: ServerProcess) -> str:
    text = (hs1.data_dir / "refserver.toml").read_text()
    port = next(
        line.split("=")[1].strip()
        for line in text[text.index("[inspector]") :].splitlines()
        if line.startswith("port")
    )
    return f"http://127.0.0.1:{port}"


def events(hs1: ServerProcess, kind: str, **match: Any) -> list[dict[str, Any]]:
    found = httpx.get(f"{page(hs1)}/api/events/recent").json()["events"]
    return [e for e in found if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]


def wait_for_event(hs1: ServerProcess, kind: str, test: Any, what: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        return next((e for e in events(hs1, kind) if test(e)), None)

    try:
        found: dict[str, Any] = wait_until(check, timeout=15, what=what)
    except AssertionError:
        seen = [(e["kind"], e.get("txn_id")) for e in events(hs1, kind)]
        raise AssertionError(f"no {kind} event: {what}; seen {kind} events: {seen}") from None
    return found


def tz_edu(user_id: str, value: str) -> Any:
    def test(e: dict[str, Any]) -> bool:
        return any(
            x["content"] == {"user_id": user_id, "fields": {"m.tz": value}} for x in e["edus"]
        )

    return test


@pytest.fixture(scope="module")
def people(pair: tuple[ServerProcess, ServerProcess]) -> tuple[User, User]:
    hs1, hs2 = pair
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    share_room(alice, bob)
    return alice, bob


def test_the_page_and_its_files_are_served_from_the_package(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    hs1, _ = pair
    index = httpx.get(f"{page(hs1)}/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert '<script src="/static/inspector.js">' in index.text
    script = httpx.get(f"{page(hs1)}/static/inspector.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text
    missing = httpx.get(f"{page(hs1)}/static/../../settings.py")
    assert missing.status_code == 404


def test_a_profile_change_shows_as_an_edu_in_an_acknowledged_transaction_and_in_the_panels(
    pair: tuple[ServerProcess, ServerProcess], people: tuple[User, User]
) -> None:
    hs1, hs2 = pair
    alice, bob = people

    alice.put_field("m.tz", "Europe/Paris")

    acked = wait_for_event(
        hs1,
        "txn.acknowledged",
        tz_edu(alice.user_id, "Europe/Paris"),
        "hs1's transaction carrying alice's m.tz EDU, acknowledged",
    )
    assert acked["server"] == hs1.server_name
    assert acked["destination"] == hs2.server_name
    assert acked["status"] == 200
    assert {e["edu_type"] for e in acked["edus"]} >= {"uk.tcpip.msc4259.profile"}
    sent = events(hs1, "profile.edus", txn_id=acked["txn_id"])
    assert [e["contents"] for e in sent] == [
        [{"user_id": alice.user_id, "fields": {"m.tz": "Europe/Paris"}}]
    ]
    assert events(hs1, "profile.change", user_id=alice.user_id, value="Europe/Paris")

    state = httpx.get(f"{page(hs1)}/api/state").json()
    (instance,) = state["instances"]
    assert instance["label"] == "hs1"
    assert instance["server_name"] == hs1.server_name
    users = {u["user_id"]: u for u in instance["users"]}
    assert users[alice.user_id]["profile"]["m.tz"] == "Europe/Paris"
    assert users[alice.user_id]["editable"] is False  # no token: this is not the demo
    assert any(bob.user_id in [m["user_id"] for m in r["members"]] for r in instance["rooms"])
    dests = httpx.get(f"{page(hs1)}/api/instances/hs1/destinations").json()["destinations"]
    assert [d["destination"] for d in dests] == [hs2.server_name]
    cache = httpx.get(f"{page(hs1)}/api/instances/hs1/cache").json()["cache"]
    assert bob.user_id in [c["user_id"] for c in cache]


def test_a_switched_down_destination_backs_off_keeps_the_change_pending_and_catches_up(
    pair: tuple[ServerProcess, ServerProcess], people: tuple[User, User]
) -> None:
    hs1, hs2 = pair
    alice, _ = people
    switch = f"{page(hs1)}/api/instances/hs1/destinations/{hs2.server_name}"

    assert httpx.post(switch, json={"down": True}).json() == {
        "destination": hs2.server_name,
        "down": True,
    }
    alice.put_field("m.tz", "Asia/Tokyo")

    failed = wait_for_event(
        hs1, "txn.failed", tz_edu(alice.user_id, "Asia/Tokyo"), "the m.tz EDU failing to go out"
    )
    assert "switched down in the inspector" in failed["error"]
    assert failed["attempt"] >= 1 and failed["retry_in_s"] > 0

    def pending() -> list[dict[str, Any]]:
        dests = httpx.get(f"{page(hs1)}/api/instances/hs1/destinations").json()["destinations"]
        (dest,) = dests
        assert dest["down"] is True
        return [d for d in dest["dirty"] if d["field"] == "m.tz"]

    assert wait_until(pending, what="alice's m.tz pending for hs2") == [
        {"user_id": alice.user_id, "field": "m.tz", "changes": 1}
    ]

    assert httpx.post(switch, json={"down": False}).status_code == 200
    acked = wait_for_event(
        hs1,
        "txn.acknowledged",
        tz_edu(alice.user_id, "Asia/Tokyo"),
        "the same change acknowledged once hs2 is back",
    )
    assert acked["txn_id"] == failed["txn_id"]  # the same transaction, retried


def test_the_timeline_streams_as_server_sent_events_resuming_after_last_event_id(
    pair: tuple[ServerProcess, ServerProcess], people: tuple[User, User]
) -> None:
    hs1, _ = pair
    recent = httpx.get(f"{page(hs1)}/api/events/recent").json()["events"]
    assert len(recent) >= 2
    after = recent[-2]["seq"]
    headers = {"Last-Event-ID": str(after)}
    with httpx.stream("GET", f"{page(hs1)}/api/events", headers=headers, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines) == f"id: {recent[-1]['seq']}"
        assert next(lines) == "event: feed"
        data = next(lines)
    assert json.loads(data.removeprefix("data: ")) == recent[-1]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "errcode"),
    [
        ("GET", "/api/instances/hs9/users", None, {}, 404, "M_NOT_FOUND"),
        ("GET", "/api/instances/hs1/secrets", None, {}, 404, "M_NOT_FOUND"),
        ("GET", "/api/events/recent?after=x", None, {}, 400, "M_BAD_JSON"),
        ("POST", "/api/instances/hs1/profile", "{", {}, 400, "M_NOT_JSON"),
        ("POST", "/api/instances/hs1/profile", {"field": "m.tz"}, {}, 400, "M_BAD_JSON"),
        (
            "POST",
            "/api/instances/hs1/profile",
            {"user_id": "@nobody:elsewhere", "field": "m.tz", "value": "X"},
            {},
            400,
            "M_BAD_JSON",
        ),
        (
            "POST",
            "/api/instances/hs1/destinations/hs2",
            {"down": "yes"},
            {},
            400,
            "M_BAD_JSON",
        ),
        (
            "POST",
            "/api/instances/hs1/destinations/hs2",
            {"down": True},
            {"Origin": "http://evil.example"},
            403,
            "M_FORBIDDEN",
        ),
    ],
)
def test_bad_requests_get_matrix_errors(
    pair: tuple[ServerProcess, ServerProcess],
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    errcode: str,
) -> None:
    hs1, _ = pair
    content = body if isinstance(body, str) else (json.dumps(body) if body is not None else None)
    r = httpx.request(method, f"{page(hs1)}{path}", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["errcode"] == errcode


def test_the_form_needs_a_token_the_inspector_holds(
    pair: tuple[ServerProcess, ServerProcess], people: tuple[User, User]
) -> None:
    hs1, _ = pair
    alice, _ = people
    r = httpx.post(
        f"{page(hs1)}/api/instances/hs1/profile",
        json={"user_id": alice.user_id, "field": "m.tz", "value": "Europe/Rome"},
    )
    assert r.status_code == 403
    assert r.json()["errcode"] == "M_FORBIDDEN"


def test_the_inspector_is_off_by_default(pair: tuple[ServerProcess, ServerProcess]) -> None:
    hs1, hs2 = pair
    config = tomllib.loads((hs2.data_dir / "refserver.toml").read_text())
    assert config["inspector"]["enabled"] is False
    assert "inspector: http://" not in hs2.log_path.read_text()
    assert f"inspector: {page(hs1)}/" in hs1.log_path.read_text()
