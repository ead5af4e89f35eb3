"""GET /metrics: Prometheus text exposition of this instance's registry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response

from refserver.metrics import Metrics


def metrics_routes(metrics: Metrics, before_scrape: Callable[[], Awaitable[None]]) -> Blueprint:
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    async def get_metrics() -> Response:
        await before_scrape()
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    return bp
