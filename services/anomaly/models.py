"""The learned detectors' lifecycle in a running service: load the serving versions from the registry,
train new versions (data from PostgreSQL, fitting in a worker thread, progress to the caller),
promote a version only when it beats the serving one on the same held-out set, and pick up versions
promoted by another replica."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from metermesh.anomaly.v1 import anomaly_pb2

from services.anomaly import store
from services.anomaly.model import DetectorKind
from services.anomaly.pipeline import DetectorStack
from services.common import metrics
from services.ingest.columns import ReadingColumns

log = structlog.get_logger(__name__)

Emit = Callable[[anomaly_pb2.TrainDetectorResponse], None]


def load_detector(kind: DetectorKind, artifact: bytes) -> Any:
    if kind is DetectorKind.ISOLATION_FOREST:
        from services.anomaly.iforest import IsolationForestDetector

        return IsolationForestDetector.from_bytes(artifact)
    from services.anomaly.autoencoder import AutoencoderDetector

    return AutoencoderDetector.from_bytes(artifact)


def better(new: Any, old: Any) -> tuple[bool, str]:
    """F1 decides; ROC-AUC breaks a tie."""
    if (new.f1, new.roc_auc) > (old.f1, old.roc_auc):
        return (
            True,
            f"F1 {new.f1:.3f} (ROC-AUC {new.roc_auc:.3f}) beats serving F1 {old.f1:.3f} (ROC-AUC {old.roc_auc:.3f})",
        )
    return (
        False,
        f"F1 {new.f1:.3f} (ROC-AUC {new.roc_auc:.3f}) does not beat serving F1 {old.f1:.3f} (ROC-AUC {old.roc_auc:.3f})",
    )


class ModelManager:
    def __init__(self, pool: asyncpg.Pool, stack: DetectorStack, *, max_readings: int) -> None:
        self.pool = pool
        self.stack = stack
        self.max_readings = max_readings
        self.serving: dict[DetectorKind, str] = {}
        self._train_locks = {
            k: asyncio.Lock() for k in (DetectorKind.ISOLATION_FOREST, DetectorKind.AUTOENCODER)
        }

    def _install(self, kind: DetectorKind, version: str, detector: Any) -> None:
        if kind is DetectorKind.ISOLATION_FOREST:
            self.stack.iforest = detector
        else:
            self.stack.autoencoder = detector
        self.serving[kind] = version
        metrics.set_model_version(kind, version)
        log.info("detector serving", detector=kind.name, model_version=version)

    async def refresh(self) -> None:
        """Loads serving versions that differ from those in use (at start, then periodically)."""
        versions = await store.serving_versions(self.pool)
        if all(self.serving.get(k) == v for k, v in versions.items()) and set(versions) == set(self.serving):
            return
        models = await store.serving_models(self.pool)
        for kind, (version, artifact) in models.items():
            if self.serving.get(kind) == version:
                continue
            try:
                detector = await asyncio.to_thread(load_detector, kind, artifact)
            except Exception as exc:  # a broken artifact must not take the rules down with it
                log.error(
                    "cannot load serving model; running without it", model_version=version, error=repr(exc)
                )
                self.stack.learned_errors[kind] = f"{version} failed to load: {exc}"
                self.serving[kind] = version
                continue
            detector.version = version
            self._install(kind, version, detector)

    async def poll(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("model registry poll failed; will retry", error=repr(exc))

    async def _load_history(
        self, start: dt.datetime, end: dt.datetime, meter_ids: list[str], emit: Emit
    ) -> tuple[ReadingColumns, dict]:
        def progress(fraction: float, message: str) -> None:
            emit(
                anomaly_pb2.TrainDetectorResponse(
                    progress=anomaly_pb2.TrainingProgress(
                        stage=anomaly_pb2.TRAINING_STAGE_LOADING_DATA, fraction_done=fraction, message=message
                    )
                )
            )

        counts = await store.meters_with_history(self.pool, start, end, meter_ids)
        chosen, total = [], 0
        for m, n in counts:
            if total + n > self.max_readings and chosen:
                break
            chosen.append(m)
            total += n
        progress(
            0.0,
            f"{len(counts)} meters have readings in the range; loading {total:,} readings of {len(chosen)}",
        )
        parts = []
        for i, part in enumerate(store.chunks(chosen, 200)):
            parts.append(await store.load_history(self.pool, part, start, end))
            progress(
                0.1 * min(1.0, (i + 1) * 200 / max(1, len(chosen))),
                f"loaded {min((i + 1) * 200, len(chosen))} of {len(chosen)} meters",
            )
        history = ReadingColumns.concat(parts) if parts else store.records_to_columns([])
        meters = await store.all_meters(self.pool, chosen) if chosen else {}
        return history, meters

    async def train(
        self,
        *,
        detector: DetectorKind,
        start: dt.datetime,
        end: dt.datetime,
        meter_ids: list[str],
        epochs: int,
        seed: int,
        skip_promotion: bool,
        emit: Emit,
    ) -> None:
        from services.anomaly import training

        lock = self._train_locks[detector]
        if lock.locked():
            raise ValueError(
                f"a {detector.name.lower()} training run is already in progress; try again later"
            )
        async with lock:
            loop = asyncio.get_running_loop()
            top = [0.0]

            def send(stage: int, fraction: float, **kw: Any) -> None:
                top[0] = max(top[0], min(1.0, fraction))
                msg = anomaly_pb2.TrainDetectorResponse(
                    progress=anomaly_pb2.TrainingProgress(stage=stage, fraction_done=top[0], **kw)  # type: ignore[arg-type]
                )
                loop.call_soon_threadsafe(emit, msg)

            history, meters = await self._load_history(start, end, meter_ids, emit)
            if len(history) == 0:
                raise ValueError(
                    f"no stored readings between {start.isoformat()} and {end.isoformat()}"
                    + (f" for meters {', '.join(meter_ids[:5])}" if meter_ids else "")
                )

            def progress(p: Any) -> None:
                kw: dict[str, Any] = {
                    "message": p.message,
                    "epoch": p.epoch or 0,
                    "total_epochs": p.total_epochs or 0,
                }
                if p.train_loss is not None:
                    kw["train_loss"] = p.train_loss
                if p.validation_loss is not None:
                    kw["validation_loss"] = p.validation_loss
                send(_stage(p.stage), 0.1 + 0.8 * p.fraction, **kw)

            version = f"{store.PREFIX[detector]}-candidate"
            s = seed or 20261122
            if detector is DetectorKind.ISOLATION_FOREST:
                outcome = await asyncio.to_thread(
                    training.train_isolation_forest,
                    history,
                    meters,
                    version=version,
                    seed=s,
                    progress=progress,
                )
            else:
                outcome = await asyncio.to_thread(
                    training.train_autoencoder,
                    history,
                    meters,
                    version=version,
                    seed=s,
                    epochs=epochs or 30,
                    progress=progress,
                )
            send(
                anomaly_pb2.TRAINING_STAGE_EVALUATING,
                0.92,
                message="evaluating the serving version on the same held-out set",
            )
            previous = (
                self.stack.iforest if detector is DetectorKind.ISOLATION_FOREST else self.stack.autoencoder
            )
            previous_version = self.serving.get(detector, "") if previous is not None else ""
            previous_metrics = None
            if previous is not None:
                previous_metrics = await asyncio.to_thread(training.evaluate, previous, outcome.heldout)
            if skip_promotion:
                promote, reason = False, "promotion skipped"
            elif previous_metrics is None:
                promote, reason = True, f"no version was serving; F1 {outcome.metrics.f1:.3f}"
            else:
                promote, reason = better(outcome.metrics, previous_metrics)
            send(anomaly_pb2.TRAINING_STAGE_REGISTERING, 0.96, message="registering the version")
            registered = await self._register(detector, outcome, promote, reason, epochs, s)
            outcome.detector.version = registered.model_version
            if promote:
                self._install(detector, registered.model_version, outcome.detector)
            from services.anomaly.servicer import metrics_to_proto, model_to_proto

            result = anomaly_pb2.TrainDetectorResult(
                model=model_to_proto(registered),
                promoted=promote,
                promotion_reason=reason,
                previous_model_version=previous_version,
            )
            if previous_metrics is not None:
                result.previous_metrics.CopyFrom(metrics_to_proto(previous_metrics))
            emit(anomaly_pb2.TrainDetectorResponse(result=result))

    async def _register(
        self, detector: DetectorKind, outcome: Any, promote: bool, reason: str, epochs: int, seed: int
    ) -> store.RegisteredModel:
        # The version name is only known inside the registration transaction; the artifact records
        # the provisional name and the registry's name wins when it is loaded.
        artifact = await asyncio.to_thread(outcome.detector.to_bytes)
        return await store.register_model(
            self.pool,
            detector=detector,
            artifact=artifact,
            training_range_us=outcome.training_range_us,
            meter_count=outcome.meter_count,
            training_sample_count=outcome.training_sample_count,
            metrics=outcome.metrics,
            params={"epochs": epochs, "seed": seed},
            promote=promote,
            promotion_reason=reason,
        )


def _stage(name: str) -> int:
    from services.anomaly.servicer import _STAGE

    return _STAGE.get(name, anomaly_pb2.TRAINING_STAGE_FITTING)
