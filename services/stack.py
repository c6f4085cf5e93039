"""`metermesh up`: the whole platform in the foreground on one machine. Starts embedded NATS and
PostgreSQL when NATS_URL / DATABASE_URL are unset (data under .metermesh/, kept across restarts),
every service as a child process, optionally the simulator; restarts a service that dies; stops it
all in order on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import nats
import structlog
from rich.console import Console

from gateway.auth import stack_secret
from services.common import jetstream
from services.common.config import CommonSettings
from services.common.db import apply_migrations
from services.common.embedded import EmbeddedNats, EmbeddedPostgres, env_or_embedded
from services.common.procs import ServiceProcess
from services.common.server import topology_of

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ServiceDef:
    name: str
    module: str
    addr_env: str
    default_addr: str
    what: str
    # For a process without gRPC health (the gateway): the path on addr that answers HTTP 200 when ready.
    http_health_path: str | None = None

    @property
    def addr(self) -> str:
        return os.environ.get(self.addr_env, self.default_addr)

    @property
    def health_url(self) -> str | None:
        return f"http://{self.addr}{self.http_health_path}" if self.http_health_path else None


# Start order; they stop in reverse (ingest stops taking readings before the writer stops storing
# them). Each new service adds itself here.
SERVICES: list[ServiceDef] = [
    ServiceDef(
        "writer",
        "services.ingest.writer",
        "METERMESH_WRITER_ADDR",
        "127.0.0.1:50061",
        "storage writer: READINGS -> PostgreSQL",
    ),
    ServiceDef(
        "alerts",
        "services.alerts",
        "METERMESH_ALERTS_ADDR",
        "127.0.0.1:50055",
        "metermesh.alerts.v1.AlertService",
    ),
    ServiceDef(
        "anomaly",
        "services.anomaly",
        "METERMESH_ANOMALY_ADDR",
        "127.0.0.1:50052",
        "metermesh.anomaly.v1.AnomalyService",
    ),
    ServiceDef(
        "billing",
        "services.billing",
        "METERMESH_BILLING_ADDR",
        "127.0.0.1:50054",
        "metermesh.billing.v1.BillingService",
    ),
    ServiceDef(
        "forecast",
        "services.forecast",
        "METERMESH_FORECAST_ADDR",
        "127.0.0.1:50053",
        "metermesh.forecast.v1.ForecastService",
    ),
    ServiceDef(
        "ingest",
        "services.ingest",
        "METERMESH_INGEST_ADDR",
        "127.0.0.1:50051",
        "metermesh.ingest.v1.IngestService",
    ),
    # Last, so it stops first: browsers are turned away before the services they call go.
    ServiceDef(
        "gateway",
        "gateway",
        "METERMESH_GATEWAY_ADDR",
        "127.0.0.1:8080",
        "gRPC-web gateway and dashboard",
        http_health_path="/healthz",
    ),
]


def _service(name: str) -> ServiceDef:
    return next(s for s in SERVICES if s.name == name)


async def _prepare(nats_url: str, db_url: str) -> None:
    """Migrations and streams before any service starts, so a broken schema fails here, loudly."""
    conn = await asyncpg.connect(db_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    settings = CommonSettings(NATS_URL=nats_url, DATABASE_URL=db_url)  # type: ignore[call-arg]
    nc = await nats.connect(nats_url)
    try:
        await jetstream.provision(nc.jetstream(), topology_of(settings))
    finally:
        await nc.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def up(
    *,
    data_dir: Path,
    simulate: bool,
    sim_meters: int,
    sim_interval_seconds: int,
    sim_backfill_hours: float,
    console: Console,
) -> int:
    data_dir = data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    console.print(f"[bold]metermesh[/] starting (data in {data_dir})")
    nats_url, db_url, embedded = await asyncio.to_thread(env_or_embedded, data_dir)
    procs: list[ServiceProcess] = []
    sim_task: asyncio.Task[None] | None = None
    code = 0
    try:
        try:
            await _prepare(nats_url, db_url)
        except Exception as exc:
            console.print(f"[red]cannot prepare NATS ({nats_url}) and PostgreSQL ({db_url}):[/] {exc!r}")
            return 1
        env = {"NATS_URL": nats_url, "DATABASE_URL": db_url}
        # The gateway finds every service at its address and verifies tokens with the platform's
        # secret: METERMESH_GATEWAY_JWT_SECRET, or one generated and kept in the data directory.
        gateway_env = {s.addr_env: s.addr for s in SERVICES} | {
            "METERMESH_GATEWAY_JWT_SECRET": stack_secret(data_dir)
        }
        for svc in SERVICES:
            p = ServiceProcess(
                svc.name,
                svc.module,
                svc.addr,
                {**env, svc.addr_env: svc.addr, **(gateway_env if svc.name == "gateway" else {})},
                logs / f"{svc.name}.log",
                health_url=svc.health_url,
            )
            p.start()
            procs.append(p)
        for p in procs:
            try:
                await p.wait_serving(90)
            except (TimeoutError, RuntimeError) as exc:
                console.print(f"[red]{p.name} did not start:[/] {exc}\n{_tail(p.log_path)}")  # type: ignore[arg-type]
                return 1

        nats_kind = "embedded" if any(isinstance(e, EmbeddedNats) for e in embedded) else "external"
        pg_kind = "embedded" if any(isinstance(e, EmbeddedPostgres) for e in embedded) else "external"
        console.print("[bold green]metermesh is up[/]")
        for svc in SERVICES:
            console.print(f"  {svc.name:<9} {svc.addr:<22} {svc.what}")
        console.print(f"  {'nats':<9} {nats_url:<22} NATS JetStream ({nats_kind})")
        console.print(f"  {'postgres':<9} {db_url} ({pg_kind})")
        console.print(f"  logs      {logs}/")
        console.print(f"  dashboard: http://{_service('gateway').addr}/", soft_wrap=True)
        console.print(
            f"  sign in with a token: metermesh token --data-dir {data_dir} --role operator --subject $USER",
            soft_wrap=True,
        )
        if simulate:
            from services.simulator.driver import run_simulator

            sim_task = asyncio.create_task(
                run_simulator(
                    _service("ingest").addr,
                    meters=sim_meters,
                    interval_seconds=sim_interval_seconds,
                    backfill_hours=sim_backfill_hours,
                    stop=stop,
                )
            )
            console.print(
                f"simulator: {sim_meters} meters, a reading every {sim_interval_seconds} s, "
                f"backfilling {sim_backfill_hours:g} h"
            )
        console.print("Press Ctrl-C to stop.")

        restarts: dict[str, float] = {}
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
            if sim_task is not None and sim_task.done() and not stop.is_set():
                exc = sim_task.exception()
                console.print(f"[red]simulator stopped:[/] {exc!r}")
                sim_task = None
            for p in procs:
                if not stop.is_set() and not p.running:
                    # A crashed service comes back, but not in a tight loop.
                    if time.monotonic() - restarts.get(p.name, 0.0) < 5.0:
                        continue
                    restarts[p.name] = time.monotonic()
                    rc = p.proc.returncode if p.proc else None
                    console.print(f"[yellow]{p.name} exited ({rc}); restarting[/]\n{_tail(p.log_path)}")  # type: ignore[arg-type]
                    p.start()
    finally:
        console.print("stopping ...")
        stop.set()
        if sim_task is not None:
            await asyncio.gather(sim_task, return_exceptions=True)
        for p in reversed(procs):
            rc = await p.stop(timeout=30)
            if rc not in (0, None):
                console.print(f"[yellow]{p.name} exited with {rc}[/]")
                code = 1
        for e in reversed(embedded):
            await asyncio.to_thread(e.stop)
        console.print("stopped")
    return code
