"""Bootstrap of the billing gRPC server (metermesh.billing.v1.BillingService): tariffs are loaded and
checked before the server starts (a bad tariff file stops it with every problem listed); PostgreSQL is
its only dependency (no NATS)."""

from __future__ import annotations

import asyncio
import sys

from metermesh.billing.v1 import billing_pb2

from services.billing.catalog import load_tariffs
from services.billing.config import BillingSettings
from services.billing.errors import TariffFileError
from services.billing.servicer import BillingServicer
from services.common.config import load_settings
from services.common.server import Runtime, add_servicer, run_service

SERVICE = billing_pb2.DESCRIPTOR.services_by_name["BillingService"]
SERVICE_NAME = SERVICE.full_name


async def serve(settings: BillingSettings) -> None:
    try:
        tariffs = load_tariffs(settings.tariff_dir)
    except TariffFileError as exc:
        print(f"billing: the tariff files in {settings.tariff_dir} are invalid:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    servicer: BillingServicer | None = None

    def register(rt: Runtime) -> None:
        nonlocal servicer
        servicer = BillingServicer(rt, settings, tariffs)
        add_servicer(rt.server, SERVICE, servicer)

    async def on_ready(rt: Runtime) -> None:
        assert servicer is not None
        await servicer.start(rt)

    await run_service(
        name="billing",
        settings=settings,
        listen_addr=settings.billing_addr,
        service_names=[SERVICE_NAME],
        reflection_names=[SERVICE_NAME],
        register=register,
        on_ready=on_ready,
        needs_nats=False,
    )


def main() -> None:
    asyncio.run(serve(load_settings(BillingSettings)))
