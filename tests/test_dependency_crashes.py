"""The delivery promise when a server dies: NATS or PostgreSQL killed with SIGKILL mid-stream and
restarted; every reading acknowledged to a client is still stored exactly once. Each test runs its
own server of the kind it kills, whatever NATS_URL / DATABASE_URL point at."""

from __future__ import annotations

import asyncio
from pathlib import Path

from metermesh.ingest.v1 import ingest_pb2_grpc

from services.common.embedded import EmbeddedNats, EmbeddedPostgres
from tests.support import Platform, register, wait_for
from tests.test_ingest_durability import assert_stored_exactly_once, batches, push_all_with_retries


async def _run_with_crash(platform: Platform, crash_and_restart) -> None:  # type: ignore[no-untyped-def]
    await platform.start_writer()
    await platform.start_ingest()
    meters = [f"DC-{i:03d}" for i in range(50)]
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), *meters)
    work = batches(meters, 40, 10)  # 40 batches of 500 readings
    acked: list[int] = []
    pusher = asyncio.create_task(push_all_with_retries(platform, work, acked, deadline_s=180))

    async def acked_count() -> int:
        return len(acked)

    await wait_for(acked_count, lambda n: n >= 5, what="some batches acknowledged")
    await crash_and_restart()
    await pusher
    await assert_stored_exactly_once(platform, work)


async def test_acknowledged_readings_survive_nats_sigkill(
    admin_db_url: str, log_dir: Path, tmp_path: Path
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    platform = Platform(nats_url=server.start(), admin_db_url=admin_db_url, log_dir=log_dir)
    await platform.create()

    async def crash() -> None:
        server.kill()
        server.start()  # same port, same JetStream directory: what was fsynced is there

    try:
        await _run_with_crash(platform, crash)
    finally:
        await platform.destroy()
        server.stop()


async def test_acknowledged_readings_survive_postgres_sigkill(
    nats_url: str, log_dir: Path, tmp_path: Path
) -> None:
    server = EmbeddedPostgres(tmp_path / "pgdata", database="postgres")
    platform = Platform(
        nats_url=nats_url, admin_db_url=await asyncio.to_thread(server.start), log_dir=log_dir
    )
    await platform.create()

    async def crash() -> None:
        server.kill()
        await asyncio.to_thread(server.restart)

    try:
        await _run_with_crash(platform, crash)
    finally:
        await platform.destroy()
        await asyncio.to_thread(server.stop)
