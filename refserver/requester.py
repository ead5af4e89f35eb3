"""Who is asking: the authenticated user behind a client request (pure).

The client edge authenticates the access token (CS API "Client Authentication") and hands a
:class:`Requester` to the services; no service needs the account service to know who asks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Requester:
    """The authenticated user behind a client request."""

    user_id: str
    device_id: str
