"""Prometheus metrics of the gateway, on a registry of its own (several apps in one test process do
not collide): calls and their latency by method and gRPC status, and open streams."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from sub-millisecond unary calls to hour-long watches.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "metermesh_gateway_requests",
            "gRPC-web calls by method and final gRPC status",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "metermesh_gateway_request_duration_seconds",
            "gRPC-web call duration (to the end of the response) by method and gRPC status",
            ["method", "code"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.streams = Gauge(
            "metermesh_gateway_open_streams", "server-streaming calls in progress", registry=self.registry
        )
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(method, code),
                self.latency.labels(method, code),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
