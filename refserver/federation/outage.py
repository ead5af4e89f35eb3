"""Take a destination "down" on purpose (the inspector's switch; docs/inspector.md).

:class:`DestinationSwitch` wraps the sender's transport (a
:class:`~refserver.federation.sender.TransactionSender`): while a destination is switched
down, every transaction to it fails as :class:`FederationUnreachable`, exactly as when the
destination does not answer. So everything the sender does about an unreachable server is
real: the same ``txn_id`` retried under exponential back-off (Server-Server API
§"Transactions"), PDUs kept in the durable outbox, MSC4259 profile changes kept pending
behind the destination's cursor and sent, coalesced, when it is back. Only built when an
inspector is on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from refserver.federation.client import FederationUnreachable
from refserver.federation.sender import TransactionLink, TransactionSender
from refserver.federation.transaction import Transaction
from refserver.types import JsonValue

#: The reason a switched-down destination's transactions fail with (logged and shown).
REASON = "switched down in the inspector"


class DestinationSwitch:
    """A :class:`TransactionSender` whose destinations can be switched down and up."""

    def __init__(self, transport: TransactionSender) -> None:
        self._transport = transport
        self._down: set[str] = set()

    def set_down(self, destination: str, down: bool) -> None:
        if down:
            self._down.add(destination)
        else:
            self._down.discard(destination)

    def is_down(self, destination: str) -> bool:
        return destination in self._down

    @property
    def down(self) -> list[str]:
        return sorted(self._down)

    @asynccontextmanager
    async def connect(self, destination: str) -> AsyncIterator[TransactionLink]:
        async with self._transport.connect(destination) as link:
            yield _SwitchedLink(self, destination, link)


class _SwitchedLink:
    def __init__(self, switch: DestinationSwitch, destination: str, link: TransactionLink):
        self._switch = switch
        self._destination = destination
        self._link = link

    async def send_transaction(self, transaction: Transaction) -> JsonValue:
        if self._switch.is_down(self._destination):
            raise FederationUnreachable(self._destination, REASON)
        return await self._link.send_transaction(transaction)
