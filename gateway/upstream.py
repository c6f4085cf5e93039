"""The services behind the gateway: every method of the metermesh contracts, found in the generated
descriptors (so a new RPC needs no gateway code), the address of its service, and one gRPC channel
per address with bytes-in/bytes-out calls."""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import GatewaySettings
from gateway.policy import POLICY, Rule
from services.common.clients import channel

AREAS = ("ingest", "anomaly", "forecast", "billing", "alerts")


def traces_exported() -> bool:
    """Whether spans leave the process (services.common.telemetry: OTEL_TRACES_EXPORTER, or an OTLP
    endpoint). Only then is each upstream call worth a client span: the interceptor costs about a fifth
    of the gateway's CPU per call (make bench-gateway), and without an exporter its spans go nowhere."""
    default = "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"
    return os.environ.get("OTEL_TRACES_EXPORTER", default).strip() not in ("none", "")


@dataclass(frozen=True)
class Method:
    name: str  # "metermesh.ingest.v1.IngestService/GetMeter"
    service: str  # "metermesh.ingest.v1.IngestService"
    area: str
    addr: str
    input: type[Message]
    output: type[Message]
    client_streaming: bool
    server_streaming: bool
    rule: Rule | None

    @property
    def path(self) -> str:
        return "/" + self.name


def load_methods(settings: GatewaySettings) -> dict[str, Method]:
    """Every method of every area's services, keyed by HTTP path ("/pkg.Service/Method")."""
    methods: dict[str, Method] = {}
    for area in AREAS:
        module = importlib.import_module(f"metermesh.{area}.v1.{area}_pb2")
        addr = settings.upstream_addr(area)
        assert addr is not None
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                name = f"{service.full_name}/{m.name}"
                methods["/" + name] = Method(
                    name=name,
                    service=service.full_name,
                    area=area,
                    addr=addr,
                    input=message_factory.GetMessageClass(m.input_type),
                    output=message_factory.GetMessageClass(m.output_type),
                    client_streaming=m.client_streaming,
                    server_streaming=m.server_streaming,
                    rule=POLICY.get(name),
                )
    return methods


class Upstreams:
    """One channel per service address; generic calls that pass the request and response bytes through
    (serializers None), so the gateway never re-encodes what it does not have to look at."""

    def __init__(self, methods: Mapping[str, Method], max_message_bytes: int) -> None:
        self.methods = methods
        # With an exporter, the instrumented channel of the services; otherwise a plain one, and the
        # proxy passes a browser's traceparent on as metadata, so services still join its trace.
        self.traced = traces_exported()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._stream: dict[str, grpc.aio.UnaryStreamMultiCallable] = {}
        for m in methods.values():
            ch = self._channels.get(m.addr)
            if ch is None:
                ch = self._channels[m.addr] = (
                    channel(m.addr, max_message_bytes=max_message_bytes)
                    if self.traced
                    else grpc.aio.insecure_channel(
                        m.addr,
                        options=[
                            ("grpc.max_send_message_length", max_message_bytes),
                            ("grpc.max_receive_message_length", max_message_bytes),
                            ("grpc.keepalive_time_ms", 30_000),
                        ],
                    )
                )
            if m.server_streaming:
                self._stream[m.path] = ch.unary_stream(m.path)
            else:
                self._unary[m.path] = ch.unary_unary(m.path)

    def unary(self, method: Method) -> grpc.aio.UnaryUnaryMultiCallable:
        return self._unary[method.path]

    def stream(self, method: Method) -> grpc.aio.UnaryStreamMultiCallable:
        return self._stream[method.path]

    def services(self) -> dict[str, tuple[str, str]]:
        """service full name -> (area, address)."""
        return {m.service: (m.area, m.addr) for m in self.methods.values()}

    async def health(self, timeout: float = 1.0) -> dict[str, dict[str, str]]:
        """Each upstream service's gRPC health (SERVING, NOT_SERVING, UNREACHABLE...), checked at once."""

        async def check(service: str, addr: str) -> str:
            stub = health_pb2_grpc.HealthStub(self._channels[addr])
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                return "UNREACHABLE" if exc.code() == grpc.StatusCode.UNAVAILABLE else exc.code().name
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

        items = sorted(self.services().items(), key=lambda kv: AREAS.index(kv[1][0]))
        statuses = await asyncio.gather(*(check(svc, addr) for svc, (_, addr) in items))
        return {
            area: {"service": svc, "addr": addr, "status": status}
            for (svc, (area, addr)), status in zip(items, statuses, strict=True)
        }

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels.values()), return_exceptions=True)
