"""Server streaming through the gateway with the whole pipeline running (ingest -> READINGS -> anomaly
-> ANOMALIES -> alerts): WatchAlerts over gRPC-web (Connect in Node; base64 text frames by hand),
consumers narrowed to their meters, deadlines, a client that goes away, and a gateway that stops."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from metermesh.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from metermesh.ingest.v1 import ingest_pb2_grpc

from tests.grpcweb.harness import (
    CONSUMER,
    OPERATOR,
    GatewayProc,
    NodeClient,
    NodeStream,
    build_node_client,
    start_gateway,
    stream_call,
    token,
    web_call,
)
from tests.support import Platform, register, wait_for

ALR = "metermesh.alerts.v1.AlertService"
ING = "metermesh.ingest.v1.IngestService"
METERS = ("ST-1", "ST-2", "ST-B1", "ST-B2", "ST-T1", "ST-C1", "ST-S1")


@dataclass
class Pipeline:
    platform: Platform
    gateway: GatewayProc
    node: NodeClient
    script: Path


@pytest.fixture(scope="module")
async def pipeline(
    nats_url: str, admin_db_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    p = Platform(nats_url=nats_url, admin_db_url=admin_db_url, log_dir=log_dir)
    await p.create()
    try:
        script = build_node_client(tmp_path_factory.mktemp("grpcweb"))
        quiet = {"METERMESH_ANOMALY_GAP_SWEEP_SECONDS": "3600"}
        await p.start_writer()
        await asyncio.gather(p.start_alerts(**quiet), p.start_anomaly(**quiet))
        await p.start_ingest()
        gw = await start_gateway(p)
        async with p.channel() as ch:
            await register(ingest_pb2_grpc.IngestServiceStub(ch), *METERS)
        yield Pipeline(p, gw, NodeClient(script, gw.url), script)
    finally:
        await p.destroy()


def operator() -> str:
    return token(OPERATOR, "olga")


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


async def push_surge(node: NodeClient, meter_id: str, volts: float = 295.0) -> None:
    """A surge reading pushed through the gateway, as an operator's head-end would."""
    reading = {
        "meterId": meter_id,
        "readTime": iso(time.time() - 60),
        "intervalSeconds": 900,
        "importEnergyWh": 50,
        "voltageV": volts,
    }
    res = await node.call(ING, "PushReadings", {"readings": [reading]}, token=operator())
    assert res.response.get("acceptedCount") == 1, res.lines


async def next_update(stream: NodeStream, meter_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The next WatchAlerts update about meter_id (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        line = await stream.next_line(max(0.1, deadline - time.monotonic()))
        assert "message" in line, line
        update = line["message"]["update"]
        if update["alert"]["meterId"] == meter_id:
            return update


async def alerts_of(platform: Platform, meter_id: str) -> list[alerts_pb2.Alert]:
    async with platform.channel_to(platform.alerts_addr) as ch:
        resp = await alerts_pb2_grpc.AlertServiceStub(ch).ListAlerts(
            alerts_pb2.ListAlertsRequest(filter=alerts_pb2.AlertFilter(meter_ids=[meter_id])), timeout=10
        )
    return list(resp.alerts)


def cancelled_watches(platform: Platform) -> int:
    """WatchAlerts calls the alert service has logged as ended by cancellation."""
    n = 0
    for proc in platform.procs:
        if proc.name == "alerts" and proc.log_path is not None and proc.log_path.exists():
            for line in proc.log_path.read_text().splitlines():
                if "AlertService/WatchAlerts" in line and '"status": "CANCELLED"' in line:
                    n += 1
    return n


async def test_a_surge_pushed_through_the_gateway_arrives_live_on_watch_alerts(pipeline: Pipeline) -> None:
    watch = await pipeline.node.start(ALR, "WatchAlerts", {}, token=operator())
    try:
        await asyncio.sleep(0.5)  # the watch is subscribed before the surge happens
        await push_surge(pipeline.node, "ST-1")
        update = await next_update(watch, "ST-1")
        assert update["changeKind"] == "ALERT_CHANGE_KIND_CREATED"
        alert = update["alert"]
        assert alert["kind"] == "ANOMALY_KIND_VOLTAGE_SURGE" and alert["state"] == "ALERT_STATE_OPEN"
        assert "295" in alert["lastEvent"]["explanation"]

        # Acknowledged through the gateway: the token's subject is who acknowledged, whatever was sent.
        ack = await pipeline.node.call(
            ALR,
            "AcknowledgeAlert",
            {"alertId": alert["alertId"], "acknowledgedBy": "someone-else", "note": "on it"},
            token=operator(),
        )
        assert ack.response["alert"]["acknowledgedBy"] == "olga"
        acked = await next_update(watch, "ST-1")
        assert (
            acked["changeKind"] == "ALERT_CHANGE_KIND_ACKNOWLEDGED"
            and acked["alert"]["acknowledgedBy"] == "olga"
        )
        bob = token(CONSUMER, "bob", ["ST-1"])
        denied = await pipeline.node.call(ALR, "ResolveAlert", {"alertId": alert["alertId"]}, token=bob)
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await watch.close()


async def test_a_consumer_watches_only_its_own_meters(pipeline: Pipeline) -> None:
    bob = token(CONSUMER, "bob", ["ST-B1"])
    watch = await pipeline.node.start(ALR, "WatchAlerts", {}, token=bob)  # no filter: narrowed to ST-B1
    try:
        await asyncio.sleep(0.5)
        # Another meter's alert is committed first, so it would come first on an unfiltered stream.
        await push_surge(pipeline.node, "ST-B2")
        await wait_for(lambda: alerts_of(pipeline.platform, "ST-B2"), bool, timeout=60, what="ST-B2's alert")
        await push_surge(pipeline.node, "ST-B1")
        line = await watch.next_line(60)
        assert line["message"]["update"]["alert"]["meterId"] == "ST-B1", line
    finally:
        await watch.close()
    asked = await pipeline.node.call(ALR, "WatchAlerts", {"filter": {"meterIds": ["ST-B2"]}}, token=bob)
    assert asked.code == grpc.StatusCode.PERMISSION_DENIED and "'ST-B2'" in asked.message
    listed = await pipeline.node.call(ALR, "ListAlerts", {}, token=bob)
    assert {a["meterId"] for a in listed.response.get("alerts", [])} == {"ST-B1"}


async def test_streams_in_the_text_format_are_base64_chunks(pipeline: Pipeline) -> None:
    await push_surge(pipeline.node, "ST-T1")
    await wait_for(lambda: alerts_of(pipeline.platform, "ST-T1"), bool, timeout=60, what="ST-T1's alert")
    req = alerts_pb2.WatchAlertsRequest(after_sequence=0)  # replay the history, then live changes
    got: list[alerts_pb2.WatchAlertsResponse] = []
    async with httpx.AsyncClient(base_url=pipeline.gateway.url, timeout=30, trust_env=False) as http:
        async with stream_call(http, f"{ALR}/WatchAlerts", req, token=operator(), text=True) as (
            resp,
            chunks,
        ):
            assert resp.headers["content-type"] == "application/grpc-web-text+proto"
            async for frames in chunks:
                got.extend(
                    alerts_pb2.WatchAlertsResponse.FromString(data) for flags, data in frames if not flags
                )
                if any(u.update.alert.meter_id == "ST-T1" for u in got):
                    break
    sequences = [u.update.sequence for u in got]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    # A stream that ends (here by its deadline) ends with the trailer frame, base64 too.
    async with httpx.AsyncClient(base_url=pipeline.gateway.url, timeout=30, trust_env=False) as http:
        res = await web_call(http, f"{ALR}/WatchAlerts", req, token=operator(), text=True, timeout="1S")
    assert res.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [alerts_pb2.WatchAlertsResponse.FromString(m).update.sequence for m in res.messages][
        : len(got)
    ] == (sequences)


async def test_grpc_timeout_ends_a_watch_with_deadline_exceeded(pipeline: Pipeline) -> None:
    async with httpx.AsyncClient(base_url=pipeline.gateway.url, timeout=30, trust_env=False) as http:
        t = time.monotonic()
        res = await web_call(
            http, f"{ALR}/WatchAlerts", alerts_pb2.WatchAlertsRequest(), token=operator(), timeout="800m"
        )
        elapsed = time.monotonic() - t
        assert res.code == grpc.StatusCode.DEADLINE_EXCEEDED and 0.75 <= elapsed < 5, (res.trailers, elapsed)
        expired = await web_call(
            http, f"{ALR}/WatchAlerts", alerts_pb2.WatchAlertsRequest(), token=operator(), timeout="1n"
        )
        assert expired.code == grpc.StatusCode.DEADLINE_EXCEEDED and "expired before" in expired.message
    # The gateway's cap on streams wins over a longer grpc-timeout (and applies without one).
    capped = await start_gateway(pipeline.platform, METERMESH_GATEWAY_STREAM_TIMEOUT_SECONDS="1")
    try:
        node = NodeClient(pipeline.script, capped.url)
        t = time.monotonic()
        res = await node.call(ALR, "WatchAlerts", {}, token=operator(), timeout_ms=3_600_000)
        assert res.code == grpc.StatusCode.DEADLINE_EXCEEDED and 0.9 <= time.monotonic() - t < 10
    finally:
        await capped.proc.stop()


async def test_a_client_that_goes_away_cancels_the_upstream_stream(pipeline: Pipeline) -> None:
    await push_surge(pipeline.node, "ST-C1")
    await wait_for(lambda: alerts_of(pipeline.platform, "ST-C1"), bool, timeout=60, what="ST-C1's alert")
    before = cancelled_watches(pipeline.platform)
    watch = await pipeline.node.start(ALR, "WatchAlerts", {"afterSequence": "0"}, token=operator())
    try:
        first = await watch.next_line(30)  # the stream is open end to end
        assert "message" in first
        await watch.cancel()
        lines = await watch.finish()
        assert lines[-1] == {"cancelled": True}
    finally:
        await watch.close()
    await wait_for(
        lambda: asyncio.sleep(0, cancelled_watches(pipeline.platform)),
        lambda n: n == before + 1,
        timeout=15,
        what="the alert service to log its WatchAlerts as CANCELLED",
    )
    async with httpx.AsyncClient(base_url=pipeline.gateway.url, timeout=30, trust_env=False) as http:
        metrics = await wait_for(
            lambda: http.get("/metrics"),
            lambda r: "metermesh_gateway_open_streams 0.0" in r.text,
            timeout=10,
            what="no open stream left in the gateway",
        )
        assert 'code="CANCELLED",method="metermesh.alerts.v1.AlertService/WatchAlerts"' in metrics.text

    # The same when a hand-made HTTP client drops the connection mid-stream.
    before = cancelled_watches(pipeline.platform)
    async with httpx.AsyncClient(base_url=pipeline.gateway.url, timeout=30, trust_env=False) as http:
        req = alerts_pb2.WatchAlertsRequest(after_sequence=0)
        async with stream_call(http, f"{ALR}/WatchAlerts", req, token=operator()) as (_, chunks):
            async for _frames in chunks:
                break
    await wait_for(
        lambda: asyncio.sleep(0, cancelled_watches(pipeline.platform)),
        lambda n: n == before + 1,
        timeout=15,
        what="the upstream WatchAlerts cancelled after the connection dropped",
    )


async def test_a_stopping_gateway_ends_open_streams_with_unavailable(pipeline: Pipeline) -> None:
    gw = await start_gateway(pipeline.platform)
    node = NodeClient(pipeline.script, gw.url)
    watch = await node.start(ALR, "WatchAlerts", {"afterSequence": "0"}, token=operator())
    try:
        assert "message" in await watch.next_line(30)
        t = time.monotonic()
        gw.proc.signal(signal.SIGTERM)
        lines = await watch.finish(30)
        error = lines[-1]["error"]
        assert error["code"] == grpc.StatusCode.UNAVAILABLE.value[0] and "after_sequence" in error["message"]
        assert gw.proc.proc is not None
        assert await asyncio.to_thread(gw.proc.proc.wait, 15) == 0 and time.monotonic() - t < 10
    finally:
        await watch.close()
