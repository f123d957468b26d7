"""Prometheus metrics. One ``Metrics`` per worker, on its own registry, so tests never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The instruments named in the operations guide (``docs/operations.md``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.watches_active = Gauge(
            "ontap_poller_watches_active", "Watches held by this worker.", ["cluster"], registry=r
        )
        self.jobs_tracked = Gauge(
            "ontap_poller_jobs_tracked", "Distinct jobs being polled.", ["cluster"], registry=r
        )
        self.ontap_requests = Counter(
            "ontap_poller_ontap_requests",
            "HTTP calls to ONTAP, by endpoint (ends and active: the change feed; collection: "
            "uuid batches; single) and outcome (ok, not_found, refused, filter_refused, transient).",
            ["cluster", "endpoint", "outcome"],
            registry=r,
        )
        self.ontap_latency = Histogram(
            "ontap_poller_ontap_request_seconds",
            "Latency of one HTTP call to ONTAP.",
            ["cluster", "endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.events_published = Counter(
            "ontap_poller_events_published",
            "Events confirmed by the broker on the events exchange, by CloudEvents type.",
            ["type"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "ontap_poller_requests_dead_lettered",
            "Watch requests sent to the dead-letter queue, by reason.",
            ["reason"],
            registry=r,
        )
        self.checkpoints = Counter(
            "ontap_poller_checkpoints", "Watches re-enqueued with their progress.", registry=r
        )
        self.feed_enabled = Gauge(
            "ontap_poller_feed_enabled",
            "1 while the change feed serves the cluster; 0 when it reads watched jobs by uuid "
            "alone (feed = false, or the cluster refused the feed's filters).",
            ["cluster"],
            registry=r,
        )
        self.jobs_discovered = Counter(
            "ontap_poller_jobs_discovered",
            "Jobs published because their cluster is discovered, not because they are watched.",
            ["cluster"],
            registry=r,
        )
        self.discoverer = Gauge(
            "ontap_poller_discoverer",
            "1 while this worker discovers the cluster (it holds the lease); 0 while it stands by.",
            ["cluster"],
            registry=r,
        )
        self.reconnects = Counter(
            "ontap_poller_broker_reconnects", "Reconnections to RabbitMQ.", registry=r
        )
