"""The bootstrap every metermesh service reuses: a grpc.aio server with health, reflection, tracing and
logging; connections to NATS and PostgreSQL made (and migrations applied) before health says SERVING;
and a graceful stop on SIGTERM/SIGINT in the order the design fixes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field

import asyncpg
import grpc
import nats.errors
import nats.js.errors
import structlog
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from services.common import jetstream, metrics
from services.common.config import CommonSettings
from services.common.db import apply_migrations, create_pool
from services.common.errors import is_transient
from services.common.interceptors import LoggingInterceptor
from services.common.logging import configure_logging
from services.common.telemetry import configure_telemetry, shutdown_telemetry

log = structlog.get_logger(__name__)

# Ready hooks run once NATS and PostgreSQL are reachable; they return background tasks (consumer
# loops) that the runtime cancels after the gRPC server has stopped.
ReadyHook = Callable[["Runtime"], Awaitable[None]]


_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_servicer(
    server: grpc.aio.Server,
    service: ServiceDescriptor,
    servicer: object,
    *,
    raw_request_methods: Collection[str] = (),
) -> None:
    """Registers a servicer from its service descriptor, as the generated add_*_to_server would,
    except that the methods named in raw_request_methods receive the request bytes undecoded (for
    a servicer with a faster decoder of its own)."""
    handlers = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        factory = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=None if method.name in raw_request_methods else request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


LIVENESS = "liveness"


def topology_of(settings: CommonSettings) -> jetstream.Topology:
    return jetstream.Topology(
        prefix=settings.stream_prefix,
        reading_partitions=settings.reading_partitions,
        readings_max_bytes=settings.readings_max_bytes,
        writer_ack_wait_seconds=settings.writer_ack_wait_seconds,
        anomaly_ack_wait_seconds=settings.anomaly_ack_wait_seconds,
        alerts_ack_wait_seconds=settings.alerts_ack_wait_seconds,
        replicas=settings.stream_replicas,
    )


@dataclass
class Runtime:
    """What a running service holds. Servicers get it and use nc/js/pool once `ready` is set."""

    name: str
    settings: CommonSettings
    service_names: Sequence[str]
    listen_addr: str
    topology: jetstream.Topology
    server: grpc.aio.Server = field(init=False)
    health: health.aio.HealthServicer = field(init=False)
    nc: NATS | None = None
    js: JetStreamContext | None = None
    pool: asyncpg.Pool | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    bound_port: int = 0
    background: list[asyncio.Task[None]] = field(default_factory=list)
    failed: bool = False  # start-up or a background loop failed: exit non-zero
    stop_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        opts = [
            ("grpc.max_receive_message_length", self.settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", self.settings.grpc_max_message_bytes),
        ]
        self.server = grpc.aio.server(
            interceptors=[aio_server_interceptor(), LoggingInterceptor()], options=opts
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)
        metrics.SERVING.set(1 if serving else 0)

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        """Runs a background loop; if it dies unexpectedly, the service stops rather than limp on."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)

        def died(t: asyncio.Task[None]) -> None:
            if t.cancelled() or self.stopping.is_set():
                return
            exc = t.exception()
            log.error("background task ended; stopping the service", task=name, error=repr(exc), exc_info=exc)
            self.failed = True
            self.stopping.set()

        task.add_done_callback(died)
        self.background.append(task)
        return task


def _retryable_db_error(exc: BaseException) -> bool:
    # A server that is down or starting, or a database not created yet: wait for it. A bad
    # password, a broken migration or a missing permission will not fix itself: fail fast.
    return is_transient(exc) or isinstance(exc, (OSError, asyncpg.InvalidCatalogNameError))


def _retryable_nats_error(exc: BaseException) -> bool:
    if isinstance(exc, nats.js.errors.APIError):
        return exc.code == 503  # JetStream not ready yet (starting, electing a leader)
    return is_transient(exc) or isinstance(exc, (OSError, nats.errors.Error))


async def _connect_dependencies(rt: Runtime, *, needs_nats: bool, needs_db: bool) -> None:
    """Retries while a dependency is unreachable: a service started before NATS or PostgreSQL waits
    (and says NOT_SERVING) instead of crashing in a restart loop. Errors that waiting cannot fix
    (a rejected password, a failing migration, a conflicting stream) end the start-up."""
    delay = 0.2
    while needs_db and rt.pool is None:
        pool: asyncpg.Pool | None = None
        try:
            pool = await create_pool(
                rt.settings.database_url,
                min_size=rt.settings.db_pool_min_size,
                max_size=rt.settings.db_pool_max_size,
            )
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            rt.pool = pool
        except Exception as exc:
            if pool is not None:
                pool.terminate()
            if not _retryable_db_error(exc):
                raise
            log.warning("PostgreSQL not reachable yet", error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    delay = 0.2
    while needs_nats and rt.nc is None:
        nc: NATS | None = None
        try:

            async def disconnected() -> None:
                if not rt.stopping.is_set():
                    log.warning("NATS disconnected")
                    await rt.set_serving(False)

            async def reconnected() -> None:
                log.info("NATS reconnected")
                if rt.ready.is_set() and not rt.stopping.is_set():
                    await rt.set_serving(True)

            nc = await jetstream.connect(
                rt.settings.nats_url,
                f"metermesh-{rt.name}",
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
            )
            js = nc.jetstream()
            await jetstream.provision(js, rt.topology)
            rt.nc, rt.js = nc, js
        except Exception as exc:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
            if not _retryable_nats_error(exc):
                raise
            log.warning("NATS not reachable yet", error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def run_service(
    *,
    name: str,
    settings: CommonSettings,
    listen_addr: str,
    service_names: Sequence[str],
    register: Callable[[Runtime], None],
    on_ready: ReadyHook | None = None,
    needs_nats: bool = True,
    needs_db: bool = True,
    reflection_names: Sequence[str] = (),
) -> None:
    """Runs a service until SIGTERM/SIGINT (or a fatal background error), then stops it in order:
    health NOT_SERVING -> wait the readiness period -> server.stop(grace) -> stop background loops ->
    drain NATS -> close the PostgreSQL pool -> stop serving metrics -> shut telemetry down."""
    configure_logging(name, settings.log_level)
    configure_telemetry(name)
    topology = topology_of(settings)
    rt = Runtime(
        name=name, settings=settings, service_names=service_names, listen_addr=listen_addr, topology=topology
    )
    register(rt)
    metrics.set_build_info(name)
    try:
        metrics_server = metrics.serve(settings.metrics_addr)
    except (ValueError, OSError) as exc:
        raise SystemExit(
            f"{name}: cannot serve metrics at METERMESH_METRICS_ADDR={settings.metrics_addr}: {exc}"
        ) from None
    if metrics_server is not None:
        log.info("serving metrics", addr=settings.metrics_addr, port=metrics_server.port)
    reflection.enable_server_reflection(
        (
            *reflection_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        rt.server,
    )
    await rt.set_serving(False)
    # Liveness: SERVING while the process runs, whatever its dependencies do. A Kubernetes liveness
    # probe asks for this name, so a NATS or PostgreSQL outage takes pods out of rotation (readiness)
    # without restarting them all.
    await rt.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    rt.bound_port = rt.server.add_insecure_port(listen_addr)
    if rt.bound_port == 0:
        raise SystemExit(f"{name}: cannot listen on {listen_addr} (address in use?)")
    await rt.server.start()
    log.info("listening; NOT_SERVING until dependencies are ready", addr=listen_addr)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, rt.stopping.set)

    async def become_ready() -> None:
        await _connect_dependencies(rt, needs_nats=needs_nats, needs_db=needs_db)
        if on_ready is not None:
            await on_ready(rt)
        if metrics_server is not None and rt.js is not None:
            rt.spawn(metrics.poll_consumer_lag(rt.js, settings.metrics_lag_poll_seconds), "consumer-lag")
        rt.ready.set()
        await rt.set_serving(True)
        log.info("SERVING", addr=listen_addr)

    starter = asyncio.create_task(become_ready())
    stop_wait = asyncio.create_task(rt.stopping.wait())
    await asyncio.wait({starter, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if starter.done() and not starter.cancelled() and starter.exception() is not None:
        exc = starter.exception()
        log.error("start-up failed", error=repr(exc), exc_info=exc)
        rt.failed = True
        rt.stopping.set()
    await rt.stopping.wait()
    starter.cancel()

    log.info("stopping: NOT_SERVING", readiness_seconds=settings.shutdown_readiness_seconds)
    await rt.health.enter_graceful_shutdown()
    metrics.SERVING.set(0)
    await asyncio.sleep(settings.shutdown_readiness_seconds)
    await rt.server.stop(settings.shutdown_grace_seconds)
    for hook in rt.stop_hooks:
        await hook()
    for task in rt.background:
        task.cancel()
    await asyncio.gather(*rt.background, return_exceptions=True)
    if rt.nc is not None:
        with contextlib.suppress(Exception):
            await rt.nc.drain()
    if rt.pool is not None:
        await rt.pool.close()
    if metrics_server is not None:
        await asyncio.to_thread(metrics_server.stop)
    shutdown_telemetry()
    log.info("stopped", failed=rt.failed)
    if rt.failed:
        raise SystemExit(1)
