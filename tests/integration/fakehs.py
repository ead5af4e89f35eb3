"""A fake homeserver for black-box federation tests: its own ed25519 key, served at
``/_matrix/key/v2/server`` from a small TLS server in a thread, with a certificate from the
shared development CA (so refserver trusts it like any peer).

It signs every request it makes itself (server-server API §"Request Authentication") and can
join a room on a real server through ``make_join``/``send_join`` (§"Joining Rooms"). Anything
sent to it other than the key request is answered ``200 {}`` (``PUT /send``) or 404.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import signedjson.key

from refserver.crypto.keys import SigningKey, key_id, verify_key_base64
from refserver.crypto.signing import sign_json
from refserver.events.builder import finalise_pdu
from refserver.events.model import Event
from refserver.events.room_versions import get_room_version
from refserver.federation.tls import issue_certificate, load_or_create_ca
from refserver.federation.xmatrix import build_authorization_header
from tests.servers import ServerProcess, free_port

RV12 = get_room_version("12")
TIMEOUT_S = 15.0


def now_ms() -> int:
    return int(time.time() * 1000)


class FakeHomeserver:
    """``localhost:<port>``, trusted through the CA in ``ca_dir``."""

    def __init__(self, ca_dir: Path, work_dir: Path, *, error_text: str = "fake") -> None:
        self.port = free_port()
        self.name = f"localhost:{self.port}"
        self.signing_key: SigningKey = signedjson.key.generate_signing_key(
            "fake" + secrets.token_hex(3)
        )
        self.received: list[tuple[str, str]] = []
        work_dir.mkdir(parents=True, exist_ok=True)
        cert, key = work_dir / "fake.crt", work_dir / "fake.key"
        issue_certificate(load_or_create_ca(ca_dir), cert, key)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                fake.received.append((self.command, self.path))
                if self.command == "GET" and self.path.startswith("/_matrix/key/v2/server"):
                    status, body = 200, fake.key_response()
                elif self.command == "PUT" and self.path.startswith("/_matrix/federation/v1/send/"):
                    status, body = 200, {"pdus": {}}
                else:
                    status, body = 404, {"errcode": "M_NOT_FOUND", "error": error_text}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = answer

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def key_id(self) -> str:
        return key_id(self.signing_key)

    def key_response(self) -> dict[str, Any]:
        return sign_json(
            {
                "server_name": self.name,
                "valid_until_ts": now_ms() + 3600 * 1000,
                "verify_keys": {self.key_id: {"key": verify_key_base64(self.signing_key)}},
                "old_verify_keys": {},
            },
            self.name,
            self.signing_key,
        )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- requests, signed as this server ------------------------------------------------------

    def authorization(
        self,
        method: str,
        uri: str,
        destination: str,
        content: Any,
        *,
        origin: str | None = None,
        signing_key: SigningKey | None = None,
    ) -> str:
        return build_authorization_header(
            method=method,
            uri=uri,
            origin=origin or self.name,
            destination=destination,
            content=content,
            signing_key=signing_key or self.signing_key,
        )

    def request(
        self,
        client: httpx.Client,
        method: str,
        target: ServerProcess,
        uri: str,
        *,
        body: Any = None,
        authorization: str | None = "sign",
        raw: bytes | None = None,
    ) -> httpx.Response:
        """``authorization="sign"`` signs correctly; ``None`` sends no header; any other
        string is sent verbatim. ``raw`` replaces the JSON of ``body`` on the wire."""
        headers = {"Content-Type": "application/json"}
        if authorization == "sign":
            authorization = self.authorization(method, uri, target.server_name, body)
        if authorization is not None:
            headers["Authorization"] = authorization
        content = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        return client.request(method, target.federation_url + uri, content=content, headers=headers)

    def txn_body(self, pdus: list[Any], edus: list[Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"origin": self.name, "origin_server_ts": now_ms(), "pdus": pdus}
        if edus is not None:
            body["edus"] = edus
        return body

    def join(
        self, client: httpx.Client, target: ServerProcess, room_id: str, user_id: str
    ) -> Event:
        """Join ``user_id`` (one of ours) to ``room_id`` on ``target``: make_join, sign,
        send_join."""
        room, user = quote(room_id, safe=""), quote(user_id, safe="")
        r = self.request(
            client, "GET", target, f"/_matrix/federation/v1/make_join/{room}/{user}?ver=12"
        )
        assert r.status_code == 200, r.text
        template = r.json()["event"]
        template["origin_server_ts"] = now_ms()
        event = finalise_pdu(template, RV12, signing_name=self.name, signing_key=self.signing_key)
        r = self.request(
            client,
            "PUT",
            target,
            f"/_matrix/federation/v2/send_join/{room}/{quote(event.event_id, safe='')}",
            body=event.pdu,
        )
        assert r.status_code == 200, r.text
        return event

    def join_new_room(
        self, fed: httpx.Client, cs: httpx.Client, target: ServerProcess, token: str
    ) -> tuple[str, str]:
        """The local user of ``token`` creates a public v12 room on ``target`` and this
        server's ``@mallory`` joins it over federation; returns (room_id, mallory)."""
        r = cs.post(
            target.url("/v3/createRoom"),
            json={"preset": "public_chat", "room_version": "12"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        room_id: str = r.json()["room_id"]
        mallory = f"@mallory:{self.name}"
        self.join(fed, target, room_id, mallory)
        return room_id, mallory
