"""Bootstrap of the ingest gRPC server (metermesh.ingest.v1.IngestService)."""

from __future__ import annotations

import asyncio

from metermesh.ingest.v1 import ingest_pb2

from services.common.config import load_settings
from services.common.server import Runtime, add_servicer, run_service
from services.ingest.config import IngestSettings
from services.ingest.servicer import IngestServicer

SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"]
SERVICE_NAME = SERVICE.full_name


async def serve(settings: IngestSettings) -> None:
    servicer: IngestServicer | None = None

    def register(rt: Runtime) -> None:
        nonlocal servicer
        servicer = IngestServicer(rt, settings)
        # Readings arrive as bytes: the servicer decodes them column-wise (services.ingest.wire).
        add_servicer(rt.server, SERVICE, servicer, raw_request_methods={"PushReadings", "StreamReadings"})

    async def on_ready(rt: Runtime) -> None:
        assert servicer is not None
        await servicer.start(rt)

    await run_service(
        name="ingest",
        settings=settings,
        listen_addr=settings.ingest_addr,
        service_names=[SERVICE_NAME],
        reflection_names=[SERVICE_NAME],
        register=register,
        on_ready=on_ready,
    )


def main() -> None:
    asyncio.run(serve(load_settings(IngestSettings)))
