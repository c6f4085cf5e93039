"""Prometheus metrics: the helpers of services.common.metrics, the gRPC interceptor's counting of unary
and streaming calls, and real ingest + writer processes scraped over HTTP."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import nats
import pytest
from metermesh.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.anomaly.model import DetectorKind, Kind
from services.common import metrics
from services.common.config import CommonSettings, load_settings
from services.common.embedded import free_port
from services.common.interceptors import LoggingInterceptor
from tests.support import Platform, batch, reading, register, wait_for

NOW = int(time.time()) // 900 * 900
INGEST = "metermesh.ingest.v1.IngestService"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of the samples of `name` whose labels include `labels`; None when there are none."""
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    return sum(found) if found else None


def local(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


# --- helpers ------------------------------------------------------------------------------------


def test_parse_addr() -> None:
    assert metrics.parse_addr("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert metrics.parse_addr(":9464") == ("0.0.0.0", 9464)
    assert metrics.parse_addr("[::]:9464") == ("::", 9464)
    assert metrics.parse_addr("localhost:0") == ("localhost", 0)
    for bad in ("9464", "host:", "host:port", "host:70000"):
        with pytest.raises(ValueError):
            metrics.parse_addr(bad)


def test_metrics_addr_setting_is_validated(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("NATS_URL", "nats://x")
    monkeypatch.setenv("DATABASE_URL", "postgresql://x")
    assert load_settings(CommonSettings).metrics_addr == ""  # off unless asked for
    monkeypatch.setenv("METERMESH_METRICS_ADDR", "0.0.0.0:9464")
    assert load_settings(CommonSettings).metrics_addr == "0.0.0.0:9464"
    monkeypatch.setenv("METERMESH_METRICS_ADDR", "port 9464")
    with pytest.raises(SystemExit) as exc:
        load_settings(CommonSettings)
    assert exc.value.code == 2 and "METERMESH_METRICS_ADDR" in capsys.readouterr().err


def test_counting_helpers() -> None:
    before = {s: local("metermesh_readings_total", stage=s) for s in ("accepted", "rejected")}
    metrics.count_readings(accepted=7, rejected=0)
    assert local("metermesh_readings_total", stage="accepted") == before["accepted"] + 7
    assert local("metermesh_readings_total", stage="rejected") == before["rejected"]
    assert metrics.REGISTRY.get_sample_value("metermesh_readings_total", {"stage": "rejected"}) is not None

    class E:
        def __init__(self, kind: Kind, detector: DetectorKind) -> None:
            self.kind, self.detector = kind, detector

    surge = {"kind": "voltage_surge", "detector": "rules"}
    point = {"kind": "point_anomaly", "detector": "isolation_forest"}
    s0, p0 = (
        local("metermesh_anomaly_events_total", **surge),
        local("metermesh_anomaly_events_total", **point),
    )
    metrics.count_anomaly_events(
        [E(Kind.VOLTAGE_SURGE, DetectorKind.RULES)] * 3
        + [E(Kind.POINT_ANOMALY, DetectorKind.ISOLATION_FOREST)]
    )
    assert local("metermesh_anomaly_events_total", **surge) == s0 + 3
    assert local("metermesh_anomaly_events_total", **point) == p0 + 1

    c0 = local("metermesh_alert_changes_total", change="created")
    metrics.count_alert_changes(["CREATED", "created", "resolved"])
    assert local("metermesh_alert_changes_total", change="created") == c0 + 2

    b0 = local("metermesh_bills_total", outcome="issued")
    metrics.count_bills(issued=5, skipped=1)
    assert local("metermesh_bills_total", outcome="issued") == b0 + 5


def test_model_info_shows_only_the_serving_version() -> None:
    metrics.set_model_version(DetectorKind.AUTOENCODER, "autoencoder-1")
    assert local("metermesh_model_info", detector="autoencoder", version="autoencoder-1") == 1
    metrics.set_model_version(DetectorKind.AUTOENCODER, "autoencoder-2")
    metrics.set_model_version("autoencoder", "autoencoder-2")
    text = metrics.scrape()
    assert 'version="autoencoder-1"' not in text
    assert local("metermesh_model_info", detector="autoencoder", version="autoencoder-2") == 1


async def test_http_endpoint_serves_and_stops() -> None:
    assert metrics.serve("") is None
    server = metrics.serve("127.0.0.1:0")
    assert server is not None
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        metrics.set_build_info("test")
        async with httpx.AsyncClient() as http:
            resp = await http.get(url)
        assert resp.status_code == 200
        samples = parse(resp.text)
        assert value(samples, "metermesh_build_info", component="test") == 1
        assert value(samples, "process_cpu_seconds_total") is not None
        assert not any(n.endswith("_created") for n, _ in samples)
    finally:
        await asyncio.to_thread(server.stop)
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(url)


# --- the gRPC interceptor -----------------------------------------------------------------------

PROBE = "test.metrics.v1.Probe"


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request == b"crash":
        raise RuntimeError("a bug")
    if request == b"away":
        raise ConnectionRefusedError("PostgreSQL is restarting")
    return request


async def _server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(3):
        yield b"%d" % i
    if request == b"bad":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad after three")


async def _client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return b"".join([r async for r in requests])


async def _bidi(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r


def calls(method: str, code: str) -> float:
    return local("metermesh_grpc_requests_total", service=PROBE, method=method, code=code)


async def test_interceptor_counts_unary_and_streaming_calls_by_status() -> None:
    server = grpc.aio.server(interceptors=[LoggingInterceptor()])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                PROBE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_unary),
                    "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
                    "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
                    "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    keys = [
        ("Unary", "OK"),
        ("Unary", "NOT_FOUND"),
        ("Unary", "UNKNOWN"),
        ("Unary", "UNAVAILABLE"),
        ("ServerStream", "OK"),
        ("ServerStream", "INVALID_ARGUMENT"),
        ("ClientStream", "OK"),
        ("Bidi", "OK"),
    ]
    before = {k: calls(*k) for k in keys}
    durations = local("metermesh_grpc_request_duration_seconds_count", service=PROBE, method="Unary")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            unary = ch.unary_unary(f"/{PROBE}/Unary")
            assert await unary(b"hello") == b"hello"
            assert await unary(b"again") == b"again"
            for request, code in (
                (b"missing", grpc.StatusCode.NOT_FOUND),
                (b"crash", grpc.StatusCode.UNKNOWN),
                (b"away", grpc.StatusCode.UNAVAILABLE),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await unary(request)
                assert err.value.code() == code
            stream = ch.unary_stream(f"/{PROBE}/ServerStream")
            assert [m async for m in stream(b"ok")] == [b"0", b"1", b"2"]
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for m in stream(b"bad"):
                    got.append(m)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(got) == 3
            assert await ch.stream_unary(f"/{PROBE}/ClientStream")(iter([b"a", b"b"])) == b"ab"
            assert [m async for m in ch.stream_stream(f"/{PROBE}/Bidi")(iter([b"x", b"y"]))] == [b"x", b"y"]
    finally:
        await server.stop(None)
    delta = {k: calls(*k) - before[k] for k in keys}
    assert delta == {
        ("Unary", "OK"): 2,
        ("Unary", "NOT_FOUND"): 1,
        ("Unary", "UNKNOWN"): 1,
        ("Unary", "UNAVAILABLE"): 1,
        ("ServerStream", "OK"): 1,
        ("ServerStream", "INVALID_ARGUMENT"): 1,
        ("ClientStream", "OK"): 1,
        ("Bidi", "OK"): 1,
    }
    assert (
        local("metermesh_grpc_request_duration_seconds_count", service=PROBE, method="Unary") == durations + 5
    )
    for method in ("Unary", "ServerStream", "ClientStream", "Bidi"):
        assert local("metermesh_grpc_requests_in_flight", service=PROBE, method=method) == 0


# --- real processes -----------------------------------------------------------------------------


async def scrape(http: httpx.AsyncClient, addr: str) -> Samples:
    resp = await http.get(f"http://{addr}/metrics")
    resp.raise_for_status()
    return parse(resp.text)


async def test_ingest_and_writer_export_requests_readings_and_consumer_lag(platform: Platform) -> None:
    ingest_metrics = f"127.0.0.1:{free_port()}"
    writer_metrics = f"127.0.0.1:{free_port()}"
    writer = await platform.start_writer(
        METERMESH_METRICS_ADDR=writer_metrics, METERMESH_METRICS_LAG_POLL_SECONDS="0.2"
    )
    ingest = await platform.start_ingest(METERMESH_METRICS_ADDR=ingest_metrics)
    meters = [f"MET-{i:02d}" for i in range(10)]
    first = batch(meters, NOW - 24 * 3600, 12)  # 120 readings
    second = batch(meters, NOW - 12 * 3600, 5)  # 50 more
    streamed = [batch(meters, NOW - 6 * 3600, 2), batch(meters, NOW - 3 * 3600, 3)]  # 20 + 30
    unknown = reading("NOT-REGISTERED", NOW - 3600)

    async with httpx.AsyncClient() as http:
        start = await scrape(http, ingest_metrics)
        assert value(start, "metermesh_build_info", component="ingest") == 1
        assert value(start, "metermesh_serving") == 1
        pushes = value(start, "metermesh_grpc_requests_total", method="PushReadings", code="OK") or 0

        async with platform.channel() as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            await register(stub, *meters)
            r1 = await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=[*first, unknown]))
            r2 = await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=second))
            assert r1.accepted_count == len(first) and len(r1.rejections) == 1
            assert r2.accepted_count == len(second)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=[]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            rs = await stub.StreamReadings(
                iter([ingest_pb2.StreamReadingsRequest(readings=b) for b in streamed])
            )
            assert rs.accepted_count == sum(map(len, streamed))
        accepted = len(first) + len(second) + sum(map(len, streamed))

        after = await scrape(http, ingest_metrics)
        requests = "metermesh_grpc_requests_total"
        assert value(after, requests, service=INGEST, method="PushReadings", code="OK") == pushes + 2
        assert value(after, requests, service=INGEST, method="PushReadings", code="INVALID_ARGUMENT") == 1
        assert value(after, requests, service=INGEST, method="StreamReadings", code="OK") == 1
        assert value(after, requests, service=INGEST, method="RegisterMeter", code="OK") == len(meters)
        assert value(after, "metermesh_grpc_request_duration_seconds_count", method="PushReadings") == 3
        assert value(after, "metermesh_grpc_requests_in_flight", method="PushReadings") == 0
        assert value(after, requests, service="grpc.health.v1.Health") is None  # probes are not counted
        assert value(after, "metermesh_readings_total", stage="accepted") == accepted
        assert value(after, "metermesh_readings_total", stage="rejected") == 1
        assert value(after, "process_resident_memory_bytes") is not None

        # The writer stores every accepted reading once; its consumer's lag is polled down to zero.
        await wait_for(
            lambda: scrape(http, writer_metrics),
            lambda s: value(s, "metermesh_readings_total", stage="stored") == accepted,
            what="stored readings counted by the writer",
        )
        readings_stream = platform.prefix + "READINGS"
        consumer = {"stream": readings_stream, "durable": "readings-writer"}
        w = await wait_for(
            lambda: scrape(http, writer_metrics),
            lambda s: (
                value(s, "metermesh_consumer_lag_messages", **consumer) == 0
                and value(s, "metermesh_consumer_ack_pending_messages", **consumer) == 0
            ),
            what="the readings-writer lag and ack-pending gauges at 0",
        )
        assert value(w, "metermesh_readings_total", stage="duplicate") == 0
        # Every message delivered to the consumer was acked once (a batch is split by partition).
        nc = await nats.connect(platform.nats_url)
        try:
            info = await nc.jetstream().consumer_info(readings_stream, "readings-writer")
        finally:
            await nc.close()
        assert info.delivered.consumer_seq >= 4 and info.num_redelivered == 0
        assert value(w, "metermesh_consumer_messages_total", outcome="acked", **consumer) == (
            info.delivered.consumer_seq
        )
        assert value(w, "metermesh_consumer_messages_total", outcome="dead_lettered", **consumer) == 0
        assert (value(w, "metermesh_consumer_batch_seconds_count", **consumer) or 0) >= 1
        assert value(w, "metermesh_build_info", component="writer") == 1

    # SIGTERM stops the metrics endpoint with everything else, cleanly.
    assert await ingest.stop() == 0
    assert await writer.stop() == 0
    for addr in (ingest_metrics, writer_metrics):
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as http:
                await http.get(f"http://{addr}/metrics")


async def test_a_taken_metrics_port_stops_the_service_at_start(platform: Platform) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = platform.process("ingest", "services.ingest", platform.ingest_addr)
        p.env["METERMESH_METRICS_ADDR"] = f"127.0.0.1:{port}"
        p.start()
        assert p.proc is not None

        async def exited() -> int | None:
            return p.proc.poll() if p.proc is not None else None

        code = await wait_for(exited, lambda rc: rc is not None, what="ingest to exit")
        assert code == 1
    assert p.log_path is not None and "METERMESH_METRICS_ADDR" in p.log_path.read_text()


async def test_anomaly_and_alert_services_count_events_changes_and_watchers(platform: Platform) -> None:
    anomaly_metrics = f"127.0.0.1:{free_port()}"
    alerts_metrics = f"127.0.0.1:{free_port()}"
    fast = {"METERMESH_METRICS_LAG_POLL_SECONDS": "0.2"}
    await platform.start_writer()
    await platform.start_anomaly(METERMESH_METRICS_ADDR=anomaly_metrics, **fast)
    await platform.start_alerts(METERMESH_METRICS_ADDR=alerts_metrics, **fast)
    await platform.start_ingest()
    surge = [
        reading("SURGE-1", NOW - 1800, voltage_v=231.0),
        reading("SURGE-1", NOW - 900, voltage_v=295.0),
        reading("SURGE-2", NOW - 900, voltage_v=229.5),
    ]
    watching = {"service": "metermesh.alerts.v1.AlertService", "method": "WatchAlerts"}
    async with (
        httpx.AsyncClient() as http,
        platform.channel() as ch,
        platform.channel_to(platform.alerts_addr) as alerts_ch,
    ):
        await register(ingest_pb2_grpc.IngestServiceStub(ch), "SURGE-1", "SURGE-2")
        alerts = alerts_pb2_grpc.AlertServiceStub(alerts_ch)
        watch = alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest())
        first_update = asyncio.ensure_future(watch.read())
        await wait_for(
            lambda: scrape(http, alerts_metrics),
            lambda s: value(s, "metermesh_grpc_requests_in_flight", **watching) == 1,
            what="the open watch counted in flight",
        )
        resp = await ingest_pb2_grpc.IngestServiceStub(ch).PushReadings(
            ingest_pb2.PushReadingsRequest(readings=surge)
        )
        assert resp.accepted_count == len(surge)

        a = await wait_for(
            lambda: scrape(http, anomaly_metrics),
            lambda s: (
                value(s, "metermesh_readings_total", stage="scored") == len(surge)
                and value(s, "metermesh_anomaly_events_total", kind="voltage_surge", detector="rules") == 1
            ),
            what="the surge scored and published",
        )
        assert value(a, "metermesh_anomaly_events_total") == 1
        assert value(a, "metermesh_consumer_lag_messages", durable="anomaly-detector") is not None
        assert value(a, "metermesh_build_info", component="anomaly") == 1

        created = (await asyncio.wait_for(first_update, 30)).update
        assert created.change_kind == alerts_pb2.ALERT_CHANGE_KIND_CREATED
        await alerts.AcknowledgeAlert(
            alerts_pb2.AcknowledgeAlertRequest(alert_id=created.alert.alert_id, acknowledged_by="ops")
        )
        s = await wait_for(
            lambda: scrape(http, alerts_metrics),
            lambda s: (
                value(s, "metermesh_consumer_lag_messages", durable="alerts") == 0
                and value(s, "metermesh_alert_changes_total", change="acknowledged") == 1
            ),
            what="the alert changes counted",
        )
        assert value(s, "metermesh_alert_changes_total", change="created") == 1
        assert value(s, "metermesh_consumer_messages_total", durable="alerts", outcome="acked") == 1

        watch.cancel()
        await wait_for(
            lambda: scrape(http, alerts_metrics),
            lambda s: value(s, "metermesh_grpc_requests_in_flight", **watching) == 0,
            what="the closed watch no longer in flight",
        )
