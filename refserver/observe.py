"""An in-process feed of federation facts, for the inspector (docs/inspector.md).

The services that already log what federation does (the sender's transactions, the MSC4259
EDU source and receiver, ``/sync`` delivering an MSC4429 ``users`` section) also hand the
same facts to a :class:`Probe`: one call each, sync, never blocking, never raising. A
:class:`Feed` keeps the most recent events in a bounded ring buffer and copies each to its
subscribers through trio memory channels; a subscriber that does not keep up loses events
(counted in :attr:`Feed.dropped`), never slows the emitter down.

One feed may serve several instances in one process (``refserver demo``): each instance
emits through its own probe, which stamps every event with the instance's server name.
Without an inspector the services get :data:`NULL_PROBE`, which does nothing.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import trio

from refserver.types import JsonDict, JsonValue

log = logging.getLogger(__name__)

#: Events kept for a page that opens (or reconnects) late.
DEFAULT_CAPACITY = 500
#: Events a subscriber may lag behind before the feed drops what it cannot take.
SUBSCRIBER_BUFFER = 256


class Feed:
    """The recent events of every instance in this process, and their live subscribers."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._recent: deque[JsonDict] = deque(maxlen=capacity)
        self._subscribers: set[trio.MemorySendChannel[JsonDict]] = set()
        self._seq = itertools.count(1)
        #: Events a slow subscriber did not get (it was SUBSCRIBER_BUFFER events behind).
        self.dropped = 0

    def probe(self, server_name: str) -> Probe:
        """The emitter one instance's services use."""
        return Probe(self, server_name)

    def publish(self, server: str, kind: str, facts: dict[str, Any]) -> JsonDict:
        """Record one event and offer it to every subscriber (sync, never blocks)."""
        event: JsonDict = {
            "seq": next(self._seq),
            "ts_ms": int(time.time() * 1000),
            "server": server,
            "kind": kind,
            **{k: _jsonable(v) for k, v in facts.items()},
        }
        self._recent.append(event)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._subscribers.discard(channel)
        return event

    def recent(self, after_seq: int = 0) -> list[JsonDict]:
        """The buffered events newer than ``after_seq``, oldest first."""
        return [e for e in self._recent if int(e["seq"]) > after_seq]

    @contextmanager
    def subscribe(
        self, buffer: int = SUBSCRIBER_BUFFER
    ) -> Iterator[trio.MemoryReceiveChannel[JsonDict]]:
        """Live events from now on, until the ``with`` block ends."""
        send, receive = trio.open_memory_channel[JsonDict](buffer)
        self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


class Probe:
    """One instance's handle on a :class:`Feed`."""

    def __init__(self, feed: Feed | None, server_name: str) -> None:
        self._feed = feed
        self.server_name = server_name

    def emit(self, kind: str, **facts: Any) -> None:
        """Publish one event; does nothing without a feed. Never raises: observing must not
        change what it observes."""
        if self._feed is None:
            return
        try:
            self._feed.publish(self.server_name, kind, facts)
        except Exception:
            log.exception("inspector feed: cannot publish a %s event", kind)


#: The probe of an instance nobody inspects.
NULL_PROBE = Probe(None, "")


def pdu_summary(pdus: Sequence[JsonDict]) -> list[JsonDict]:
    """What the timeline shows of each PDU (Server-Server API §"PDUs"): type, sender,
    state_key."""
    return [
        {k: p[k] for k in ("type", "sender", "state_key") if k in p}
        for p in pdus
        if isinstance(p, dict)
    ]


def edu_summary(edus: Sequence[JsonDict]) -> list[JsonDict]:
    """Each EDU's type and content (Server-Server API §"EDUs")."""
    return [{"edu_type": e.get("edu_type"), "content": e.get("content")} for e in edus]


def _jsonable(value: Any) -> JsonValue:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)
