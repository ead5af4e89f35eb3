"""matrix-js-sdk 43 as an MSC4429 client across federation (issue "MSC4259 + MSC4429 made
exact", "Must show").

bob@hs2 runs a real js-sdk client (``startClient({unstableMSC4429SyncUserProfileFields})``,
listening to ``ClientEvent.UserProfileUpdate``) while alice@hs1 changes her profile; hs1
sends MSC4259 profile EDUs to hs2 and hs2 serves them in bob's ``/sync`` ``users`` section
(MSC4429). What must hold: bob's client sees alice's whole profile after its first sync, then
every later change exactly once, with its new value, a removed field as ``null``, and nothing
else (no stale value re-announced, no duplicate).

The Node 22 + js-sdk install is cached (tests/sdk/jssdk.py); two real ``refserver run``
processes share one development CA.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.sdk.jssdk import (
    JSSDK_VERSION,
    NODE_PACKAGE,
    JsonDict,
    JsSdk,
    JsSdkWatcher,
    NodeInstallError,
    ensure_jssdk,
    node_dir,
)
from tests.servers import ServerProcess, start_federation, stop_all

#: How long one federated step may take on loopback before we call it broken (the custom
#: field's default minimum interval between EDUs is 5 s).
PROMPT_S = 15.0
#: Node start-up, js-sdk import and its first /sync.
CLIENT_START_S = 60.0
UNSTABLE_FILTER = "org.matrix.msc4429.profile_fields"
STABLE_FILTER = "profile_fields"
CUSTOM = "org.example.status"
FIELDS = ("displayname", "avatar_url", "m.tz", CUSTOM)

_names = itertools.count()


@pytest.fixture(scope="session")
def jssdk() -> JsSdk:
    """Node 22 + matrix-js-sdk 43, installed into the cache directory on first use."""
    failure = None
    started = time.monotonic()
    try:
        installed = ensure_jssdk()
    except NodeInstallError as exc:
        failure = f"installing {NODE_PACKAGE} and matrix-js-sdk into {node_dir()} failed:\n{exc}"
    if failure is not None:  # outside the except block: no chained traceback around npm's log
        pytest.fail(failure, pytrace=False)
    print(
        f"\njs-sdk: matrix-js-sdk {JSSDK_VERSION} on {installed.node} "
        f"(ready in {time.monotonic() - started:.1f} s)"
    )
    return installed


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    started = start_federation(tmp_path_factory.mktemp("jssdk_federation"), 2)
    yield started
    stop_all(started)


@dataclass(frozen=True)
class User:
    server: ServerProcess
    user_id: str
    token: str
    device_id: str

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", PROMPT_S)
        headers = {"Authorization": f"Bearer {self.token}"}
        r = httpx.request(method, self.server.url(path), headers=headers, **kwargs)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r

    def set_field(self, name: str, value: Any) -> None:
        """``PUT`` the field, or ``DELETE`` it when ``value`` is ``None``."""
        path = f"/v3/profile/{quote(self.user_id)}/{quote(name)}"
        if value is None:
            self.request("DELETE", path)
        else:
            self.request("PUT", path, json={name: value})


def register(server: ServerProcess, prefix: str) -> User:
    username = f"{prefix}{next(_names)}x{secrets.token_hex(3)}"
    r = httpx.post(
        server.url("/v3/register"),
        json={
            "username": username,
            "password": "pw-" + username,
            "auth": {"type": "m.login.dummy"},
        },
        timeout=PROMPT_S,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return User(server, body["user_id"], body["access_token"], body["device_id"])


def users_in_initial_sync(user: User) -> JsonDict:
    """The MSC4429 ``users`` section of an initial ``/sync`` (no token) for ``user``."""
    sync_filter = json.dumps({UNSTABLE_FILTER: {"ids": list(FIELDS)}})
    r = user.request("GET", "/v3/sync", params={"filter": sync_filter, "timeout": "0"})
    users: JsonDict = r.json().get("users") or {}
    return users


def wait_until_served(bob: User, about: str, profile: JsonDict) -> None:
    """Until bob's server serves ``about``'s whole ``profile`` in an initial /sync."""
    deadline = time.monotonic() + PROMPT_S
    seen: Any = None
    while True:
        seen = users_in_initial_sync(bob).get(about)
        if seen == {"profile_updates": profile}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after {PROMPT_S}s {bob.server.server_name} still does not serve {about}'s "
                f"profile {profile} to {bob.user_id}: its initial /sync has {seen} "
                "(the join-time MSC4259 exchange did not deliver it)"
            )
        time.sleep(0.2)


def is_update(record: JsonDict, *, about: str, name: str, value: Any) -> bool:
    profile = record.get("profile")
    return (
        record["type"] == "profile"
        and record["user_id"] == about
        and isinstance(profile, dict)
        and name in profile
        and profile[name] == value
    )


def describe(updates: list[JsonDict | None]) -> str:
    return "\n".join(
        f"  {n}: {json.dumps(u, sort_keys=True, ensure_ascii=False)}" for n, u in enumerate(updates)
    )


def test_jssdk_sees_the_initial_remote_profile_and_every_later_change_exactly_once(
    jssdk: JsSdk, servers: list[ServerProcess], tmp_path: Path
) -> None:
    hs1, hs2 = servers
    features = httpx.get(hs2.url("/versions"), timeout=PROMPT_S).json()["unstable_features"]
    assert features.get("org.matrix.msc4429") is True
    # js-sdk sends the stable filter key only when the server advertises the stable feature.
    filter_key = STABLE_FILTER if features.get("org.matrix.msc4429.stable") else UNSTABLE_FILTER
    print(
        f"\n{hs2.server_name} /versions MSC4429 features: "
        f"{ {k: v for k, v in features.items() if 'msc4429' in k} }"
    )

    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    initial: JsonDict = {
        "displayname": "Alice",
        "avatar_url": "mxc://example.org/alice0",
        "m.tz": "Europe/London",
        CUSTOM: {"text": "at lunch", "emoji": "🥪"},
    }
    for name, value in initial.items():
        alice.set_field(name, value)
    room_id = alice.request("POST", "/v3/createRoom", json={"preset": "private_chat"}).json()[
        "room_id"
    ]
    alice.request("POST", f"/v3/rooms/{quote(room_id)}/invite", json={"user_id": bob.user_id})
    bob.request("POST", f"/v3/join/{quote(room_id)}", params={"via": hs1.server_name})
    wait_until_served(bob, alice.user_id, initial)

    watcher = JsSdkWatcher(
        jssdk,
        base_url=hs2.base_url,
        user_id=bob.user_id,
        access_token=bob.token,
        device_id=bob.device_id,
        fields=FIELDS,
        stderr_path=tmp_path / "jssdk.stderr.log",
    )
    watcher.start()
    try:
        uploaded = watcher.wait_for(
            lambda r: r["type"] == "filter", timeout=CLIENT_START_S, what="the filter upload"
        )
        print(f"js-sdk uploaded the sync filter {json.dumps(uploaded['body'])}")
        assert uploaded["body"].get(filter_key) == {"ids": list(FIELDS)}, uploaded
        # Profile updates of a sync are emitted before its sync state: PREPARED follows the
        # first sync's updates.
        watcher.wait_for(
            lambda r: r == {"type": "sync", "state": "PREPARED"},
            timeout=CLIENT_START_S,
            what="the first sync (PREPARED)",
        )
        first = watcher.profile_updates(alice.user_id)
        assert first == [initial], (
            f"after its first sync js-sdk should have emitted alice's whole profile once:\n"
            f"expected:\n{describe([initial])}\nseen:\n{describe(first)}"
        )

        changes: list[tuple[str, Any]] = [
            *(("displayname", f"Alice {n}") for n in range(1, 6)),
            ("avatar_url", "mxc://example.org/alice1"),
            ("m.tz", "Asia/Tokyo"),
            (CUSTOM, None),  # DELETE: the client must see null
        ]
        expected: list[JsonDict | None] = [initial]
        for name, value in changes:
            alice.set_field(name, value)
            watcher.wait_for(
                partial(is_update, about=alice.user_id, name=name, value=value),
                timeout=PROMPT_S,
                what=f"alice's {name} = {json.dumps(value)} in a UserProfileUpdate",
            )
            expected.append({name: value})

        # A message alice sends now reaches bob's client after everything hs1 sent earlier
        # (one ordered transaction queue per destination): whatever the changes above caused
        # has been emitted by the time it shows.
        alice.request(
            "PUT",
            f"/v3/rooms/{quote(room_id)}/send/m.room.message/{secrets.token_hex(8)}",
            json={"msgtype": "m.text", "body": "done"},
        )
        watcher.wait_for(
            lambda r: r["type"] == "timeline" and r["body"] == "done" and r["room_id"] == room_id,
            timeout=PROMPT_S,
            what="alice's closing message",
        )
        watcher.drain()
        seen = watcher.profile_updates(alice.user_id)
        print(f"\nUserProfileUpdate payloads about alice ({len(seen)}):\n{describe(seen)}")
        assert seen == expected, (
            f"expected exactly {len(expected)} UserProfileUpdate payloads about alice "
            f"(her initial profile, then each change once):\n{describe(expected)}\n"
            f"seen {len(seen)}:\n{describe(seen)}"
        )
    finally:
        watcher.stop()
