"""OpenTelemetry set up entirely from the standard OTEL_* environment variables."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

_provider: TracerProvider | None = None


def configure_telemetry(service: str) -> TracerProvider:
    """Installs a tracer provider. Spans are always created (logs carry their trace ids); they are
    exported only where OTEL_TRACES_EXPORTER asks for it: `otlp` (endpoint from
    OTEL_EXPORTER_OTLP_ENDPOINT), `console`, or `none` (the default when no endpoint is set).
    OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and OTEL_TRACES_SAMPLER are honoured by the SDK itself."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", f"metermesh-{service}")})
    provider = TracerProvider(resource=resource)
    default = "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"
    for name in os.environ.get("OTEL_TRACES_EXPORTER", default).split(","):
        name = name.strip()
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name not in ("none", ""):
            raise SystemExit(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}; use otlp, console or none")
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_telemetry() -> None:
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
