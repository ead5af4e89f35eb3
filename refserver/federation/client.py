"""Outbound federation requests: resolve, sign with X-Matrix, send over TLS.

Server-server API §"Request Authentication": every request is signed over
``{method, uri, origin, destination, content}`` where ``uri`` is the exact request target
sent on the wire (percent-encoding untouched), so this module builds the target string once
and uses it both for signing and for the request line.

Every call runs under its own timeout so a slow or dead destination never holds up anything
else. Two transports:

- **transactions** (``PUT /send``) go over the destination queue's own keep-alive
  connection (:meth:`FederationClient.connect`, ``federation/connection.py``);
- **one-off requests** (keys, ``make_join``, ``query/profile``, …) use one shared
  ``httpx.AsyncClient`` (:meth:`FederationClient.request`).

Both raise the same errors: :class:`FederationError` (an answer other than 200) and
:class:`FederationUnreachable` (no answer; :class:`UntrustedCertificate` names the fix).
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import quote, urlencode

import h11
import httpx
import trio

from refserver.crypto.keys import SigningKey
from refserver.federation.connection import (
    ConnectionLost,
    DestinationConnection,
    SessionCache,
)
from refserver.federation.resolver import (
    OutboundAddressGuard,
    Resolver,
    ServerResolutionError,
    url_host,
)
from refserver.federation.transaction import Transaction
from refserver.federation.xmatrix import build_authorization_header
from refserver.metrics import Metrics
from refserver.types import JsonDict, JsonValue

log = logging.getLogger(__name__)


class FederationError(Exception):
    """The remote server answered, but not with 200. ``errcode`` is theirs, if any."""

    def __init__(self, destination: str, status: int, body: JsonValue) -> None:
        self.destination = destination
        self.status = status
        self.body = body
        errcode = body.get("errcode") if isinstance(body, dict) else None
        self.errcode = errcode if isinstance(errcode, str) else None
        error = body.get("error") if isinstance(body, dict) else None
        self.error = error if isinstance(error, str) else ""
        super().__init__(
            f"{destination} answered {status} {self.errcode or ''} {self.error}".strip()
        )


class FederationUnreachable(Exception):
    """No answer: DNS, connection, TLS or timeout failure."""

    def __init__(self, destination: str, reason: str) -> None:
        super().__init__(f"{destination} unreachable: {reason}")
        self.destination = destination
        self.reason = reason


class UntrustedCertificate(FederationUnreachable):
    """The destination's TLS certificate was not issued by a CA we trust.

    Server-server API §"TLS": "the destination must present a certificate from a known
    CA". Between development instances that means a shared CA, so the message names the fix.
    """

    def __init__(self, destination: str) -> None:
        reason = (
            f"certificate of {destination} not trusted: add its CA to [federation]"
            " trusted_ca_files, or init both with the same --ca-dir"
        )
        Exception.__init__(self, reason)
        self.destination = destination
        self.reason = reason


#: OpenSSL verify results meaning "no trusted CA issued this certificate".
_UNTRUSTED_ISSUER = {
    18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
}


def path_param(value: str) -> str:
    """Percent-encode one path segment (``@``, ``:``, ``!``, ``$``, ``/``, … all escaped)."""
    return quote(value, safe="")


#: Default of ``[federation] max_concurrent_handshakes``.
DEFAULT_MAX_CONCURRENT_HANDSHAKES = 32

#: Resolution and transport failures of a destination connection (timeouts aside).
_CONNECTION_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ConnectionLost,
    h11.ProtocolError,
    ServerResolutionError,
)


class FederationClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        origin: str,
        signing_key: SigningKey,
        resolver: Resolver,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        max_concurrent_handshakes: int = DEFAULT_MAX_CONCURRENT_HANDSHAKES,
        guard: OutboundAddressGuard | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._http = http
        #: Where connections may go; by default nowhere private, loopback, link-local, ….
        self.guard = guard or OutboundAddressGuard()
        self.origin = origin
        self._signing_key = signing_key
        self._resolver = resolver
        self._timeout_s = timeout_s
        self._ssl_context = ssl_context or ssl.create_default_context()
        #: Bounds the TLS handshakes of new destination connections, all queues together.
        self.handshakes = trio.CapacityLimiter(max_concurrent_handshakes)
        self._sessions = SessionCache()
        self._metrics = metrics

    def _prepare(
        self,
        method: str,
        destination: str,
        path: str,
        query: Sequence[tuple[str, str]],
        body: JsonDict | None,
        signed: bool,
    ) -> tuple[str, dict[str, str]]:
        """The request target (exactly as signed and sent) and the headers but ``Host``."""
        uri = path + (("?" + urlencode(list(query), quote_via=quote)) if query else "")
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if signed:
            headers["Authorization"] = build_authorization_header(
                method=method,
                uri=uri,
                origin=self.origin,
                destination=destination,
                content=body,
                signing_key=self._signing_key,
            )
        return uri, headers

    def _unreachable(
        self, exc: BaseException, destination: str, method: str, uri: str
    ) -> FederationUnreachable:
        if _untrusted_issuer(exc):
            untrusted = UntrustedCertificate(destination)
            log.warning("%s → %s %s %s: %s", self.origin, destination, method, uri, untrusted)
            return untrusted
        reason = _root_cause(exc)
        log.info("%s → %s %s %s: unreachable: %s", self.origin, destination, method, uri, reason)
        return FederationUnreachable(destination, reason)

    def _answer(
        self, destination: str, method: str, uri: str, status: int, data: bytes
    ) -> JsonValue:
        try:
            decoded: JsonValue = json.loads(data) if data else {}
        except ValueError:
            decoded = {"error": data[:200].decode("utf-8", "replace")}
        # One line per outbound request: what went where, and the answer.
        log.info("%s → %s %s %s: %d", self.origin, destination, method, uri, status)
        if status != 200:
            raise FederationError(destination, status, decoded)
        return decoded

    async def request(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: JsonDict | None = None,
        signed: bool = True,
        timeout_s: float | None = None,
    ) -> JsonValue:
        """Send one request and return the decoded JSON body of a 200 answer.

        ``path`` must already be percent-encoded (use :func:`path_param` for IDs).
        Raises :class:`FederationError` or :class:`FederationUnreachable`.
        """
        uri, headers = self._prepare(method, destination, path, query, body, signed)
        try:
            with trio.fail_after(timeout_s or self._timeout_s):
                resolved = await self._resolver.resolve(destination)
                # Connect to a checked address, not to a name httpx would resolve again.
                addresses = await self.guard.addresses(resolved.host_for_connect, resolved.port)
                url = f"https://{url_host(addresses[0])}:{resolved.port}{uri}"
                headers["Host"] = resolved.host_header
                extensions = {}
                if resolved.tls_server_name:
                    extensions["sni_hostname"] = resolved.tls_server_name
                content = None if body is None else json.dumps(body).encode()
                request = self._http.build_request(
                    method, url, headers=headers, content=content, extensions=extensions
                )
                response = await self._http.send(request)
                data = await response.aread()
        except trio.TooSlowError:
            raise FederationUnreachable(destination, "timed out") from None
        except (httpx.HTTPError, OSError, ServerResolutionError) as exc:
            raise self._unreachable(exc, destination, method, uri) from None
        return self._answer(destination, method, uri, response.status_code, data)

    @asynccontextmanager
    async def connect(self, destination: str) -> AsyncIterator[DestinationLink]:
        """The keep-alive connection of one destination queue, for the queue's lifetime.

        Nothing is opened until the first transaction; the connection is closed on exit.
        """
        connection = DestinationConnection(
            destination,
            resolver=self._resolver,
            ssl_context=self._ssl_context,
            handshakes=self.handshakes,
            sessions=self._sessions,
            guard=self.guard,
            metrics=self._metrics,
        )
        try:
            yield DestinationLink(self, connection)
        finally:
            await connection.aclose()

    async def send_transaction(
        self, transaction: Transaction, connection: DestinationConnection
    ) -> JsonValue:
        """``PUT /_matrix/federation/v1/send/{txnId}`` (server-server API §"Transactions")
        over ``connection``, the destination queue's own (see :meth:`connect`).

        Raises :class:`FederationError` or :class:`FederationUnreachable` like :meth:`request`.
        """
        destination = transaction.destination
        method = "PUT"
        body = transaction.to_json()
        uri, headers = self._prepare(
            method,
            destination,
            f"/_matrix/federation/v1/send/{path_param(transaction.txn_id)}",
            (),
            body,
            True,
        )
        try:
            response = await connection.request(
                method,
                uri,
                list(headers.items()),
                json.dumps(body).encode(),
                timeout_s=self._timeout_s,
            )
        except trio.TooSlowError:
            log.info("%s → %s %s %s: timed out", self.origin, destination, method, uri)
            raise FederationUnreachable(destination, "timed out") from None
        except _CONNECTION_ERRORS as exc:
            raise self._unreachable(exc, destination, method, uri) from None
        return self._answer(destination, method, uri, response.status, response.body)


class DestinationLink:
    """Transactions to one destination over its own connection (see
    :meth:`FederationClient.connect`)."""

    def __init__(self, client: FederationClient, connection: DestinationConnection) -> None:
        self._client = client
        self.connection = connection

    async def send_transaction(self, transaction: Transaction) -> JsonValue:
        """See :meth:`FederationClient.send_transaction`."""
        return await self._client.send_transaction(transaction, self.connection)


def _untrusted_issuer(exc: BaseException) -> bool:
    """Whether the chain of ``exc`` holds a certificate verification failure of the
    unknown-issuer kind (not, say, an expired certificate or a name mismatch)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_code in _UNTRUSTED_ISSUER
        current = current.__cause__ or current.__context__
    return False


def _root_cause(exc: BaseException) -> str:
    """The innermost cause: under trio, ``str(httpx.ConnectError)`` is empty and the real
    reason (say, an SSL certificate error) sits further down the chain."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__ or current.__context__
    return " ← ".join(parts)
