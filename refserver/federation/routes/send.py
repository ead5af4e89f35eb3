"""PUT /_matrix/federation/v1/send/{txnId} (server-server API §"Transactions")."""

from __future__ import annotations

from quart import Blueprint, request

from refserver.federation.auth import FederationAuthenticator
from refserver.federation.inbound import TransactionHandler
from refserver.types import JsonDict


def send_routes(auth: FederationAuthenticator, transactions: TransactionHandler) -> Blueprint:
    bp = Blueprint("federation_send", __name__)

    @bp.put("/_matrix/federation/v1/send/<txn_id>")
    async def send_transaction(txn_id: str) -> JsonDict:
        origin, body = await auth.authenticate(request, strict_numbers=False)
        return await transactions.on_send(origin, txn_id, body)

    return bp
