"""Wake-ups for long-polling /sync (CS API "Syncing": "wait for new data … up to timeout").

Anything that adds data a client could sync (a new event, a profile change) calls
:meth:`Notifier.notify`; every waiting /sync wakes, re-reads its streams and goes back to
waiting if nothing concerns it. One ``trio.Event`` swapped on every notify merges bursts of
wake-ups into one, as trio's design notes suggest.
"""

from __future__ import annotations

import trio


class Notifier:
    def __init__(self) -> None:
        self._changed = trio.Event()
        self.generation = 0

    def notify(self) -> None:
        """Sync and never blocking, so it can be called from anywhere."""
        self.generation += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_change(self, generation: int, timeout_s: float) -> bool:
        """Wait until :attr:`generation` moves past ``generation`` or ``timeout_s`` passes."""
        if self.generation != generation:
            return True
        with trio.move_on_after(timeout_s):
            await self._changed.wait()
            return True
        return False
