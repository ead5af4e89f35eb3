"""A minimal async client-server API client for the driver (httpx on Trio)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

JsonDict = dict[str, Any]


def q(value: str) -> str:
    return quote(value, safe="")


@dataclass
class Client:
    http: httpx.AsyncClient
    base_url: str
    user_id: str
    access_token: str
    device_id: str = ""

    @classmethod
    async def register(cls, http: httpx.AsyncClient, base_url: str, username: str) -> Client:
        r = await http.post(
            f"{base_url}/_matrix/client/v3/register",
            json={
                "username": username,
                "password": secrets.token_hex(12),
                "auth": {"type": "m.login.dummy"},
            },
        )
        if r.status_code != 200:
            raise RuntimeError(f"register {username} at {base_url}: {r.status_code} {r.text}")
        body = r.json()
        return cls(
            http, base_url, body["user_id"], body["access_token"], str(body.get("device_id", ""))
        )

    async def request(
        self, method: str, path: str, body: JsonDict | None = None, **params: Any
    ) -> httpx.Response:
        return await self.http.request(
            method,
            f"{self.base_url}/_matrix/client{path}",
            json=body,
            params={k: v for k, v in params.items() if v is not None} or None,
            headers={"Authorization": f"Bearer {self.access_token}"},
        )

    async def ok(
        self, method: str, path: str, body: JsonDict | None = None, **params: Any
    ) -> JsonDict:
        r = await self.request(method, path, body, **params)
        if r.status_code != 200:
            raise RuntimeError(
                f"{method} {path} at {self.base_url}: {r.status_code} {r.text[:300]}"
            )
        data: JsonDict = r.json()
        return data

    async def create_public_room(self) -> str:
        body = await self.ok(
            "POST",
            "/v3/createRoom",
            {"preset": "public_chat", "room_version": "12", "name": "bench"},
        )
        return str(body["room_id"])

    async def set_field(self, key: str, value: str) -> httpx.Response:
        """PUT /v3/profile/{userId}/{keyName} (displayname, or an MSC4133 custom field)."""
        return await self.request("PUT", f"/v3/profile/{q(self.user_id)}/{q(key)}", {key: value})
