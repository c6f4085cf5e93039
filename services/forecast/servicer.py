"""ForecastService: translates GetForecast / ProjectMonthlyUsage / AnalyzeConsumption / TrainForecaster /
ListForecastModels into the forecast engine, the rollup history, BillingService.QuoteBill and the
model registry."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
import numpy as np
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from metermesh.billing.v1 import billing_pb2, billing_pb2_grpc
from metermesh.common.v1 import common_pb2
from metermesh.forecast.v1 import forecast_pb2, forecast_pb2_grpc

from services.common.clients import channel
from services.common.server import Runtime
from services.forecast import store
from services.forecast.analysis import MIN_PEERS, analyze
from services.forecast.backtest import Metrics
from services.forecast.baselines import BASELINES
from services.forecast.config import ForecastSettings
from services.forecast.models import (
    MIN_HISTORY_HOURS,
    Answer,
    ForecastEngine,
    HistoryGapError,
    TrainingBusy,
    TrainingCancelled,
    TrainingProgress,
    TrainingResult,
    extend_weekly,
    series_from_rows,
)
from services.forecast.series import HOUR_US, HourlySeries

log = structlog.get_logger(__name__)

UTC = dt.UTC
MAX_HORIZON = 168
DEFAULT_HORIZON = 24
MIN_INLINE, MAX_INLINE = 24, 8760
# Stored history read for a forecast: the LSTM needs the last 168 h, the baselines' intervals come from
# their errors over the last 4 weeks before that.
STORED_HISTORY_HOURS = 35 * 24
MAX_MONTHS_AHEAD_DAYS = 366
MIN_ANALYSIS = dt.timedelta(days=7)
MAX_ANALYSIS = dt.timedelta(days=731)
DEFAULT_ANALYSIS_DAYS = 90
DEFAULT_TRAINING_DAYS = 365

QUANTILE_NAMES = "QUANTILE_P10, QUANTILE_P50 or QUANTILE_P90"
_STATE_NAME = {
    forecast_pb2.MODEL_STATE_CANDIDATE: "candidate",
    forecast_pb2.MODEL_STATE_SERVING: "serving",
    forecast_pb2.MODEL_STATE_RETIRED: "retired",
}
_STATE_ENUM = {v: k for k, v in _STATE_NAME.items()}
_STAGE = {
    "loading": forecast_pb2.TRAINING_STAGE_LOADING_DATA,
    "features": forecast_pb2.TRAINING_STAGE_BUILDING_FEATURES,
    "fitting": forecast_pb2.TRAINING_STAGE_FITTING,
    "backtesting": forecast_pb2.TRAINING_STAGE_BACKTESTING,
    "registering": forecast_pb2.TRAINING_STAGE_REGISTERING,
}
_CATEGORY = {
    common_pb2.METER_CATEGORY_RESIDENTIAL: "residential",
    common_pb2.METER_CATEGORY_COMMERCIAL: "commercial",
    common_pb2.METER_CATEGORY_INDUSTRIAL: "industrial",
    common_pb2.METER_CATEGORY_AGRICULTURAL: "agricultural",
    common_pb2.METER_CATEGORY_FEEDER: "feeder",
}
# Billing answers that mean "billing is away", not "billing refused this".
_BILLING_DOWN = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


# --- conversions -------------------------------------------------------------------------------------


def _ts(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    t = Timestamp()
    t.FromDatetime(value)
    return t


def _ts_us(us: int) -> Timestamp:
    t = Timestamp()
    t.seconds, t.nanos = divmod(int(us), 1_000_000)
    t.nanos *= 1000
    return t


def _us(t: Timestamp) -> int:
    return t.seconds * 1_000_000 + t.nanos // 1000


def _dt(t: Timestamp) -> dt.datetime:
    return store.micros_to_dt(_us(t))


def _iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _floor_hour(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(t: dt.datetime) -> dt.datetime:
    f = _floor_hour(t)
    return f if f == t else f + dt.timedelta(hours=1)


def _round_hour(t: dt.datetime) -> dt.datetime:
    return _floor_hour(t + dt.timedelta(minutes=30))


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def metrics_to_proto(m: Metrics) -> forecast_pb2.ForecastMetrics:
    return forecast_pb2.ForecastMetrics(
        nrmse_percent=m.nrmse_percent,
        mae_kwh=m.mae_kwh,
        mape_percent=m.mape_percent,
        p10_p90_coverage_percent=m.coverage_percent,
        meter_count=m.meter_count,
        window_count=m.window_count,
    )


def _metrics_from_dict(d: dict[str, Any]) -> forecast_pb2.ForecastMetrics:
    return forecast_pb2.ForecastMetrics(
        nrmse_percent=_nan(d.get("nrmse_percent")),
        mae_kwh=_nan(d.get("mae_kwh")),
        mape_percent=_nan(d.get("mape_percent")),
        p10_p90_coverage_percent=_nan(d.get("coverage_percent")),
        meter_count=int(d.get("meter_count") or 0),
        window_count=int(d.get("window_count") or 0),
    )


def _range(start: dt.datetime | None, end: dt.datetime | None) -> common_pb2.TimeRange:
    r = common_pb2.TimeRange()
    if start is not None:
        r.start_time.CopyFrom(_ts(start))
    if end is not None:
        r.end_time.CopyFrom(_ts(end))
    return r


def model_to_proto(m: store.RegisteredModel) -> forecast_pb2.ForecastModel:
    order = {name: i for i, name in enumerate(BASELINES)}
    return forecast_pb2.ForecastModel(
        model_version=m.model_version,
        state=_STATE_ENUM[m.state],
        create_time=_ts(m.create_time),
        promote_time=_ts(m.promote_time),
        training_range=_range(m.training_start_time, m.training_end_time),
        backtest_range=_range(m.backtest_start_time, m.backtest_end_time),
        meter_count=m.meter_count,
        epochs=m.epochs,
        metrics=_metrics_from_dict(m.metrics),
        baseline_metrics=[
            forecast_pb2.BaselineMetrics(baseline=name, metrics=_metrics_from_dict(d))
            for name, d in sorted(m.baseline_metrics.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))
        ],
    )


def _progress_to_proto(p: TrainingProgress) -> forecast_pb2.TrainForecasterResponse:
    msg = forecast_pb2.TrainingProgress(
        stage=_STAGE.get(p.stage, forecast_pb2.TRAINING_STAGE_FITTING),
        fraction_done=p.fraction,
        epoch=p.epoch if p.stage == "fitting" else 0,
        total_epochs=p.total_epochs,
        message=p.message,
    )
    if p.train_loss is not None and math.isfinite(p.train_loss):
        msg.train_loss = p.train_loss
    if p.validation_loss is not None and math.isfinite(p.validation_loss):
        msg.validation_loss = p.validation_loss
    return forecast_pb2.TrainForecasterResponse(progress=msg)


def _result_to_proto(r: TrainingResult) -> forecast_pb2.TrainForecasterResponse:
    out = forecast_pb2.TrainForecasterResult(
        model=model_to_proto(r.model),
        promoted=r.promoted,
        promotion_reason=r.reason,
        previous_model_version=r.previous_version,
    )
    if r.previous_metrics is not None:
        out.previous_metrics.CopyFrom(metrics_to_proto(r.previous_metrics))
    return forecast_pb2.TrainForecasterResponse(result=out)


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _overlap_hours(hour_us: np.ndarray, lo_us: int, hi_us: int) -> np.ndarray:
    """Fraction of each hour [h, h + 1 h) inside [lo_us, hi_us)."""
    a = np.maximum(hour_us, lo_us)
    b = np.minimum(hour_us + HOUR_US, hi_us)
    return np.clip((b - a) / HOUR_US, 0.0, 1.0)


def resample_to_grid(first_hour_us: int, values: np.ndarray, start_us: int, hours: int) -> np.ndarray:
    """Energy per hour [start_us + j h, start_us + (j + 1) h) from energy per UTC hour starting at
    first_hour_us (for a local-midnight grid that is not on a UTC hour, e.g. Asia/Kolkata): each UTC
    hour's energy is shared by the grid hours in proportion to their overlap."""
    k, rem = divmod(start_us - first_hour_us, HOUR_US)
    f = rem / HOUR_US
    v = np.concatenate([values, [0.0, 0.0]])
    idx = k + np.arange(hours)
    return (1.0 - f) * v[idx] + f * v[idx + 1]


def rest_of_month(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(p10, p50, p90) of the energy over the forecast hours, each hour counted by its weight (its
    share inside the rest of the month). The median is the sum of the hourly medians. The interval
    treats the hours of one day (24-hour blocks from the forecast's start) as moving together and
    different days as independent: the day's spread is the sum of its hours' spreads, the total's
    the root of the sum of the days' squared spreads. (Summing hourly p90s would assume every hour
    of the month errs the same way; treating hours as independent would make the band far too narrow
    for loads that follow the day's weather and occupancy.)"""
    w = np.asarray(weights, dtype=np.float64)
    p50 = float((w * values[:, 1]).sum())
    days = np.arange(len(w)) // 24
    n = int(days[-1]) + 1 if len(w) else 0
    up = np.bincount(days, weights=w * (values[:, 2] - values[:, 1]), minlength=n)
    down = np.bincount(days, weights=w * (values[:, 1] - values[:, 0]), minlength=n)
    return np.array(
        [max(0.0, p50 - float(np.sqrt((down**2).sum()))), p50, p50 + float(np.sqrt((up**2).sum()))]
    )


def exact_watt_hours(profile: np.ndarray, total_kwh: float) -> np.ndarray:
    """The profile scaled to total_kwh and rounded to whole watt-hours on the running sum, so the hours
    still add up to the total (to the Wh the billing engine reads) and none is negative."""
    p = np.maximum(np.nan_to_num(profile, nan=0.0), 0.0)
    s = p.sum()
    p = p * (total_kwh / s) if s > 0 else np.full(len(p), total_kwh / max(1, len(p)))
    cum = np.rint(np.cumsum(p) * 1000.0)
    return np.diff(cum, prepend=0.0) / 1000.0


class ForecastServicer(forecast_pb2_grpc.ForecastServiceServicer):
    def __init__(self, rt: Runtime, settings: ForecastSettings) -> None:
        self.rt = rt
        self.settings = settings
        self.engine: ForecastEngine | None = None
        self._billing_channel: grpc.aio.Channel | None = None

    def attach(self, engine: ForecastEngine) -> None:
        self.engine = engine

    async def close(self) -> None:
        if self._billing_channel is not None:
            await self._billing_channel.close()
            self._billing_channel = None

    def _billing(self) -> billing_pb2_grpc.BillingServiceStub:
        if self._billing_channel is None:
            self._billing_channel = channel(self.settings.billing_addr)
        return billing_pb2_grpc.BillingServiceStub(self._billing_channel)

    async def _require_ready(self, context: grpc.aio.ServicerContext) -> None:
        if not self.rt.ready.is_set() or self.engine is None or self.rt.pool is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the forecast service is starting: waiting for PostgreSQL"
            )

    @staticmethod
    async def _invalid(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        raise AssertionError("unreachable")

    async def _meter(self, context: grpc.aio.ServicerContext, meter_id: str) -> store.MeterRow:
        assert self.rt.pool is not None
        meter = await store.get_meter(self.rt.pool, meter_id) if meter_id else None
        if meter is None:
            if not meter_id:
                await self._invalid(context, "meter_id is empty; give a registered meter's id")
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"meter_id {meter_id!r} is not a registered meter; RegisterMeter first",
            )
        assert meter is not None
        return meter

    # --- GetForecast --------------------------------------------------------------------------

    async def _stored_history(
        self, context: grpc.aio.ServicerContext, meter: store.MeterRow, now: dt.datetime
    ) -> HourlySeries | None:
        """The meter's stored hours up to its last complete one (None without any stored hour)."""
        assert self.rt.pool is not None
        last = await store.last_complete_hour(self.rt.pool, meter.meter_id, now)
        if last is None:
            return None
        end = last + dt.timedelta(hours=1)
        start = end - dt.timedelta(hours=STORED_HISTORY_HOURS)
        rows = await store.load_meter_hourly(self.rt.pool, meter.meter_id, start, end)
        return series_from_rows(meter, rows, store.dt_to_micros(start), store.dt_to_micros(end))

    async def _inline(
        self, context: grpc.aio.ServicerContext, ih: forecast_pb2.InlineHistory
    ) -> HourlySeries:
        n = len(ih.energy_kwh)
        if not MIN_INLINE <= n <= MAX_INLINE:
            await self._invalid(
                context,
                f"inline_history.energy_kwh has {n} values; give {MIN_INLINE} to {MAX_INLINE} hourly values",
            )
        if not ih.HasField("start_time"):
            await self._invalid(
                context,
                "inline_history.start_time is unset; give the start of the first hour (UTC, on a whole hour)",
            )
        start_us = _us(ih.start_time)
        if start_us % HOUR_US:
            await self._invalid(
                context,
                f"inline_history.start_time is {_iso(_dt(ih.start_time))}; it must be on a whole hour (UTC)",
            )
        if (
            not dt.datetime(1900, 1, 1, tzinfo=UTC)
            <= _dt(ih.start_time)
            < dt.datetime(2200, 1, 1, tzinfo=UTC)
        ):
            await self._invalid(
                context,
                f"inline_history.start_time is {_iso(_dt(ih.start_time))}; give a time between 1900 and 2200",
            )
        values = np.fromiter(ih.energy_kwh, dtype=np.float64, count=n)
        bad = ~np.isnan(values) & ~((values >= 0) & np.isfinite(values))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            await self._invalid(
                context,
                f"inline_history.energy_kwh[{i}] is {float(values[i])!r}; hourly energy must be a finite kWh >= 0 "
                "(NaN marks a missing hour)",
            )
        if not np.isfinite(values).any():
            await self._invalid(context, "inline_history.energy_kwh has no known hour: every value is NaN")
        tz = ih.time_zone or "UTC"
        if _zone(tz) is None:
            await self._invalid(
                context,
                f"inline_history.time_zone {ih.time_zone!r} is not an IANA time zone, e.g. 'Asia/Kolkata'",
            )
        if ih.category and ih.category not in _CATEGORY:
            await self._invalid(context, f"inline_history.category is {ih.category}; not a MeterCategory")
        return HourlySeries("", start_us, values, tz, _CATEGORY.get(ih.category, ""))

    async def GetForecast(
        self, request: forecast_pb2.GetForecastRequest, context: grpc.aio.ServicerContext
    ) -> forecast_pb2.GetForecastResponse:
        await self._require_ready(context)
        assert self.engine is not None
        horizon = request.horizon_hours or DEFAULT_HORIZON
        if not 1 <= horizon <= MAX_HORIZON:
            await self._invalid(
                context,
                f"horizon_hours is {request.horizon_hours}; forecasts reach 1-{MAX_HORIZON} hours ahead "
                f"(0 means {DEFAULT_HORIZON})",
            )
        wanted = set()
        for i, q in enumerate(request.quantiles):
            if q not in (forecast_pb2.QUANTILE_P10, forecast_pb2.QUANTILE_P50, forecast_pb2.QUANTILE_P90):
                await self._invalid(context, f"quantiles[{i}] is {q}; use {QUANTILE_NAMES}")
            wanted.add(q)
        if not wanted:
            wanted = {forecast_pb2.QUANTILE_P10, forecast_pb2.QUANTILE_P50, forecast_pb2.QUANTILE_P90}
        which = request.WhichOneof("history")
        if which is None:
            await self._invalid(context, "history is unset; set meter_id or inline_history")
        if which == "meter_id":
            meter = await self._meter(context, request.meter_id)
            history = await self._stored_history(context, meter, dt.datetime.now(UTC))
            if history is None or len(history) < MIN_HISTORY_HOURS:
                have = 0 if history is None else len(history)
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"meter {meter.meter_id} has {have} hours of stored history; a forecast needs at least "
                    f"{MIN_HISTORY_HOURS} (the LSTM {MAX_HORIZON})",
                )
            assert history is not None
            strict = False
        else:
            history = await self._inline(context, request.inline_history)
            strict = True
        try:
            ans = await self.engine.forecast(history, horizon, strict=strict)
        except HistoryGapError as exc:
            await self._invalid(context, f"inline_history.energy_kwh[{exc.index}] {exc}")
        return forecast_pb2.GetForecastResponse(
            meter_id=request.meter_id if which == "meter_id" else "",
            points=self._points(ans, horizon, wanted),
            model_version=ans.model_version,
            fallback_reason=ans.fallback_reason,
        )

    @staticmethod
    def _points(ans: Answer, horizon: int, wanted: set[int]) -> list[forecast_pb2.ForecastPoint]:
        v = ans.values.tolist()
        out = []
        for i in range(horizon):
            p = forecast_pb2.ForecastPoint(start_time=_ts_us(ans.start_us + i * HOUR_US))
            p10, p50, p90 = v[i]
            if forecast_pb2.QUANTILE_P10 in wanted:
                p.p10_energy_kwh = p10
            if forecast_pb2.QUANTILE_P50 in wanted:
                p.p50_energy_kwh = p50
            if forecast_pb2.QUANTILE_P90 in wanted:
                p.p90_energy_kwh = p90
            out.append(p)
        return out

    # --- ProjectMonthlyUsage ------------------------------------------------------------------

    async def ProjectMonthlyUsage(
        self, request: forecast_pb2.ProjectMonthlyUsageRequest, context: grpc.aio.ServicerContext
    ) -> forecast_pb2.ProjectMonthlyUsageResponse:
        await self._require_ready(context)
        assert self.engine is not None and self.rt.pool is not None
        pool = self.rt.pool
        if not 1 <= request.month <= 12:
            await self._invalid(context, f"month is {request.month}; use 1-12")
        if not 1970 <= request.year <= 2200:
            await self._invalid(context, f"year is {request.year}; give a calendar year, e.g. 2026")
        meter = await self._meter(context, request.meter_id)
        tz = _zone(meter.time_zone) or ZoneInfo("UTC")
        m_start, m_end = _month(request.year, request.month, tz)
        now = dt.datetime.now(UTC)
        if m_start > now + dt.timedelta(days=MAX_MONTHS_AHEAD_DAYS):
            await self._invalid(
                context,
                f"year {request.year} month {request.month} starts more than a year ahead; projections "
                "reach at most a year ahead",
            )
        start_us, end_us = store.dt_to_micros(m_start), store.dt_to_micros(m_end)
        now_us = store.dt_to_micros(now)

        # Measured so far: the stored hours that have ended, each by its share inside the month.
        rows = await store.load_meter_hourly(pool, meter.meter_id, _floor_hour(m_start), min(m_end, now))
        complete = rows.hour_us + HOUR_US <= now_us
        hours, wh = rows.hour_us[complete], rows.import_wh[complete]
        as_of_us = start_us
        if len(hours):
            as_of_us = int(min(end_us, max(start_us, int(hours.max()) + HOUR_US)))
        consumed = float((wh / 1000.0 * _overlap_hours(hours, start_us, as_of_us)).sum())

        resp = forecast_pb2.ProjectMonthlyUsageResponse(
            meter_id=meter.meter_id,
            year=request.year,
            month=request.month,
            as_of_time=_ts_us(as_of_us),
            consumed_energy_kwh=consumed,
        )
        rest = np.zeros(3)
        forecast: tuple[int, np.ndarray] | None = None  # (first hour, (hours, 3))
        tariff_tz: ZoneInfo | None = None
        bill_reason = ""
        if not meter.tariff_id:
            bill_reason = "meter has no tariff"
        else:
            tariff_tz, bill_reason = await self._tariff_zone(meter.tariff_id, request.year, request.month)
        b_start, b_end = _month(request.year, request.month, tariff_tz) if tariff_tz else (m_start, m_end)

        if m_end <= now or as_of_us >= end_us:
            pass  # a past month: all measured
        else:
            history = await self._stored_history(context, meter, now)
            if history is None or len(history) < MIN_HISTORY_HOURS:
                have = 0 if history is None else len(history)
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"meter {meter.meter_id} has {have} hours of stored history; forecasting the rest of the "
                    f"month needs at least {MIN_HISTORY_HOURS}",
                )
            assert history is not None
            first = history.end_us
            until = max(end_us, store.dt_to_micros(b_end))
            n = max(1, -(-(until - first) // HOUR_US))
            ans = await self.engine.forecast(history, min(n, MAX_HORIZON), strict=False)
            values = extend_weekly(ans.values, n)
            forecast = (first, values)
            f_hours = first + np.arange(n, dtype=np.int64) * HOUR_US
            w = _overlap_hours(f_hours, max(as_of_us, first), end_us)
            rest = rest_of_month(values, w)
            resp.model_version = ans.model_version
            resp.fallback_reason = ans.fallback_reason
        resp.forecast_rest_energy_kwh = float(rest[1])
        resp.projected_total_energy_kwh = consumed + float(rest[1])
        resp.projected_total_p10_energy_kwh = consumed + float(rest[0])
        resp.projected_total_p90_energy_kwh = consumed + float(rest[2])

        if tariff_tz is not None:
            profile_start = min(m_start, b_start)
            profile_end = max(m_end, b_end)
            extra = await store.load_meter_hourly(
                pool, meter.meter_id, _floor_hour(profile_start), min(profile_end, now)
            )
            profile = _hourly_profile(extra, now_us, forecast, profile_start, profile_end)
            lo = store.dt_to_micros(_floor_hour(profile_start))
            n_bill = round((b_end - b_start) / dt.timedelta(hours=1))
            kwh = resample_to_grid(lo, profile, store.dt_to_micros(b_start), n_bill)
            bill_reason = await self._quote(resp, meter, b_start, b_end, kwh)
        resp.bill_available = not bill_reason
        resp.bill_unavailable_reason = bill_reason
        return resp

    async def _tariff_zone(self, tariff_id: str, year: int, month: int) -> tuple[ZoneInfo | None, str]:
        """The tariff's time zone (its billing months run in it), or (None, why there is no bill)."""
        try:
            got = await self._billing().GetTariff(
                billing_pb2.GetTariffRequest(
                    tariff_id=tariff_id, effective_date=f"{year:04d}-{month:02d}-01"
                ),
                timeout=self.settings.forecast_billing_timeout_seconds,
            )
        except grpc.aio.AioRpcError as exc:
            return None, _billing_reason(exc, tariff_id)
        tz = _zone(got.tariff.time_zone)
        if tz is None:
            return None, f"tariff {tariff_id} has time zone {got.tariff.time_zone!r}, which is not known here"
        return tz, ""

    async def _quote(
        self,
        resp: forecast_pb2.ProjectMonthlyUsageResponse,
        meter: store.MeterRow,
        start: dt.datetime,
        end: dt.datetime,
        profile: np.ndarray,
    ) -> str:
        """Prices the projected month's hourly profile (scaled to the projected total) with QuoteBill
        and fills the bill into resp; returns why there is no bill ("" when there is one)."""
        kwh = exact_watt_hours(profile, resp.projected_total_energy_kwh)
        req = billing_pb2.QuoteBillRequest(
            tariff_id=meter.tariff_id,
            billing_period=common_pb2.TimeRange(start_time=_ts(start), end_time=_ts(end)),
            usage=billing_pb2.Usage(
                hourly=billing_pb2.HourlyUsage(start_time=_ts(start), import_energy_kwh=kwh.tolist()),
                sanctioned_load_kw=meter.sanctioned_load_kw,
            ),
        )
        try:
            got = await self._billing().QuoteBill(req, timeout=self.settings.forecast_billing_timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            return _billing_reason(exc, meter.tariff_id)
        bill = got.bill
        resp.tariff_id = bill.tariff_id or meter.tariff_id
        resp.projected_bill_total.CopyFrom(bill.total)
        for line in bill.lines:
            out = forecast_pb2.ProjectedBillLine(
                description=line.description, quantity=line.quantity, unit=line.unit, amount=line.amount
            )
            if line.HasField("rate"):
                out.rate.CopyFrom(line.rate)
            resp.projected_bill_lines.append(out)
        return ""

    # --- AnalyzeConsumption -------------------------------------------------------------------

    async def AnalyzeConsumption(
        self, request: forecast_pb2.AnalyzeConsumptionRequest, context: grpc.aio.ServicerContext
    ) -> forecast_pb2.AnalyzeConsumptionResponse:
        await self._require_ready(context)
        assert self.engine is not None and self.rt.pool is not None
        pool = self.rt.pool
        meter = await self._meter(context, request.meter_id)
        tz = _zone(meter.time_zone) or ZoneInfo("UTC")
        now = dt.datetime.now(UTC)
        latest = _floor_hour(now)
        if request.HasField("time_range"):
            tr = request.time_range
            if not tr.HasField("start_time") or not tr.HasField("end_time"):
                await self._invalid(
                    context,
                    "time_range needs start_time and end_time; leave it unset for the 90 days ending at the "
                    "last complete local day",
                )
            start, end = _round_hour(_dt(tr.start_time)), _round_hour(_dt(tr.end_time))
            length = end - start
            if not MIN_ANALYSIS <= length <= MAX_ANALYSIS:
                await self._invalid(
                    context,
                    f"time_range is {_iso(_dt(tr.start_time))} to {_iso(_dt(tr.end_time))} "
                    f"({length / dt.timedelta(days=1):.2f} days); analyse 7 days to 2 years",
                )
            if start >= latest:
                await self._invalid(
                    context,
                    f"time_range starts at {_iso(start)}, after the last complete hour ({_iso(latest)})",
                )
            end = min(end, latest)  # hours that have not ended yet are not analysed
        else:
            today = now.astimezone(tz).date()
            end = _round_hour(dt.datetime.combine(today, dt.time(0), tzinfo=tz).astimezone(UTC))
            first = today - dt.timedelta(days=DEFAULT_ANALYSIS_DAYS)
            start = _round_hour(dt.datetime.combine(first, dt.time(0), tzinfo=tz).astimezone(UTC))
        series = await self._measured(meter, start, end)

        peers: list[HourlySeries] = []
        if meter.tariff_id or meter.category:
            peer_rows = await store.peer_meters(
                pool,
                category=meter.category,
                tariff_id=meter.tariff_id,
                exclude=meter.meter_id,
                start=start,
                end=end,
                limit=self.settings.forecast_peer_sample,
            )
            if len(peer_rows) >= MIN_PEERS:
                loaded = await store.load_hourly(pool, [p.meter_id for p in peer_rows], start, end)
                s_us, e_us = store.dt_to_micros(start), store.dt_to_micros(end)
                peers = [
                    series_from_rows(p, loaded[p.meter_id], s_us, e_us, trim_leading=False)
                    for p in peer_rows
                    if p.meter_id in loaded
                ]
        # The same period a year before when it is stored, else the period of equal length just before.
        past = None
        year_start, year_end = _year_before(start, tz), _year_before(end, tz)
        candidate = await self._measured(meter, year_start, year_end)
        if _enough(candidate):
            past = candidate
        else:
            before = await self._measured(meter, start - (end - start), start)
            past = before if _enough(before) else None
        try:
            a = await asyncio.to_thread(
                analyze,
                series,
                peers=peers,
                past=past,
                peer_group=_peer_group(meter),
                holidays=self.engine.holidays,
            )
        except ValueError as exc:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"meter {meter.meter_id} has {int(np.isfinite(series.values_kwh).sum())} stored hours between "
                f"{_iso(start)} and {_iso(end)}: {exc}",
            )
        resp = forecast_pb2.AnalyzeConsumptionResponse(
            meter_id=meter.meter_id,
            time_range=common_pb2.TimeRange(start_time=_ts_us(a.start_us), end_time=_ts_us(a.end_us)),
            data_coverage_percent=a.data_coverage_percent,
            total_energy_kwh=a.total_energy_kwh,
            mean_daily_energy_kwh=a.mean_daily_energy_kwh,
            base_load_kw=a.base_load_kw,
            peak_hours=list(a.peak_hours),
            night_share_percent=a.night_share_percent,
            weekday_weekend_ratio=a.weekday_weekend_ratio,
            trend_percent_per_month=a.trend_percent_per_month,
            efficiency_score=a.efficiency_score,
            efficiency_explanation=a.efficiency_explanation,
            recommendations=[
                forecast_pb2.Recommendation(
                    code=r.code, text=r.text, estimated_saving_kwh_per_month=r.estimated_saving_kwh_per_month
                )
                for r in a.recommendations
            ],
        )
        if a.peer_comparison is not None:
            pc = a.peer_comparison
            resp.peer_comparison.CopyFrom(
                forecast_pb2.PeerComparison(
                    peer_group=pc.peer_group,
                    peer_count=pc.peer_count,
                    peer_median_daily_energy_kwh=pc.peer_median_daily_energy_kwh,
                    percentile=pc.percentile,
                )
            )
        if a.past_comparison is not None:
            pa = a.past_comparison
            resp.past_comparison.CopyFrom(
                forecast_pb2.PastComparison(
                    past_range=common_pb2.TimeRange(
                        start_time=_ts_us(pa.past_start_us), end_time=_ts_us(pa.past_end_us)
                    ),
                    past_daily_energy_kwh=pa.past_daily_energy_kwh,
                    change_percent=pa.change_percent,
                )
            )
        return resp

    async def _measured(self, meter: store.MeterRow, start: dt.datetime, end: dt.datetime) -> HourlySeries:
        """The meter's hours [start, end) as stored (partly read hours scaled up, see series_from_rows)."""
        assert self.rt.pool is not None
        rows = await store.load_meter_hourly(self.rt.pool, meter.meter_id, start, end)
        return series_from_rows(
            meter, rows, store.dt_to_micros(start), store.dt_to_micros(end), trim_leading=False
        )

    # --- TrainForecaster ----------------------------------------------------------------------

    async def TrainForecaster(
        self, request: forecast_pb2.TrainForecasterRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[forecast_pb2.TrainForecasterResponse]:
        await self._require_ready(context)
        assert self.engine is not None and self.rt.pool is not None
        if not 0 <= request.epochs <= 1000:
            await self._invalid(context, f"epochs is {request.epochs}; use 1-1000 (0 means the default)")
        now = dt.datetime.now(UTC)
        end, start = now, now - dt.timedelta(days=DEFAULT_TRAINING_DAYS)
        if request.HasField("training_range"):
            tr = request.training_range
            end = _dt(tr.end_time) if tr.HasField("end_time") else now
            start = (
                _dt(tr.start_time)
                if tr.HasField("start_time")
                else end - dt.timedelta(days=DEFAULT_TRAINING_DAYS)
            )
            if end <= start:
                await self._invalid(
                    context,
                    f"training_range is {_iso(start)} to {_iso(end)}; the end must be after the start",
                )
        meter_ids = list(dict.fromkeys(request.meter_ids))
        if meter_ids:
            known = await store.get_meters(self.rt.pool, meter_ids)
            unknown = [m for m in meter_ids if m not in known]
            if unknown:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"meter_ids: {', '.join(map(repr, unknown[:5]))}"
                    + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
                    + " not registered",
                )
        if self.engine.training:
            await context.abort(
                grpc.StatusCode.ABORTED,
                "a forecaster training run is already in progress; try again when it has finished",
            )
        queue: asyncio.Queue[TrainingProgress | TrainingResult | BaseException | None] = asyncio.Queue()
        job = asyncio.create_task(
            self.engine.train(
                start=start,
                end=end,
                meter_ids=meter_ids,
                epochs=request.epochs,
                seed=request.seed,
                skip_promotion=request.skip_promotion,
                emit=queue.put_nowait,
            )
        )
        job.add_done_callback(lambda t: queue.put_nowait(None if t.cancelled() else t.exception()))
        last: forecast_pb2.TrainForecasterResponse | None = None
        started = time.monotonic()
        try:
            while True:
                try:
                    item = await asyncio.wait_for(
                        queue.get(), timeout=self.settings.forecast_progress_seconds
                    )
                except TimeoutError:
                    # Still working (a long epoch): repeat the last report so the client hears from us.
                    if last is not None:
                        yield last
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, TrainingCancelled):
                        await context.abort(
                            grpc.StatusCode.UNAVAILABLE,
                            "the training run was stopped: the service is stopping",
                        )
                    if isinstance(item, TrainingBusy):
                        await context.abort(grpc.StatusCode.ABORTED, str(item))
                    if isinstance(item, ValueError):
                        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(item))
                    raise item
                if isinstance(item, TrainingResult):
                    log.info(
                        "training finished",
                        model_version=item.model.model_version,
                        promoted=item.promoted,
                        seconds=round(time.monotonic() - started, 1),
                    )
                    yield _result_to_proto(item)
                    break
                last = _progress_to_proto(item)
                yield last
        finally:
            if not job.done():
                job.cancel()

    # --- ListForecastModels -------------------------------------------------------------------

    async def ListForecastModels(
        self, request: forecast_pb2.ListForecastModelsRequest, context: grpc.aio.ServicerContext
    ) -> forecast_pb2.ListForecastModelsResponse:
        await self._require_ready(context)
        assert self.rt.pool is not None
        size = request.page_size or 100
        if not 1 <= size <= 1000:
            await self._invalid(context, f"page_size is {request.page_size}; use 1-1000 (0 means 100)")
        if request.state not in (0, *_STATE_NAME):
            await self._invalid(context, f"state is {request.state}; not a ModelState")
        before = None
        if request.page_token:
            try:
                before = int(base64.urlsafe_b64decode(request.page_token.encode()).decode())
            except Exception:
                await self._invalid(
                    context, f"page_token {request.page_token!r} is not a token this call returned"
                )
        rows = await store.list_models(
            self.rt.pool, state=_STATE_NAME.get(request.state), limit=size + 1, before_id=before
        )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = base64.urlsafe_b64encode(str(rows[-1].id).encode()).decode()
        return forecast_pb2.ListForecastModelsResponse(
            models=[model_to_proto(m) for m in rows], next_page_token=token
        )


# --- helpers ---------------------------------------------------------------------------------------------


def _month(year: int, month: int, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """[local midnight of the 1st, local midnight of the next 1st) in tz, as UTC instants."""
    start = dt.datetime(year, month, 1, tzinfo=tz)
    end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def _billing_reason(exc: grpc.aio.AioRpcError, tariff_id: str) -> str:
    code = exc.code()
    if code in _BILLING_DOWN:
        return f"billing unavailable ({code.name}: {exc.details() or 'no details'})"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"tariff {tariff_id!r} is unknown to billing: {exc.details()}"
    return f"billing could not price the projection ({code.name}: {exc.details()})"


def _hourly_profile(
    rows: store.HourlyRows,
    now_us: int,
    forecast: tuple[int, np.ndarray] | None,
    start: dt.datetime,
    end: dt.datetime,
) -> np.ndarray:
    """kWh per UTC hour over [floor(start), ceil(end)): measured where stored (hours that have ended
    before the forecast starts), the median forecast from its first hour on, 0 elsewhere."""
    lo = store.dt_to_micros(_floor_hour(start))
    hi = store.dt_to_micros(_ceil_hour(end))
    n = (hi - lo) // HOUR_US
    out = np.zeros(n)
    f_first = forecast[0] if forecast is not None else None
    if len(rows):
        keep = rows.hour_us + HOUR_US <= now_us
        if f_first is not None:
            keep &= rows.hour_us < f_first
        idx = (rows.hour_us[keep] - lo) // HOUR_US
        ok = (idx >= 0) & (idx < n)
        out[idx[ok]] = rows.import_wh[keep][ok] / 1000.0
    if forecast is not None:
        first, values = forecast
        idx = (first - lo) // HOUR_US + np.arange(len(values))
        ok = (idx >= 0) & (idx < n)
        out[idx[ok]] = values[ok, 1]
    return out


def _year_before(t: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The same local wall-clock time a year earlier (29 February -> 28 February), on a whole hour."""
    local = t.astimezone(tz)
    try:
        earlier = local.replace(year=local.year - 1)
    except ValueError:
        earlier = local.replace(year=local.year - 1, day=28)
    return _round_hour(earlier.astimezone(UTC))


def _enough(s: HourlySeries) -> bool:
    """At least half the period's hours (and a day) stored: enough to compare daily means."""
    known = int(np.isfinite(s.values_kwh).sum())
    return known >= max(24, len(s) // 2)


def _peer_group(meter: store.MeterRow) -> str:
    where = f"on {meter.tariff_id}" if meter.tariff_id else "without a tariff"
    return f"{meter.category} meters {where}"


__all__: Sequence[str] = ("ForecastServicer",)
