"""IngestService: translates protobuf calls into validation, publishing and the meter registry."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import AsyncIterator

import grpc
import structlog
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.common import metrics
from services.common.server import Runtime
from services.ingest import meters as reg
from services.ingest import wire
from services.ingest.codec import from_readings
from services.ingest.config import IngestSettings
from services.ingest.meters import InvalidMeter, MeterCache, MeterRecord
from services.ingest.publisher import ReadingPublisher, StreamUnavailable
from services.ingest.validation import Reason, Rejection, validate

log = structlog.get_logger(__name__)

_REASON = {r: getattr(ingest_pb2, f"REJECTION_REASON_{r.name}") for r in Reason}
_CATEGORY = {name: getattr(common_pb2, f"METER_CATEGORY_{name.upper()}") for name in reg.CATEGORIES}
_CATEGORY_NAME = {v: k for k, v in _CATEGORY.items()}


def _ts(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    t = Timestamp()
    t.FromDatetime(value)
    return t


def _micros(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def meter_to_proto(m: MeterRecord) -> common_pb2.Meter:
    return common_pb2.Meter(
        meter_id=m.meter_id,
        category=_CATEGORY[m.category],
        tariff_id=m.tariff_id,
        sanctioned_load_kw=m.sanctioned_load_kw,
        rated_current_a=m.rated_current_a,
        nominal_voltage_v=m.nominal_voltage_v,
        interval_seconds=m.interval_seconds,
        time_zone=m.time_zone,
        labels=m.labels,
        create_time=_ts(m.create_time),
        last_read_time=_ts(m.last_read_time),
        last_seen_time=_ts(m.last_seen_time),
    )


def _token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _untoken(token: str, field: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except Exception:
        raise ValueError(f"{field} {token!r} is not a token this call returned") from None


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, rt: Runtime, settings: IngestSettings) -> None:
        self.rt = rt
        self.settings = settings
        self.cache: MeterCache | None = None
        self.publisher: ReadingPublisher | None = None

    async def start(self, rt: Runtime) -> None:
        assert rt.pool is not None and rt.js is not None and rt.nc is not None
        self.cache = MeterCache(rt.pool, self.settings.meter_cache_seconds)
        self.publisher = ReadingPublisher(
            rt.js, rt.topology, rt.nc.max_payload, self.settings.publish_timeout_seconds
        )

    async def _require_ready(self, context: grpc.aio.ServicerContext) -> None:
        if not self.rt.ready.is_set():
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "ingest is starting: waiting for NATS and PostgreSQL"
            )

    async def _ingest(
        self, data: bytes, context: grpc.aio.ServicerContext, offset: int = 0
    ) -> tuple[int, int, list[Rejection]]:
        """Validates and publishes one batch given as the bytes of a PushReadingsRequest (or the
        identical StreamReadingsRequest). Returns (readings in the batch, accepted, rejections)."""
        decoded = wire.decode_readings(data)
        if decoded is None:  # not the plain encoding the fast decoder takes: protobuf decides
            try:
                request = ingest_pb2.PushReadingsRequest.FromString(data)
            except DecodeError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid PushReadingsRequest: {exc}"
                )
            decoded = from_readings(request.readings)
        cols, has_meter, has_time = decoded
        n = len(cols)
        limit = self.settings.max_batch_readings
        if n == 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "readings is empty; send 1 to 10000 readings"
            )
        if n > limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"readings has {n} readings; the limit is {limit} per batch: split it",
            )
        assert self.cache is not None and self.publisher is not None
        known = await self.cache.known(cols.meter_ids)
        result = validate(
            cols,
            has_meter_id=has_meter,
            has_read_time=has_time,
            known_meters=known,
            now_unix_micros=time.time_ns() // 1000,
            retention_days=self.settings.retention_days,
        )
        if len(result.accepted):
            try:
                await self.publisher.publish(result.accepted)
            except StreamUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        metrics.count_readings(accepted=len(result.accepted), rejected=len(result.rejections))
        rejections = result.rejections
        if offset:
            rejections = [Rejection(r.index + offset, r.meter_id, r.reason, r.message) for r in rejections]
        if rejections:
            log.info(
                "readings rejected",
                accepted=len(result.accepted),
                rejected=len(rejections),
                first=rejections[0].message,
            )
        return n, len(result.accepted), rejections

    @staticmethod
    def _rejections(rejections: list[Rejection]) -> list[ingest_pb2.Rejection]:
        return [
            ingest_pb2.Rejection(
                index=r.index, meter_id=r.meter_id, reason=_REASON[r.reason], message=r.message
            )
            for r in rejections
        ]

    async def PushReadings(  # type: ignore[override]  # registered with raw request bytes
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.PushReadingsResponse:
        await self._require_ready(context)
        _, accepted, rejections = await self._ingest(request, context)
        return ingest_pb2.PushReadingsResponse(
            accepted_count=accepted, rejections=self._rejections(rejections)
        )

    async def StreamReadings(  # type: ignore[override]  # registered with raw request bytes
        self,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> ingest_pb2.StreamReadingsResponse:
        await self._require_ready(context)
        batches = accepted = offset = 0
        rejections: list[Rejection] = []
        async for request in request_iterator:
            n, a, rej = await self._ingest(request, context, offset)
            batches += 1
            accepted += a
            offset += n
            rejections.extend(rej)
        return ingest_pb2.StreamReadingsResponse(
            batch_count=batches, accepted_count=accepted, rejections=self._rejections(rejections)
        )

    async def RegisterMeter(
        self, request: ingest_pb2.RegisterMeterRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.RegisterMeterResponse:
        await self._require_ready(context)
        m = request.meter
        category = _CATEGORY_NAME.get(m.category)
        if category is None:
            given = (
                common_pb2.MeterCategory.Name(m.category)
                if m.category in common_pb2.MeterCategory.values()
                else str(m.category)
            )
            allowed = ", ".join(common_pb2.MeterCategory.Name(v) for v in _CATEGORY.values())
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"meter.category is {given}; give one of {allowed}"
            )
        rec = MeterRecord(
            meter_id=m.meter_id,
            category=category,  # type: ignore[arg-type]
            tariff_id=m.tariff_id,
            sanctioned_load_kw=m.sanctioned_load_kw,
            rated_current_a=m.rated_current_a,
            nominal_voltage_v=m.nominal_voltage_v or 230.0,
            interval_seconds=m.interval_seconds or 900,
            time_zone=m.time_zone or "UTC",
            labels=dict(m.labels),
        )
        try:
            reg.check_meter(rec)
        except InvalidMeter as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        assert self.rt.pool is not None and self.cache is not None
        stored, created = await reg.upsert_meter(self.rt.pool, rec)
        self.cache.add(stored.meter_id)
        return ingest_pb2.RegisterMeterResponse(meter=meter_to_proto(stored), created=created)

    async def GetMeter(
        self, request: ingest_pb2.GetMeterRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetMeterResponse:
        await self._require_ready(context)
        assert self.rt.pool is not None
        m = await reg.get_meter(self.rt.pool, request.meter_id)
        if m is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"meter_id {request.meter_id!r} is not registered")
        return ingest_pb2.GetMeterResponse(meter=meter_to_proto(m))  # type: ignore[arg-type]

    async def ListMeters(
        self, request: ingest_pb2.ListMetersRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListMetersResponse:
        await self._require_ready(context)
        size = request.page_size or 100
        if not 1 <= size <= 1000:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"page_size is {size}; must be within 1-1000"
            )
        try:
            after = _untoken(request.page_token, "page_token") if request.page_token else ""
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        category = _CATEGORY_NAME.get(request.category) if request.category else None
        assert self.rt.pool is not None
        rows = await reg.list_meters(self.rt.pool, after=after, limit=size + 1, category=category)
        page = rows[:size]
        token = _token(page[-1].meter_id) if len(rows) > size else ""
        return ingest_pb2.ListMetersResponse(meters=[meter_to_proto(m) for m in page], next_page_token=token)

    async def GetReadings(
        self, request: ingest_pb2.GetReadingsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetReadingsResponse:
        await self._require_ready(context)
        assert self.rt.pool is not None
        size = request.page_size or 1000
        if not 1 <= size <= 10_000:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"page_size is {size}; must be within 1-10000"
            )
        start = _micros(request.start_time) if request.HasField("start_time") else 0
        end = _micros(request.end_time) if request.HasField("end_time") else time.time_ns() // 1000 + 1
        if end <= start:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "end_time must be after start_time")
        after = start - 1
        if request.page_token:
            try:
                meter, _, t = _untoken(request.page_token, "page_token").rpartition("|")
                if meter != request.meter_id:
                    raise ValueError(f"page_token {request.page_token!r} belongs to another meter")
                after = int(t)
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if await reg.get_meter(self.rt.pool, request.meter_id) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"meter_id {request.meter_id!r} is not registered")
        rows = await self.rt.pool.fetch(
            """SELECT read_time, (extract(epoch FROM read_time - 'epoch'::timestamptz) * 1000000)::int8 AS t,
                      interval_seconds, import_energy_wh, export_energy_wh, voltage_v, current_a,
                      active_power_w, power_factor, frequency_hz
               FROM readings
               WHERE meter_id = $1
                 AND read_time > 'epoch'::timestamptz + $2::int8 * interval '1 microsecond'
                 AND read_time < 'epoch'::timestamptz + $3::int8 * interval '1 microsecond'
               ORDER BY read_time LIMIT $4""",
            request.meter_id,
            after,
            end,
            size + 1,
        )
        out = []
        for r in rows[:size]:
            reading = common_pb2.Reading(
                meter_id=request.meter_id,
                interval_seconds=r["interval_seconds"],
                import_energy_wh=r["import_energy_wh"],
                export_energy_wh=r["export_energy_wh"],
            )
            secs, micros = divmod(r["t"], 1_000_000)
            reading.read_time.seconds, reading.read_time.nanos = secs, micros * 1000
            for name in ("voltage_v", "current_a", "active_power_w", "power_factor", "frequency_hz"):
                if r[name] is not None:
                    setattr(reading, name, r[name])
            out.append(reading)
        token = _token(f"{request.meter_id}|{rows[size - 1]['t']}") if len(rows) > size else ""
        return ingest_pb2.GetReadingsResponse(readings=out, next_page_token=token)
