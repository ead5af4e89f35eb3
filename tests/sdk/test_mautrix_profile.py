"""mautrix-python drives a real refserver: login, get/set displayname, extended fields."""

from __future__ import annotations

import asyncio

from mautrix.api import HTTPAPI, Method, Path
from mautrix.client import ClientAPI
from mautrix.errors import MNotFound
from mautrix.types import ContentURI, MatrixUserIdentifier, UserID, UserIdentifier

from tests.servers import ServerProcess


def test_mautrix_get_and_set_displayname(server: ServerProcess, username: str) -> None:
    user_id, _ = server.register(username, "mautrix-pw")

    async def flow() -> None:
        api = HTTPAPI(base_url=server.base_url)
        client = ClientAPI(mxid=UserID(user_id), api=api)
        try:
            login = await client.login(
                identifier=UserIdentifier(MatrixUserIdentifier(user=username)),
                password="mautrix-pw",
                device_name="mautrix",
            )
            assert login.user_id == user_id and login.device_id
            api.token = login.access_token
            # An unset display name: mautrix turns our 404 M_NOT_FOUND into None.
            assert await client.get_displayname(UserID(user_id)) is None
            await client.set_displayname("Mau Trix")
            assert await client.get_displayname(UserID(user_id)) == "Mau Trix"
            # Unchanged name: mautrix skips the PUT (check_current) and must not fail.
            await client.set_displayname("Mau Trix")
            await client.set_avatar_url(ContentURI("mxc://example.org/mau"))
            assert await client.get_avatar_url(UserID(user_id)) == "mxc://example.org/mau"

            # Extended profile field through a raw request, read back via get_profile.
            await api.request(Method.PUT, Path.v3.profile[user_id]["m.tz"], {"m.tz": "Asia/Tokyo"})
            profile = await client.get_profile(UserID(user_id))
            assert profile.displayname == "Mau Trix"
            assert profile["m.tz"] == "Asia/Tokyo"
            try:
                await api.request(Method.GET, Path.v3.profile[user_id]["org.example.missing"])
            except MNotFound:
                pass
            else:
                raise AssertionError("missing field must be 404 M_NOT_FOUND")

            # Clearing the display name with null (what mautrix sends for None) removes it.
            await client.set_displayname(None)
            assert await client.get_displayname(UserID(user_id)) is None
        finally:
            await api.session.close()

    asyncio.run(flow())
