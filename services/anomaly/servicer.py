"""AnomalyService: translates DetectAnomalies / TrainDetector / ListDetectorModels into the detector
stack, the trainer and the model registry."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from metermesh.anomaly.v1 import anomaly_pb2, anomaly_pb2_grpc

from services.anomaly import store
from services.anomaly.config import AnomalySettings
from services.anomaly.convert import DETECTOR, SEVERITY, event_to_proto, micros
from services.anomaly.detector import StreamingDetector
from services.anomaly.model import DetectorKind, MeterInfo
from services.anomaly.models import ModelManager
from services.anomaly.pipeline import DetectorStack
from services.anomaly.state import StateTable
from services.common.server import Runtime
from services.ingest.codec import from_readings
from services.ingest.columns import ReadingColumns
from services.ingest.validation import validate

log = structlog.get_logger(__name__)

MAX_INLINE = 10_000
MAX_RANGE = dt.timedelta(days=31)
WARM_UP = dt.timedelta(days=14)  # history before a stored range that sets the baselines
_STATE_NAME = {
    anomaly_pb2.MODEL_STATE_CANDIDATE: "candidate",
    anomaly_pb2.MODEL_STATE_SERVING: "serving",
    anomaly_pb2.MODEL_STATE_RETIRED: "retired",
}
_STATE_ENUM = {v: k for k, v in _STATE_NAME.items()}
_STAGE = {
    "loading": anomaly_pb2.TRAINING_STAGE_LOADING_DATA,
    "features": anomaly_pb2.TRAINING_STAGE_BUILDING_FEATURES,
    "fitting": anomaly_pb2.TRAINING_STAGE_FITTING,
    "evaluating": anomaly_pb2.TRAINING_STAGE_EVALUATING,
    "registering": anomaly_pb2.TRAINING_STAGE_REGISTERING,
}


def _ts(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    t = Timestamp()
    t.FromDatetime(value)
    return t


def _dt(t: Timestamp) -> dt.datetime:
    return store.micros_to_dt(micros(t))


def model_to_proto(m: store.RegisteredModel) -> anomaly_pb2.DetectorModel:
    out = anomaly_pb2.DetectorModel(
        detector=int(m.detector),  # type: ignore[arg-type]
        model_version=m.model_version,
        state=_STATE_ENUM[m.state],
        create_time=_ts(m.create_time),
        promote_time=_ts(m.promote_time),
        meter_count=m.meter_count,
        training_sample_count=m.training_sample_count,
        metrics=anomaly_pb2.DetectorMetrics(
            precision=m.precision or 0.0,
            recall=m.recall or 0.0,
            f1=m.f1 or 0.0,
            roc_auc=m.roc_auc or 0.0,
            evaluated_count=m.evaluated_count,
            anomalous_count=m.anomalous_count,
        ),
    )
    if m.training_start_time is not None:
        out.training_range.start_time.CopyFrom(_ts(m.training_start_time))
    if m.training_end_time is not None:
        out.training_range.end_time.CopyFrom(_ts(m.training_end_time))
    return out


def metrics_to_proto(m: Any) -> anomaly_pb2.DetectorMetrics:
    return anomaly_pb2.DetectorMetrics(
        precision=m.precision,
        recall=m.recall,
        f1=m.f1,
        roc_auc=m.roc_auc,
        evaluated_count=m.evaluated_count,
        anomalous_count=m.anomalous_count,
    )


class AnomalyServicer(anomaly_pb2_grpc.AnomalyServiceServicer):
    def __init__(self, rt: Runtime, settings: AnomalySettings) -> None:
        self.rt = rt
        self.settings = settings
        self.detector: StreamingDetector | None = None
        self.models: ModelManager | None = None
        self.stack: DetectorStack | None = None

    def attach(self, detector: StreamingDetector, models: ModelManager) -> None:
        self.detector = detector
        self.models = models
        self.stack = detector.stack

    async def _require_ready(self, context: grpc.aio.ServicerContext) -> None:
        if not self.rt.ready.is_set() or self.detector is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the anomaly service is starting: waiting for NATS and PostgreSQL",
            )

    # --- DetectAnomalies ------------------------------------------------------------------------

    async def DetectAnomalies(
        self, request: anomaly_pb2.DetectAnomaliesRequest, context: grpc.aio.ServicerContext
    ) -> anomaly_pb2.DetectAnomaliesResponse:
        await self._require_ready(context)
        assert self.detector is not None and self.stack is not None and self.rt.pool is not None
        wanted: list[DetectorKind] = []
        for i, d in enumerate(request.detectors):
            if d not in DETECTOR:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"detectors[{i}] is {d}; use DETECTOR_RULES, DETECTOR_ISOLATION_FOREST or DETECTOR_AUTOENCODER",
                )
            wanted.append(DETECTOR[d])
        if request.min_severity and request.min_severity not in SEVERITY:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"min_severity is {request.min_severity}; not a Severity value",
            )
        source = request.WhichOneof("source")
        pool = self.rt.pool
        days = None
        if source == "inline_readings":
            readings = request.inline_readings.readings
            if not 1 <= len(readings) <= MAX_INLINE:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"inline_readings.readings has {len(readings)} readings; send 1 to {MAX_INLINE}",
                )
            cols, has_meter, has_time = from_readings(readings)
            checked = validate(
                cols,
                has_meter_id=has_meter,
                has_read_time=has_time,
                known_meters=set(cols.meter_ids),  # unregistered meters are scored by the rules
                now_unix_micros=time.time_ns() // 1000,
                retention_days=3650,
            )
            if checked.rejections:
                first = checked.rejections[0]
                more = len(checked.rejections) - 1
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"inline_readings.readings[{first.index}]: {first.message}"
                    + (f" (and {more} more invalid readings)" if more else ""),
                )
            meters = await self.detector.meters.get(cols.meter_ids)
            async with self.detector.lock:
                await self.detector.ensure_loaded(list(meters))
                scratch = self.detector.state.subset(list(meters))
        elif source == "stored_readings":
            sr = request.stored_readings
            meters = await store.all_meters(pool, [sr.meter_id]) if sr.meter_id else {}
            if sr.meter_id not in meters:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"stored_readings.meter_id {sr.meter_id!r} is not a registered meter",
                )
            tr = sr.time_range
            if not tr.HasField("start_time") or not tr.HasField("end_time"):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "stored_readings.time_range needs start_time and end_time",
                )
            start, end = _dt(tr.start_time), _dt(tr.end_time)
            if end <= start or end - start > MAX_RANGE:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"stored_readings.time_range is {start.isoformat()} to {end.isoformat()}; "
                    "the end must be after the start, at most 31 days later",
                )
            # The baselines as they were before the range: a fresh state warmed on the weeks before.
            scratch = StateTable()
            warm = await store.load_history(pool, [sr.meter_id], start - WARM_UP, start)
            if len(warm):
                self.stack.rules.score(warm, meters, scratch)
            cols = await store.load_history(pool, [sr.meter_id], start, end)
            if len(cols) == 0:
                return anomaly_pb2.DetectAnomaliesResponse(
                    detectors=self._statuses_idle(wanted), scored_reading_count=0
                )
            if self.stack.autoencoder is not None:
                from services.anomaly.features import history_days

                # Days of the range, with each meter's scale learned from the weeks before it too.
                all_days = history_days(ReadingColumns.concat([warm, cols]) if len(warm) else cols, meters)
                days = all_days.take(all_days.day_start_us >= micros(tr.start_time) - 86_400_000_000 + 1)
        else:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "source is unset; set inline_readings or stored_readings"
            )
        result = self.stack.score(cols, meters, scratch, detectors=wanted, days=days)
        now_us = time.time_ns() // 1000
        minimum = int(request.min_severity)
        return anomaly_pb2.DetectAnomaliesResponse(
            events=[event_to_proto(e, now_us) for e in result.events if int(e.severity) >= minimum],
            detectors=[
                anomaly_pb2.DetectorStatus(
                    detector=int(s.detector),  # type: ignore[arg-type]
                    active=s.active,
                    model_version=s.model_version if s.active else "",
                    inactive_reason=s.inactive_reason,
                )
                for s in result.statuses
            ],
            scored_reading_count=result.scored,
        )

    def _statuses_idle(self, wanted: list[DetectorKind]) -> list[anomaly_pb2.DetectorStatus]:
        return [
            anomaly_pb2.DetectorStatus(
                detector=int(d),  # type: ignore[arg-type]
                active=False,
                inactive_reason="no readings in the range" if not wanted or d in wanted else "not requested",
            )
            for d in DetectorKind
        ]

    # --- ListDetectorModels ---------------------------------------------------------------------

    async def ListDetectorModels(
        self, request: anomaly_pb2.ListDetectorModelsRequest, context: grpc.aio.ServicerContext
    ) -> anomaly_pb2.ListDetectorModelsResponse:
        await self._require_ready(context)
        assert self.rt.pool is not None
        size = request.page_size or 100
        if not 1 <= size <= 1000:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"page_size is {request.page_size}; use 1-1000 (0 means 100)",
            )
        if request.detector not in (0, *DETECTOR):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"detector is {request.detector}; not a Detector"
            )
        if request.state not in (0, *_STATE_NAME):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"state is {request.state}; not a ModelState"
            )
        before = None
        if request.page_token:
            try:
                before = int(base64.urlsafe_b64decode(request.page_token.encode()).decode())
            except Exception:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"page_token {request.page_token!r} is not a token this call returned",
                )
        rows = await store.list_models(
            self.rt.pool,
            detector=int(request.detector),
            state=_STATE_NAME.get(request.state),
            limit=size + 1,
            before_id=before,
        )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = base64.urlsafe_b64encode(str(rows[-1].id).encode()).decode()
        return anomaly_pb2.ListDetectorModelsResponse(
            models=[model_to_proto(m) for m in rows], next_page_token=token
        )

    # --- TrainDetector --------------------------------------------------------------------------

    async def TrainDetector(
        self, request: anomaly_pb2.TrainDetectorRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[anomaly_pb2.TrainDetectorResponse]:
        await self._require_ready(context)
        assert self.models is not None and self.rt.pool is not None
        if request.detector not in (anomaly_pb2.DETECTOR_ISOLATION_FOREST, anomaly_pb2.DETECTOR_AUTOENCODER):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"detector is {anomaly_pb2.Detector.Name(request.detector) if request.detector in DETECTOR else request.detector}; "
                "train DETECTOR_ISOLATION_FOREST or DETECTOR_AUTOENCODER (the rules need no training)",
            )
        if not 0 <= request.epochs <= 1000:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"epochs is {request.epochs}; use 1-1000 (0 means the default)",
            )
        now = dt.datetime.now(dt.UTC)
        if request.HasField("training_range"):
            tr = request.training_range
            start = _dt(tr.start_time) if tr.HasField("start_time") else now - dt.timedelta(days=90)
            end = _dt(tr.end_time) if tr.HasField("end_time") else now
            if end <= start:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"training_range is {start.isoformat()} to {end.isoformat()}; the end must be after the start",
                )
        else:
            start, end = now - dt.timedelta(days=90), now
        if request.meter_ids:
            known = await store.all_meters(self.rt.pool, list(request.meter_ids))
            unknown = [m for m in request.meter_ids if m not in known]
            if unknown:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"meter_ids: {', '.join(map(repr, unknown[:5]))} not registered",
                )
        queue: asyncio.Queue[anomaly_pb2.TrainDetectorResponse | BaseException | None] = asyncio.Queue()
        job = asyncio.create_task(
            self.models.train(
                detector=DETECTOR[request.detector],
                start=start,
                end=end,
                meter_ids=list(request.meter_ids),
                epochs=request.epochs,
                seed=request.seed,
                skip_promotion=request.skip_promotion,
                emit=queue.put_nowait,
            )
        )
        job.add_done_callback(lambda t: queue.put_nowait(t.exception() if not t.cancelled() else None))
        last: anomaly_pb2.TrainDetectorResponse | None = None
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=4.0)
                except TimeoutError:
                    # Still working: repeat the last progress so the client hears from us every few seconds.
                    if last is not None:
                        yield last
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, ValueError):
                        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(item))
                    raise item
                if item.HasField("progress"):
                    last = item
                yield item
                if item.HasField("result"):
                    break
        finally:
            if not job.done():
                job.cancel()


__all__ = ["AnomalyServicer", "MeterInfo"]
