"""matrix-nio drives a real refserver: the whole account + profile flow (issue: foundation)."""

from __future__ import annotations

import asyncio

import nio

from tests.servers import ServerProcess


def test_nio_register_login_whoami_profile_logout(server: ServerProcess, username: str) -> None:
    async def flow() -> None:
        client = nio.AsyncClient(server.base_url, username)
        try:
            reg = await client.register(username, "s3cret-pass", "nio device")
            assert isinstance(reg, nio.RegisterResponse), reg
            user_id = reg.user_id
            assert user_id == f"@{username}:{server.server_name}"

            login = await client.login("s3cret-pass", device_name="nio laptop")
            assert isinstance(login, nio.LoginResponse), login
            assert login.user_id == user_id and login.device_id and login.access_token

            who = await client.whoami()
            assert isinstance(who, nio.WhoamiResponse), who
            assert who.user_id == user_id and who.device_id == login.device_id

            set_name = await client.set_displayname("Nio Tester")
            assert isinstance(set_name, nio.ProfileSetDisplayNameResponse), set_name
            set_avatar = await client.set_avatar("mxc://example.org/AvatarId")
            assert isinstance(set_avatar, nio.ProfileSetAvatarResponse), set_avatar

            profile = await client.get_profile()
            assert isinstance(profile, nio.ProfileGetResponse), profile
            assert profile.displayname == "Nio Tester"
            assert profile.avatar_url == "mxc://example.org/AvatarId"
            name = await client.get_displayname()
            assert (
                isinstance(name, nio.ProfileGetDisplayNameResponse)
                and name.displayname == "Nio Tester"
            )

            logout = await client.logout()
            assert isinstance(logout, nio.LogoutResponse), logout
            # The old token is dead: whoami with it now fails with M_UNKNOWN_TOKEN.
            client.access_token = login.access_token
            after = await client.whoami()
            assert isinstance(after, nio.WhoamiError) and after.status_code == "M_UNKNOWN_TOKEN"
        finally:
            await client.close()

    asyncio.run(flow())


def test_nio_sees_extended_fields_as_other_info(server: ServerProcess, username: str) -> None:
    """nio has no MSC4133 API: m.tz set through a raw call shows up in other_info."""
    from urllib.parse import quote

    async def flow() -> None:
        client = nio.AsyncClient(server.base_url, username)
        try:
            await client.register(username, "pw-pw-pw")
            path = f"/_matrix/client/v3/profile/{quote(client.user_id)}/m.tz"
            resp = await client._send(
                nio.responses.EmptyResponse, "PUT", path, '{"m.tz": "Europe/Paris"}'
            )
            assert isinstance(resp, nio.responses.EmptyResponse), resp
            profile = await client.get_profile()
            assert isinstance(profile, nio.ProfileGetResponse), profile
            assert profile.other_info == {"m.tz": "Europe/Paris"}
        finally:
            await client.close()

    asyncio.run(flow())
