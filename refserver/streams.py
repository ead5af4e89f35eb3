"""Stream tokens for /sync ``since``/``next_batch`` and /messages ``from``/``to`` (pure).

A token names a position in each local stream: ``s<events>_<profiles>``. Events are ordered
by local arrival (``stream_ordering``); profile changes by their write position. Tokens are
opaque to clients; only this module parses them.
"""

from __future__ import annotations

from dataclasses import dataclass

from refserver.errors import M_INVALID_PARAM, ProtocolError


class InvalidToken(ProtocolError, ValueError):
    """A ``since``/``from`` stream token this server did not issue."""

    errcode = M_INVALID_PARAM
    status = 400


@dataclass(frozen=True, order=True)
class StreamToken:
    events: int
    profiles: int = 0

    def __str__(self) -> str:
        return f"s{self.events}_{self.profiles}"

    @classmethod
    def parse(cls, text: str) -> StreamToken:
        try:
            if not text.startswith("s"):
                raise ValueError
            events, _, profiles = text[1:].partition("_")
            token = cls(int(events), int(profiles or 0))
        except ValueError:
            raise InvalidToken(f"invalid stream token {text!r}") from None
        if token.events < 0 or token.profiles < 0:
            raise InvalidToken(f"invalid stream token {text!r}")
        return token
