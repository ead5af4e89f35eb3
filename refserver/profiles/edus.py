"""MSC4259 profile update EDUs: building, coalescing, pacing and checking (pure).

MSC4259 ("Profile Update EDUs for Federation", unstable type ``uk.tcpip.msc4259.profile``):
when a user changes their profile, their server MAY send an EDU to servers sharing a room
with them, containing "only the changed fields" (``null`` = removed); servers "should
rate-limit EDU generation" and "MAY delay notifications to merge several field changes into
one EDU"; receivers MAY cache the values and "MUST NOT forward these EDUs".

This module has no I/O and no clock: times are arguments. It decides

- *when* a pending ``(destination, user, field)`` may be sent (:class:`FieldPolicy`,
  :func:`ready_at`: leading-edge rate limiting — a change goes at once unless an EDU about
  the same user's field went to the destination less than ``min_interval_s`` ago; changes
  inside the interval merge into one trailing EDU, shaped by a debounce and a maximum
  delay);
- where a destination's cursor may move after a transaction (:func:`cursor_after`);
- *what* goes on the wire (:func:`build_edus`: one EDU per user merging every ready field);
- whether an incoming EDU is acceptable (:func:`parse_incoming_edu`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from refserver.crypto.canonical_json import CanonicalJsonError, check_canonical_values
from refserver.ids import InvalidId, UserId
from refserver.profiles.fields import (
    MAX_PROFILE_BYTES,
    ProfileFieldError,
    check_key_name,
    check_profile_size,
    check_value,
)
from refserver.types import JsonDict, JsonValue

#: MSC4259's unstable EDU type, and the stable name it proposes.
UNSTABLE_EDU_TYPE = "uk.tcpip.msc4259.profile"
STABLE_EDU_TYPE = "m.profile"
EDU_TYPES = (UNSTABLE_EDU_TYPE, STABLE_EDU_TYPE)


@dataclass(frozen=True)
class FieldPolicy:
    """When changes of one field may go out (docs/msc4259.md §4.1).

    - ``min_interval_s``: at most one EDU about the same user's field per interval, per
      destination (per-field rate limit: ``m.call`` stricter than ``displayname``). A change
      with no EDU sent in the last interval is the *leading edge* and goes at once;
    - ``debounce_s``: a change inside the interval is *trailing*: it waits for more changes
      to merge until this long after the latest one (and at least until the interval ends);
    - ``max_delay_s``: but debouncing never postpones a trailing change longer than this
      after its first change (a field that changes every second still goes out).
    """

    debounce_s: float
    max_delay_s: float
    min_interval_s: float


@dataclass(frozen=True)
class DirtyField:
    """A field owed to a destination: its unsent changes were made between ``first_change``
    and ``last_change`` (seconds), at stream positions ``first_pos`` to ``stream_pos``;
    ``changes`` of them (all but one are merged away)."""

    user_id: str
    field: str
    first_change: float
    last_change: float
    stream_pos: int
    first_pos: int = 0
    changes: int = 1


def ready_at(dirty: DirtyField, policy: FieldPolicy, last_sent: float | None) -> float:
    """The earliest time ``dirty`` may be sent.

    ```
    if never sent, or first_change >= last_sent + min_interval_s:    # leading edge
        ready = first_change                                        # at once
    else:                                                           # trailing edge
        ready = max(last_sent + min_interval_s,
                    min(last_change + debounce_s, first_change + max_delay_s))
    ```
    """
    if last_sent is None or dirty.first_change >= last_sent + policy.min_interval_s:
        return dirty.first_change
    debounced = min(dirty.last_change + policy.debounce_s, dirty.first_change + policy.max_delay_s)
    return max(debounced, last_sent + policy.min_interval_s)


class PendingPosition(Protocol):
    """Where a pending (user, field) starts in the stream (a :class:`DirtyField`, or the row
    storage reads it from)."""

    @property
    def user_id(self) -> str: ...
    @property
    def field(self) -> str: ...
    @property
    def first_pos(self) -> int: ...


def cursor_after(
    pending: Iterable[PendingPosition], sent: Iterable[tuple[str, str]], *, cursor: int, head: int
) -> int:
    """Where a destination's cursor may move once a transaction carrying ``sent``
    ``(user, field)`` pairs (values read at stream position ``head``) is acknowledged: up to
    the head, but never past the first change of a field still pending."""
    done = set(sent)
    held = [d.first_pos - 1 for d in pending if (d.user_id, d.field) not in done]
    return max(cursor, min([head, *held]))


@dataclass(frozen=True)
class Selection:
    """What :func:`select_ready` picked: fields grouped per user (at most ``limit`` users)
    and when the next not-yet-ready field becomes ready (None: nothing left)."""

    by_user: dict[str, list[DirtyField]]
    next_ready: float | None


def select_ready(
    dirty: Iterable[DirtyField],
    *,
    now: float,
    policy_for: Mapping[str, FieldPolicy] | None = None,
    default_policy: FieldPolicy,
    last_sent: Mapping[tuple[str, str], float],
    limit_users: int,
) -> Selection:
    """Pick the fields ready at ``now``, for at most ``limit_users`` users (one EDU each)."""
    policies = policy_for or {}
    by_user: dict[str, list[DirtyField]] = {}
    next_ready: float | None = None
    for d in sorted(dirty, key=lambda d: (d.first_change, d.user_id, d.field)):
        at = ready_at(d, policies.get(d.field, default_policy), last_sent.get((d.user_id, d.field)))
        if at > now or (d.user_id not in by_user and len(by_user) >= limit_users):
            when = at if at > now else now
            next_ready = when if next_ready is None else min(next_ready, when)
            continue
        by_user.setdefault(d.user_id, []).append(d)
    return Selection(by_user, next_ready)


def build_edu_content(user_id: str, values: Mapping[str, JsonValue | None]) -> JsonDict:
    """MSC4259 EDU content: ``{"user_id", "fields": {field: value | null}}``."""
    return {"user_id": user_id, "fields": dict(sorted(values.items()))}


def build_edus(contents: Sequence[JsonDict], edu_types: Sequence[str]) -> list[JsonDict]:
    """Wrap each content as ``{"edu_type", "content"}`` once per configured type.

    The MSC's example writes ``"type"``; the transaction format (server-server API,
    ``definitions/edu.yaml``) calls the key ``edu_type``, which is what we send.
    """
    return [{"edu_type": t, "content": c} for c in contents for t in edu_types]


class DroppedEdu(ValueError):
    """An incoming profile EDU we refuse; ``reason`` labels the drop counter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ProfileUpdate:
    """A checked incoming EDU: ``fields`` maps field → value, None meaning removed."""

    user_id: str
    fields: dict[str, JsonValue | None]


def parse_incoming_edu(content: JsonValue, *, origin: str) -> ProfileUpdate:
    """Check an incoming profile EDU's content.

    - ``user_id`` must be a user ID *on the sending server*: EDUs are never forwarded, so one
      about another server's user is forged (the same check Synapse applies to ``m.typing``);
    - ``fields`` must be an object of valid profile keys whose values follow the profile rules
      (``displayname`` a string, ``avatar_url`` an mxc URI, ``m.tz`` a string, any canonical
      JSON otherwise), ``null`` meaning "removed";
    - the update must fit in a profile (64 KiB of canonical JSON, MSC4133).
    """
    if not isinstance(content, dict):
        raise DroppedEdu("malformed", "EDU content is not an object")
    user_id = content.get("user_id")
    try:
        user = UserId.parse(user_id)  # type: ignore[arg-type]
    except InvalidId:
        raise DroppedEdu("malformed", f"invalid user_id {user_id!r}") from None
    if user.server_name != origin:
        raise DroppedEdu("wrong_origin", f"{user_id} is not a user of {origin}")
    fields = content.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise DroppedEdu("malformed", "fields must be a non-empty object")
    try:
        check_canonical_values(fields)
    except CanonicalJsonError as exc:
        raise DroppedEdu("invalid_field", str(exc)) from None
    out: dict[str, JsonValue | None] = {}
    for key, value in fields.items():
        try:
            check_key_name(key)
            if value is not None:
                check_value(key, value)
        except ProfileFieldError as exc:
            reason = "too_large" if exc.errcode == "M_KEY_TOO_LARGE" else "invalid_field"
            raise DroppedEdu(reason, f"field {key!r}: {exc}") from None
        out[key] = value
    try:
        check_profile_size({k: v for k, v in out.items() if v is not None})
    except ProfileFieldError:
        raise DroppedEdu("too_large", f"fields exceed {MAX_PROFILE_BYTES} bytes") from None
    return ProfileUpdate(str(user), out)
