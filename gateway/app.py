"""The gateway's ASGI application: gRPC-web calls on /<package>.<Service>/<Method>, /healthz, /metrics
and the dashboard's static files, behind CORS for the configured origins."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.auth import Authenticator
from gateway.config import GatewaySettings
from gateway.limits import RateLimiter
from gateway.metrics import GatewayMetrics
from gateway.proxy import GrpcWebProxy, Receive, Scope, Send
from gateway.upstream import Method, Upstreams, load_methods

# /metermesh.ingest.v1.IngestService/GetMeter: a dotted service name, then the method.
GRPC_PATH = re.compile(r"^/[A-Za-z_]\w*(\.[A-Za-z_]\w*)+/[A-Za-z_]\w*$")

REQUEST_HEADERS = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "traceparent",
]
EXPOSED_HEADERS = ["grpc-status", "grpc-message", "grpc-status-details-bin"]

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>metermesh: dashboard not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 4rem auto">
<h1>The dashboard is not built</h1>
<p>The gateway is running and answers gRPC-web calls, but <code>{static_dir}</code> holds no
<code>index.html</code>. Build the dashboard (see the README: <code>make run</code> builds it), then reload.</p>
<p>Health of the services: <a href="/healthz">/healthz</a></p>
</body></html>
"""


class Gateway:
    """The gateway's parts; the upstream channels exist between lifespan start-up and shutdown."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.methods: dict[str, Method] = load_methods(settings)
        self.auth = Authenticator(
            settings.jwt_secret.get_secret_value(), leeway_seconds=settings.jwt_leeway_seconds
        )
        self.limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
        self.metrics = GatewayMetrics()
        self.upstreams: Upstreams | None = None
        self.proxy: GrpcWebProxy | None = None

    async def startup(self) -> None:
        self.upstreams = Upstreams(self.methods, self.settings.grpc_max_message_bytes)
        self.proxy = GrpcWebProxy(self.settings, self.upstreams, self.auth, self.limiter, self.metrics)

    def begin_shutdown(self) -> None:
        if self.proxy is not None:
            self.proxy.begin_shutdown()

    async def shutdown(self) -> None:
        self.begin_shutdown()
        if self.upstreams is not None:
            await self.upstreams.close()

    @property
    def stopping(self) -> bool:
        return self.proxy is None or self.proxy.stopping

    async def healthz(self, request: Request) -> Response:
        """200 while the gateway serves (503 once it is stopping), with each upstream's gRPC health."""
        upstreams = await self.upstreams.health(timeout=0.5) if self.upstreams is not None else {}
        body = {
            "status": "stopping" if self.stopping else "ok",
            "dashboard": "built" if (self.settings.static_dir / "index.html").is_file() else "not built",
            "upstreams": upstreams,
        }
        return JSONResponse(body, status_code=503 if self.stopping else 200)

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def static(self, request: Request) -> Response:
        """The dashboard: files under the static directory; any other extension-less path gets
        index.html, so client-side routes survive a reload."""
        root: Path = self.settings.static_dir.resolve()
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT.format(static_dir=root), status_code=503)
        rel = request.path_params.get("path", "")
        nosniff = {"x-content-type-options": "nosniff"}
        if rel:
            candidate = (root / rel).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                return FileResponse(candidate, headers=nosniff)
            if "." in rel.rsplit("/", 1)[-1]:
                return PlainTextResponse(f"/{rel} not found\n", status_code=404, headers=nosniff)
        return FileResponse(index, headers={**nosniff, "cache-control": "no-cache"})


class GatewayApp:
    """The ASGI callable uvicorn serves; `gateway` gives the server its shutdown hook."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.gateway = gw = Gateway(settings)

        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            await gw.startup()
            try:
                yield
            finally:
                await gw.shutdown()

        self._site = Starlette(
            routes=[
                Route("/healthz", gw.healthz, methods=["GET", "HEAD"]),
                Route("/metrics", gw.prometheus, methods=["GET"]),
                Route("/{path:path}", gw.static, methods=["GET", "HEAD"]),
            ],
            lifespan=lifespan,
        )
        self._app = CORSMiddleware(
            self._dispatch,
            allow_origins=settings.cors_origins,
            allow_methods=["POST"],
            allow_headers=REQUEST_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=settings.cors_max_age_seconds,
        )

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        proxy = self.gateway.proxy
        if scope["type"] == "http" and proxy is not None and GRPC_PATH.match(scope["path"]):
            await proxy(scope, receive, send)
        else:
            await self._site(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)  # type: ignore[arg-type]


def create_app(settings: GatewaySettings) -> GatewayApp:
    return GatewayApp(settings)
