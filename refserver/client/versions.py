"""Discovery: /versions, .well-known, /capabilities (CS API "Server discovery",
"Capabilities negotiation")."""

from __future__ import annotations

from quart import Blueprint, request

from refserver.client.auth import R0, V3, Authenticator
from refserver.events.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS
from refserver.profiles.fields import AVATAR_URL, DISPLAYNAME, FieldPolicy
from refserver.types import JsonDict

#: Every spec version implemented, listed one by one: matrix-js-sdk and mautrix match
#: exact strings, and js-sdk's AutoDiscovery needs one of v1.1–v1.13.
SPEC_VERSIONS = [f"v1.{n}" for n in range(1, 17)]
UNSTABLE_FEATURES: JsonDict = {
    "uk.tcpip.msc4133": True,  # unstable extended-profile endpoints work
    "uk.tcpip.msc4133.stable": True,  # and the /v3 ones
    "org.matrix.msc4429": True,  # profile updates in /sync (users section)
}


def discovery_routes(
    *, client_base_url: str, policy: FieldPolicy, auth: Authenticator
) -> Blueprint:
    bp = Blueprint("client_discovery", __name__)

    @bp.get("/_matrix/client/versions")
    async def get_versions() -> JsonDict:
        """GET /_matrix/client/versions (an Authorization header, if sent, is ignored)."""
        return {"versions": SPEC_VERSIONS, "unstable_features": UNSTABLE_FEATURES}

    @bp.get("/.well-known/matrix/client")
    async def get_wellknown() -> JsonDict:
        """GET /.well-known/matrix/client"""
        return {"m.homeserver": {"base_url": client_base_url}}

    @bp.get(f"{V3}/capabilities")
    @bp.get(f"{R0}/capabilities")
    async def get_capabilities() -> JsonDict:
        """GET /_matrix/client/v3/capabilities.

        ``m.set_displayname`` / ``m.set_avatar_url`` are deprecated but must still say
        ``enabled: false`` when ``m.profile_fields`` forbids those fields (v1.16).
        """
        await auth.require_user(request)
        profile_fields = policy.capability()
        return {
            "capabilities": {
                "m.profile_fields": profile_fields,
                "uk.tcpip.msc4133.profile_fields": profile_fields,
                "m.set_displayname": {"enabled": policy.may_edit(DISPLAYNAME)},
                "m.set_avatar_url": {"enabled": policy.may_edit(AVATAR_URL)},
                # POST /account/password is not implemented, so say so.
                "m.change_password": {"enabled": False},
                "m.3pid_changes": {"enabled": False},
                "m.room_versions": {
                    "default": DEFAULT_ROOM_VERSION.identifier,
                    "available": {v: "stable" for v in KNOWN_ROOM_VERSIONS},
                },
            }
        }

    return bp
