"""Profile EDUs held while this server is joining a room through another server.

Why (docs/msc4259.md §6.13): the resident server starts the join-time exchange while it
*answers* our ``send_join``, but we record the membership only after we have checked the
answer (auth chain, state), which takes seconds in a large room. An EDU that arrives in
between is about a user who does not share a room with us *yet*; the resident got 200 for
it and will never send it again. So while a join is in progress such an EDU is held here
instead of dropped, and re-checked when the join ends.

Bounded: at most ``max_per_origin`` users per origin and ``max_total`` users overall; the
fields of one user merge (newest value per field wins, ``None`` = removed). Pure data, no
I/O: :class:`refserver.profiles.federation.ProfileEduReceiver` owns one and decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refserver.types import JsonValue


@dataclass
class HeldEdu:
    origin: str
    user_id: str
    txn_id: str
    fields: dict[str, JsonValue | None] = field(default_factory=dict)


class EduHold:
    def __init__(self, *, max_per_origin: int, max_total: int) -> None:
        self._max_per_origin = max_per_origin
        self._max_total = max_total
        self._joins = 0
        #: Counts ended joins, so a caller can tell that one ended while it was checking.
        self.generation = 0
        self._held: dict[tuple[str, str], HeldEdu] = {}  # (origin, user_id) → merged EDU
        self._per_origin: dict[str, int] = {}

    @property
    def active(self) -> bool:
        """Is a join in progress (so an EDU about a stranger may be about a new member)?"""
        return self._joins > 0

    def __len__(self) -> int:
        return len(self._held)

    def join_started(self) -> None:
        self._joins += 1

    def join_ended(self) -> list[HeldEdu]:
        """One join ended (completed or failed): everything held, to be checked again."""
        self._joins = max(0, self._joins - 1)
        self.generation += 1
        held = list(self._held.values())
        self._held.clear()
        self._per_origin.clear()
        return held

    def take(self, origin: str, user_id: str) -> HeldEdu | None:
        """Remove and return what is held about ``user_id`` from ``origin``."""
        held = self._held.pop((origin, user_id), None)
        if held is not None:
            self._per_origin[origin] -= 1
        return held

    def hold(
        self, origin: str, user_id: str, txn_id: str, fields: dict[str, JsonValue | None]
    ) -> bool:
        """Hold (merging with what is held for the user); False when a bound is reached."""
        key = (origin, user_id)
        held = self._held.get(key)
        if held is None:
            if (
                len(self._held) >= self._max_total
                or self._per_origin.get(origin, 0) >= self._max_per_origin
            ):
                return False
            held = self._held[key] = HeldEdu(origin, user_id, txn_id)
            self._per_origin[origin] = self._per_origin.get(origin, 0) + 1
        held.txn_id = txn_id
        held.fields.update(fields)
        return True
