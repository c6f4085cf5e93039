"""Bootstrap of the anomaly service (metermesh.anomaly.v1.AnomalyService): the gRPC servicer plus the
streaming detector (READINGS -> ANOMALIES), the communication-gap sweep and the model poller."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from metermesh.anomaly.v1 import anomaly_pb2

from services.anomaly import store
from services.anomaly.config import AnomalySettings
from services.anomaly.detector import EventPublisher, GapSweeper, StreamingDetector
from services.anomaly.models import ModelManager
from services.anomaly.pipeline import DetectorStack
from services.anomaly.rules import RuleConfig, RuleEngine
from services.anomaly.servicer import AnomalyServicer
from services.common import jetstream
from services.common.config import load_settings
from services.common.errors import is_transient
from services.common.server import Runtime, add_servicer, run_service

log = structlog.get_logger(__name__)

SERVICE = anomaly_pb2.DESCRIPTOR.services_by_name["AnomalyService"]
SERVICE_NAME = SERVICE.full_name


def rule_config(settings: AnomalySettings) -> RuleConfig:
    return RuleConfig(
        surge_fraction=settings.anomaly_voltage_tolerance,
        sag_fraction=settings.anomaly_voltage_tolerance,
        gap_intervals=settings.anomaly_gap_intervals,
    )


async def serve(settings: AnomalySettings) -> None:
    servicer: AnomalyServicer | None = None

    def register(rt: Runtime) -> None:
        nonlocal servicer
        servicer = AnomalyServicer(rt, settings)
        add_servicer(rt.server, SERVICE, servicer)

    async def on_ready(rt: Runtime) -> None:
        assert servicer is not None and rt.pool is not None and rt.js is not None
        stack = DetectorStack(rules=RuleEngine(rule_config(settings)))
        models = ModelManager(rt.pool, stack, max_readings=settings.anomaly_train_max_readings)
        await models.refresh()
        publisher = EventPublisher(rt.js, rt.topology)
        meters = store.MeterInfoCache(rt.pool, settings.anomaly_meter_cache_seconds)
        detector = StreamingDetector(rt.pool, meters, stack, publisher)
        servicer.attach(detector, models)
        spec = rt.topology.anomaly_consumer
        # One fetch loop: the per-meter state lives in this process, and one loop scores a meter's
        # readings in order. Replicas split the partitions' messages between them.
        worker = jetstream.PullWorker(
            js=rt.js,
            spec=spec,
            handler=detector.handle,
            dead_letter_subject=rt.topology.dead_letter_subject(spec.stream, spec.durable),
            batch_size=settings.anomaly_fetch_batch,
            fetch_timeout=0.5,
        )
        task = rt.spawn(worker.run(), "anomaly-detector")
        sweeper = GapSweeper(
            rt.pool,
            stack,
            publisher,
            gap_intervals=settings.anomaly_gap_intervals,
            max_age_days=settings.anomaly_gap_max_age_days,
        )

        async def sweep_periodically() -> None:
            while True:
                await asyncio.sleep(settings.anomaly_gap_sweep_seconds)
                try:
                    await sweeper.sweep()
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("gap sweep failed; will retry", error=repr(exc))

        rt.spawn(sweep_periodically(), "gap-sweep")
        rt.spawn(models.poll(settings.anomaly_model_poll_seconds), "model-poll")

        async def finish_batch() -> None:
            worker.stop()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout=settings.shutdown_grace_seconds)

        rt.stop_hooks.append(finish_batch)

    await run_service(
        name="anomaly",
        settings=settings,
        listen_addr=settings.anomaly_addr,
        service_names=[SERVICE_NAME],
        reflection_names=[SERVICE_NAME],
        register=register,
        on_ready=on_ready,
    )


def main() -> None:
    asyncio.run(serve(load_settings(AnomalySettings)))
