"""MSC4429 ``users`` in refserver's /sync with a peer that sends no MSC4259 EDUs (Synapse).

Synapse sends no profile EDUs, so refserver learns a Synapse user's profile from the
``m.room.member`` events and from one ``query/profile`` shortly after the user starts sharing
a room with a refserver user (docs/msc4259.md §6.14). What is checked is what a client sees:
alice's (refserver) ``/sync`` ``users`` section with the filter
``{"org.matrix.msc4429.profile_fields": {"ids": [...]}}``.
"""

from __future__ import annotations

import itertools
import json
import secrets
from typing import Any

import pytest

from refserver.types import JsonDict
from tests.servers import ServerProcess
from tests.synapse.peer import MatrixClient, SynapsePeer, is_member, poll, q

pytestmark = pytest.mark.synapse

CUSTOM_FIELD = "org.example.lang"
FIELDS = ["displayname", "avatar_url", CUSTOM_FIELD]

_names = itertools.count()


def localpart(prefix: str) -> str:
    return f"{prefix}{next(_names)}_{secrets.token_hex(3)}"


def profile_sync(client: MatrixClient, since: str | None) -> tuple[dict[str, Any], str]:
    """One /sync with the MSC4429 filter: (``users`` section, ``next_batch``)."""
    params: dict[str, Any] = {
        "filter": json.dumps({"org.matrix.msc4429.profile_fields": {"ids": FIELDS}}),
        "timeout": 1000 if since else 0,
        "since": since,
    }
    body = client.ok("GET", "/v3/sync", **params)
    users: dict[str, Any] = body.get("users") or {}
    assert body.get("org.matrix.msc4429.users") == (users or None)
    return users, str(body["next_batch"])


def wait_for_initial_profile(alice: MatrixClient, bob: MatrixClient, expected: JsonDict) -> None:
    """Poll alice's initial /sync until bob's ``profile_updates`` equal ``expected``."""
    seen: list[Any] = []

    def initial_sync_has_bobs_profile() -> bool:
        users, _ = profile_sync(alice, None)
        seen.append(users.get(bob.user_id))
        return (users.get(bob.user_id) or {}).get("profile_updates") == expected

    try:
        poll(initial_sync_has_bobs_profile, f"{expected} in alice's initial /sync")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {seen[-3:]}") from None


def test_a_synapse_users_profile_reaches_the_users_section_of_refserver_sync(
    refserver: ServerProcess, synapse: SynapsePeer
) -> None:
    alice = MatrixClient.register(refserver.base_url, localpart("alice"))
    bob = MatrixClient.register(synapse.base_url, localpart("bob"))
    bob.set_displayname("Bob on Synapse")
    bob.ok("PUT", f"/v3/profile/{q(bob.user_id)}/{CUSTOM_FIELD}", json_body={CUSTOM_FIELD: "nl"})

    room_id = alice.create_room(room_version="12", preset="private_chat", name="msc4429")
    alice.ok("POST", f"/v3/rooms/{q(room_id)}/invite", json_body={"user_id": bob.user_id})
    bob.wait_for(lambda c: room_id in c.invites, f"the invite to {room_id}")
    bob.ok("POST", f"/v3/rooms/{q(room_id)}/join", json_body={})
    alice.wait_for_event(room_id, is_member(bob.user_id, "join"), "bob's join")

    # Initial syncs: the displayname comes from bob's join event at once, the custom field
    # from the query/profile refserver sends after join_fetch_grace_s.
    wait_for_initial_profile(alice, bob, {"displayname": "Bob on Synapse", CUSTOM_FIELD: "nl"})

    # A later displayname change on Synapse travels as a member event only.
    _, since = profile_sync(alice, None)
    bob.set_displayname("Bob Renamed")
    changes: list[Any] = []

    def incremental_sync_has_the_new_name() -> bool:
        nonlocal since
        users, since = profile_sync(alice, since)
        if bob.user_id in users:
            changes.append(users[bob.user_id]["profile_updates"])
        return any(c and c.get("displayname") == "Bob Renamed" for c in changes)

    try:
        poll(incremental_sync_has_the_new_name, "bob's new displayname in alice's /sync")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; seen: {changes}") from None
    assert alice.ok("GET", f"/v3/profile/{q(bob.user_id)}") == {
        "displayname": "Bob Renamed",
        CUSTOM_FIELD: "nl",
    }


def test_joining_a_synapse_room_brings_its_members_profiles_into_refserver_sync(
    refserver: ServerProcess, synapse: SynapsePeer
) -> None:
    """The other direction: a refserver user joins a room on Synapse, whose members are
    known to refserver only from the send_join state."""
    alice = MatrixClient.register(refserver.base_url, localpart("alice"))
    bob = MatrixClient.register(synapse.base_url, localpart("bob"))
    bob.set_displayname("Bob at home")
    bob.ok("PUT", f"/v3/profile/{q(bob.user_id)}/{CUSTOM_FIELD}", json_body={CUSTOM_FIELD: "pt"})
    room_id = bob.create_room(preset="public_chat", name="made on synapse")
    alice.ok("POST", f"/v3/join/{q(room_id)}", json_body={}, via=synapse.server_name)

    wait_for_initial_profile(alice, bob, {"displayname": "Bob at home", CUSTOM_FIELD: "pt"})
