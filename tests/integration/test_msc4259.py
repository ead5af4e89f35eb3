"""MSC4259 profile update EDUs end to end, black-box (issue "MSC4259 profile EDUs").

Real ``refserver run`` processes on loopback sharing one development CA, driven over raw HTTP.
What each test proves is read from the outside only:

- bob's ``/sync`` ``users`` / ``org.matrix.msc4429.users`` section (MSC4429), long-polled with
  an inline filter ``{"org.matrix.msc4429.profile_fields": {"ids": [...]}}``;
- ``GET /metrics`` (Prometheus text) on the client listener;
- the one-line-per-EDU log records ``profile EDU → <destination> txn=… {…}`` and
  ``profile EDU ← <origin> txn=… {…}`` in each server's log file;
- for the exact wire format, a TLS man-in-the-middle (:class:`Wiretap`) in front of one
  server's federation listener that records every transaction body.

Module servers ``hs1``, ``hs2``, ``hs3`` run with default settings. Rule for this module: no
user of ``hs2`` ever sets a profile field, so ``hs2`` never has a profile EDU of its own to send
(:func:`test_an_edu_is_never_forwarded` relies on it). Tests needing other settings or
restarts get dedicated servers sharing the module's CA (``spawn``).

Spec: MSC4259 (EDU format, sending and receiving rules), MSC4429 (the ``users`` section of
/sync), CS API §"Profiles" (https://spec.matrix.org/v1.16/client-server-api/#profiles).

The timing rules (debounce, maximum delay, minimum interval, coalescing, cache lifetimes, the
refresher) are tested in virtual time in ``tests/service/``; this module proves the path
across real processes.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from refserver.crypto.keys import read_key_file
from refserver.federation.xmatrix import build_authorization_header
from tests.servers import ServerProcess, free_port, wait_until

#: How long one federated step may take on loopback before we call it broken.
PROMPT_S = 15.0
UNSTABLE_FILTER = "org.matrix.msc4429.profile_fields"
STABLE_FILTER = "profile_fields"
FIELDS = ("displayname", "avatar_url", "m.tz", "org.example.status", "org.example.ack")
UNSTABLE_EDU = "uk.tcpip.msc4259.profile"

_names = itertools.count()


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_names)}x{secrets.token_hex(3)}"


# -- observing a server: metrics and log lines -------------------------------------------------


def scrape(server: ServerProcess) -> list[tuple[str, dict[str, str], float]]:
    r = httpx.get(server.metrics_url, timeout=PROMPT_S)
    assert r.status_code == 200, r.text
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    ]


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        value
        for sample, have, value in scrape(server)
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


COALESCED = "refserver_profile_edus_coalesced_total"


def metric_labels(server: ServerProcess, name: str, label: str) -> dict[str, float]:
    return {have[label]: value for sample, have, value in scrape(server) if sample == name}


RECEIVED = "refserver_profile_edus_received_total"
SENT = "refserver_profile_edus_sent_total"
DROPPED = "refserver_profile_edus_dropped_total"
QUERIES = "refserver_federation_profile_queries_total"
CACHE_HITS = "refserver_remote_profile_cache_hits_total"
PENDING = "refserver_profile_edu_dirty_pending"

_EDU_LINE = re.compile(r"profile EDU (←|→) (\S+) txn=(\S+) (\{.*\})\s*$")


@dataclass(frozen=True)
class LoggedEdu:
    peer: str  # origin (received) or destination (sent)
    txn_id: str
    user_id: str
    fields: dict[str, Any]


def logged_edus(server: ServerProcess, direction: str, *, about: str | None = None) -> list[Any]:
    """The EDUs ``server`` logged as received (``←``) or sent (``→``), oldest first."""
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        m = _EDU_LINE.search(line)
        if m and m.group(1) == direction:
            content = json.loads(m.group(4))
            if about is None or content["user_id"] == about:
                out.append(LoggedEdu(m.group(2), m.group(3), content["user_id"], content["fields"]))
    return out


def wait_settled(*servers: ServerProcess) -> None:
    """Until no server owes any profile EDU (the dirty-pending gauge is 0)."""
    for srv in servers:
        wait_until(partial(_settled, srv), what=f"{srv.server_name} settled")


def _settled(server: ServerProcess) -> bool:
    return metric(server, PENDING) == 0


# -- client API (raw HTTP) -------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    server: ServerProcess
    user_id: str
    token: str

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", PROMPT_S)
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, self.server.url(path), headers=headers, **kwargs)

    def put_field(self, name: str, value: Any) -> None:
        r = self.request("PUT", f"/v3/profile/{quote(self.user_id)}/{name}", json={name: value})
        assert r.status_code == 200, r.text

    def delete_field(self, name: str) -> None:
        r = self.request("DELETE", f"/v3/profile/{quote(self.user_id)}/{name}")
        assert r.status_code == 200, r.text

    def get_profile(self, user_id: str) -> dict[str, Any]:
        r = self.request("GET", f"/v3/profile/{quote(user_id)}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def create_room(self) -> str:
        r = self.request("POST", "/v3/createRoom", json={"preset": "public_chat"})
        assert r.status_code == 200, r.text
        room_id: str = r.json()["room_id"]
        return room_id

    def join(self, room_id: str, via: ServerProcess) -> None:
        r = self.request("POST", f"/v3/join/{quote(room_id)}", params={"via": via.server_name})
        assert r.status_code == 200, r.text

    def leave(self, room_id: str) -> None:
        r = self.request("POST", f"/v3/rooms/{quote(room_id)}/leave", json={})
        assert r.status_code == 200, r.text

    def sync(
        self,
        *,
        since: str | None = None,
        timeout_ms: int = 0,
        fields: tuple[str, ...] = FIELDS,
        filter_key: str = UNSTABLE_FILTER,
    ) -> dict[str, Any]:
        params = {"filter": json.dumps({filter_key: {"ids": list(fields)}})}
        params["timeout"] = str(timeout_ms)
        if since is not None:
            params["since"] = since
        r = self.request("GET", "/v3/sync", params=params, timeout=timeout_ms / 1000 + PROMPT_S)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


def register(server: ServerProcess, prefix: str) -> User:
    user_id, token = server.register(fresh(prefix))
    return User(server, user_id, token)


def users_section(response: dict[str, Any]) -> dict[str, Any]:
    """MSC4429 ``users``; the unstable ``org.matrix.msc4429.users`` must be the same."""
    users = response.get("users") or {}
    assert response.get("org.matrix.msc4429.users") == (users or None)
    return users


def share_room(owner: User, *others: User) -> str:
    """``owner`` creates a public room and ``others`` join it (over federation if remote)."""
    room_id = owner.create_room()
    for other in others:
        other.join(room_id, via=owner.server)
    return room_id


@dataclass
class SyncWatcher:
    """Long-polls ``user``'s /sync and records every ``profile_updates`` entry seen."""

    user: User
    since: str
    filter_key: str = UNSTABLE_FILTER
    seen: list[tuple[str, Any]] = field(default_factory=list)  # (user_id, profile_updates)

    def poll(self, timeout_ms: int) -> dict[str, Any]:
        response = self.user.sync(
            since=self.since, timeout_ms=timeout_ms, filter_key=self.filter_key
        )
        self.since = response["next_batch"]
        for user_id, entry in sorted(users_section(response).items()):
            self.seen.append((user_id, entry["profile_updates"]))
        return response

    def wait_for(self, about: str, name: str, value: Any, *, timeout: float = PROMPT_S) -> float:
        """Long-poll until ``about``'s ``name`` shows ``value``; returns the seconds taken."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            mark = len(self.seen)
            self.poll(int(max(0.1, min(10.0, deadline - time.monotonic())) * 1000))
            for user_id, updates in self.seen[mark:]:
                if user_id == about and updates is not None and updates.get(name, ...) == value:
                    return time.monotonic() - started
            if time.monotonic() > deadline:
                raise AssertionError(f"{about} {name}={value!r} never arrived: {self.seen}")

    def values_of(self, about: str, name: str) -> list[Any]:
        return [u[name] for who, u in self.seen if who == about and u and name in u]


# -- servers ---------------------------------------------------------------------------------


# hs1, hs2, hs3: the module-scoped federation from tests/integration/conftest.py.


Settings = dict[tuple[str, str], str]


@pytest.fixture
def spawn(hs1: ServerProcess, tmp_path: Path) -> Iterator[Callable[..., list[ServerProcess]]]:
    """Dedicated servers (one per settings dict) trusting the module's servers, started at
    once; stopped after the test."""
    started: list[ServerProcess] = []

    def spawn(*settings: Settings, make: Callable[..., ServerProcess] = ServerProcess) -> Any:
        servers = [
            make(tmp_path / f"extra{len(started) + n}", settings=dict(s), ca_dir=hs1.ca_dir)
            for n, s in enumerate(settings)
        ]
        for srv in servers:
            srv.init()
        started.extend(servers)
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            list(pool.map(ServerProcess.start, servers))
        return servers

    yield spawn
    for srv in started:
        if srv.proc is not None:
            srv.stop()


class Wiretap:
    """A TLS man-in-the-middle in front of one server's federation listener.

    The server is named ``localhost:<listen_port>`` (so peers connect here) but listens on
    ``upstream_port``; every request is forwarded unchanged, and the body of every
    ``PUT /send/{txnId}`` is recorded: the EDUs exactly as they travelled.
    """

    def __init__(
        self, *, listen_port: int, upstream_port: int, data_dir: Path, ca_pem: Path
    ) -> None:
        self.transactions: list[dict[str, Any]] = []
        self._client = httpx.Client(
            verify=ssl.create_default_context(cafile=ca_pem), timeout=PROMPT_S
        )
        upstream = f"https://localhost:{upstream_port}"
        tap = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT" and "/federation/v1/send/" in self.path:
                    tap.transactions.append(json.loads(body))
                skip = {"content-length", "connection", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                r = tap._client.request(
                    self.command, upstream + self.path, headers=headers, content=body
                )
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in skip | {"content-encoding"}:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_PUT = do_POST = forward

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", listen_port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(data_dir / "tls.crt", data_dir / "tls.key")
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def edus(self) -> list[dict[str, Any]]:
        return [edu for txn in self.transactions for edu in txn.get("edus", [])]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


def federation_put_send(
    sender: ServerProcess, destination: ServerProcess, edus: list[dict[str, Any]]
) -> httpx.Response:
    """``PUT /send/{txnId}`` to ``destination``, signed with ``sender``'s real key."""
    txn_id = f"forged_{secrets.token_hex(6)}"
    uri = f"/_matrix/federation/v1/send/{txn_id}"
    body = {
        "origin": sender.server_name,
        "origin_server_ts": int(time.time() * 1000),
        "pdus": [],
        "edus": edus,
    }
    key = read_key_file(sender.data_dir / "signing.key")[0]
    auth = build_authorization_header(
        method="PUT",
        uri=uri,
        origin=sender.server_name,
        destination=destination.server_name,
        content=body,
        signing_key=key,
    )
    return httpx.put(
        destination.federation_url + uri,
        content=json.dumps(body).encode(),
        headers={"Authorization": auth, "Content-Type": "application/json"},
        verify=ssl.create_default_context(cafile=destination.ca_pem),
        timeout=PROMPT_S,
    )


# -- 1. values reach the other server's /sync; the cache answers without a query --------------


def test_changes_and_a_removal_reach_the_remote_sync_and_keep_the_cache_current(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    alice.put_field("displayname", "Alice")  # query/profile answers 404 for an empty profile
    share_room(alice, bob)
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])
    # One full query fills hs2's cache with a *complete* copy.
    assert bob.get_profile(alice.user_id) == {"displayname": "Alice"}
    queries, hits = metric(hs2, QUERIES), metric(hs2, CACHE_HITS)

    status = {"text": "busy", "until": 5}
    alice.put_field("m.tz", "Europe/London")
    watcher.wait_for(alice.user_id, "m.tz", "Europe/London")
    alice.put_field("org.example.status", status)
    watcher.wait_for(alice.user_id, "org.example.status", status)
    alice.delete_field("org.example.status")
    watcher.wait_for(alice.user_id, "org.example.status", None)  # custom: min interval 5 s

    assert watcher.values_of(alice.user_id, "m.tz") == ["Europe/London"]
    assert watcher.values_of(alice.user_id, "org.example.status") == [status, None]
    assert bob.get_profile(alice.user_id) == {"displayname": "Alice", "m.tz": "Europe/London"}
    r = bob.request("GET", f"/v3/profile/{quote(alice.user_id)}/org.example.status")
    assert r.status_code == 404, r.text
    assert metric(hs2, QUERIES) == queries, "the cache was current: no query/profile needed"
    assert metric(hs2, CACHE_HITS) >= hits + 2


# -- 2. coalescing -----------------------------------------------------------------------------


def test_a_hundred_rapid_changes_make_at_most_two_edus_the_last_with_the_final_value(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    """Leading-edge rate limiting with the default policy (docs/msc4259.md §4.1): the first
    change goes at once, the rest coalesce into one trailing EDU with the final value."""
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    share_room(alice, bob)
    wait_settled(hs1)
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])
    received = metric(hs2, RECEIVED, origin=hs1.server_name)
    coalesced = metric(hs1, COALESCED)
    logged = len(logged_edus(hs2, "←", about=alice.user_id))

    started = time.monotonic()
    with httpx.Client(headers={"Authorization": f"Bearer {alice.token}"}) as http:
        for n in range(100):
            url = hs1.url(f"/v3/profile/{quote(alice.user_id)}/m.tz")
            r = http.put(url, json={"m.tz": f"Etc/Change{n:02d}"}, timeout=PROMPT_S)
            assert r.status_code == 200, r.text
            # The ≤ 2 bound needs the burst to end within max_delay_s (5 s) of its start.
            time.sleep(max(0.0, started + (n + 1) * 0.01 - time.monotonic()))
    took = time.monotonic() - started
    print(f"\n100 PUTs took {took * 1000:.0f} ms")
    # A burst longer than max_delay_s (5 s, a very slow machine) may add one EDU per 5 s.
    at_most = 2 + int(took // 5.0)

    watcher.wait_for(alice.user_id, "m.tz", "Etc/Change99")
    wait_settled(hs1)
    edus = [e.fields for e in logged_edus(hs2, "←", about=alice.user_id)[logged:]]
    assert 1 <= len(edus) <= at_most, edus
    assert edus[-1] == {"m.tz": "Etc/Change99"}
    assert metric(hs2, RECEIVED, origin=hs1.server_name) == received + len(edus)
    assert metric(hs1, COALESCED) == coalesced + 100 - len(edus)
    assert watcher.values_of(alice.user_id, "m.tz")[-1] == "Etc/Change99"


def test_an_isolated_change_goes_at_once_without_waiting_for_a_debounce(
    hs2: ServerProcess, spawn: Callable[..., list[ServerProcess]]
) -> None:
    """A change with no EDU in the last min_interval_s is the leading edge: it goes in the
    next transaction even with a 30 s debounce (which now shapes only the trailing edge)."""
    (slow,) = spawn({("msc4259", "debounce_s"): "30.0", ("msc4259", "max_delay_s"): "60.0"})
    alice, bob = register(slow, "alice"), register(hs2, "bob")
    share_room(alice, bob)
    wait_settled(slow)
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])
    started = time.monotonic()
    alice.put_field("m.tz", "Europe/Oslo")
    # Well inside the 30 s debounce: only the leading edge can deliver it in time.
    took = watcher.wait_for(alice.user_id, "m.tz", "Europe/Oslo", timeout=10.0)
    total_ms = (time.monotonic() - started) * 1000
    print(f"\nisolated change, debounce_s=30: in bob's /sync {total_ms:.0f} ms after the PUT")
    print(f"({took * 1000:.0f} ms after the PUT returned)")


# -- 3. downtime and restarts ------------------------------------------------------------------


def test_a_server_that_was_down_gets_the_latest_values_and_nothing_acknowledged_twice(
    spawn: Callable[..., list[ServerProcess]],
) -> None:
    fast_retry = {
        ("federation", "retry_initial_s"): "0.5",
        ("federation", "retry_max_s"): "1.5",
    }
    a_srv, b_srv = spawn(fast_retry, fast_retry)
    alice, bob = register(a_srv, "alice"), register(b_srv, "bob")
    share_room(alice, bob)
    before_downtime = bob.sync(filter_key=STABLE_FILTER)["next_batch"]

    # Acknowledged before the downtime.
    alice.put_field("org.example.ack", "acked")
    alice.put_field("m.tz", "Europe/Berlin")
    wait_until(
        lambda: (
            {"org.example.ack", "m.tz"}
            <= {k for e in logged_edus(b_srv, "←", about=alice.user_id) for k in e.fields}
        ),
        what="the first values on b",
    )
    wait_settled(a_srv)

    b_srv.stop()
    alice.put_field("m.tz", "Europe/Paris")
    alice.put_field("org.example.status", "away")
    wait_until(
        lambda: "failed" in a_srv.log_path.read_text() and metric(a_srv, PENDING) > 0,
        what="a failed attempt to reach b",
    )
    a_srv.restart()
    alice.put_field("m.tz", "Asia/Tokyo")  # changed again after the restart: latest wins
    b_srv.start()

    latest = {"m.tz": "Asia/Tokyo", "org.example.status": "away"}

    def caught_up() -> bool:
        final: dict[str, Any] = {}
        for e in logged_edus(b_srv, "←", about=alice.user_id):
            final.update(e.fields)
        return all(final.get(k) == v for k, v in latest.items())

    wait_until(caught_up, timeout=30, what="b catching up")
    wait_settled(a_srv)

    received = logged_edus(b_srv, "←", about=alice.user_id)
    per_field: dict[str, list[Any]] = {}
    for e in received:
        for k, v in e.fields.items():
            per_field.setdefault(k, []).append(v)
    assert per_field["org.example.ack"] == ["acked"], "acknowledged, so never sent again"
    assert per_field["m.tz"][0] == "Europe/Berlin"
    assert per_field["m.tz"][-1] == "Asia/Tokyo"
    assert per_field["org.example.status"][-1] == "away"
    assert len(per_field["org.example.status"]) == 1
    sent = logged_edus(a_srv, "→", about=alice.user_id)
    assert [e.fields.get("org.example.ack") for e in sent if "org.example.ack" in e.fields] == [
        "acked"
    ]

    # bob's /sync (stable filter key) from before the downtime shows the latest values.
    response = bob.sync(since=before_downtime, filter_key=STABLE_FILTER)
    assert response["users"][alice.user_id]["profile_updates"] == {
        "org.example.ack": "acked",
        **latest,
    }
    assert bob.get_profile(alice.user_id) == {"org.example.ack": "acked", **latest}


# -- 4. forged, malformed and oversize EDUs -----------------------------------------------------


def test_bad_edus_are_dropped_and_counted_and_the_rest_of_the_transaction_applies(
    hs1: ServerProcess, hs2: ServerProcess, hs3: ServerProcess
) -> None:
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    share_room(alice, bob)
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])
    mallory = f"@mallory:{hs3.server_name}"
    wait_settled(hs1)
    dropped = metric_labels(hs2, DROPPED, "reason")
    received = metric(hs2, RECEIVED, origin=hs1.server_name)

    r = federation_put_send(
        hs1,
        hs2,
        [
            {"edu_type": UNSTABLE_EDU, "content": {"user_id": mallory, "fields": {"m.tz": "UTC"}}},
            {"edu_type": UNSTABLE_EDU, "content": {"user_id": alice.user_id, "fields": "m.tz"}},
            {
                "edu_type": UNSTABLE_EDU,
                "content": {
                    "user_id": alice.user_id,
                    "fields": {"org.example.blob": "x" * (70 * 1024)},
                },
            },
            {
                "edu_type": UNSTABLE_EDU,
                "content": {"user_id": alice.user_id, "fields": {"m.tz": "Pacific/Auckland"}},
            },
        ],
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"pdus": {}}

    watcher.wait_for(alice.user_id, "m.tz", "Pacific/Auckland")
    after = metric_labels(hs2, DROPPED, "reason")
    for reason in ("wrong_origin", "malformed", "too_large"):
        assert after.get(reason, 0) == dropped.get(reason, 0) + 1, reason
    assert sum(after.values()) == sum(dropped.values()) + 3
    assert metric(hs2, RECEIVED, origin=hs1.server_name) == received + 1
    assert not any(who == mallory for who, _ in watcher.seen)
    assert watcher.values_of(alice.user_id, "org.example.blob") == []
    assert [e.fields for e in logged_edus(hs2, "←", about=alice.user_id)] == [
        {"m.tz": "Pacific/Auckland"}
    ]


# -- 5. never forwarded ------------------------------------------------------------------------


def test_an_edu_with_a_bad_number_or_deep_nesting_is_dropped_alone(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    """Item 7: a float or an integer beyond ±(2^53−1) in one EDU (or a value nested past the
    per-EDU limit, docs/limits.md) drops only that EDU; the transaction answers 200 and its
    other EDUs apply (§4.6). The whole body used to be refused with 400."""
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    share_room(alice, bob)
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])
    wait_settled(hs1)

    def dropped_log_lines() -> int:
        return hs2.log_path.read_text(errors="replace").count(
            f"dropping EDU of type '{UNSTABLE_EDU}' from {hs1.server_name} (txn"
        )

    dropped_before = dropped_log_lines()
    invalid_before = metric_labels(hs2, DROPPED, "reason").get("invalid_field", 0)
    deep: Any = "bottom"
    for _ in range(100):
        deep = [deep]

    def edu(fields: dict[str, Any]) -> dict[str, Any]:
        return {"edu_type": UNSTABLE_EDU, "content": {"user_id": alice.user_id, "fields": fields}}

    r = federation_put_send(
        hs1,
        hs2,
        [
            edu({"org.example.float": 1.5}),
            edu({"org.example.huge": 2**53}),
            edu({"org.example.deep": deep}),
            edu({"m.tz": "Asia/Tokyo"}),
        ],
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"pdus": {}}
    watcher.wait_for(alice.user_id, "m.tz", "Asia/Tokyo")
    for name in ("org.example.float", "org.example.huge", "org.example.deep"):
        assert watcher.values_of(alice.user_id, name) == [], name
    # The float and the huge integer reach the profile handler, which counts them; the deep
    # one is dropped (and logged) before any handler walks it.
    assert metric_labels(hs2, DROPPED, "reason").get("invalid_field", 0) == invalid_before + 2
    assert dropped_log_lines() == dropped_before + 1


def test_an_edu_is_never_forwarded(
    hs1: ServerProcess, hs2: ServerProcess, hs3: ServerProcess
) -> None:
    alice, bob, carol = register(hs1, "alice"), register(hs2, "bob"), register(hs3, "carol")
    share_room(alice, bob, carol)
    alice.put_field("m.tz", "America/New_York")
    for srv in (hs2, hs3):
        wait_until(
            partial(logged_edus, srv, "←", about=alice.user_id),
            what=f"{srv.server_name} receiving alice's EDU",
        )
    wait_settled(hs1, hs2, hs3)
    time.sleep(1.0)  # a relay would have acted at once; give it the time anyway

    assert [(e.peer, e.fields) for e in logged_edus(hs3, "←", about=alice.user_id)] == [
        (hs1.server_name, {"m.tz": "America/New_York"})
    ]
    assert metric(hs3, RECEIVED, origin=hs2.server_name) == 0
    assert set(metric_labels(hs3, RECEIVED, "origin")) <= {hs1.server_name}
    # No user of hs2 ever changed a profile field in this module: hs2 sent no profile EDU.
    assert logged_edus(hs2, "→") == []
    assert sum(metric_labels(hs2, SENT, "destination").values()) == 0


# -- 6. no shared room, then the join-time exchange ---------------------------------------------


def test_no_edus_without_a_shared_room_and_the_first_join_delivers_the_current_profile(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    room_id = alice.create_room()
    wait_settled(hs1)
    received = metric(hs2, RECEIVED, origin=hs1.server_name)
    alice.put_field("displayname", "Lonely Alice")
    alice.put_field("m.tz", "Africa/Nairobi")
    time.sleep(1.5)  # debounce 0.5 s: anything owed would have gone by now
    assert metric(hs1, PENDING) == 0
    assert logged_edus(hs1, "→", about=alice.user_id) == []
    assert logged_edus(hs2, "←", about=alice.user_id) == []
    assert metric(hs2, RECEIVED, origin=hs1.server_name) == received

    before_join = bob.sync()["next_batch"]
    bob.join(room_id, via=hs1)
    current = {"displayname": "Lonely Alice", "m.tz": "Africa/Nairobi"}
    wait_until(
        lambda: [e.fields for e in logged_edus(hs2, "←", about=alice.user_id)] == [current],
        what="the join-time EDU",
    )
    assert metric(hs2, RECEIVED, origin=hs1.server_name) == received + 1
    users = users_section(bob.sync(since=before_join))
    assert users[alice.user_id] == {"profile_updates": current}


# -- 7. smaller promises ----------------------------------------------------------------------


def test_versions_advertises_msc4429(hs2: ServerProcess) -> None:
    r = httpx.get(hs2.url("/versions"), timeout=PROMPT_S)
    assert r.json()["unstable_features"]["org.matrix.msc4429"] is True


def test_a_long_poll_wakes_on_a_remote_update(hs1: ServerProcess, hs2: ServerProcess) -> None:
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    share_room(alice, bob)
    wait_settled(hs1)
    since = bob.sync()["next_batch"]

    def put_soon() -> None:
        time.sleep(0.3)
        alice.put_field("m.tz", "Asia/Kolkata")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(put_soon)
        response = bob.sync(since=since, timeout_ms=30_000)
    took = time.monotonic() - started
    assert users_section(response)[alice.user_id] == {"profile_updates": {"m.tz": "Asia/Kolkata"}}
    assert took < 15.0, f"the long-poll returned after {took:.1f}s"


def test_leaving_the_only_shared_room_says_profile_updates_null(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    alice.put_field("m.tz", "Europe/Oslo")
    room_id = share_room(alice, bob)
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])
    bob.leave(room_id)
    watcher.poll(0)
    assert (alice.user_id, None) in watcher.seen, watcher.seen
    assert (bob.user_id, None) not in watcher.seen


def test_own_changes_appear_in_ones_own_sync(hs1: ServerProcess) -> None:
    alice = register(hs1, "alice")
    watcher = SyncWatcher(alice, alice.sync()["next_batch"])
    alice.put_field("m.tz", "Europe/Madrid")
    watcher.wait_for(alice.user_id, "m.tz", "Europe/Madrid", timeout=5)
    alice.delete_field("m.tz")
    watcher.wait_for(alice.user_id, "m.tz", None, timeout=5)
    initial = users_section(alice.sync())
    assert alice.user_id not in initial  # nothing requested is set any more


def test_stable_edu_type_and_local_only_fields_on_the_wire(
    spawn: Callable[..., list[ServerProcess]],
) -> None:
    upstream = free_port()
    a_srv, b_srv = spawn(
        {
            ("msc4259", "edu_types"): '["m.profile"]',
            ("msc4259", "local_only_fields"): '["org.example.private"]',
        },
        {("federation", "port"): str(upstream)},
    )
    tap = Wiretap(
        listen_port=b_srv.federation_port,
        upstream_port=upstream,
        data_dir=b_srv.data_dir,
        ca_pem=b_srv.ca_pem,
    )
    try:
        alice, bob = register(a_srv, "alice"), register(b_srv, "bob")
        alice.put_field("org.example.private", "before the join")
        alice.put_field("displayname", "Alice")
        share_room(alice, bob)
        watcher = SyncWatcher(bob, bob.sync()["next_batch"])
        alice.put_field("org.example.private", "after the join")
        alice.put_field("org.example.public", "hello")
        alice.put_field("m.tz", "Europe/Rome")
        watcher.wait_for(alice.user_id, "m.tz", "Europe/Rome")
        wait_settled(a_srv)
        watcher.poll(0)

        profile_edus = [e for e in tap.edus() if "profile" in e["edu_type"]]
        assert profile_edus, tap.transactions
        assert {e["edu_type"] for e in profile_edus} == {"m.profile"}
        for edu in profile_edus:
            assert set(edu) == {"edu_type", "content"}
            assert set(edu["content"]) == {"user_id", "fields"}
            assert edu["content"]["user_id"] == alice.user_id
            assert "org.example.private" not in edu["content"]["fields"]
        sent_fields = {k for e in profile_edus for k in e["content"]["fields"]}
        assert sent_fields == {"displayname", "org.example.public", "m.tz"}
        assert metric(b_srv, RECEIVED, origin=a_srv.server_name) == len(profile_edus)
        assert watcher.values_of(alice.user_id, "org.example.private") == []
    finally:
        tap.close()


# -- regressions: bugs found while writing these tests, now fixed ---------------------------------


def test_a_field_removed_while_no_room_was_shared_is_gone_after_rejoining(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    alice, bob = register(hs1, "alice"), register(hs2, "bob")
    alice.put_field("m.tz", "Europe/Vienna")
    alice.put_field("org.example.status", "busy")
    room_id = share_room(alice, bob)
    # Wait for the join-time exchange (one EDU with the whole profile) to have arrived.
    wait_until(
        lambda: any(
            "org.example.status" in e.fields for e in logged_edus(hs2, "←", about=alice.user_id)
        ),
        what="the join-time EDU with the custom field",
    )
    assert bob.get_profile(alice.user_id) == {"m.tz": "Europe/Vienna", "org.example.status": "busy"}
    bob.leave(room_id)
    wait_settled(hs1)
    alice.delete_field("org.example.status")  # nobody on hs2 shares a room: no EDU
    alice.put_field("m.tz", "Europe/Zurich")
    before_rejoin = bob.sync()["next_batch"]
    bob.join(room_id, via=hs1)  # the join-time exchange sends the current profile
    wait_until(
        lambda: (
            {"m.tz": "Europe/Zurich"}
            in [e.fields for e in logged_edus(hs2, "←", about=alice.user_id)]
        ),
        what="the second join-time EDU",
    )
    truth = {"m.tz": "Europe/Zurich"}
    assert alice.get_profile(alice.user_id) == truth
    assert users_section(bob.sync(since=before_rejoin))[alice.user_id] == {"profile_updates": truth}
    assert bob.get_profile(alice.user_id) == truth


def test_an_invite_does_not_produce_profile_updates_null(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    alice, bob, dave = register(hs1, "alice"), register(hs2, "bob"), register(hs1, "dave")
    room_id = share_room(alice, bob)
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])
    r = alice.request("POST", f"/v3/rooms/{quote(room_id)}/invite", json={"user_id": dave.user_id})
    assert r.status_code == 200, r.text
    wait_until(lambda: watcher.poll(2000)["rooms"]["join"], what="the invite on hs2")
    assert (dave.user_id, None) not in watcher.seen  # dave never shared a room with bob


# -- receiver filter and the refresher -----------------------------------------------------------


def test_an_edu_about_a_user_sharing_no_room_is_ignored(
    hs1: ServerProcess, hs2: ServerProcess
) -> None:
    """MSC4259: receivers "COULD ignore the EDU if they are not interested in updates for
    this user"; refserver's default (accept_only_shared_users) ignores and counts it."""
    stranger = register(hs1, "stranger")
    dropped = metric_labels(hs2, DROPPED, "reason").get("no_shared_room", 0)
    r = federation_put_send(
        hs1,
        hs2,
        [
            {
                "edu_type": UNSTABLE_EDU,
                "content": {"user_id": stranger.user_id, "fields": {"m.tz": "UTC"}},
            }
        ],
    )
    assert r.status_code == 200, r.text
    assert metric_labels(hs2, DROPPED, "reason").get("no_shared_room", 0) == dropped + 1
    assert logged_edus(hs2, "←", about=stranger.user_id) == []


def _sync_seconds(user: User, runs: int = 5) -> float:
    """Median seconds of an immediate (``timeout=0``) initial /sync."""
    times = []
    for _ in range(runs):
        started = time.monotonic()
        user.sync()
        times.append(time.monotonic() - started)
    return sorted(times)[runs // 2]


def test_a_rate_limited_update_is_recovered_by_a_profile_query_soon(
    hs1: ServerProcess, spawn: Callable[..., list[ServerProcess]]
) -> None:
    """docs/msc4259.md §4.6: an update dropped by the per-user limit would be missing from
    the receiver's cache until the cached profile expired (7 days for an MSC4259 server).
    The receiver re-queries that user's profile (``query/profile``) ``join_fetch_grace_s``
    later instead, so the genuine value arrives although its EDU was dropped."""
    (dest,) = spawn(
        {
            ("msc4259", "receive_per_user_burst"): "2",
            ("msc4259", "receive_per_user_per_second"): "0.001",
            ("msc4259", "join_fetch_grace_s"): "0.5",
        }
    )
    alice, bob = register(hs1, "alice"), register(dest, "bob")
    share_room(alice, bob)
    tag = secrets.token_hex(3)
    for n in range(4):  # alice's own server, as fast as it likes: her bucket runs dry
        edu = {
            "edu_type": UNSTABLE_EDU,
            "content": {"user_id": alice.user_id, "fields": {"org.example.status": f"f{n}{tag}"}},
        }
        r = federation_put_send(hs1, dest, [edu])
        assert r.status_code == 200, r.text
    dropped = metric_labels(dest, DROPPED, "reason").get("rate_limited", 0)
    assert dropped >= 2, f"the flood was not limited: {dropped} dropped"

    alice.put_field("org.example.status", f"real {tag}")

    def arrived() -> bool:
        return bob.get_profile(alice.user_id).get("org.example.status") == f"real {tag}"

    wait_until(arrived, timeout=30, what=f"bob's server to learn alice's status 'real {tag}'")
    after = metric_labels(dest, DROPPED, "reason").get("rate_limited", 0)
    assert after > dropped, "the genuine update's EDU was not dropped: nothing was recovered"
    assert metric(dest, QUERIES) > 0


def test_a_profile_edu_flood_is_dropped_and_counted_and_a_genuine_update_still_arrives(
    hs1: ServerProcess, spawn: Callable[..., list[ServerProcess]]
) -> None:
    """docs/msc4259.md §4.6 flood limits, with the default buckets: an origin sharing a room
    sends 3 transactions of 100 EDUs about 300 users with 30 fields each (9,000 field
    changes) as fast as it can; what is over the origin's bucket (5,000 at once, 500/s) is
    dropped and counted as ``rate_limited``, not applied, and a real update from the same
    origin afterwards still reaches /sync."""
    (dest,) = spawn({("msc4259", "accept_only_shared_users"): "false"})
    alice, bob = register(hs1, "alice"), register(dest, "bob")
    share_room(alice, bob)
    watcher = SyncWatcher(bob, bob.sync()["next_batch"])
    sync_before = _sync_seconds(bob)
    tag = secrets.token_hex(3)
    started = time.monotonic()
    for batch in range(3):
        edus = [
            {
                "edu_type": UNSTABLE_EDU,
                "content": {
                    "user_id": f"@flood{tag}_{batch * 100 + n}:{hs1.server_name}",
                    "fields": {f"org.example.f{k}": f"v{k}" for k in range(30)},
                },
            }
            for n in range(100)
        ]
        r = federation_put_send(hs1, dest, edus)
        assert r.status_code == 200, r.text
    elapsed = time.monotonic() - started
    sync_after = _sync_seconds(bob)
    dropped = metric_labels(dest, DROPPED, "reason").get("rate_limited", 0)
    received = metric(dest, RECEIVED, origin=hs1.server_name)
    print(
        f"\nflood: 300 EDUs (9,000 field changes) in {elapsed:.2f}s; applied {received:.0f},"
        f" dropped {dropped:.0f} (rate_limited); local /sync median {sync_before * 1000:.0f} ms"
        f" before, {sync_after * 1000:.0f} ms after"
    )
    assert dropped > 0, f"nothing dropped: {received} of 300 EDUs applied in {elapsed:.2f}s"
    assert received + dropped == 300, (received, dropped)
    # At most the burst plus what the bucket refilled meanwhile (30 field changes an EDU).
    assert received * 30 <= 5000 + 500 * (elapsed + 1.0), (received, elapsed)
    # Nothing about the dropped users was cached.
    cached = sum(
        1
        for line in dest.log_path.read_text(errors="replace").splitlines()
        if f"@flood{tag}_" in line and "profile EDU ←" in line and "{" in line
    )
    assert cached == received, (cached, received)
    # A genuine update from the same origin, sent afterwards by the real server, arrives.
    alice.put_field("displayname", f"after the flood {tag}")
    took = watcher.wait_for(alice.user_id, "displayname", f"after the flood {tag}")
    print(f"genuine update after the flood reached /sync in {took * 1000:.0f} ms")
