"""The `metermesh` command: run the platform and talk to it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from services.common.logging import configure_logging
from services.operator.app import mount

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


@app.command()
def token(
    role: Annotated[str, typer.Option(help="operator (every call) or consumer (reads of its meters).")],
    subject: Annotated[str, typer.Option(help="Who the token is for (the JWT 'sub').")],
    meter: Annotated[
        list[str] | None, typer.Option(help="A meter the consumer may read; repeat for several.")
    ] = None,
    hours: Annotated[float, typer.Option(min=0.01, max=24 * 365, help="Hours until it expires.")] = 24.0,
    data_dir: Annotated[
        Path,
        typer.Option(help="Data directory of `metermesh up`, whose secret is used when the env has none."),
    ] = Path(".metermesh"),
) -> None:
    """Print a development bearer token for the gRPC-web gateway.

    Signed (HS256) with METERMESH_GATEWAY_JWT_SECRET, or else with the secret `metermesh up` keeps in
    --data-dir. Only the token goes to stdout.

    Examples:

      metermesh token --role operator --subject alice

      metermesh token --role consumer --subject bob --meter GJ-0001 --meter GJ-0002 --hours 1
    """
    from gateway.auth import Role, existing_stack_secret, issue_token

    err = Console(stderr=True)
    if role not in (Role.OPERATOR.value, Role.CONSUMER.value):
        err.print(f"[red]--role is {role!r}; give operator or consumer[/]")
        raise typer.Exit(2)
    meters = meter or []
    if role == Role.CONSUMER and not meters:
        err.print("[red]a consumer token needs at least one --meter (the meters it may read)[/]")
        raise typer.Exit(2)
    if role == Role.OPERATOR and meters:
        err.print("[red]--meter is for consumer tokens: an operator may read every meter[/]")
        raise typer.Exit(2)
    secret = existing_stack_secret(data_dir)
    if secret is None:
        err.print(
            "[red]no secret to sign with:[/] set METERMESH_GATEWAY_JWT_SECRET to the gateway's secret, or "
            f"run `metermesh up` once so that {data_dir}/ holds the generated one",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    print(issue_token(secret, role=role, subject=subject, meters=meters, ttl_seconds=hours * 3600))
    err.print(f"{role} token for {subject!r}, valid {hours:g} h", highlight=False)


# The operator commands: status, meters, readings, train, bill, alerts, deadletters.
mount(app)


def main() -> None:
    app()
