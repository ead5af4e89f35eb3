"""Prometheus metrics (prometheus-client), one registry per server instance.

No module-level collectors (prometheus-client's default REGISTRY is global state): the
wiring builds one :class:`Metrics`, passes it to the services that count things, and serves
``registry`` as text on ``GET /metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.profile_edus_sent = Counter(
            "refserver_profile_edus_sent",
            "MSC4259 profile EDUs sent (acknowledged)",
            ["destination"],
            registry=r,
        )
        self.profile_edus_received = Counter(
            "refserver_profile_edus_received",
            "MSC4259 profile EDUs received and applied",
            ["origin"],
            registry=r,
        )
        self.profile_edus_coalesced = Counter(
            "refserver_profile_edus_coalesced",
            "Profile changes merged into an already pending EDU (one per destination)",
            registry=r,
        )
        self.profile_edus_dropped = Counter(
            "refserver_profile_edus_dropped",
            "Incoming MSC4259 profile EDUs dropped",
            ["reason"],
            registry=r,
        )
        self.profile_edus_held = Counter(
            "refserver_profile_edus_held",
            "Profile EDUs about a user sharing no room held while a join was in progress",
            registry=r,
        )
        self.profile_edus_hold_overflow = Counter(
            "refserver_profile_edus_hold_overflow",
            "Profile EDUs not held during a join because the hold was full (then dropped)",
            registry=r,
        )
        self.profile_queries = Counter(
            "refserver_federation_profile_queries",
            "Outbound GET /_matrix/federation/v1/query/profile requests",
            registry=r,
        )
        self.profile_cache_hits = Counter(
            "refserver_remote_profile_cache_hits",
            "Remote profile reads answered from cache",
            registry=r,
        )
        self.profile_stale_served = Counter(
            "refserver_remote_profile_stale_served",
            "Remote profile reads answered from a stale or incomplete cached copy because"
            " the user's server could not be reached or failed (stale-if-error)",
            registry=r,
        )
        self.transactions_sent = Counter(
            "refserver_federation_transactions_sent",
            "Transactions acknowledged with 200",
            ["destination"],
            registry=r,
        )
        self.transaction_latency = Histogram(
            "refserver_federation_transaction_seconds",
            "Time from sending a transaction to its 200",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.connections_opened = Counter(
            "refserver_federation_connections_opened",
            "New TLS connections opened to send transactions (one per destination at a time)",
            ["destination"],
            registry=r,
        )
        self.connections_resumed = Counter(
            "refserver_federation_connections_resumed",
            "Of those, connections whose TLS handshake resumed an earlier session",
            ["destination"],
            registry=r,
        )
        self.connection_requests_reused = Counter(
            "refserver_federation_connection_requests_reused",
            "Transactions sent over an already open connection (no new handshake)",
            ["destination"],
            registry=r,
        )
        self.destination_errors = Counter(
            "refserver_federation_destination_errors",
            "Unexpected exceptions in a destination queue (logged; the destination is backed"
            " off and retried)",
            ["destination"],
            registry=r,
        )
        self.dirty_pending = Gauge(
            "refserver_profile_edu_dirty_pending",
            "Dirty (destination, user, field) entries waiting to be sent",
            registry=r,
        )
        self.destination_failures = Gauge(
            "refserver_federation_destination_failures",
            "Consecutive failed attempts per destination (0 = healthy)",
            ["destination"],
            registry=r,
        )
        self.destination_retry_in = Gauge(
            "refserver_federation_destination_retry_in_seconds",
            "Seconds until the next attempt to a backed-off destination",
            ["destination"],
            registry=r,
        )

    def set_destination_state(self, destination: str, failures: int, retry_in_s: float) -> None:
        self.destination_failures.labels(destination).set(failures)
        self.destination_retry_in.labels(destination).set(retry_in_s)
