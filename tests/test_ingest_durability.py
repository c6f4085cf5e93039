"""The delivery promise under failure: a reading acknowledged to a client is stored exactly once,
whatever process is killed; health tells the truth; SIGTERM drains; poison goes to the dead letters."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import nats
from grpc_health.v1 import health_pb2
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.common.db import with_database
from services.common.embedded import EmbeddedNats, free_port
from services.common.procs import health_status
from services.ingest.codec import from_readings, to_batch
from tests.support import Platform, batch, register, wait_for

NOW = int(time.time()) // 900 * 900
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def batches(meters: list[str], n: int, intervals: int) -> list[list[common_pb2.Reading]]:
    """n distinct batches of len(meters) * intervals readings, going back in time from NOW."""
    return [batch(meters, NOW - (k + 1) * intervals * 900 - 86400, intervals) for k in range(n)]


async def push_all_with_retries(
    platform: Platform, all_batches: list[list[common_pb2.Reading]], acked: list[int], deadline_s: float = 120
) -> None:
    """What a well-behaved head-end does: retry each batch until it is acknowledged."""
    deadline = time.monotonic() + deadline_s
    for i, b in enumerate(all_batches):
        while True:
            try:
                async with platform.channel() as ch:
                    resp = await ingest_pb2_grpc.IngestServiceStub(ch).PushReadings(
                        ingest_pb2.PushReadingsRequest(readings=b), timeout=10
                    )
                assert resp.accepted_count == len(b), resp.rejections[:3]
                acked.append(i)
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
                assert time.monotonic() < deadline, "ingest did not come back"
                await asyncio.sleep(0.1)


async def assert_stored_exactly_once(platform: Platform, expected: list[list[common_pb2.Reading]]) -> None:
    total = sum(len(b) for b in expected)
    await wait_for(platform.count_readings, lambda n: n >= total, timeout=90, what=f"{total} readings stored")
    conn = await platform.db()
    try:
        rows = await conn.fetch("SELECT meter_id, read_time, import_energy_wh FROM readings")
        assert len(rows) == total
        want = {(r.meter_id, r.read_time.seconds): r.import_energy_wh for b in expected for r in b}
        assert {(r["meter_id"], int(r["read_time"].timestamp())): r["import_energy_wh"] for r in rows} == want
        # Double counting would show here: the rollup must equal the readings exactly.
        assert await conn.fetchval("SELECT sum(reading_count) FROM readings_hourly") == total
        assert await conn.fetchval("SELECT sum(import_energy_wh) FROM readings_hourly") == sum(want.values())
    finally:
        await conn.close()


async def test_acknowledged_readings_survive_writer_sigkill(platform: Platform) -> None:
    writer = await platform.start_writer()
    await platform.start_ingest()
    meters = [f"WK-{i:03d}" for i in range(50)]
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), *meters)
    work = batches(meters, 60, 20)  # 60 batches of 1,000 readings
    acked: list[int] = []
    pusher = asyncio.create_task(push_all_with_retries(platform, work, acked))
    await wait_for(platform.count_readings, lambda n: n > 0, what="the writer to store something")
    writer.kill()  # SIGKILL: no chance to finish its transaction or ack
    stored_at_kill = await platform.count_readings()
    await platform.start_writer()
    await pusher
    assert stored_at_kill < sum(len(b) for b in work), "the writer finished before it was killed"
    await assert_stored_exactly_once(platform, work)


async def test_acknowledged_readings_survive_ingest_sigkill(platform: Platform) -> None:
    await platform.start_writer()
    ingest = await platform.start_ingest()
    meters = [f"IK-{i:03d}" for i in range(50)]
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), *meters)
    work = batches(meters, 40, 20)
    acked: list[int] = []
    pusher = asyncio.create_task(push_all_with_retries(platform, work, acked))

    async def acked_count() -> int:
        return len(acked)

    await wait_for(acked_count, lambda n: n >= 5, what="some batches acknowledged")
    ingest.kill()  # mid-stream: the batch in flight is neither acked nor (perhaps) fully published
    killed_after = len(acked)
    await platform.start_ingest()
    await pusher
    assert killed_after < len(work)
    await assert_stored_exactly_once(platform, work)


async def test_health_is_not_serving_until_nats_and_postgres_are_reachable(
    platform: Platform, tmp_path: Path
) -> None:
    nats_port = free_port()
    shared_nats = platform.nats_url
    platform.nats_url = f"nats://127.0.0.1:{nats_port}"  # nothing listens there yet
    await platform.destroy_database()  # nor does the database exist yet
    proc = platform.process("ingest", "services.ingest", platform.ingest_addr)
    proc.start()

    async def status() -> int | None:
        return await health_status(platform.ingest_addr, "metermesh.ingest.v1.IngestService")

    await wait_for(status, lambda s: s == NOT_SERVING, what="NOT_SERVING while both are missing")
    # Alive all the same: the liveness name Kubernetes probes must not restart a pod for an outage.
    assert await health_status(platform.ingest_addr, "liveness") == SERVING
    await platform.create()
    server = EmbeddedNats(tmp_path / "nats", port=nats_port)
    # Still NOT_SERVING with only PostgreSQL back (checked before NATS starts).
    assert await status() == NOT_SERVING
    server.start()
    try:
        await wait_for(status, lambda s: s == SERVING, what="SERVING once both are reachable")
        assert await health_status(platform.ingest_addr, "") == SERVING
    finally:
        await proc.stop()
        server.stop()
        platform.nats_url = shared_nats  # the fixture's teardown cleans up there


async def test_sigterm_drains_in_flight_requests(platform: Platform) -> None:
    platform.extra_env["METERMESH_SHUTDOWN_READINESS_SECONDS"] = "1.0"
    ingest = await platform.start_ingest()  # no writer: the stream keeps what ingest published
    meters = ["DR-1", "DR-2"]
    first, second = batches(meters, 2, 50)
    nc = await nats.connect(platform.nats_url)
    js = nc.jetstream()

    async def stream_messages() -> int:
        return (await js.stream_info(f"{platform.prefix}READINGS")).state.messages

    try:
        async with platform.channel() as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            await register(stub, *meters)
            call = stub.StreamReadings()
            await call.write(ingest_pb2.StreamReadingsRequest(readings=first))
            await wait_for(stream_messages, lambda n: n >= 1, what="the first batch published")
            ingest.signal(signal.SIGTERM)

            async def status() -> int | None:
                return await health_status(platform.ingest_addr)

            await wait_for(status, lambda s: s != SERVING, what="NOT_SERVING after SIGTERM")
            # The call in flight is still served to its end.
            await call.write(ingest_pb2.StreamReadingsRequest(readings=second))
            await call.done_writing()
            resp = await call
        assert resp.batch_count == 2 and resp.accepted_count == len(first) + len(second)
        assert ingest.proc is not None
        assert await asyncio.to_thread(ingest.proc.wait, 30) == 0
        # Nothing accepted was lost: a writer started now stores both batches.
        await platform.start_writer()
        await assert_stored_exactly_once(platform, [first, second])
    finally:
        await nc.close()


async def test_poison_messages_go_to_the_dead_letter_stream(platform: Platform) -> None:
    await platform.start_writer()
    await platform.start_ingest()
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), "PZ-1")
    good = batch(["PZ-1"], NOW - 7200, 4)
    nc = await nats.connect(platform.nats_url)
    try:
        js = nc.jetstream()
        await js.publish(
            f"{platform.prefix}readings.v1.p03", b"\x0a\xff\xff not a batch", headers={"Nats-Msg-Id": "p1"}
        )
        await js.publish(
            f"{platform.prefix}readings.v1.p03",
            to_batch(from_readings(good)[0]).SerializeToString(),
            headers={"Nats-Msg-Id": "g1"},
        )

        async def dead() -> int:
            return (await js.stream_info(f"{platform.prefix}DEADLETTER")).state.messages

        await wait_for(dead, lambda n: n == 1, what="the poison message dead-lettered")
        sub = await js.subscribe(f"{platform.prefix}deadletter.>", ordered_consumer=True)
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"\x0a\xff\xff not a batch"
        assert "ReadingBatch" in msg.headers["Metermesh-Dead-Reason"]
        assert msg.headers["Metermesh-Source-Subject"] == f"{platform.prefix}readings.v1.p03"
    finally:
        await nc.close()
    await assert_stored_exactly_once(platform, [good])


async def test_an_error_that_waiting_cannot_fix_stops_the_service_with_a_failure(platform: Platform) -> None:
    """A rejected login is not an outage: the service says why and exits non-zero at once, rather
    than sitting NOT_SERVING forever."""
    bad_url = with_database(platform.admin_db_url, platform.name).replace("postgres@", "no_such_role@", 1)
    bad_url = bad_url.replace("postgres:@", "no_such_role:@", 1)
    proc = platform.process("ingest", "services.ingest", platform.ingest_addr, DATABASE_URL=bad_url)
    proc.start()
    assert proc.proc is not None
    assert await asyncio.to_thread(proc.proc.wait, 30) == 1
    assert proc.log_path is not None
    assert "start-up failed" in proc.log_path.read_text() and "no_such_role" in proc.log_path.read_text()
