"""The alert service's promises under failure and scale-out: SIGKILL mid-stream loses no event and
counts none twice; replicas share the consumer, keep one alert per meter and kind, number changes in
commit order and see each other's changes live; SIGTERM ends watches with a resume point."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
from metermesh.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from metermesh.anomaly.v1 import anomaly_pb2

from services.common.embedded import free_port
from tests.support import Platform, wait_for
from tests.test_alerts_service import CRITICAL, WARNING, Anomalies, Receiver, Watch, anomaly, history

pytestmark = pytest.mark.slow

OUTAGE = anomaly_pb2.ANOMALY_KIND_OUTAGE


async def folded(platform: Platform) -> int:
    conn = await platform.db()
    try:
        return int(await conn.fetchval("SELECT coalesce(sum(event_count), 0) FROM alerts"))
    finally:
        await conn.close()


async def assert_one_alert_per_meter_and_kind(
    platform: Platform, expected: dict[tuple[str, int], int]
) -> None:
    """expected: (meter, kind) -> distinct events published."""
    conn = await platform.db()
    try:
        rows = await conn.fetch(
            "SELECT meter_id, kind, count(*) AS n, sum(event_count) AS events FROM alerts GROUP BY 1, 2"
        )
        assert {(r["meter_id"], r["kind"]): (r["n"], r["events"]) for r in rows} == {
            k: (1, n) for k, n in expected.items()
        }
        assert await conn.fetchval("SELECT count(*) FROM alert_events") == sum(expected.values())
        # The history is in commit order: change times never go back along the sequence, and each
        # alert's count only grows from one change to the next.
        changes = await conn.fetch(
            "SELECT sequence, change_time, alert_id, event_count FROM alert_changes ORDER BY sequence"
        )
        times = [r["change_time"] for r in changes]
        assert times == sorted(times)
        last: dict[str, int] = {}
        for r in changes:
            assert r["event_count"] > last.get(r["alert_id"], 0)
            last[r["alert_id"]] = r["event_count"]
    finally:
        await conn.close()


async def test_no_event_is_lost_or_counted_twice_when_the_alert_service_is_killed_mid_stream(
    platform: Platform,
) -> None:
    env = {"METERMESH_ALERTS_FETCH_BATCH": "10"}
    alerts = await platform.start_alerts(**env)
    meters = [f"KL-{i:03d}" for i in range(40)]
    events = [anomaly(m, n, CRITICAL if n == 20 else WARNING) for n in range(30) for m in meters]
    async with Anomalies(platform) as anomalies:

        async def publish_all() -> None:
            for i in range(0, len(events), 100):
                await anomalies.publish(events[i : i + 100])

        publisher = asyncio.create_task(publish_all())
        await wait_for(lambda: folded(platform), lambda n: n > 0, what="the first events folded")
        alerts.kill()  # SIGKILL: no chance to finish the transaction in hand or to ack
        at_kill = await folded(platform)
        await platform.start_alerts(**env)
        await publisher
        await wait_for(
            lambda: folded(platform), lambda n: n >= len(events), timeout=60, what="every event folded"
        )
        # Redeliveries of what was folded but not acked before the kill: absorbed, not counted.
        await anomalies.wait_consumed()
    assert at_kill < len(events), "the service folded everything before it was killed"
    assert await folded(platform) == len(events)
    await assert_one_alert_per_meter_and_kind(
        platform, {(m, anomaly_pb2.ANOMALY_KIND_VOLTAGE_SURGE): 30 for m in meters}
    )
    # A watcher replaying the whole history ends with every alert at its final count.
    async with platform.channel_to(platform.alerts_addr) as ch:
        replay = Watch.open(alerts_pb2_grpc.AlertServiceStub(ch), after_sequence=0)
        final = [s for s, *_ in await history(platform)]
        await replay.until(lambda us: len(us) >= len(final), "the replay")
        assert replay.sequences() == final
        latest = {u.alert.alert_id: u.alert for u in replay.updates}
        assert sorted(a.event_count for a in latest.values()) == [30] * len(meters)
        assert all(a.severity == CRITICAL for a in latest.values())
        replay.close()


async def test_replicas_share_the_work_and_see_each_others_changes_live(platform: Platform) -> None:
    env = {"METERMESH_ALERTS_FETCH_BATCH": "5"}
    await platform.start_alerts(**env)
    other_addr = f"127.0.0.1:{free_port()}"
    other = platform.process("alerts", "services.alerts", other_addr, METERMESH_ALERTS_ADDR=other_addr, **env)
    other.start()
    await other.wait_serving(60)
    meters = [f"RP-{i:02d}" for i in range(30)]
    events = [
        anomaly(m, n, WARNING, kind)
        for n in range(10)
        for m in meters
        for kind in (anomaly_pb2.ANOMALY_KIND_VOLTAGE_SURGE, OUTAGE)
    ]
    async with (
        platform.channel_to(platform.alerts_addr) as ch_a,
        platform.channel_to(other_addr) as ch_b,
        Anomalies(platform) as anomalies,
    ):
        stub_a, stub_b = alerts_pb2_grpc.AlertServiceStub(ch_a), alerts_pb2_grpc.AlertServiceStub(ch_b)
        watch_a, watch_b = Watch.open(stub_a, after_sequence=0), Watch.open(stub_b, after_sequence=0)
        await anomalies.publish(events)
        await wait_for(
            lambda: folded(platform), lambda n: n >= len(events), timeout=60, what="every event folded"
        )
        await anomalies.wait_consumed()
        await assert_one_alert_per_meter_and_kind(
            platform, {(m, k): 10 for m in meters for k in (anomaly_pb2.ANOMALY_KIND_VOLTAGE_SURGE, OUTAGE)}
        )
        final = [s for s, *_ in await history(platform)]
        for w in (watch_a, watch_b):
            await w.until(lambda us: len(us) >= len(final), "every change at both replicas")
            assert w.sequences() == final
        # A change made through one replica reaches the other's watchers at once (NOTIFY), not at
        # its next poll.
        alert_id = watch_a.updates[0].alert.alert_id
        started = time.monotonic()
        await stub_b.AcknowledgeAlert(
            alerts_pb2.AcknowledgeAlertRequest(alert_id=alert_id, acknowledged_by="op-b")
        )
        await watch_a.until(
            lambda us: us[-1].change_kind == alerts_pb2.ALERT_CHANGE_KIND_ACKNOWLEDGED, "B's change at A"
        )
        assert time.monotonic() - started < 2
        watch_a.close()
        watch_b.close()
    # Both replicas did part of the work.
    for proc in platform.procs:
        assert proc.log_path is not None and '"alert created"' in proc.log_path.read_text(), proc.log_path


async def test_sigterm_ends_watches_with_the_point_to_resume_from(platform: Platform) -> None:
    alerts = await platform.start_alerts(METERMESH_SHUTDOWN_GRACE_SECONDS="30")
    async with platform.channel_to(platform.alerts_addr) as ch, Anomalies(platform) as anomalies:
        watch = Watch.open(alerts_pb2_grpc.AlertServiceStub(ch))
        await anomalies.publish([anomaly("ST-1", 0)])
        await watch.until(lambda us: len(us) == 1, "the alert")
        started = time.monotonic()
        alerts.signal(signal.SIGTERM)

        async def ended() -> bool:
            return watch.task is not None and watch.task.done()

        await wait_for(ended, bool, what="the watch to end")
        assert watch.error is not None and watch.error.code() == grpc.StatusCode.UNAVAILABLE
        assert f"after_sequence={watch.updates[-1].sequence}" in (watch.error.details() or "")
    assert alerts.proc is not None
    assert await asyncio.to_thread(alerts.proc.wait, 30) == 0
    assert time.monotonic() - started < 10, "the stop waited for the watch instead of ending it"


async def test_folding_and_watches_carry_on_when_postgres_drops_the_service_connections(
    platform: Platform,
) -> None:
    await platform.start_alerts()
    async with platform.channel_to(platform.alerts_addr) as ch, Anomalies(platform) as anomalies:
        stub = alerts_pb2_grpc.AlertServiceStub(ch)
        watch = Watch.open(stub, after_sequence=0)
        await anomalies.publish([anomaly("PG-1", 0)])
        await watch.until(lambda us: len(us) == 1, "the first alert")
        # Every connection of the service at once: the pool's and the change feed's LISTEN.
        conn = await platform.db()
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                platform.name,
            )
        finally:
            await conn.close()
        assert killed >= 2
        await anomalies.publish([anomaly("PG-1", 1), anomaly("PG-2", 0)])
        await watch.until(
            lambda us: (
                any(u.alert.meter_id == "PG-2" for u in us) and any(u.alert.event_count == 2 for u in us)
            ),
            "the changes made after the connections dropped",
        )
        assert watch.sequences() == [s for s, *_ in await history(platform)]
        watch.close()


async def test_webhook_notifications_wait_in_the_outbox_across_a_restart(platform: Platform) -> None:
    port = free_port()
    env = {
        "METERMESH_ALERTS_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",  # nobody listens yet
        "METERMESH_ALERTS_WEBHOOK_ATTEMPTS": "2",
        "METERMESH_ALERTS_WEBHOOK_BACKOFF_SECONDS": "0.05",
        "METERMESH_ALERTS_WEBHOOK_MAX_BACKOFF_SECONDS": "0.2",
        "METERMESH_ALERTS_WEBHOOK_TIMEOUT_SECONDS": "1",
    }
    alerts = await platform.start_alerts(**env)
    meters = [f"OB-{i}" for i in range(5)]

    async def outbox() -> int:
        conn = await platform.db()
        try:
            return int(await conn.fetchval("SELECT count(*) FROM alert_webhook_outbox"))
        finally:
            await conn.close()

    async with Anomalies(platform) as anomalies:
        await anomalies.publish([anomaly(m, 0) for m in meters])
        await wait_for(outbox, lambda n: n == 5, what="5 notifications waiting")
    alerts.kill()
    receiver = Receiver(200, port=port)
    try:
        await platform.start_alerts(**env)

        async def received() -> list[str]:
            return sorted(b["alert"]["meter_id"] for b in receiver.bodies)

        # The row the killed process had leased comes back when its lease runs out (seconds here).
        await wait_for(received, lambda got: got == meters, timeout=30, what="every notification delivered")
        await wait_for(outbox, lambda n: n == 0, what="the outbox emptied")
    finally:
        receiver.stop()
