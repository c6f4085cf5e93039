"""Outgoing gRPC channels for services and tools: OpenTelemetry client instrumentation (the trace
continues into the callee), explicit message size limits, keepalive."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def channel(addr: str, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    """An insecure channel to a metermesh service. Callers still set a deadline on every call."""
    return grpc.aio.insecure_channel(
        addr,
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ],
        interceptors=aio_client_interceptors(),
    )
