"""IngestService against real NATS JetStream and PostgreSQL: what a head-end system relies on."""

from __future__ import annotations

import math
import time

import grpc
import nats
import pytest
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.ingest.codec import from_readings, to_batch
from tests.support import Platform, batch, reading, register, wait_for

NOW = int(time.time()) // 900 * 900


@pytest.fixture
async def running(platform: Platform) -> Platform:
    await platform.start_writer()
    await platform.start_ingest()
    return platform


async def test_accepted_readings_land_in_postgres_exactly_once(running: Platform) -> None:
    meters = [f"M-{i:03d}" for i in range(20)]
    readings = batch(meters, NOW - 48 * 3600, 96)  # two days of 15-minute readings, 1,920 in all
    async with running.channel() as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        await register(stub, *meters)
        resp = await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=readings))
    assert resp.accepted_count == len(readings) and not resp.rejections

    await wait_for(running.count_readings, lambda n: n >= len(readings), what="readings in PostgreSQL")
    conn = await running.db()
    try:
        rows = await conn.fetch("SELECT meter_id, read_time, import_energy_wh, voltage_v FROM readings")
        stored = {(r["meter_id"], int(r["read_time"].timestamp())): r for r in rows}
        assert len(rows) == len(readings) == len(stored)
        for r in readings:
            row = stored[(r.meter_id, r.read_time.seconds)]
            assert row["import_energy_wh"] == r.import_energy_wh and row["voltage_v"] == r.voltage_v
        # The hourly rollup adds up to exactly the stored readings, per meter and hour.
        mismatched = await conn.fetchval(
            """SELECT count(*) FROM readings_hourly h FULL JOIN (
                   SELECT meter_id, date_trunc('hour', read_time - interval_seconds * interval '1 second') AS hr,
                          sum(import_energy_wh) AS wh, count(*) AS n
                   FROM readings GROUP BY 1, 2) r
               ON h.meter_id = r.meter_id AND h.hour_start_time = r.hr
               WHERE h.import_energy_wh IS DISTINCT FROM r.wh OR h.reading_count IS DISTINCT FROM r.n"""
        )
        assert mismatched == 0
        # Each meter's last read_time follows within the writer's flush interval.
        newest = max(r.read_time.seconds for r in readings)

        async def oldest_last_read() -> float:
            t = await conn.fetchval("SELECT min(coalesce(last_read_time, 'epoch')) FROM meters")
            return t.timestamp()

        await wait_for(
            oldest_last_read, lambda t: t == newest, timeout=10, what="last_read_time of every meter"
        )
    finally:
        await conn.close()


async def test_pushing_the_same_batch_twice_stores_it_once(running: Platform) -> None:
    meters = ["DUP-1", "DUP-2", "DUP-3"]
    readings = batch(meters, NOW - 24 * 3600, 40)
    async with running.channel() as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        await register(stub, *meters)
        first = await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=readings))
        second = await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=readings))
        # A re-send that overlaps only in part: the new half must still be stored.
        overlap = readings[len(readings) // 2 :] + batch(meters, NOW - 3 * 3600, 4)
        third = await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=overlap))
    assert first.accepted_count == second.accepted_count == len(readings)
    assert third.accepted_count == len(overlap)
    expected = len(readings) + 12
    await wait_for(running.count_readings, lambda n: n >= expected, what="readings stored")
    conn = await running.db()
    try:
        total = await conn.fetchval("SELECT sum(reading_count) FROM readings_hourly")
        wh = await conn.fetchval("SELECT sum(import_energy_wh) FROM readings_hourly")
        want_wh = await conn.fetchval("SELECT sum(import_energy_wh) FROM readings")
        assert await conn.fetchval("SELECT count(*) FROM readings") == expected
    finally:
        await conn.close()
    assert total == expected and math.isclose(wh, want_wh)


async def test_a_batch_redelivered_after_the_dedup_window_is_stored_once(running: Platform) -> None:
    """JetStream deduplicates only within its window; past it, the writer's primary key does."""
    meters = ["RD-1", "RD-2"]
    readings = batch(meters, NOW - 6 * 3600, 8)
    async with running.channel() as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        await register(stub, *meters)
        await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=readings))
    await wait_for(running.count_readings, lambda n: n >= len(readings), what="first copy stored")

    # The same readings again under fresh message ids, as a late redelivery or re-send would arrive;
    # the second copy overlaps the first only in part.
    cols = from_readings(readings)[0]
    half = from_readings(readings[: len(readings) // 2])[0]
    nc = await nats.connect(running.nats_url)
    try:
        js = nc.jetstream()
        for i, c in enumerate([cols, half]):
            await js.publish(
                f"{running.prefix}readings.v1.p00",
                to_batch(c).SerializeToString(),
                headers={"Nats-Msg-Id": f"late-{i}"},
            )

        async def pending() -> int:
            info = await js.consumer_info(f"{running.prefix}READINGS", "readings-writer")
            return info.num_pending + info.num_ack_pending

        await wait_for(pending, lambda n: n == 0, what="writer to consume the late copies")
    finally:
        await nc.close()
    conn = await running.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM readings") == len(readings)
        assert await conn.fetchval("SELECT sum(reading_count) FROM readings_hourly") == len(readings)
    finally:
        await conn.close()


async def test_bad_readings_are_rejected_with_reasons_and_good_neighbours_stored(running: Platform) -> None:
    await_meters = ["GOOD-1", "GOOD-2"]
    old = NOW - 3651 * 86400
    bad: list[tuple[common_pb2.Reading, str, str]] = [
        (reading("NOPE-9", NOW - 900), "REJECTION_REASON_UNKNOWN_METER", "'NOPE-9' is not registered"),
        (
            reading("GOOD-1", NOW - 1800, wh=math.nan),
            "REJECTION_REASON_NOT_FINITE",
            "import_energy_wh is nan",
        ),
        (
            reading("GOOD-1", NOW - 2700, voltage_v=math.inf),
            "REJECTION_REASON_NOT_FINITE",
            "voltage_v is inf",
        ),
        (
            reading("GOOD-1", NOW - 3600, wh=-5.0),
            "REJECTION_REASON_NEGATIVE_ENERGY",
            "import_energy_wh is -5.0",
        ),
        (
            reading("GOOD-1", NOW - 4500, voltage_v=612.0),
            "REJECTION_REASON_VOLTAGE_OUT_OF_RANGE",
            "voltage_v is 612.0",
        ),
        (
            reading("GOOD-1", NOW - 5400, voltage_v=-1.0),
            "REJECTION_REASON_VOLTAGE_OUT_OF_RANGE",
            "voltage_v is -1.0",
        ),
        (
            reading("GOOD-1", NOW - 6300, power_factor=1.2),
            "REJECTION_REASON_POWER_FACTOR_OUT_OF_RANGE",
            "power_factor is 1.2",
        ),
        (
            reading("GOOD-1", int(time.time()) + 3600),
            "REJECTION_REASON_READ_TIME_IN_FUTURE",
            "more than 5 minutes ahead",
        ),
        (reading("GOOD-1", old), "REJECTION_REASON_READ_TIME_TOO_OLD", "older than the retention window"),
        (
            common_pb2.Reading(meter_id="GOOD-1", import_energy_wh=1),
            "REJECTION_REASON_MISSING_FIELD",
            "read_time is not set",
        ),
        (reading("", NOW - 900), "REJECTION_REASON_MISSING_FIELD", "meter_id is empty"),
    ]
    good = [reading("GOOD-2", NOW - 900 * k, wh=float(k)) for k in range(1, len(bad) + 2)]
    # Interleave: good, bad, good, bad, ... then a duplicate of the first good reading at the end.
    mixed: list[common_pb2.Reading] = []
    expect: dict[int, tuple[str, str]] = {}
    for i, g in enumerate(good):
        mixed.append(g)
        if i < len(bad):
            expect[len(mixed)] = bad[i][1:]
            mixed.append(bad[i][0])
    expect[len(mixed)] = ("REJECTION_REASON_DUPLICATE_IN_BATCH", "repeats reading 0 of this batch")
    mixed.append(good[0])

    async with running.channel() as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        await register(stub, *await_meters)
        resp = await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=mixed))
    got = {r.index: (ingest_pb2.RejectionReason.Name(r.reason), r.message) for r in resp.rejections}
    assert set(got) == set(expect), got
    for i, (reason, fragment) in expect.items():
        assert got[i][0] == reason, (i, got[i])
        assert fragment in got[i][1], (i, got[i])
    assert resp.accepted_count == len(good)
    await wait_for(running.count_readings, lambda n: n >= len(good), what="good readings stored")
    conn = await running.db()
    try:
        rows = await conn.fetch("SELECT meter_id, import_energy_wh FROM readings ORDER BY import_energy_wh")
    finally:
        await conn.close()
    assert [(r["meter_id"], r["import_energy_wh"]) for r in rows] == [
        ("GOOD-2", float(k)) for k in range(1, len(good) + 1)
    ]


async def test_request_limits(running: Platform) -> None:
    async with running.channel() as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        await register(stub, "BIG-1")
        too_many = [reading("BIG-1", NOW - 60 * k) for k in range(10_001)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=too_many))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "10001 readings; the limit is 10000" in (err.value.details() or "")

        huge = [reading("BIG-1", NOW - 60 * k) for k in range(9_000)]
        for r in huge:
            r.meter_id = "BIG-1" + "x" * 2000  # ~18 MB: over the 16 MB message limit
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=huge))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PushReadings(ingest_pb2.PushReadingsRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_full_stream_answers_unavailable_and_accepts_again_once_drained(platform: Platform) -> None:
    platform.extra_env["METERMESH_READINGS_MAX_BYTES"] = str(256 * 1024)
    await platform.start_ingest()  # no writer yet: nothing drains the stream
    meters = [f"FULL-{i}" for i in range(10)]
    async with platform.channel() as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        await register(stub, *meters)
        accepted: list[list[common_pb2.Reading]] = []
        refused = None
        for k in range(100):
            b = batch(meters, NOW - 30 * 86400 + k * 200 * 900, 200)
            try:
                await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=b))
                accepted.append(b)
            except grpc.aio.AioRpcError as exc:
                refused = (exc, b)
                break
        assert refused is not None, "the stream never filled"
        exc, b = refused
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
        assert "is full" in (exc.details() or "")
        # READINGS keeps a message until every durable consumer has it: the writer and the anomaly
        # detector both drain it.
        await platform.start_writer()
        await platform.start_anomaly()

        async def retry() -> bool:
            try:
                await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=b))
                return True
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
                return False

        await wait_for(retry, bool, what="the retried batch to be accepted")
    total = sum(len(x) for x in accepted) + len(b)
    await wait_for(platform.count_readings, lambda n: n >= total, what="every accepted reading stored")
    assert await platform.count_readings() == total


async def test_meter_registry_and_paging(running: Platform) -> None:
    async with running.channel() as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        ids = [f"PG-{i:03d}" for i in range(25)]
        await register(stub, *ids, tariff_id="in-gj-rgp-urban", sanctioned_load_kw=3.0)
        again = await stub.RegisterMeter(
            ingest_pb2.RegisterMeterRequest(
                meter=common_pb2.Meter(meter_id="PG-000", category=common_pb2.METER_CATEGORY_COMMERCIAL)
            )
        )
        assert not again.created and again.meter.category == common_pb2.METER_CATEGORY_COMMERCIAL

        seen, token = [], ""
        while True:
            page = await stub.ListMeters(ingest_pb2.ListMetersRequest(page_size=10, page_token=token))
            seen += [m.meter_id for m in page.meters]
            token = page.next_page_token
            if not token:
                break
        assert seen == ids

        for bad, field in [
            (common_pb2.Meter(meter_id="bad id!", category=1), "meter.meter_id"),
            (common_pb2.Meter(meter_id="X1"), "meter.category"),
            (common_pb2.Meter(meter_id="X1", category=1, sanctioned_load_kw=-2), "meter.sanctioned_load_kw"),
            (common_pb2.Meter(meter_id="X1", category=1, time_zone="Mars/Olympus"), "meter.time_zone"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RegisterMeter(ingest_pb2.RegisterMeterRequest(meter=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in (err.value.details() or ""), err.value.details()

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetMeter(ingest_pb2.GetMeterRequest(meter_id="PG-999"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        readings = [reading("PG-001", NOW - 900 * k, wh=float(k)) for k in range(25)]
        await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=readings))
        await wait_for(running.count_readings, lambda n: n >= 25, what="readings stored")
        got, token = [], ""
        while True:
            page = await stub.GetReadings(
                ingest_pb2.GetReadingsRequest(meter_id="PG-001", page_size=7, page_token=token)
            )
            got += [(r.read_time.seconds, r.import_energy_wh) for r in page.readings]
            token = page.next_page_token
            if not token:
                break
        assert got == sorted((NOW - 900 * k, float(k)) for k in range(25))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetReadings(ingest_pb2.GetReadingsRequest(meter_id="PG-001", page_token="garbage"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def first_stream_message(platform: Platform) -> nats.aio.msg.Msg:
    nc = await nats.connect(platform.nats_url)
    try:
        sub = await nc.jetstream().subscribe(f"{platform.prefix}readings.v1.>", ordered_consumer=True)
        return await sub.next_msg(timeout=5)
    finally:
        await nc.close()


async def test_trace_context_travels_from_the_grpc_call_into_the_stream(platform: Platform) -> None:
    await platform.start_ingest()  # no writer: the message stays in the stream for us to read
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with platform.channel() as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        await register(stub, "TR-1")
        await stub.PushReadings(
            ingest_pb2.PushReadingsRequest(readings=[reading("TR-1", NOW - 900)]),
            metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),),
        )
    msg = await first_stream_message(platform)
    assert msg.headers["traceparent"].split("-")[1] == trace_id
    assert msg.headers["Nats-Msg-Id"]


async def test_a_traced_client_call_continues_its_trace_into_the_stream(platform: Platform) -> None:
    """services.common.clients instruments outgoing calls: the trace started by a caller reaches the
    READINGS message, so one reading can be followed from its sender onwards."""
    from opentelemetry import trace

    from services.common import clients
    from services.common.telemetry import configure_telemetry

    configure_telemetry("test-client")
    await platform.start_ingest()
    with trace.get_tracer("test").start_as_current_span("head-end upload") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        async with clients.channel(platform.ingest_addr) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            await register(stub, "TR-2")
            await stub.PushReadings(
                ingest_pb2.PushReadingsRequest(readings=[reading("TR-2", NOW - 900)]), timeout=10
            )
    msg = await first_stream_message(platform)
    assert msg.headers["traceparent"].split("-")[1] == trace_id


async def test_a_request_that_is_not_protobuf_gets_invalid_argument(running: Platform) -> None:
    async with running.channel() as ch:
        push = ch.unary_unary(
            "/metermesh.ingest.v1.IngestService/PushReadings",
            request_serializer=lambda b: b,
            response_deserializer=ingest_pb2.PushReadingsResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await push(b"\x0a\x05\xff\xfe\xfd", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid PushReadingsRequest" in (err.value.details() or "")
