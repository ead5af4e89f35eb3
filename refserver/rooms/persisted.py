"""The one list of listeners told about every event persisted here, local or received.

Every path that stores an event into a room (:class:`~refserver.rooms.service.RoomService`
for local events, the federation handler for received ones and for our joins through other
servers) persists it through :func:`refserver.storage.persist.persist_event` and, after the
commit, hands the :class:`~refserver.storage.persist.Persisted` results to
:meth:`EventsPersisted.notify`: /sync wakes, then each listener runs in registration order
(the federation sender wakes the destinations owed, MSC4259's join-time exchange, the
remote profile cache).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from refserver.notifier import Notifier
from refserver.storage.persist import Persisted

#: Told about every event stored here (soft-failed and rejected ones excluded).
EventListener = Callable[[Persisted], Awaitable[None]]


class EventsPersisted:
    """Built once by the wiring and shared by everything that persists events."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._listeners: list[EventListener] = []

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    async def notify(self, persisted: Iterable[Persisted]) -> None:
        """After the commit: wake /sync, then tell listeners about each accepted event."""
        accepted = [p for p in persisted if p.accepted]
        if not accepted:
            return
        self._notifier.notify()
        for p in accepted:
            for listener in self._listeners:
                await listener(p)
