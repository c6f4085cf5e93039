"""Prometheus metrics of a metermesh process: one registry per process, served over HTTP at /metrics
when METERMESH_METRICS_ADDR is set (every pod uses 0.0.0.0:9464 in Kubernetes; empty, the default,
serves nothing, so several services on one machine do not collide).

What is measured, and where:
- gRPC calls (services.common.interceptors): count by status code, duration, calls in flight (for
  WatchAlerts: the open watches). Health checks and reflection are not counted.
- JetStream consumers (services.common.jetstream.PullWorker): messages by outcome, handler time per
  batch, and the consumer's lag, polled from JetStream by run_service for the consumers the process runs.
- The data flow: readings by stage, anomaly events by kind and detector, serving model versions, alert
  changes, bills; plus build, serving state and process (CPU, memory, file descriptors, GC) metrics.

Every series of one metric shares its labels; label values come from small fixed sets (gRPC methods
that exist, durable names, enum names), never from meter ids or request data.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import platform
import threading
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

import prometheus_client
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = structlog.get_logger(__name__)

# `*_created` series double every counter and histogram for a feature Prometheus rarely uses.
prometheus_client.disable_created_metrics()

# Not the library's global registry: only what metermesh defines here (and the process collectors),
# whatever else an imported library might register there.
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

DEFAULT_PORT = 9464  # the port every pod serves /metrics on in Kubernetes

# --- process --------------------------------------------------------------------------------------

BUILD_INFO = Gauge(
    "metermesh_build_info",
    "Always 1: the component (ingest, writer, anomaly, ...) this process runs and its build.",
    ["component", "version", "revision", "python"],
    registry=REGISTRY,
)
SERVING = Gauge(
    "metermesh_serving",
    "1 while the process's gRPC health says SERVING (NATS and PostgreSQL reachable, not stopping), else 0.",
    registry=REGISTRY,
)

# --- gRPC -----------------------------------------------------------------------------------------

GRPC_REQUESTS = Counter(
    "metermesh_grpc_requests_total",
    "gRPC calls served, by full service name, method and final status code.",
    ["service", "method", "code"],
    registry=REGISTRY,
)
GRPC_LATENCY = Histogram(
    "metermesh_grpc_request_duration_seconds",
    "Time from a gRPC call's arrival to its last response message or error (streams: the whole stream).",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
GRPC_IN_FLIGHT = Gauge(
    "metermesh_grpc_requests_in_flight",
    "gRPC calls being served now (for WatchAlerts: the open watches).",
    ["service", "method"],
    registry=REGISTRY,
)

# --- JetStream consumers --------------------------------------------------------------------------

CONSUMER_MESSAGES = Counter(
    "metermesh_consumer_messages_total",
    "Messages a durable consumer finished with: acked (handled), retried (nak'ed for redelivery), "
    "dead_lettered (sent to DEADLETTER).",
    ["stream", "durable", "outcome"],
    registry=REGISTRY,
)
CONSUMER_BATCH = Histogram(
    "metermesh_consumer_batch_seconds",
    "Time the handler took to commit one fetched batch (its count: batches handled).",
    ["stream", "durable"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "metermesh_consumer_lag_messages",
    "Messages of the stream the durable consumer has not been delivered yet (JetStream num_pending), "
    "polled every few seconds. Consumer-wide: every replica reports the same value (use max by).",
    ["stream", "durable"],
    registry=REGISTRY,
)
CONSUMER_ACK_PENDING = Gauge(
    "metermesh_consumer_ack_pending_messages",
    "Messages delivered to the durable consumer and not acked yet (JetStream num_ack_pending).",
    ["stream", "durable"],
    registry=REGISTRY,
)

# --- the data flow --------------------------------------------------------------------------------

READING_STAGES = ("accepted", "rejected", "stored", "duplicate", "scored")
READINGS = Counter(
    "metermesh_readings_total",
    "Readings by stage: accepted / rejected by ingest, stored / duplicate (already stored) by the "
    "storage writer, scored by the streaming anomaly detector.",
    ["stage"],
    registry=REGISTRY,
)
ANOMALY_EVENTS = Counter(
    "metermesh_anomaly_events_total",
    "Anomaly events published to ANOMALIES (re-publishes JetStream dropped as duplicates excluded).",
    ["kind", "detector"],
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "metermesh_model_info",
    "1 for the model version each detector of this process is serving.",
    ["detector", "version"],
    registry=REGISTRY,
)
ALERT_CHANGES = Counter(
    "metermesh_alert_changes_total",
    "Alert changes committed: created, updated, escalated, acknowledged, resolved.",
    ["change"],
    registry=REGISTRY,
)
BILLS = Counter(
    "metermesh_bills_total",
    "Meters finished by billing cycles: issued (a bill stored), skipped (already billed), failed.",
    ["outcome"],
    registry=REGISTRY,
)


def _name(value: Any) -> str:
    """An enum member's name, or the string itself, in lower case: the label value."""
    return str(getattr(value, "name", value)).lower()


def set_build_info(component: str) -> None:
    try:
        version = metadata.version("metermesh")
    except metadata.PackageNotFoundError:
        version = "unknown"
    revision = os.environ.get("METERMESH_BUILD_REVISION", "")
    BUILD_INFO.labels(component, version, revision, platform.python_version()).set(1)


def count_readings(**by_stage: int) -> None:
    """count_readings(accepted=n, rejected=m): the series appear even at 0."""
    for stage, n in by_stage.items():
        READINGS.labels(stage).inc(n)


def count_anomaly_events(events: Iterable[Any]) -> None:
    """Events with .kind and .detector (enums or names)."""
    for (kind, detector), n in Tally((_name(e.kind), _name(e.detector)) for e in events).items():
        ANOMALY_EVENTS.labels(kind, detector).inc(n)


_serving_models: dict[str, str] = {}
_models_lock = threading.Lock()


def set_model_version(detector: Any, version: str) -> None:
    """Marks `version` as the one `detector` serves, dropping the series of the version it replaces."""
    detector = _name(detector)
    with _models_lock:
        old = _serving_models.get(detector)
        if old is not None and old != version:
            with contextlib.suppress(KeyError):
                MODEL_INFO.remove(detector, old)
        _serving_models[detector] = version
        MODEL_INFO.labels(detector, version).set(1)


def count_alert_changes(changes: Iterable[Any]) -> None:
    """Change kinds (enums or names), one per change."""
    for change, n in Tally(_name(c) for c in changes).items():
        ALERT_CHANGES.labels(change).inc(n)


def count_bills(**by_outcome: int) -> None:
    """count_bills(issued=n, skipped=m, failed=k)."""
    for outcome, n in by_outcome.items():
        BILLS.labels(outcome).inc(n)


# --- gRPC calls -----------------------------------------------------------------------------------


def rpc_labels(full_method: str) -> tuple[str, str]:
    """Splits a full method name: /metermesh.ingest.v1.IngestService/PushReadings ->
    ("metermesh.ingest.v1.IngestService", "PushReadings")."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


# Children looked up once per label set (labels() takes a lock and builds a key every time); the sets
# are bounded by the methods registered and the status codes.
_in_flight = functools.cache(GRPC_IN_FLIGHT.labels)
_latency = functools.cache(GRPC_LATENCY.labels)
_requests = functools.cache(GRPC_REQUESTS.labels)


def rpc_started(service: str, method: str) -> None:
    _in_flight(service, method).inc()


def rpc_finished(service: str, method: str, code: str, seconds: float) -> None:
    _in_flight(service, method).dec()
    _requests(service, method, code).inc()
    _latency(service, method).observe(seconds)


# --- JetStream consumers --------------------------------------------------------------------------


class _Consumer(Protocol):
    stream: str
    durable: str


_consumers: set[tuple[str, str]] = set()


def track_consumer(spec: _Consumer) -> None:
    """Names a durable consumer this process runs: its lag is polled (see poll_consumer_lag)."""
    key = (spec.stream, spec.durable)
    if key not in _consumers:
        _consumers.add(key)
        for outcome in ("acked", "retried", "dead_lettered"):
            CONSUMER_MESSAGES.labels(spec.stream, spec.durable, outcome)


def tracked_consumers() -> list[tuple[str, str]]:
    return sorted(_consumers)


def consumed(spec: _Consumer, outcome: str, n: int = 1) -> None:
    CONSUMER_MESSAGES.labels(spec.stream, spec.durable, outcome).inc(n)


def observe_batch(spec: _Consumer, seconds: float) -> None:
    CONSUMER_BATCH.labels(spec.stream, spec.durable).observe(seconds)


async def poll_consumer_lag(js: Any, every: float) -> None:
    """Sets the lag gauges of the tracked consumers from JetStream's consumer info every `every`
    seconds, until cancelled. A failed poll (NATS reconnecting) keeps the last values and is retried."""
    failing: set[tuple[str, str]] = set()
    while True:
        for stream, durable in tracked_consumers():
            try:
                info = await js.consumer_info(stream, durable, timeout=max(every, 1.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if (stream, durable) not in failing:
                    log.warning("consumer lag poll failed", stream=stream, durable=durable, error=repr(exc))
                    failing.add((stream, durable))
                continue
            failing.discard((stream, durable))
            CONSUMER_LAG.labels(stream, durable).set(info.num_pending or 0)
            CONSUMER_ACK_PENDING.labels(stream, durable).set(info.num_ack_pending or 0)
        await asyncio.sleep(every)


# --- HTTP -----------------------------------------------------------------------------------------


def parse_addr(addr: str) -> tuple[str, int]:
    """Splits host:port, [::]:port or :port (all interfaces) into (host, port); raises ValueError."""
    host, sep, port_text = addr.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{addr!r} is not host:port (e.g. 0.0.0.0:{DEFAULT_PORT})")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{addr!r}: port {port} is not within 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", port


@dataclass
class MetricsServer:
    """The /metrics endpoint, served by prometheus_client's threaded WSGI server."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def stop(self) -> None:
        """Stops accepting scrapes and closes the socket (blocks up to half a second)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve(addr: str) -> MetricsServer | None:
    """Serves /metrics at addr in a daemon thread; None when addr is empty (metrics not served).
    Raises ValueError for a malformed address, OSError when it cannot be bound."""
    if not addr:
        return None
    host, port = parse_addr(addr)
    httpd, thread = prometheus_client.start_http_server(port, addr=host, registry=REGISTRY)
    thread.name = "metrics-http"
    return MetricsServer(httpd, thread)


def scrape() -> str:
    """The exposition text, as a scrape would get it (for tests and `metermesh status`)."""
    return prometheus_client.generate_latest(REGISTRY).decode()
