"""Bootstrap of the gateway process: settings, logging, telemetry, uvicorn, and a graceful stop on
SIGTERM/SIGINT (open streams end with UNAVAILABLE, other calls get the grace period, exit code 0)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Generator

import structlog
import uvicorn

from gateway.app import GatewayApp, create_app
from gateway.config import GatewaySettings, load_gateway_settings
from services.common.logging import configure_logging
from services.common.telemetry import configure_telemetry, shutdown_telemetry

log = structlog.get_logger("metermesh.gateway")


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: GatewayApp) -> None:
        super().__init__(config)
        self._app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn's own handlers re-raise the signal after a graceful stop, so the process would die
        # of SIGTERM (exit -15) instead of exiting 0 as every metermesh service does. These stay
        # installed until the process exits: a second SIGTERM during the stop changes nothing.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle_exit)
        yield

    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[override]
        log.info("stopping: ending open streams with UNAVAILABLE")
        self._app.gateway.begin_shutdown()
        await super().shutdown(sockets)


def build_server(settings: GatewaySettings) -> GatewayServer:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        access_log=False,  # the gateway logs every call itself, with its gRPC status
        server_header=False,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
    return GatewayServer(config, app)


def main() -> None:
    settings = load_gateway_settings()
    configure_logging("gateway", settings.log_level)
    configure_telemetry("gateway")
    server = build_server(settings)
    log.info("listening", addr=settings.addr, cors_origins=settings.cors_origins)
    try:
        asyncio.run(server.serve())
    finally:
        shutdown_telemetry()
    if not server.started:
        raise SystemExit(f"gateway: cannot listen on {settings.addr} (address in use?)")
    log.info("stopped")
