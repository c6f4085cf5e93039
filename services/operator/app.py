"""The operator commands as typer apps, for `services.cli` to mount:

    from services.operator.app import (
        alerts_app, bill_app, deadletters_app, meters_app, readings_app, status, train_app,
    )

    app.command("status")(status)
    app.add_typer(meters_app, name="meters")
    app.add_typer(readings_app, name="readings")
    app.add_typer(train_app, name="train")
    app.add_typer(bill_app, name="bill")
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(deadletters_app, name="deadletters")

`app` below is a standalone `metermesh` with these commands only (`python -m services.operator`),
used by the tests and usable before the main CLI mounts them.
"""

from __future__ import annotations

import typer

from services.operator.alerts import alerts_app
from services.operator.bill import bill_app
from services.operator.deadletters import deadletters_app
from services.operator.meters import meters_app
from services.operator.readings import readings_app
from services.operator.status import status
from services.operator.train import train_app


def mount(target: typer.Typer) -> None:
    """Adds every operator command to a typer app (the `metermesh` CLI)."""
    target.command("status")(status)
    target.add_typer(meters_app, name="meters")
    target.add_typer(readings_app, name="readings")
    target.add_typer(train_app, name="train")
    target.add_typer(bill_app, name="bill")
    target.add_typer(alerts_app, name="alerts")
    target.add_typer(deadletters_app, name="deadletters")


app = typer.Typer(
    name="metermesh",
    help="Operate a metermesh platform: status, meters, readings, training, billing and alerts.",
    no_args_is_help=True,
    add_completion=False,
)
mount(app)

__all__ = [
    "alerts_app",
    "app",
    "bill_app",
    "deadletters_app",
    "meters_app",
    "mount",
    "readings_app",
    "status",
    "train_app",
]
