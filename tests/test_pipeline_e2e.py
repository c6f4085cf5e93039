"""Issue 3's promises end to end, on real NATS and PostgreSQL with every process of the pipeline
running: ingest -> READINGS -> anomaly -> ANOMALIES -> alerts -> WatchAlerts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from metermesh.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from metermesh.anomaly.v1 import anomaly_pb2
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from tests.support import Platform, register, wait_for

SURGE = anomaly_pb2.ANOMALY_KIND_VOLTAGE_SURGE
GAP = anomaly_pb2.ANOMALY_KIND_COMMUNICATION_GAP


def reading(
    meter_id: str, t: float, *, voltage: float = 230.0, wh: float = 50.0, interval: int = 900
) -> common_pb2.Reading:
    r = common_pb2.Reading(
        meter_id=meter_id, interval_seconds=interval, import_energy_wh=wh, voltage_v=voltage
    )
    r.read_time.seconds = int(t)
    r.read_time.nanos = int((t - int(t)) * 1e6) * 1000
    return r


async def push(platform: Platform, readings: list[common_pb2.Reading]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            async with platform.channel() as ch:
                resp = await ingest_pb2_grpc.IngestServiceStub(ch).PushReadings(
                    ingest_pb2.PushReadingsRequest(readings=readings), timeout=10
                )
            assert resp.accepted_count == len(readings), resp.rejections[:3]
            return
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, exc
            await asyncio.sleep(0.1)


async def start_pipeline(platform: Platform, **env: str) -> None:
    await platform.start_writer()
    await platform.start_alerts(**env)
    await platform.start_anomaly(**env)
    await platform.start_ingest()


@asynccontextmanager
async def watching(platform: Platform) -> AsyncIterator[list[alerts_pb2.AlertUpdate]]:
    """Collects every WatchAlerts update in the background while the block runs."""
    updates: list[alerts_pb2.AlertUpdate] = []
    ch = platform.channel_to(platform.alerts_addr)
    call = alerts_pb2_grpc.AlertServiceStub(ch).WatchAlerts(alerts_pb2.WatchAlertsRequest())

    async def collect() -> None:
        async for r in call:
            updates.append(r.update)

    task = asyncio.create_task(collect())
    try:
        yield updates
    finally:
        call.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ch.close()


async def list_alerts(platform: Platform, **filter_: object) -> list[alerts_pb2.Alert]:
    async with platform.channel_to(platform.alerts_addr) as ch:
        stub = alerts_pb2_grpc.AlertServiceStub(ch)
        out, token = [], ""
        while True:
            resp = await stub.ListAlerts(
                alerts_pb2.ListAlertsRequest(
                    filter=alerts_pb2.AlertFilter(**filter_), page_size=1000, page_token=token
                ),
                timeout=10,
            )
            out.extend(resp.alerts)
            token = resp.next_page_token
            if not token:
                return out


async def test_a_295_volt_reading_becomes_a_surge_alert_on_watch_alerts(platform: Platform) -> None:
    await start_pipeline(platform)
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), "GJ-1")
    now = time.time()
    async with watching(platform) as updates:
        await push(platform, [reading("GJ-1", now - 60, voltage=295.0)])
        await wait_for(
            lambda: asyncio.sleep(0, updates),
            lambda u: len(u) >= 1,
            timeout=30,
            what="an alert on WatchAlerts",
        )
    alert = updates[0].alert
    assert updates[0].change_kind == alerts_pb2.ALERT_CHANGE_KIND_CREATED
    assert (alert.meter_id, alert.kind, alert.state) == ("GJ-1", SURGE, alerts_pb2.ALERT_STATE_OPEN)
    assert alert.event_count == 1 and alert.severity >= anomaly_pb2.SEVERITY_MAJOR
    assert "295" in alert.last_event.explanation


async def test_100_surges_in_a_minute_make_one_alert_with_count_100(platform: Platform) -> None:
    await start_pipeline(platform)
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), "GJ-2", interval_seconds=1)
    t0 = time.time() - 120
    surges = [
        reading("GJ-2", t0 + k * 0.6, voltage=260.0 + k % 7, wh=1.0 + k % 5, interval=1) for k in range(100)
    ]
    for i in range(0, 100, 10):  # ten pushes of ten, as a head-end would send them
        await push(platform, surges[i : i + 10])
    alerts = await wait_for(
        lambda: list_alerts(platform, kinds=[SURGE]),
        lambda a: len(a) == 1 and a[0].event_count == 100,
        timeout=60,
        what="one surge alert with 100 events",
    )
    a = alerts[0]
    assert a.meter_id == "GJ-2" and a.state == alerts_pb2.ALERT_STATE_OPEN
    assert a.first_seen_time.ToMicroseconds() == surges[0].read_time.ToMicroseconds()
    assert a.last_seen_time.ToMicroseconds() == surges[-1].read_time.ToMicroseconds()


async def test_a_meter_that_stops_reporting_raises_a_communication_gap_alert(platform: Platform) -> None:
    await start_pipeline(
        platform, METERMESH_ANOMALY_GAP_SWEEP_SECONDS="0.5", METERMESH_ANOMALY_GAP_INTERVALS="3"
    )
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), "GJ-3", "GJ-4", interval_seconds=2)
    now = time.time()
    await push(
        platform, [reading(m, now - 4 + 2 * k, interval=2) for k in range(3) for m in ("GJ-3", "GJ-4")]
    )
    # GJ-4 keeps reporting every 2 s; GJ-3 falls silent.
    t = now + 2
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        gaps = await list_alerts(platform, kinds=[GAP])
        if gaps:
            break
        await push(platform, [reading("GJ-4", t, interval=2)])
        t += 2
        await asyncio.sleep(max(0.0, t - time.time()))
    assert [(a.meter_id, a.kind) for a in gaps] == [("GJ-3", GAP)]
    assert "GJ-3" in gaps[0].summary or "GJ-3" == gaps[0].meter_id
    assert gaps[0].first_seen_time.seconds == int(now)  # the gap began at its last reading


async def test_killed_anomaly_and_alert_services_lose_no_event_and_duplicate_no_alert(
    platform: Platform,
) -> None:
    quiet = {"METERMESH_ANOMALY_GAP_SWEEP_SECONDS": "3600"}
    await platform.start_writer()
    alerts = await platform.start_alerts(**quiet)
    anomaly = await platform.start_anomaly(**quiet)
    await platform.start_ingest()
    meters = [f"E-{i:02d}" for i in range(20)]
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), *meters)
    start = int(time.time()) // 900 * 900 - 40 * 900
    expected: dict[str, int] = dict.fromkeys(meters, 0)
    for k in range(30):
        batch = []
        for j, m in enumerate(meters):
            surge = (k + j) % 3 == 0
            expected[m] += surge
            batch.append(
                reading(m, start + k * 900, voltage=275.0 if surge else 231.0, wh=20.0 + (k * j) % 13)
            )
        await push(platform, batch)
        if k == 10:
            anomaly.kill()
            anomaly = await platform.start_anomaly(**quiet)
        if k == 20:
            alerts.kill()
            alerts = await platform.start_alerts(**quiet)
    total = sum(expected.values())
    got = await wait_for(
        lambda: list_alerts(platform, kinds=[SURGE]),
        lambda a: sum(x.event_count for x in a) >= total,
        timeout=90,
        what=f"{total} surge events folded into alerts",
    )
    assert sorted(a.meter_id for a in got) == sorted(meters)  # one alert per meter: none duplicated
    assert {a.meter_id: a.event_count for a in got} == expected  # no event lost or counted twice
