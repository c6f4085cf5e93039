"""The `metermesh` command: run the platform and talk to it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from services.common.logging import configure_logging

app = typer.Typer(
    name="metermesh",
    help="Smart electricity metering platform: ingest, anomaly detection, forecasting and billing.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def up(
    simulate: Annotated[
        bool, typer.Option(help="Run the built-in load generator of simulated meters.")
    ] = False,
    data_dir: Annotated[
        Path, typer.Option(help="Where embedded NATS and PostgreSQL keep their data.")
    ] = Path(".metermesh"),
    sim_meters: Annotated[int, typer.Option(min=1, max=100_000, help="Simulated meters.")] = 200,
    sim_interval: Annotated[
        int, typer.Option(min=1, help="Seconds between a simulated meter's readings.")
    ] = 60,
    sim_backfill_hours: Annotated[
        float, typer.Option(min=0, help="Hours of history the simulator fills in first.")
    ] = 24.0,
) -> None:
    """Start the whole platform in the foreground; Ctrl-C or SIGTERM stops it.

    Uses NATS_URL and DATABASE_URL when set, otherwise starts embedded servers with data under
    --data-dir (kept across restarts).

    Examples:

      metermesh up --simulate

      NATS_URL=nats://127.0.0.1:4222 DATABASE_URL=postgresql://postgres@127.0.0.1/metermesh metermesh up
    """
    from services.stack import up as run_up

    configure_logging("stack", os.environ.get("METERMESH_LOG_LEVEL", "warning"))
    code = asyncio.run(
        run_up(
            data_dir=data_dir,
            simulate=simulate,
            sim_meters=sim_meters,
            sim_interval_seconds=sim_interval,
            sim_backfill_hours=sim_backfill_hours,
            console=Console(),
        )
    )
    raise typer.Exit(code)


@app.command()
def simulate(
    ingest_addr: Annotated[str, typer.Option(envvar="METERMESH_INGEST_ADDR")] = "127.0.0.1:50051",
    meters: Annotated[int, typer.Option(min=1, max=100_000)] = 200,
    interval: Annotated[int, typer.Option(min=1, help="Seconds between a meter's readings.")] = 60,
    backfill_hours: Annotated[float, typer.Option(min=0)] = 24.0,
    seed: int = 7,
) -> None:
    """Push simulated meters' readings into a running ingest service until Ctrl-C.

    Example: metermesh simulate --meters 1000 --interval 900 --backfill-hours 168
    """
    import signal

    from services.simulator.driver import run_simulator

    configure_logging("simulator", os.environ.get("METERMESH_LOG_LEVEL", "info"))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_simulator(
            ingest_addr,
            meters=meters,
            interval_seconds=interval,
            backfill_hours=backfill_hours,
            seed=seed,
            stop=stop,
        )

    asyncio.run(main())


def main() -> None:
    app()
