"""Test support: a throw-away platform (own database, own stream prefix, own ports) on real NATS and
PostgreSQL, and helpers to wait on conditions with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import grpc
import nats
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.common.db import with_database
from services.common.embedded import free_port
from services.common.procs import ServiceProcess

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout: float = 30.0,
    what: str = "condition",
) -> T:
    """Polls probe until done(value) holds; fails with the last value after timeout."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last value: {value!r}")
        await asyncio.sleep(0.05)
        value = await probe()
    return value


@dataclass
class Platform:
    """One isolated platform instance for a test."""

    nats_url: str
    admin_db_url: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: "mm" + uuid.uuid4().hex[:10])
    procs: list[ServiceProcess] = field(default_factory=list)
    ingest_addr: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    writer_addr: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    anomaly_addr: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    alerts_addr: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    billing_addr: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    forecast_addr: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")

    @property
    def db_url(self) -> str:
        return with_database(self.admin_db_url, self.name)

    @property
    def prefix(self) -> str:
        return self.name.upper() + "_"

    @property
    def env(self) -> dict[str, str]:
        return {
            "NATS_URL": self.nats_url,
            "DATABASE_URL": self.db_url,
            "METERMESH_STREAM_PREFIX": self.prefix,
            "METERMESH_INGEST_ADDR": self.ingest_addr,
            "METERMESH_WRITER_ADDR": self.writer_addr,
            "METERMESH_ANOMALY_ADDR": self.anomaly_addr,
            "METERMESH_ALERTS_ADDR": self.alerts_addr,
            "METERMESH_BILLING_ADDR": self.billing_addr,
            "METERMESH_FORECAST_ADDR": self.forecast_addr,
            "METERMESH_SHUTDOWN_READINESS_SECONDS": "0.2",
            # A killed writer's messages come back after this: short, so crash tests finish quickly.
            "METERMESH_WRITER_ACK_WAIT_SECONDS": "3",
            "METERMESH_ANOMALY_ACK_WAIT_SECONDS": "3",
            "METERMESH_ALERTS_ACK_WAIT_SECONDS": "3",
            "METERMESH_LOG_LEVEL": "info",
            **self.extra_env,
        }

    async def create(self) -> None:
        conn = await asyncpg.connect(self.admin_db_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()

    async def destroy(self) -> None:
        for p in self.procs:
            if p.running:
                p.kill()
        nc = await nats.connect(self.nats_url)
        try:
            js = nc.jetstream()
            for s in ("READINGS", "ANOMALIES", "DEADLETTER"):
                try:
                    await js.delete_stream(self.prefix + s)
                except nats.js.errors.NotFoundError:
                    pass
        finally:
            await nc.close()
        await self.destroy_database()

    async def destroy_database(self) -> None:
        # DROP ... WITH (FORCE) terminates the test's leftover sessions; on a loaded machine the admin
        # connection itself is now and then cut while it does, so a failed attempt is tried again.
        for attempt in range(3):
            conn = None
            try:
                conn = await asyncpg.connect(self.admin_db_url)
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                return
            except (
                asyncpg.exceptions.ConnectionDoesNotExistError,
                asyncpg.exceptions.InterfaceError,
                OSError,
            ):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.5)
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close()

    def process(self, name: str, module: str, addr: str, **env: str) -> ServiceProcess:
        proc = ServiceProcess(
            name,
            module,
            addr,
            {**self.env, **env},
            self.log_dir / f"{self.name}-{name}-{len(self.procs)}.log",
        )
        self.procs.append(proc)
        return proc

    async def start_ingest(self, **env: str) -> ServiceProcess:
        p = self.process("ingest", "services.ingest", self.ingest_addr, **env)
        p.start()
        await p.wait_serving(60)
        return p

    async def start_writer(self, **env: str) -> ServiceProcess:
        p = self.process("writer", "services.ingest.writer", self.writer_addr, **env)
        p.start()
        await p.wait_serving(60)
        return p

    async def start_anomaly(self, **env: str) -> ServiceProcess:
        p = self.process("anomaly", "services.anomaly", self.anomaly_addr, **env)
        p.start()
        await p.wait_serving(90)
        return p

    async def start_alerts(self, **env: str) -> ServiceProcess:
        p = self.process("alerts", "services.alerts", self.alerts_addr, **env)
        p.start()
        await p.wait_serving(60)
        return p

    async def start_billing(self, **env: str) -> ServiceProcess:
        p = self.process("billing", "services.billing", self.billing_addr, **env)
        p.start()
        await p.wait_serving(60)
        return p

    async def start_forecast(self, **env: str) -> ServiceProcess:
        p = self.process("forecast", "services.forecast", self.forecast_addr, **env)
        p.start()
        await p.wait_serving(90)
        return p

    def channel_to(self, addr: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(
            self.ingest_addr, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.db_url)

    async def count_readings(self) -> int:
        conn = await self.db()
        try:
            return int(await conn.fetchval("SELECT count(*) FROM readings"))
        finally:
            await conn.close()


async def register(stub: ingest_pb2_grpc.IngestServiceStub, *meter_ids: str, **fields: object) -> None:
    for m in meter_ids:
        await stub.RegisterMeter(
            ingest_pb2.RegisterMeterRequest(
                meter=common_pb2.Meter(
                    **{
                        "meter_id": m,
                        "category": common_pb2.METER_CATEGORY_RESIDENTIAL,
                        "interval_seconds": 900,
                        **fields,
                    }
                )
            )
        )


def reading(meter_id: str, t: int, wh: float = 100.0, **fields: float) -> common_pb2.Reading:
    """A 15-minute reading ending at unix second t."""
    r = common_pb2.Reading(meter_id=meter_id, interval_seconds=900, import_energy_wh=wh, **fields)
    r.read_time.seconds = t
    return r


def batch(meter_ids: list[str], start: int, intervals: int, *, step: int = 900) -> list[common_pb2.Reading]:
    """Distinct readings: every meter, `intervals` consecutive intervals ending at start, start+step..."""
    out = []
    for k in range(intervals):
        for j, m in enumerate(meter_ids):
            out.append(reading(m, start + k * step, wh=10.0 + (k * 7 + j) % 50, voltage_v=229.0 + j % 5))
    return out
