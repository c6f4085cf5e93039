"""AlertService end to end, on real NATS and PostgreSQL: anomaly events published on ANOMALIES fold
into one alert per meter and kind, counted once however often they are delivered; operators
acknowledge and resolve; quiet alerts resolve themselves; WatchAlerts streams every change, live, to
any number of watchers, resumable by sequence, slow watchers included; webhooks announce new and
escalated alerts without ever holding alerting back."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import nats
import pytest
from metermesh.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from metermesh.anomaly.v1 import anomaly_pb2

from services.alerts.store import AlertStore
from services.common import jetstream
from services.common.db import create_pool
from services.common.embedded import free_port
from tests.support import Platform, wait_for

BASE = int(time.time()) // 900 * 900 - 7 * 86400
SURGE = anomaly_pb2.ANOMALY_KIND_VOLTAGE_SURGE
WARNING = anomaly_pb2.SEVERITY_WARNING
MAJOR = anomaly_pb2.SEVERITY_MAJOR
CRITICAL = anomaly_pb2.SEVERITY_CRITICAL
OPEN = alerts_pb2.ALERT_STATE_OPEN
ACKNOWLEDGED = alerts_pb2.ALERT_STATE_ACKNOWLEDGED
RESOLVED = alerts_pb2.ALERT_STATE_RESOLVED
CREATED = alerts_pb2.ALERT_CHANGE_KIND_CREATED
UPDATED = alerts_pb2.ALERT_CHANGE_KIND_UPDATED
ESCALATED = alerts_pb2.ALERT_CHANGE_KIND_ESCALATED


# --- helpers (the durability tests use them too) ---------------------------------------------------


def anomaly(
    meter: str, n: int, severity: int = WARNING, kind: int = SURGE, voltage: float = 262.4
) -> anomaly_pb2.AnomalyEvent:
    """The n-th (15-minute) anomaly of a meter; the id is derived from meter, kind and n."""
    ev = anomaly_pb2.AnomalyEvent(
        event_id=f"{meter}/{kind}/{n}",
        meter_id=meter,
        kind=kind,  # type: ignore[arg-type]
        severity=severity,  # type: ignore[arg-type]
        score=0.93,
        detector=anomaly_pb2.DETECTOR_RULES,
        model_version="rules-1",
        explanation=f"Voltage {voltage} V above the 253 V surge limit.",
        features=[
            anomaly_pb2.Feature(name="voltage_v", value=voltage, expected_value=253, unit="V", contribution=1)
        ],
    )
    ev.start_time.seconds = BASE + n * 900
    ev.end_time.seconds = BASE + n * 900
    ev.detect_time.seconds = int(time.time())
    return ev


def subject_kind(kind: int) -> str:
    return anomaly_pb2.AnomalyKind.Name(kind).removeprefix("ANOMALY_KIND_").lower()  # type: ignore[arg-type]


@dataclass
class Anomalies:
    """Publishes anomaly events the way the anomaly service does, and tells when the alert service
    has consumed everything."""

    platform: Platform
    nc: Any = None

    async def __aenter__(self) -> Anomalies:
        self.nc = await nats.connect(self.platform.nats_url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def publish(self, events: list[anomaly_pb2.AnomalyEvent], *, msg_id_suffix: str = "") -> None:
        """msg_id_suffix: a different Nats-Msg-Id gets past JetStream's deduplication, so the alert
        service sees the event again, as it would after a redelivery or a re-detection."""
        js = self.nc.jetstream()
        topology = jetstream.Topology(prefix=self.platform.prefix)
        await asyncio.gather(
            *(
                jetstream.publish(
                    js,
                    topology.anomalies_subject(subject_kind(ev.kind)),
                    ev.SerializeToString(),
                    msg_id=ev.event_id + msg_id_suffix,
                )
                for ev in events
            )
        )

    async def consumed(self) -> tuple[int, int]:
        info = await self.nc.jetstream().consumer_info(f"{self.platform.prefix}ANOMALIES", "alerts")
        return info.num_pending, info.num_ack_pending

    async def wait_consumed(self) -> None:
        await wait_for(self.consumed, lambda p: p == (0, 0), what="the alert service to consume everything")


@dataclass
class Watch:
    """A WatchAlerts stream read in the background into `updates`."""

    call: Any
    read: bool = True
    updates: list[alerts_pb2.AlertUpdate] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    task: asyncio.Task[None] | None = None
    _go: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def open(cls, stub: alerts_pb2_grpc.AlertServiceStub, *, read: bool = True, **request: Any) -> Watch:
        w = cls(stub.WatchAlerts(alerts_pb2.WatchAlertsRequest(**request)), read)
        if read:
            w._go.set()
        w.task = asyncio.create_task(w._run())
        return w

    async def _run(self) -> None:
        await self._go.wait()
        try:
            async for resp in self.call:
                self.updates.append(resp.update)
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    def start_reading(self) -> None:
        self._go.set()

    async def until(self, done: Callable[[list[alerts_pb2.AlertUpdate]], bool], what: str) -> None:
        async def probe() -> list[alerts_pb2.AlertUpdate]:
            if self.error is not None:
                raise AssertionError(f"the watch failed: {self.error.code()} {self.error.details()}")
            return list(self.updates)

        await wait_for(probe, done, what=what)

    def sequences(self) -> list[int]:
        return [u.sequence for u in self.updates]

    def close(self) -> None:
        self.call.cancel()


@pytest.fixture
async def stub(platform: Platform) -> AsyncIterator[alerts_pb2_grpc.AlertServiceStub]:
    async with platform.channel_to(platform.alerts_addr) as ch:
        yield alerts_pb2_grpc.AlertServiceStub(ch)


async def alerts_of(stub: alerts_pb2_grpc.AlertServiceStub, **filt: Any) -> list[alerts_pb2.Alert]:
    out: list[alerts_pb2.Alert] = []
    token = ""
    while True:
        resp = await stub.ListAlerts(
            alerts_pb2.ListAlertsRequest(
                filter=alerts_pb2.AlertFilter(**filt), page_size=1000, page_token=token
            )
        )
        out.extend(resp.alerts)
        token = resp.next_page_token
        if not token:
            return out


async def history(platform: Platform) -> list[tuple[int, str, int, str]]:
    """The change history: (sequence, alert_id, change_kind, actor) in sequence order."""
    conn = await platform.db()
    try:
        rows = await conn.fetch(
            "SELECT sequence, alert_id, change_kind, actor FROM alert_changes ORDER BY sequence"
        )
        return [(r["sequence"], r["alert_id"], r["change_kind"], r["actor"]) for r in rows]
    finally:
        await conn.close()


# --- folding, watching, resuming -------------------------------------------------------------------


async def test_surge_events_fold_into_one_alert_and_every_watcher_sees_each_change_once(
    platform: Platform, stub: alerts_pb2_grpc.AlertServiceStub
) -> None:
    await platform.start_alerts()
    async with Anomalies(platform) as anomalies:
        first, second = Watch.open(stub), Watch.open(stub)
        # A marker alert of another meter: once both watchers have it, both are live.
        await anomalies.publish([anomaly("MARK-1", 0)])
        for w in (first, second):
            await w.until(lambda us: any(u.alert.meter_id == "MARK-1" for u in us), "the marker alert")

        started = time.monotonic()
        surges = [anomaly("GJ-000123", n, WARNING) for n in range(60)]
        surges += [anomaly("GJ-000123", n, CRITICAL, voltage=281.0) for n in range(60, 100)]
        await anomalies.publish(surges[:60])
        await anomalies.publish(surges[60:])
        assert time.monotonic() - started < 60

        async def surge_alerts() -> list[alerts_pb2.Alert]:
            return await alerts_of(stub, meter_ids=["GJ-000123"])

        (alert,) = await wait_for(
            surge_alerts, lambda a: len(a) == 1 and a[0].event_count == 100, what="one alert with 100 events"
        )
        assert alert.state == OPEN and alert.severity == CRITICAL and alert.kind == SURGE
        assert alert.first_seen_time.seconds == BASE and alert.last_seen_time.seconds == BASE + 99 * 900
        assert alert.summary == "Voltage surge on GJ-000123 (281 V)"
        assert alert.last_event.event_id == surges[-1].event_id and alert.last_event.explanation

        # The same events again (a redelivery, a re-detection) change nothing.
        await anomalies.publish(surges, msg_id_suffix="#again")
        await anomalies.wait_consumed()
        (again,) = await surge_alerts()
        assert again.event_count == 100 and again.update_time == alert.update_time

        def surge_updates(w: Watch) -> list[alerts_pb2.AlertUpdate]:
            return [u for u in w.updates if u.alert.meter_id == "GJ-000123"]

        for w in (first, second):
            await w.until(lambda us: any(u.alert.event_count == 100 for u in us), "the 100th event")
        seen = surge_updates(first)
        assert seen[0].change_kind == CREATED
        assert {u.change_kind for u in seen[1:]} <= {UPDATED, ESCALATED} and seen[1:]
        assert any(u.change_kind == ESCALATED for u in seen)
        counts = [u.alert.event_count for u in seen]
        assert counts == sorted(counts) and len(set(counts)) == len(counts) and counts[-1] == 100
        assert first.sequences() == sorted(set(first.sequences()))
        # The second watcher got exactly the same changes.
        assert [(u.sequence, u.change_kind, u.alert.event_count) for u in second.updates] == [
            (u.sequence, u.change_kind, u.alert.event_count) for u in first.updates
        ]
        # Every committed change reached the watchers, in commit order.
        assert first.sequences() == [s for s, *_ in await history(platform)]

        # Resuming after any change replays exactly the changes after it.
        middle = first.updates[len(first.updates) // 2].sequence
        resumed = Watch.open(stub, after_sequence=middle)
        await resumed.until(
            lambda us: len(us) >= len([s for s in first.sequences() if s > middle]), "the replay"
        )
        assert resumed.sequences() == [s for s in first.sequences() if s > middle]
        assert resumed.updates[-1] == first.updates[-1]

        # Without a resume point: the active alerts first, each as its latest change, then live changes.
        fresh = Watch.open(stub)
        await fresh.until(lambda us: len(us) >= 2, "the snapshot")
        latest = {u.alert.alert_id: u for u in first.updates}
        assert {u.alert.alert_id for u in fresh.updates} == set(latest)
        for u in fresh.updates:
            assert (u.sequence, u.change_kind, u.alert) == (
                latest[u.alert.alert_id].sequence,
                latest[u.alert.alert_id].change_kind,
                latest[u.alert.alert_id].alert,
            )
        ack = await stub.AcknowledgeAlert(
            alerts_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id, acknowledged_by="op-1")
        )
        for w in (first, second, resumed, fresh):
            await w.until(
                lambda us: us[-1].change_kind == alerts_pb2.ALERT_CHANGE_KIND_ACKNOWLEDGED, "the ack"
            )
            assert w.updates[-1].alert == ack.alert
        assert fresh.sequences() == sorted(set(fresh.sequences()))
        # A filtered watcher sees the alert leave its view: the change is sent when it matched before.
        open_only = Watch.open(stub, filter=alerts_pb2.AlertFilter(states=[OPEN], meter_ids=["MARK-1"]))
        await open_only.until(lambda us: len(us) == 1, "the open marker alert")
        await stub.ResolveAlert(
            alerts_pb2.ResolveAlertRequest(alert_id=open_only.updates[0].alert.alert_id, resolved_by="op-2")
        )
        await open_only.until(lambda us: len(us) == 2, "the resolve")
        assert open_only.updates[1].alert.state == RESOLVED
        for w in (first, second, resumed, fresh, open_only):
            w.close()


async def test_a_slow_watcher_never_holds_back_alerting_and_still_gets_every_change(
    platform: Platform, stub: alerts_pb2_grpc.AlertServiceStub
) -> None:
    # Queues of 3: the feed dispatches a whole transaction's changes at once, so every watcher
    # overflows and must catch up from the history table.
    await platform.start_alerts(METERMESH_ALERTS_WATCH_QUEUE_SIZE="3", METERMESH_ALERTS_FETCH_BATCH="50")
    async with Anomalies(platform) as anomalies:
        fast = Watch.open(stub, after_sequence=0)
        slow = Watch.open(stub, after_sequence=0, read=False)  # opened, then not read at all
        meters = [f"SL-{i:03d}" for i in range(80)]
        for round_ in range(3):
            await anomalies.publish(
                [anomaly(m, round_, CRITICAL if round_ == 2 else WARNING) for m in meters], msg_id_suffix=""
            )

        async def counts() -> int:
            return sum(a.event_count for a in await alerts_of(stub))

        await wait_for(counts, lambda n: n == 240, what="all 240 events folded while a watcher is stuck")
        final = [s for s, *_ in await history(platform)]
        await fast.until(lambda us: len(us) >= len(final), "the fast watcher to catch up")
        assert fast.sequences() == final
        slow.start_reading()
        await slow.until(lambda us: len(us) >= len(final), "the slow watcher to catch up")
        assert slow.sequences() == final
        assert [u.alert.event_count for u in slow.updates] == [u.alert.event_count for u in fast.updates]
        fast.close()
        slow.close()


async def test_a_resume_point_outside_the_history_is_out_of_range(
    platform: Platform, stub: alerts_pb2_grpc.AlertServiceStub
) -> None:
    await platform.start_alerts()
    async with Anomalies(platform) as anomalies:
        await anomalies.publish([anomaly(f"OR-{i}", 0) for i in range(5)])
        await wait_for(lambda: alerts_of(stub), lambda a: len(a) == 5, what="5 alerts")
    seqs = [s for s, *_ in await history(platform)]

    async def watch_error(after: int) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_sequence=after)):
                pass
        return info.value

    ahead = await watch_error(seqs[-1] + 1000)
    assert ahead.code() == grpc.StatusCode.OUT_OF_RANGE and "ahead of the latest change" in (
        ahead.details() or ""
    )

    # Age the first changes past the retention period and prune, as the sweep does.
    conn = await platform.db()
    try:
        await conn.execute(
            "UPDATE alert_changes SET change_time = now() - interval '9 days' WHERE sequence <= $1", seqs[2]
        )
    finally:
        await conn.close()
    pool = await create_pool(platform.db_url, min_size=1, max_size=2)
    try:
        assert await AlertStore(pool).prune(dt.timedelta(days=8)) == 3
    finally:
        await pool.close()
    gone = await watch_error(seqs[1])
    assert gone.code() == grpc.StatusCode.OUT_OF_RANGE and "older than the retained" in (gone.details() or "")
    kept = Watch.open(stub, after_sequence=seqs[2])
    await kept.until(lambda us: len(us) == 2, "the retained changes")
    assert kept.sequences() == seqs[3:]
    kept.close()
    # A listing's sequence is a valid resume point.
    listing = await stub.ListAlerts(alerts_pb2.ListAlertsRequest())
    assert listing.sequence == seqs[-1]


async def test_events_that_can_never_become_alerts_go_to_the_dead_letters(
    platform: Platform, stub: alerts_pb2_grpc.AlertServiceStub
) -> None:
    await platform.start_alerts()
    async with Anomalies(platform) as anomalies:
        js = anomalies.nc.jetstream()
        subject = jetstream.Topology(prefix=platform.prefix).anomalies_subject("voltage_surge")
        await jetstream.publish(js, subject, b"\x0a\xff\xff not an event", msg_id="junk")
        nameless = anomaly("DL-1", 0)
        nameless.event_id = ""
        await jetstream.publish(js, subject, nameless.SerializeToString(), msg_id="nameless")
        await anomalies.publish([anomaly("DL-2", 0)])

        async def dead() -> int:
            return (await js.stream_info(f"{platform.prefix}DEADLETTER")).state.messages

        await wait_for(dead, lambda n: n == 2, what="both bad messages dead-lettered")
        (alert,) = await wait_for(
            lambda: alerts_of(stub), lambda a: len(a) == 1, what="the good neighbour's alert"
        )
        assert alert.meter_id == "DL-2"
        sub = await js.subscribe(f"{platform.prefix}deadletter.>", ordered_consumer=True)
        reasons = sorted([(await sub.next_msg(timeout=5)).headers["Metermesh-Dead-Reason"] for _ in range(2)])
        assert "event_id '' must be" in reasons[0] and "not a metermesh.anomaly.v1.AnomalyEvent" in reasons[1]


# --- the lifecycle and the API ---------------------------------------------------------------------


async def test_acknowledge_and_resolve_record_who_and_when_and_the_next_event_opens_a_new_alert(
    platform: Platform, stub: alerts_pb2_grpc.AlertServiceStub
) -> None:
    await platform.start_alerts()
    async with Anomalies(platform) as anomalies:
        await anomalies.publish([anomaly("LC-1", 0, MAJOR)])
        (alert,) = await wait_for(lambda: alerts_of(stub), lambda a: len(a) == 1, what="the alert")
        got = await stub.GetAlert(alerts_pb2.GetAlertRequest(alert_id=alert.alert_id))
        assert got.alert == alert and not alert.acknowledged_by and not alert.HasField("acknowledge_time")

        before = time.time()
        ack = (
            await stub.AcknowledgeAlert(
                alerts_pb2.AcknowledgeAlertRequest(
                    alert_id=alert.alert_id, acknowledged_by="op-1", note="on it"
                )
            )
        ).alert
        assert (ack.state, ack.acknowledged_by, ack.acknowledge_note) == (ACKNOWLEDGED, "op-1", "on it")
        assert before - 5 < ack.acknowledge_time.seconds <= time.time() + 5
        again = await stub.AcknowledgeAlert(
            alerts_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id, acknowledged_by="op-2", note="me too")
        )
        assert again.alert == ack  # idempotent: unchanged

        # Events still fold into an acknowledged alert.
        await anomalies.publish([anomaly("LC-1", 1, CRITICAL)])
        (folded,) = await wait_for(
            lambda: alerts_of(stub), lambda a: a[0].event_count == 2, what="the second event folded in"
        )
        assert folded.state == ACKNOWLEDGED and folded.severity == CRITICAL

        res = (
            await stub.ResolveAlert(
                alerts_pb2.ResolveAlertRequest(
                    alert_id=alert.alert_id, resolved_by="op-3", note="fuse replaced"
                )
            )
        ).alert
        assert (res.state, res.resolved_by, res.resolve_note, res.acknowledged_by) == (
            RESOLVED,
            "op-3",
            "fuse replaced",
            "op-1",
        )
        assert res.resolve_time.ToDatetime() >= ack.acknowledge_time.ToDatetime()
        assert (
            await stub.ResolveAlert(
                alerts_pb2.ResolveAlertRequest(alert_id=alert.alert_id, resolved_by="op-4")
            )
        ).alert == res
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AcknowledgeAlert(
                alerts_pb2.AcknowledgeAlertRequest(alert_id=alert.alert_id, acknowledged_by="op-5")
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "resolved" in (info.value.details() or "")

        # After RESOLVED, the next event of the same meter and kind opens a new alert.
        await anomalies.publish([anomaly("LC-1", 2, WARNING)])
        newest, old = await wait_for(lambda: alerts_of(stub), lambda a: len(a) == 2, what="a new alert")
        assert old.alert_id == alert.alert_id and newest.alert_id != alert.alert_id
        assert (newest.state, newest.event_count, newest.severity) == (OPEN, 1, WARNING)

    # The history says who did what, in order.
    changes = [
        (kind, actor) for _, alert_id, kind, actor in await history(platform) if alert_id == alert.alert_id
    ]
    assert changes == [
        (CREATED, "metermesh"),
        (alerts_pb2.ALERT_CHANGE_KIND_ACKNOWLEDGED, "op-1"),
        (ESCALATED, "metermesh"),
        (alerts_pb2.ALERT_CHANGE_KIND_RESOLVED, "op-3"),
    ]


async def test_list_alerts_filters_and_pages_newest_first(
    platform: Platform, stub: alerts_pb2_grpc.AlertServiceStub
) -> None:
    await platform.start_alerts()
    async with Anomalies(platform) as anomalies:
        # One at a time, so create_time follows the order of publishing.
        for i in range(7):
            sev = [WARNING, MAJOR, CRITICAL][i % 3]
            kind = SURGE if i % 2 == 0 else anomaly_pb2.ANOMALY_KIND_OUTAGE
            await anomalies.publish([anomaly(f"LS-{i}", 0, sev, kind)])
            await wait_for(lambda: alerts_of(stub), lambda a, n=i + 1: len(a) == n, what=f"alert {i}")
    everything = await alerts_of(stub)
    assert [a.meter_id for a in everything] == [f"LS-{i}" for i in reversed(range(7))]
    await stub.ResolveAlert(alerts_pb2.ResolveAlertRequest(alert_id=everything[0].alert_id, resolved_by="op"))

    pages, token, sequences = [], "", set()
    while True:
        resp = await stub.ListAlerts(alerts_pb2.ListAlertsRequest(page_size=3, page_token=token))
        pages.append([a.meter_id for a in resp.alerts])
        sequences.add(resp.sequence)
        token = resp.next_page_token
        if not token:
            break
    assert pages == [["LS-6", "LS-5", "LS-4"], ["LS-3", "LS-2", "LS-1"], ["LS-0"]]
    assert sequences == {max(s for s, *_ in await history(platform))}

    async def meters(**filt: Any) -> list[str]:
        return [a.meter_id for a in await alerts_of(stub, **filt)]

    assert await meters(states=[RESOLVED]) == ["LS-6"]
    assert await meters(states=[OPEN, ACKNOWLEDGED]) == [f"LS-{i}" for i in (5, 4, 3, 2, 1, 0)]
    assert await meters(min_severity=CRITICAL) == ["LS-5", "LS-2"]
    assert await meters(min_severity=MAJOR, kinds=[SURGE]) == ["LS-4", "LS-2"]
    assert await meters(meter_ids=["LS-1", "LS-3", "nope"]) == ["LS-3", "LS-1"]
    assert await meters(states=[alerts_pb2.ALERT_STATE_UNSPECIFIED]) == await meters()


async def test_bad_input_is_invalid_argument_naming_the_field_and_the_value(
    platform: Platform, stub: alerts_pb2_grpc.AlertServiceStub
) -> None:
    await platform.start_alerts()

    async def fails(call: Any, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            result = call
            if hasattr(result, "__aiter__"):
                async for _ in result:
                    pass
            else:
                await result
        assert info.value.code() == code, info.value.details()
        return info.value.details() or ""

    R = alerts_pb2
    assert "page_size is 5000" in await fails(stub.ListAlerts(R.ListAlertsRequest(page_size=5000)))
    assert "page_size is -1" in await fails(stub.ListAlerts(R.ListAlertsRequest(page_size=-1)))
    assert "page_token 'garbage!'" in await fails(stub.ListAlerts(R.ListAlertsRequest(page_token="garbage!")))
    assert "filter.states[1] is 9" in await fails(
        stub.ListAlerts(R.ListAlertsRequest(filter=R.AlertFilter(states=[1, 9])))  # type: ignore[list-item]
    )
    assert "filter.min_severity is 7" in await fails(
        stub.ListAlerts(R.ListAlertsRequest(filter=R.AlertFilter(min_severity=7)))  # type: ignore[arg-type]
    )
    assert "filter.kinds[0] is 0" in await fails(
        stub.ListAlerts(R.ListAlertsRequest(filter=R.AlertFilter(kinds=[0])))  # type: ignore[list-item]
    )
    assert "filter.meter_ids[0] is ''" in await fails(
        stub.ListAlerts(R.ListAlertsRequest(filter=R.AlertFilter(meter_ids=[""])))
    )
    assert "alert_id is empty" in await fails(stub.GetAlert(R.GetAlertRequest()))
    assert "alert_id is empty" in await fails(
        stub.AcknowledgeAlert(R.AcknowledgeAlertRequest(acknowledged_by="x"))
    )
    assert "alert_id is empty" in await fails(stub.ResolveAlert(R.ResolveAlertRequest(resolved_by="x")))
    assert "acknowledged_by is ''" in await fails(
        stub.AcknowledgeAlert(R.AcknowledgeAlertRequest(alert_id="a"))
    )
    assert "resolved_by is ''" in await fails(stub.ResolveAlert(R.ResolveAlertRequest(alert_id="a")))
    assert "note is 1001 characters long" in await fails(
        stub.AcknowledgeAlert(R.AcknowledgeAlertRequest(alert_id="a", acknowledged_by="x", note="n" * 1001))
    )
    assert "note is 1001 characters long" in await fails(
        stub.ResolveAlert(R.ResolveAlertRequest(alert_id="a", resolved_by="x", note="n" * 1001))
    )
    assert "after_sequence is -3" in await fails(stub.WatchAlerts(R.WatchAlertsRequest(after_sequence=-3)))
    assert "filter.states[0] is 4" in await fails(
        stub.WatchAlerts(R.WatchAlertsRequest(filter=R.AlertFilter(states=[4])))  # type: ignore[list-item]
    )
    nf = grpc.StatusCode.NOT_FOUND
    assert "alert_id 'no-such' does not exist" in await fails(
        stub.GetAlert(R.GetAlertRequest(alert_id="no-such")), nf
    )
    assert "does not exist" in await fails(
        stub.AcknowledgeAlert(R.AcknowledgeAlertRequest(alert_id="no-such", acknowledged_by="x")), nf
    )
    assert "does not exist" in await fails(
        stub.ResolveAlert(R.ResolveAlertRequest(alert_id="no-such", resolved_by="x")), nf
    )

    # A page token is tied to its filter.
    async with Anomalies(platform) as anomalies:
        await anomalies.publish([anomaly(f"PT-{i}", 0) for i in range(3)])
        await wait_for(lambda: alerts_of(stub), lambda a: len(a) == 3, what="3 alerts")
    page = await stub.ListAlerts(R.ListAlertsRequest(page_size=1))
    assert page.next_page_token
    assert "another filter" in await fails(
        stub.ListAlerts(
            R.ListAlertsRequest(
                page_size=1, page_token=page.next_page_token, filter=R.AlertFilter(states=[OPEN])
            )
        )
    )


async def test_a_quiet_alert_resolves_itself_and_the_next_event_opens_a_new_one(
    platform: Platform, stub: alerts_pb2_grpc.AlertServiceStub
) -> None:
    await platform.start_alerts(
        METERMESH_ALERTS_AUTO_RESOLVE_SECONDS="1.5", METERMESH_ALERTS_SWEEP_INTERVAL_SECONDS="0.2"
    )
    async with Anomalies(platform) as anomalies:
        await anomalies.publish([anomaly("AR-1", 0)])
        (alert,) = await wait_for(lambda: alerts_of(stub), lambda a: len(a) == 1, what="the alert")
        assert alert.state == OPEN
        (resolved,) = await wait_for(
            lambda: alerts_of(stub), lambda a: a[0].state == RESOLVED, timeout=15, what="auto-resolution"
        )
        assert resolved.resolved_by == "metermesh" and "1.5 s" in resolved.resolve_note
        assert resolved.resolve_time.ToDatetime() - alert.create_time.ToDatetime() >= dt.timedelta(
            seconds=1.5
        )
        await anomalies.publish([anomaly("AR-1", 1)])
        newest, _ = await wait_for(lambda: alerts_of(stub), lambda a: len(a) == 2, what="a new alert")
        assert newest.state == OPEN and newest.alert_id != alert.alert_id


# --- webhooks --------------------------------------------------------------------------------------


class Receiver:
    """A tiny HTTP server in a thread recording the JSON bodies posted to it, answering `status`."""

    def __init__(self, status: int = 200, port: int = 0) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.hits = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.hits += 1
                if receiver.status < 300:
                    receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_webhooks_announce_new_and_escalated_alerts_and_a_failing_one_blocks_nothing(
    platform: Platform, stub: alerts_pb2_grpc.AlertServiceStub
) -> None:
    good, broken = Receiver(200), Receiver(500)
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    try:
        await platform.start_alerts(
            METERMESH_ALERTS_WEBHOOK_URL=good.url,
            METERMESH_ALERTS_WEBHOOK_CRITICAL=broken.url,
            METERMESH_ALERTS_WEBHOOK_MAJOR=dead,
            METERMESH_ALERTS_WEBHOOK_ATTEMPTS="3",
            METERMESH_ALERTS_WEBHOOK_BACKOFF_SECONDS="0.05",
            METERMESH_ALERTS_WEBHOOK_MAX_BACKOFF_SECONDS="0.2",
            METERMESH_ALERTS_WEBHOOK_TIMEOUT_SECONDS="2",
        )
        async with Anomalies(platform) as anomalies:
            await anomalies.publish([anomaly("WH-1", 0, WARNING)])

            async def good_bodies() -> list[dict[str, Any]]:
                return list(good.bodies)

            (created,) = await wait_for(good_bodies, lambda b: len(b) == 1, what="the CREATED notification")
            assert created["change_kind"] == "ALERT_CHANGE_KIND_CREATED"
            assert (
                created["alert"]["meter_id"] == "WH-1" and created["alert"]["severity"] == "SEVERITY_WARNING"
            )
            assert (
                created["alert"]["summary"] == "Voltage surge on WH-1 (262 V)"
                and int(created["sequence"]) > 0
            )

            await anomalies.publish([anomaly("WH-1", 1, WARNING)])  # UPDATED: no notification
            await anomalies.publish([anomaly("WH-1", 2, CRITICAL)])
            bodies = await wait_for(good_bodies, lambda b: len(b) == 2, what="the ESCALATED notification")
            assert bodies[1]["change_kind"] == "ALERT_CHANGE_KIND_ESCALATED"
            assert bodies[1]["alert"]["event_count"] == "3"

            # The critical webhook answers 500: tried with retries, while alerting goes on.
            async def broken_hits() -> int:
                return broken.hits

            await wait_for(broken_hits, lambda n: n >= 3, what="retries against the failing webhook")
            # The major webhook is dead (nothing listens). Alerting is not held back by either.
            started = time.monotonic()
            await anomalies.publish([anomaly(f"WH-M{i}", 0, MAJOR) for i in range(20)])
            await anomalies.publish([anomaly(f"WH-C{i}", 0, CRITICAL) for i in range(20)])
            await wait_for(lambda: alerts_of(stub), lambda a: len(a) == 41, what="41 alerts")
            assert time.monotonic() - started < 10
            await wait_for(good_bodies, lambda b: len(b) == 42, what="every CREATED at the working webhook")
            assert {b["alert"]["meter_id"] for b in good.bodies[2:]} == {
                *(f"WH-M{i}" for i in range(20)),
                *(f"WH-C{i}" for i in range(20)),
            }
            # What could not be delivered waits in the outbox (in PostgreSQL, not in memory).
            conn = await platform.db()
            try:
                pending = dict(
                    await conn.fetch("SELECT url, count(*) FROM alert_webhook_outbox GROUP BY url")  # type: ignore[arg-type]
                )
            finally:
                await conn.close()
            assert good.url not in pending and pending.get(dead, 0) >= 19 and pending.get(broken.url, 0) >= 20
    finally:
        good.stop()
        broken.stop()
