"""gRPC server interceptor that logs every call with its method, status, duration and trace id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

log = structlog.get_logger("metermesh.grpc")


def _status_of(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class LoggingInterceptor(grpc.aio.ServerInterceptor):
    """Health checks and reflection are not logged: probes would drown everything else."""

    QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(self.QUIET_PREFIXES):
            return handler

        def done(context: grpc.aio.ServicerContext, start: float, error: BaseException | None) -> None:
            status = _status_of(context) if error is None else "UNKNOWN"
            if isinstance(error, grpc.aio.AbortError):
                status = _status_of(context)
                error = None
            elif isinstance(error, asyncio.CancelledError):
                status = "CANCELLED"
                error = None
            fields: dict[str, Any] = {
                "method": method,
                "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 2),
            }
            if error is not None:
                log.error("rpc failed", error=repr(error), exc_info=error, **fields)
            elif status in ("OK", "NOT_FOUND", "INVALID_ARGUMENT", "ALREADY_EXISTS"):
                log.info("rpc", **fields)
            else:
                log.warning("rpc", details=context.details(), **fields)

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                try:
                    resp = await inner_uu(request, context)
                except BaseException as exc:
                    done(context, start, exc)
                    raise
                done(context, start, None)
                return resp

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(request_iter: Any, context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                try:
                    resp = await inner_su(request_iter, context)
                except BaseException as exc:
                    done(context, start, exc)
                    raise
                done(context, start, None)
                return resp

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                try:
                    async for item in inner_us(request, context):
                        yield item
                except BaseException as exc:
                    done(context, start, exc)
                    raise
                done(context, start, None)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            inner_ss = handler.stream_stream

            async def stream_stream(request_iter: Any, context: grpc.aio.ServicerContext) -> Any:
                start = time.perf_counter()
                try:
                    async for item in inner_ss(request_iter, context):
                        yield item
                except BaseException as exc:
                    done(context, start, exc)
                    raise
                done(context, start, None)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
