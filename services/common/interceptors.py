"""gRPC server interceptor: logs every call with its method, status, duration and trace id, counts it in
the gRPC metrics (services.common.metrics), and turns a dependency that is away (PostgreSQL restarting,
NATS reconnecting) into UNAVAILABLE, the status clients retry, instead of UNKNOWN."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from services.common import metrics
from services.common.errors import is_transient

log = structlog.get_logger("metermesh.grpc")

QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def _status_of(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class _Call:
    def __init__(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.method = method
        self.context = context
        self.start = time.perf_counter()
        self.labels = metrics.rpc_labels(method)
        metrics.rpc_started(*self.labels)

    async def failed(self, error: BaseException) -> None:
        """Logs the failure; re-raises it, or aborts with UNAVAILABLE when it is transient."""
        if isinstance(error, grpc.aio.AbortError):
            self.log(None)
            raise error
        if isinstance(error, asyncio.CancelledError):
            self.log(None, status="CANCELLED")
            raise error
        if is_transient(error):
            self.log(None, status="UNAVAILABLE", cause=repr(error))
            await self.context.abort(
                grpc.StatusCode.UNAVAILABLE, f"a dependency is unavailable ({type(error).__name__}); retry"
            )
        self.log(error)
        raise error

    def log(self, error: BaseException | None, status: str | None = None, **extra: Any) -> None:
        """Called once per call, when it ends: logs it and counts it in the metrics."""
        seconds = time.perf_counter() - self.start
        fields: dict[str, Any] = {
            "method": self.method,
            "status": status or ("UNKNOWN" if error else _status_of(self.context)),
            "duration_ms": round(seconds * 1000, 2),
            **extra,
        }
        metrics.rpc_finished(*self.labels, fields["status"], seconds)
        if error is not None:
            log.error("rpc failed", error=repr(error), exc_info=error, **fields)
        elif fields["status"] in ("OK", "CANCELLED", "NOT_FOUND", "INVALID_ARGUMENT", "ALREADY_EXISTS"):
            log.info("rpc", **fields)
        else:
            log.warning("rpc", details=self.context.details(), **fields)


class LoggingInterceptor(grpc.aio.ServerInterceptor):
    """Health checks and reflection are neither logged nor counted: probes would drown everything else."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(QUIET_PREFIXES):
            return handler

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = _Call(method, context)
                try:
                    resp = await inner(request, context)
                except BaseException as exc:
                    await call.failed(exc)
                call.log(None)
                return resp

            make = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return make(unary_response, handler.request_deserializer, handler.response_serializer)

        inner_stream = handler.unary_stream or handler.stream_stream

        async def streaming_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(method, context)
            try:
                async for item in inner_stream(request, context):
                    yield item
            except BaseException as exc:
                await call.failed(exc)
            call.log(None)

        make_stream = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return make_stream(streaming_response, handler.request_deserializer, handler.response_serializer)
