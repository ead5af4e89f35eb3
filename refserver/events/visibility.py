"""Which room events a user may see: history visibility (pure).

Spec: CS API module "Room History Visibility" (content/client-server-api/modules/
history_visibility.md), §"Server behaviour":

    By default if no ``history_visibility`` is set, or if the value is not understood, the
    visibility is assumed to be ``shared``. The rules governing whether a user is allowed to
    see an event depend on the state of the room *at that event*.

    1. If the ``history_visibility`` was set to ``world_readable``, allow.
    2. If the user's ``membership`` was ``join``, allow.
    3. If ``history_visibility`` was set to ``shared``, and the user joined the room at any
       point after the event was sent, allow.
    4. If the user's ``membership`` was ``invite``, and the ``history_visibility`` was set to
       ``invited``, allow.
    5. Otherwise, deny.

and for leaving: "After a user has left a room, they may see any events which they were
allowed to see before they left the room, but no events received after they left." That
needs no extra rule: an event sent after the leave has membership ``leave`` at the event,
so only rule 1 (or rule 3, if the user joined again later) can allow it.

Two kinds of state event are judged on the state before *or* after them (same section):
``m.room.history_visibility`` events ("if the ``history_visibility`` before *or* after the
event would allow them to see it"), and the user's own ``m.room.member`` events ("if their
``membership`` before *or* after the event would allow them to see it").

Terms used here: the *state before* an event is the room state the event was authorised
against (for a message, also the state at it; a state event changes the state after it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from refserver.events.model import MEMBER, Event

HISTORY_VISIBILITY = "m.room.history_visibility"

WORLD_READABLE: Final = "world_readable"
SHARED: Final = "shared"
INVITED: Final = "invited"
JOINED: Final = "joined"
#: "By default if no history_visibility is set, or if the value is not understood, the
#: visibility is assumed to be shared."
DEFAULT_HISTORY_VISIBILITY: Final = SHARED
#: Least to most restrictive; used to pick the more permissive of before/after.
VISIBILITY_ORDER: Final = (WORLD_READABLE, SHARED, INVITED, JOINED)
#: Most to least "inside the room"; used to pick the more permissive of before/after.
MEMBERSHIP_ORDER: Final = ("join", "invite", "knock", "leave", "ban")


def history_visibility_of(content: Mapping[str, Any] | None) -> str:
    """The visibility named by an ``m.room.history_visibility`` content (None: no such
    event in the state). Missing or unknown values mean ``shared``."""
    value = (content or {}).get("history_visibility")
    return value if value in VISIBILITY_ORDER else DEFAULT_HISTORY_VISIBILITY


def is_event_visible_to(
    user_id: str,
    *,
    history_visibility: str,
    membership_at_event: str | None,
    currently_joined: bool,
) -> bool:
    """Rules 1–5 of "Server behaviour", for ``user_id`` and an ordinary event.

    Args:
        user_id: the user asking (kept for call-site clarity; the rules need only the rest).
        history_visibility: the room's visibility at the event (unknown values → shared).
        membership_at_event: the user's membership at the event; None if they had none.
        currently_joined: the user is joined to the room now. Rule 3 asks whether "the user
            joined the room at any point after the event was sent"; being joined now is the
            stand-in: a user joined now either was joined at the event (rule 2) or joined
            after it. Synapse makes the same approximation, so a user who joined and then
            left loses the ``shared`` history from before their join, but keeps everything
            from while they were joined (rule 2).
    """
    del user_id
    visibility = history_visibility if history_visibility in VISIBILITY_ORDER else SHARED
    # 1. If the history_visibility was set to world_readable, allow.
    if visibility == WORLD_READABLE:
        return True
    # 2. If the user's membership was join, allow.
    if membership_at_event == "join":
        return True
    # 3. If history_visibility was set to shared, and the user joined the room at any point
    #    after the event was sent, allow.
    if visibility == SHARED and currently_joined:
        return True
    # 4. If the user's membership was invite, and the history_visibility was set to
    #    invited, allow.
    # 5. Otherwise, deny.
    return membership_at_event == "invite" and visibility == INVITED


def is_visible(
    event: Event,
    user_id: str,
    *,
    history_visibility_before: str,
    membership_before: str | None,
    currently_joined: bool,
) -> bool:
    """May ``user_id`` see ``event``? Applies the two before-or-after special cases.

    Args:
        event: the event to check.
        user_id: the user asking.
        history_visibility_before: the visibility in the state *before* the event.
        membership_before: the user's membership in the state before the event (None if
            they had no member event).
        currently_joined: see :func:`is_event_visible_to`.
    """
    visibility = _more_permissive_visibility(history_visibility_before, event)
    membership = membership_before
    if event.type == MEMBER and event.state_key == user_id:
        after = event.membership
        # Beyond the spec's wording, as Synapse does: a user always sees their own member
        # event that ends an invite or a join (a rejected invite, a leave, a kick, a ban), or
        # a client would never see the room move to "leave" in /sync.
        if membership_before in ("join", "invite") and after != membership_before:
            return True
        membership = _more_permissive_membership(membership_before, after)
    return is_event_visible_to(
        user_id,
        history_visibility=visibility,
        membership_at_event=membership,
        currently_joined=currently_joined,
    )


def _more_permissive_visibility(before: str, event: Event) -> str:
    before = before if before in VISIBILITY_ORDER else SHARED
    if event.type != HISTORY_VISIBILITY or event.state_key != "":
        return before
    after = history_visibility_of(event.content)
    return min(before, after, key=VISIBILITY_ORDER.index)


def _more_permissive_membership(before: str | None, after: str | None) -> str | None:
    ranked = [m for m in (before, after) if m in MEMBERSHIP_ORDER]
    if not ranked:
        return None
    return min(ranked, key=MEMBERSHIP_ORDER.index)
