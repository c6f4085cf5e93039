"""`metermesh up` on a machine with nothing but Python: embedded NATS and PostgreSQL, every service,
the simulator; a clean stop on SIGTERM; the data still there after a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.common.embedded import free_port
from services.common.procs import health_status
from services.stack import SERVICES
from tests.support import wait_for


def start_stack(data_dir: Path, ingest_addr: str, writer_addr: str, out: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    # Every service on a free port, so a platform already running here on the defaults is no obstacle.
    env |= {svc.addr_env: f"127.0.0.1:{free_port()}" for svc in SERVICES}
    env |= {"METERMESH_INGEST_ADDR": ingest_addr, "METERMESH_WRITER_ADDR": writer_addr}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services",
            "up",
            "--simulate",
            "--data-dir",
            str(data_dir),
            "--sim-meters",
            "20",
            "--sim-interval",
            "60",
            "--sim-backfill-hours",
            "2",
        ],
        env=env,
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def stored_readings(addr: str, meter_id: str) -> int:
    try:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            n, token = 0, ""
            while True:
                page = await stub.GetReadings(
                    ingest_pb2.GetReadingsRequest(meter_id=meter_id, page_size=10_000, page_token=token),
                    timeout=5,
                )
                n += len(page.readings)
                token = page.next_page_token
                if not token:
                    return n
    except grpc.aio.AioRpcError:
        return -1


async def test_up_runs_the_platform_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    ingest_addr, writer_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    data = tmp_path / "data"
    out = tmp_path / "up.out"
    stack = start_stack(data, ingest_addr, writer_addr, out)
    try:
        # The simulator backfills two hours of 20 meters (120 readings each) through the real API.
        before = await wait_for(
            lambda: stored_readings(ingest_addr, "SIM-RES-0001"),
            lambda n: n >= 100,
            timeout=120,
            what="simulated readings stored",
        )
        text = out.read_text()
        assert "metermesh is up" in text and ingest_addr in text and "(embedded)" in text
        stack.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(stack.wait, 60) == 0, out.read_text()
        assert "stopped" in out.read_text()
        assert await health_status(ingest_addr) is None and await health_status(writer_addr) is None
    finally:
        if stack.poll() is None:
            stack.kill()

    stack = start_stack(data, ingest_addr, writer_addr, tmp_path / "up2.out")
    try:
        after = await wait_for(
            lambda: stored_readings(ingest_addr, "SIM-RES-0001"),
            lambda n: n >= 0,
            timeout=120,
            what="the platform back up",
        )
        assert after >= before
    finally:
        stack.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(stack.wait, 60) == 0
