"""Authorisation rule 5: ``m.room.member`` events (pure).

Spec: /rooms/v10, /rooms/v11 (rule 4) and /rooms/v12 (rule 5) §"Authorisation rules";
comments use the v12 numbering (see :mod:`refserver.events.auth_state`).

Two parts are deliberately not done here (see :mod:`refserver.events.auth_rules`): the
signature half of rule 5.2 and third-party invites (rule 5.4.1, refused).
"""

from __future__ import annotations

from refserver.events.auth_state import AUTHORISING_USER, AuthState, reject
from refserver.events.model import Event


def check_member(event: Event, st: AuthState) -> None:
    """Rule 5: "If type is m.room.member". Returns if allowed, raises AuthError if not."""
    # 5.1. If there is no state_key property, or no membership property in content, reject.
    target = event.state_key
    if target is None or "membership" not in event.content:
        reject(event, "5.1", "m.room.member needs a state_key and content.membership")
    # 5.2. join_authorised_via_users_server must be signed by that user's server: checked
    #      with the other signatures, not here (module docstring).
    membership = event.content["membership"]
    sender = event.sender
    if membership == "join":
        _check_join(event, st, target)
    elif membership == "invite":
        _check_invite(event, st, target)
    elif membership == "leave":
        # 5.5.1. If the sender matches state_key, allow if and only if that user's current
        #        membership state is invite, join, or knock.
        if sender == target:
            if st.membership(sender) in ("invite", "join", "knock"):
                return
            reject(event, "5.5.1", "only an invited, joined or knocking user may leave")
        # 5.5.2. If the sender's current membership state is not join, reject.
        if st.membership(sender) != "join":
            reject(event, "5.5.2", "sender is not joined to the room")
        sender_power = st.power(sender)
        # 5.5.3. If the target user's current membership state is ban, and the sender's power
        #        level is less than the ban level, reject.
        if st.membership(target) == "ban" and sender_power < st.level("ban"):
            reject(event, "5.5.3", "sender's power level is below the ban level (unban)")
        # 5.5.4. If the sender's power level is greater than or equal to the kick level, and
        #        the target user's power level is less than the sender's power level, allow.
        if sender_power >= st.level("kick") and st.power(target) < sender_power:
            return
        # 5.5.5. Otherwise, reject.
        reject(event, "5.5.5", "sender may not kick the target user")
    elif membership == "ban":
        # 5.6.1. If the sender's current membership state is not join, reject.
        if st.membership(sender) != "join":
            reject(event, "5.6.1", "sender is not joined to the room")
        # 5.6.2. If the sender's power level is greater than or equal to the ban level, and
        #        the target user's power level is less than the sender's power level, allow.
        sender_power = st.power(sender)
        if sender_power >= st.level("ban") and st.power(target) < sender_power:
            return
        # 5.6.3. Otherwise, reject.
        reject(event, "5.6.3", "sender may not ban the target user")
    elif membership == "knock":
        # 5.7.1. If the join_rule is anything other than knock or knock_restricted, reject.
        if st.join_rule() not in ("knock", "knock_restricted"):
            reject(event, "5.7.1", "the room's join rule does not allow knocking")
        # 5.7.2. If sender does not match state_key, reject.
        if sender != target:
            reject(event, "5.7.2", "users may only knock for themselves")
        # 5.7.3. If the sender's current membership is not ban, invite, or join, allow.
        if st.membership(sender) not in ("ban", "invite", "join"):
            return
        # 5.7.4. Otherwise, reject.
        reject(event, "5.7.4", "banned, invited or joined users may not knock")
    else:
        # 5.8. Otherwise, the membership is unknown. Reject.
        reject(event, "5.8", f"unknown membership {membership!r}")


def _check_join(event: Event, st: AuthState, target: str) -> None:
    """Rule 5.3: "If membership is join"."""
    create = st.create
    # 5.3.1. If the only previous event is an m.room.create and the state_key is the sender
    #        of the m.room.create (v10: the creator), allow.
    creator = (
        create.sender if st.room_version.implicit_room_creator else create.content.get("creator")
    )
    if event.prev_event_ids == [create.event_id] and target == creator:
        return
    # 5.3.2. If the sender does not match state_key, reject.
    if event.sender != target:
        reject(event, "5.3.2", "users may only join for themselves")
    current = st.membership(target)
    # 5.3.3. If the sender is banned, reject.
    if current == "ban":
        reject(event, "5.3.3", "sender is banned from the room")
    join_rule = st.join_rule()
    # 5.3.4. If the join_rule is invite or knock then allow if membership state is invite or
    #        join.
    if join_rule in ("invite", "knock"):
        if current in ("invite", "join"):
            return
        reject(event, "5.3.4", f"join rule is {join_rule} and the sender is not invited")
    # 5.3.5. If the join_rule is restricted or knock_restricted:
    if join_rule in ("restricted", "knock_restricted"):
        # 5.3.5.1. If membership state is join or invite, allow.
        if current in ("invite", "join"):
            return
        # 5.3.5.2. If the join_authorised_via_users_server key in content is not a user with
        #          sufficient permission to invite other users or is not a joined member of
        #          the room, reject.
        authoriser = event.content.get(AUTHORISING_USER)
        if not isinstance(authoriser, str) or st.membership(authoriser) != "join":
            reject(event, "5.3.5.2", "restricted join not authorised by a joined member")
        if st.power(authoriser) < st.level("invite"):
            reject(event, "5.3.5.2", "authorising user may not invite")
        # 5.3.5.3. Otherwise, allow.
        return
    # 5.3.6. If the join_rule is public, allow.
    if join_rule == "public":
        return
    # 5.3.7. Otherwise, reject.
    reject(event, "5.3.7", f"join rule {join_rule!r} does not allow joining")


def _check_invite(event: Event, st: AuthState, target: str) -> None:
    """Rule 5.4: "If membership is invite"."""
    # 5.4.1. If content has a third_party_invite property: refused (module docstring).
    if "third_party_invite" in event.content:
        reject(event, "5.4.1", "third-party invites are not supported")
    # 5.4.2. If the sender's current membership state is not join, reject.
    if st.membership(event.sender) != "join":
        reject(event, "5.4.2", "sender is not joined to the room")
    # 5.4.3. If target user's current membership state is join or ban, reject.
    if st.membership(target) in ("join", "ban"):
        reject(event, "5.4.3", f"target is already {st.membership(target)}")
    # 5.4.4. If the sender's power level is greater than or equal to the invite level, allow.
    if st.power(event.sender) >= st.level("invite"):
        return
    # 5.4.5. Otherwise, reject.
    reject(event, "5.4.5", "sender's power level is below the invite level")
