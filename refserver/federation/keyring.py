"""Server signing keys: publishing ours, fetching and caching theirs, notary answers.

Server-server API §"Retrieving server keys". Rules applied here:

- A fetched ``/_matrix/key/v2/server`` response must name the server we asked and carry a
  valid self-signature by every key in ``verify_keys``.
- ``valid_until_ts`` is honoured but capped at fetch time + 7 days ("servers MUST use the
  lesser of valid_until_ts and 7 days into the future", rooms v5+).
- Request signatures only accept ``verify_keys``; event signatures also accept
  ``old_verify_keys`` that expired after the event's ``origin_server_ts``.

A failed fetch is remembered for :data:`KEY_FETCH_FAILURE_TTL_S`: requests naming a dead or
bogus origin (or notary queries for it) do not each trigger a fetch. Notary queries name at
most :data:`MAX_NOTARY_SERVERS` servers, fetched concurrently under one time limit.

Keys read from the database are also kept in memory (every inbound request needs its
origin's key; the rows change only through :meth:`Keyring.fetch_server_keys`, which updates
both), so authenticating a request costs no database round trip.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

import signedjson.key
import trio
from signedjson.types import VerifyKey

from refserver.clock import Clock
from refserver.crypto.keys import SigningKey, key_id, verify_key_base64
from refserver.crypto.signing import SignatureError, sign_json, verify_signed_json
from refserver.events.signing import required_signing_servers
from refserver.federation.client import FederationClient, FederationError, FederationUnreachable
from refserver.storage import federation as fed_store
from refserver.storage.database import Database
from refserver.types import JsonDict, JsonValue

log = logging.getLogger(__name__)

#: How long our published keys are valid ("should not return responses that expire in
#: under an hour"); peers re-fetch after this.
OWN_KEY_LIFETIME_MS = 24 * 3600 * 1000
#: Cap on trusting a fetched key response (rooms v5+ signing requirements).
MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
#: Remote keys kept in memory; beyond this the memory copy starts afresh from the database.
MAX_CACHED_KEYS = 100_000
#: A server whose keys could not be fetched is not asked again for this long.
KEY_FETCH_FAILURE_TTL_S = 10.0
#: Servers whose failures are remembered; beyond this the memory starts afresh.
MAX_REMEMBERED_FAILURES = 10_000
#: Server names one notary query may name (POST ``/_matrix/key/v2/query``).
MAX_NOTARY_SERVERS = 20
#: Time limit of one notary query's fetches, all together; servers not fetched by then are
#: answered from the cache or omitted ("unreachable servers with no cache are omitted").
NOTARY_TIMEOUT_S = 15.0


class KeyNotFound(Exception):
    """No usable verify key; errcode hint M_UNAUTHORIZED for requests."""


class Keyring:
    def __init__(
        self,
        db: Database,
        client: FederationClient,
        *,
        server_name: str,
        signing_key: SigningKey,
        old_keys: list[JsonValue],
        clock: Clock,
    ) -> None:
        self._db = db
        self._clock = clock
        self._client = client
        self.server_name = server_name
        self._signing_key = signing_key
        self._old_keys = old_keys  # signedjson VerifyKeyWithExpiry (.expired)
        self._fetch_locks: dict[str, trio.Lock] = {}
        #: server → monotonic time until which a failed fetch is not repeated.
        self._failed_until: dict[str, float] = {}
        #: (server, key ID) → the stored row and its decoded key (the database is the truth).
        self._cached: dict[tuple[str, str], tuple[fed_store.StoredKey, VerifyKey]] = {}

    # -- ours -------------------------------------------------------------------------------

    def own_keys_response(self) -> JsonDict:
        """GET /_matrix/key/v2/server: self-signed ``verify_keys`` and ``old_verify_keys``."""
        body: JsonDict = {
            "server_name": self.server_name,
            "valid_until_ts": self._clock.time_ms() + OWN_KEY_LIFETIME_MS,
            "verify_keys": {
                key_id(self._signing_key): {"key": verify_key_base64(self._signing_key)}
            },
            "old_verify_keys": {
                f"{k.alg}:{k.version}": {
                    "key": signedjson.key.encode_verify_key_base64(k),
                    "expired_ts": k.expired,
                }
                for k in self._old_keys
            },
        }
        return sign_json(body, self.server_name, self._signing_key)

    def _own_key(self, key_id_: str, at_ts: int | None) -> VerifyKey | None:
        if key_id_ == key_id(self._signing_key):
            own: VerifyKey = signedjson.key.get_verify_key(self._signing_key)
            return own
        for k in self._old_keys:
            if f"{k.alg}:{k.version}" == key_id_ and at_ts is not None and at_ts <= k.expired:
                old: VerifyKey = k
                return old
        return None

    # -- theirs -----------------------------------------------------------------------------

    async def get_verify_key(
        self, server_name: str, key_id_: str, *, event_ts: int | None = None
    ) -> VerifyKey:
        """A key valid now (requests, ``event_ts`` None) or at ``event_ts`` (events)."""
        if server_name == self.server_name:
            key = self._own_key(
                key_id_, event_ts if event_ts is not None else self._clock.time_ms()
            )
            if key is None:
                raise KeyNotFound(f"no key {key_id_} of our own")
            return key
        needed_until = event_ts if event_ts is not None else self._clock.time_ms()
        for_event = event_ts is not None
        cached = self._cached.get((server_name, key_id_))
        if cached is not None and self._usable(cached[0], needed_until, for_event=for_event):
            return cached[1]
        stored = await self._db.run(fed_store.get_server_key, server_name, key_id_)
        if stored is None or not self._usable(stored, needed_until, for_event=for_event):
            async with self._fetch_locks.setdefault(server_name, trio.Lock()):
                stored = await self._db.run(fed_store.get_server_key, server_name, key_id_)
                if stored is None or not self._usable(stored, needed_until, for_event=for_event):
                    await self.fetch_server_keys(server_name)
                    stored = await self._db.run(fed_store.get_server_key, server_name, key_id_)
        if stored is None or not self._usable(stored, needed_until, for_event=for_event):
            raise KeyNotFound(f"no valid key {key_id_} for {server_name}")
        decoded: VerifyKey = signedjson.key.decode_verify_key_base64(
            "ed25519", key_id_.split(":", 1)[1], stored.verify_key
        )
        if len(self._cached) >= MAX_CACHED_KEYS:
            self._cached.clear()
        self._cached[(server_name, key_id_)] = (stored, decoded)
        return decoded

    @staticmethod
    def _usable(stored: fed_store.StoredKey, at_ms: int, *, for_event: bool) -> bool:
        if stored.expired_ts is not None:
            return for_event and at_ms <= stored.expired_ts
        return stored.valid_until_ts >= at_ms

    async def fetch_server_keys(self, server_name: str) -> JsonDict:
        """GET https://<server>/_matrix/key/v2/server, checked and cached. A failure is
        remembered for :data:`KEY_FETCH_FAILURE_TTL_S` (raises at once meanwhile)."""
        now = self._clock.monotonic()
        if self._failed_until.get(server_name, 0.0) > now:
            raise KeyNotFound(f"could not fetch keys of {server_name} (failed recently)")
        try:
            response = await self._client.request(
                "GET", server_name, "/_matrix/key/v2/server", signed=False
            )
            keys = self._check_key_response(server_name, response)
        except (FederationError, FederationUnreachable, KeyNotFound) as exc:
            log.info("key fetch from %s failed: %s", server_name, exc)
            if len(self._failed_until) >= MAX_REMEMBERED_FAILURES:
                self._failed_until.clear()
            self._failed_until[server_name] = self._clock.monotonic() + KEY_FETCH_FAILURE_TTL_S
            raise KeyNotFound(f"could not fetch keys of {server_name}") from None
        self._failed_until.pop(server_name, None)
        fetched = self._clock.time_ms()
        valid_until = min(int(response["valid_until_ts"]), fetched + MAX_KEY_VALIDITY_MS)
        stored = [
            fed_store.StoredKey(server_name, kid, b64, valid_until, None)
            for kid, b64 in keys["verify_keys"].items()
        ] + [
            fed_store.StoredKey(server_name, kid, b64, 0, expired)
            for kid, (b64, expired) in keys["old_verify_keys"].items()
        ]
        await self._db.run(
            fed_store.store_server_keys,
            server_name,
            stored,
            json.dumps(response),
            valid_until,
            fetched,
        )
        # The rows just written replace what memory holds (read again on the next use).
        for row in stored:
            self._cached.pop((server_name, row.key_id), None)
        log.info("fetched keys of %s: %s", server_name, ", ".join(keys["verify_keys"]))
        assert isinstance(response, dict)
        return response

    @staticmethod
    def _check_key_response(
        server_name: str, response: JsonValue
    ) -> dict[str, dict[str, JsonValue]]:
        if not isinstance(response, dict) or response.get("server_name") != server_name:
            raise KeyNotFound(f"key response does not name {server_name}")
        if not isinstance(response.get("valid_until_ts"), int):
            raise KeyNotFound("key response has no valid_until_ts")
        verify_keys = response.get("verify_keys")
        if not isinstance(verify_keys, dict) or not verify_keys:
            raise KeyNotFound("key response has no verify_keys")
        out: dict[str, dict[str, JsonValue]] = {"verify_keys": {}, "old_verify_keys": {}}
        for kid, entry in verify_keys.items():
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("key"), str)
                and kid.startswith("ed25519:")
            ):
                continue
            try:
                vk = signedjson.key.decode_verify_key_base64(
                    "ed25519", kid.split(":", 1)[1], entry["key"]
                )
                verify_signed_json(response, server_name, vk)
            except (SignatureError, ValueError) as exc:
                raise KeyNotFound(f"bad self-signature by {kid}: {exc}") from None
            out["verify_keys"][kid] = entry["key"]
        for kid, entry in (response.get("old_verify_keys") or {}).items():
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("key"), str)
                and isinstance(entry.get("expired_ts"), int)
            ):
                out["old_verify_keys"][kid] = (entry["key"], entry["expired_ts"])
        if not out["verify_keys"]:
            raise KeyNotFound("no ed25519 verify keys in response")
        return out

    async def keys_for_event(self, pdu: Mapping[str, JsonValue]) -> dict[str, dict[str, VerifyKey]]:
        """Verify keys of every server that must have signed ``pdu``, valid at its time."""
        event_ts = pdu.get("origin_server_ts")
        ts = event_ts if isinstance(event_ts, int) else self._clock.time_ms()
        out: dict[str, dict[str, VerifyKey]] = {}
        signatures = pdu.get("signatures")
        for server in required_signing_servers(pdu):
            key_ids = list(
                (signatures or {}).get(server, {}) if isinstance(signatures, dict) else []
            )
            for kid in key_ids:
                try:
                    out.setdefault(server, {})[kid] = await self.get_verify_key(
                        server, kid, event_ts=ts
                    )
                except KeyNotFound:
                    continue
        return out

    # -- notary ----------------------------------------------------------------------------

    async def notary_query(
        self, server_names: Sequence[str], *, timeout_s: float = NOTARY_TIMEOUT_S
    ) -> list[JsonDict]:
        """POST /_matrix/key/v2/query: cached (or freshly fetched) responses, co-signed by us.

        The servers are fetched concurrently; after ``timeout_s`` those not fetched are
        answered from the cache, if any, or omitted. The caller bounds the number of names
        (:data:`MAX_NOTARY_SERVERS`).
        """
        names = list(dict.fromkeys(server_names))
        found: dict[str, JsonDict] = {}

        async def one(server_name: str) -> None:
            response = await self._notary_response(server_name)
            if response is not None:
                found[server_name] = response

        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:
                for server_name in names:
                    nursery.start_soon(one, server_name)
        for server_name in names:
            if server_name not in found and server_name != self.server_name:
                cached = await self._db.run(fed_store.get_key_response, server_name)
                if cached:
                    found[server_name] = json.loads(cached[0])
        return [
            found[name]
            if name == self.server_name
            else sign_json(found[name], self.server_name, self._signing_key)
            for name in names
            if name in found
        ]

    async def _notary_response(self, server_name: str) -> JsonDict | None:
        """Our own keys, a fresh cached response, or a fetched one (None if none)."""
        if server_name == self.server_name:
            return self.own_keys_response()
        cached = await self._db.run(fed_store.get_key_response, server_name)
        if cached and cached[1] > self._clock.time_ms():
            response: JsonDict = json.loads(cached[0])
            return response
        try:
            async with self._fetch_locks.setdefault(server_name, trio.Lock()):
                return await self.fetch_server_keys(server_name)
        except KeyNotFound:
            # "Unreachable servers with no cache are omitted."
            return json.loads(cached[0]) if cached else None
