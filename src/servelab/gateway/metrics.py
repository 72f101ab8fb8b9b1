"""The gateway's own Prometheus metrics, served at ``/metrics`` on the admin port.

The engines' metrics say how busy each replica is; only the gateway sees what clients experience:
refused keys, rate-limited requests, timeouts, failovers, requests lost when a replica died. The
request counter and the latency histogram are updated from the same record as the audit line, so the
two cannot disagree. A registry of its own (not the process-wide default) keeps tests and several
apps in one process apart. ``key_id`` is a label because the set of keys is fixed by the config;
never use a raw key, a user id from the request or a prompt as a label (unbounded series).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from servelab.gateway.audit import AuditRecord

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    """All series of one gateway; ``observe`` is called once per finished request."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by key, HTTP status and outcome",
            ["key_id", "code", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to the last byte sent",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens", "Tokens in prompts (in) and answers (out), by key", ["key_id", "direction"], registry=r
        )
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being handled now", registry=r)
        self.upstream = Counter(
            "gateway_upstream_attempts",
            "Attempts to send a request to a replica, by result",
            ["replica", "result"],
            registry=r,
        )
        self.cancelled = Counter(
            "gateway_upstream_cancelled", "Upstream requests the gateway cut off, by reason", ["reason"], registry=r
        )
        self.replica_deaths = Counter(
            "gateway_replica_deaths",
            "Replicas that died while handling a request (the request was quarantined, not retried)",
            ["replica"],
            registry=r,
        )
        self.audit_failures = Counter(
            "gateway_audit_write_failures", "Audit lines that could not be written (each is also logged)", registry=r
        )
        self.refused_connections = Counter(
            "gateway_refused_connections",
            "Connections a server refused or closed before a request, by listener (client or admin port) and reason",
            ["listener", "reason"],
            registry=r,
        )
        self.replica_up = Gauge(
            "gateway_replica_up", "1 if the replica passes its health check", ["replica"], registry=r
        )
        self.outstanding = Gauge(
            "gateway_replica_outstanding",
            "Requests the gateway has sent to a replica and not yet finished",
            ["replica"],
            registry=r,
        )

    def observe(self, record: AuditRecord) -> None:
        key = record.key_id or "-"
        self.requests.labels(key, str(record.status), record.outcome or "unknown").inc()
        if record.latency_s is not None:
            self.latency.labels(record.outcome or "unknown").observe(record.latency_s)
        for direction, count in (("in", record.tokens_in), ("out", record.tokens_out)):
            if count:
                self.tokens.labels(key, direction).inc(count)
