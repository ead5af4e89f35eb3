"""User-interactive authentication sessions for /register (pure; time passed in).

CS API "User-Interactive Authentication API". refserver offers one flow, ``m.login.dummy``:
a request without ``auth`` gets 401 with ``{flows, params, session}``; a dummy stage
completes it, with or without a session (matrix-nio sends none).
"""

from __future__ import annotations

import secrets

from refserver.errors import M_UNKNOWN, MatrixError
from refserver.types import JsonDict, JsonValue

LOGIN_DUMMY = "m.login.dummy"
FLOWS: list[JsonDict] = [{"stages": [LOGIN_DUMMY]}]
#: Sessions are forgotten after this long unused.
SESSION_LIFETIME_S = 30 * 60.0


class UiaSessions:
    def __init__(self) -> None:
        self._sessions: dict[str, float] = {}  # session ID → expiry (monotonic seconds)

    def challenge(
        self, now: float, *, session: str | None = None, error: str | None = None
    ) -> MatrixError:
        """The 401 answer: flows, params, session (plus errcode/error after a failed stage)."""
        self._expire(now)
        if session is None or session not in self._sessions:
            session = secrets.token_urlsafe(16)
        self._sessions[session] = now + SESSION_LIFETIME_S
        body: JsonDict = {"flows": FLOWS, "params": {}, "session": session}
        if error is not None:
            body.update(errcode=M_UNKNOWN, error=error)
        return MatrixError(401, M_UNKNOWN, error or "user-interactive auth required", body=body)

    def complete(self, auth: JsonValue, now: float) -> None:
        """Check the ``auth`` dict; raise the 401 challenge unless the dummy stage is done."""
        if auth is None:
            raise self.challenge(now)
        if not isinstance(auth, dict):
            raise self.challenge(now, error="auth must be an object")
        session = auth.get("session")
        if session is not None and not isinstance(session, str):
            raise self.challenge(now, error="session must be a string")
        if auth.get("type") != LOGIN_DUMMY:
            raise self.challenge(
                now, session=session, error=f"unsupported auth type {auth.get('type')!r}"
            )
        # A dummy stage with a session we never issued (or that expired) still completes:
        # the stage proves nothing either way, and a restart must not strand clients.
        if session is not None:
            self._sessions.pop(session, None)

    def _expire(self, now: float) -> None:
        self._sessions = {s: exp for s, exp in self._sessions.items() if exp > now}
