"""ForecastService against real PostgreSQL, run as a process beside the real ingest service, storage
writer and billing service: forecasts for meters whose readings went through ingest (a baseline
answers, and says why, until a model is promoted), inline-history forecasts, monthly projections with
an itemised bill (and without one when billing is down or the meter has no tariff), consumption
analysis against peers and the meter's own past, training that promotes a better version and refuses
a worse one, the registry listing, and every refusal with its status code and the field at fault."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from metermesh.common.v1 import common_pb2
from metermesh.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from tests.support import Platform, wait_for

UTC = dt.UTC
IST = ZoneInfo("Asia/Kolkata")
HOUR = 3600
NOW = dt.datetime.now(UTC)
END = NOW.replace(minute=0, second=0, microsecond=0)  # the last reading ends here: a complete hour
END_S = int(END.timestamp())
DAYS = 42  # 3 weeks to train on, the last 21 days held out for the backtest
FLEET = [f"F-{i}" for i in range(5)]  # F-4 reads every 15 minutes, the others hourly
ANALYSED = "A-0"
PEERS = [f"P-{i:02d}" for i in range(12)]
TARIFF = "in-gj-rgp-urban"


def _weekday_dates(days_back: list[int]) -> list[dt.date]:
    """Local (IST) weekdays about these many days before END (moved back to a weekday)."""
    out = []
    for d in days_back:
        day = (END - dt.timedelta(days=d)).astimezone(IST).date()
        while day.weekday() >= 5:
            day -= dt.timedelta(days=1)
        out.append(day)
    return out


# Two holidays in the training part, two in the held-out part: days that look like Sundays, which
# only a forecaster that knows the calendar gets right.
HOLIDAYS = _weekday_dates([4, 11, 26, 33])
ENV = {
    "METERMESH_FORECAST_HOLIDAYS": ",".join(d.isoformat() for d in HOLIDAYS),
    # A small network and short epochs: a few seconds per training run on two cores.
    "METERMESH_FORECAST_TRAIN_HYPERPARAMETERS": json.dumps(
        {
            "samples_per_epoch": 1024,
            "batch_size": 64,
            "train_horizon": 24,
            "lstm_hidden": 16,
            "head_hidden": 32,
            "learning_rate": 0.01,
        }
    ),
    "METERMESH_FORECAST_BILLING_TIMEOUT_SECONDS": "2",
}


def profile_kwh(level: float, t: dt.datetime) -> float:
    """A home's expected use in the hour starting at t: a night base, a morning bump and an evening peak;
    on weekends and holidays a later morning and more use during the day."""
    local = t.astimezone(IST)
    h = local.hour
    shape = 0.25 + 0.6 * (6 <= h < 9) + 1.1 * (18 <= h < 23)
    if local.weekday() >= 5 or local.date() in HOLIDAYS:
        shape += 0.25 * (9 <= h < 18) - 0.25 * (6 <= h < 9)
    return level * shape


def fleet_readings(rng: np.random.Generator) -> list[common_pb2.Reading]:
    out = []
    start = END - dt.timedelta(days=DAYS)
    for j, m in enumerate(FLEET):
        level = 1.0 + 0.3 * j
        for k in range(DAYS * 24):
            t = start + dt.timedelta(hours=k)
            kwh = profile_kwh(level, t) * (1.0 + 0.3 * rng.uniform(-1, 1))
            end_s = int(t.timestamp()) + HOUR
            if m == "F-4":
                for q in range(4):
                    out.append(_reading(m, end_s - HOUR + (q + 1) * 900, 900, kwh * 250.0))
            else:
                out.append(_reading(m, end_s, HOUR, kwh * 1000.0))
    return out


def analysis_readings(rng: np.random.Generator) -> list[common_pb2.Reading]:
    """60 days: the analysed home has a 0.5 kW always-on load and uses about 27% more in the last 30 days than in
    the 30 before; its 12 peers are frugal homes (no always-on load) on the same tariff."""
    out = []
    start = END - dt.timedelta(days=60)
    for k in range(60 * 24):
        t = start + dt.timedelta(hours=k)
        end_s = int(t.timestamp()) + HOUR
        recent = k >= 30 * 24
        kwh = 0.5 + profile_kwh(1.5 if recent else 1.0, t) * (1.0 + 0.05 * rng.uniform(-1, 1))
        out.append(_reading(ANALYSED, end_s, HOUR, kwh * 1000.0))
        for j, p in enumerate(PEERS):
            kwh = 0.08 + profile_kwh(0.6 + 0.03 * j, t) * 0.6
            out.append(_reading(p, end_s, HOUR, kwh * 1000.0))
    return out


def _reading(meter_id: str, end_s: int, interval: int, wh: float) -> common_pb2.Reading:
    r = common_pb2.Reading(meter_id=meter_id, interval_seconds=interval, import_energy_wh=wh)
    r.read_time.seconds = end_s
    return r


async def _register(stub: ingest_pb2_grpc.IngestServiceStub, meter_id: str, **fields: object) -> None:
    meter = {
        "meter_id": meter_id,
        "category": common_pb2.METER_CATEGORY_RESIDENTIAL,
        "interval_seconds": 3600,
        "time_zone": "Asia/Kolkata",
        "tariff_id": TARIFF,
        "sanctioned_load_kw": 3.0,
        **fields,
    }
    await stub.RegisterMeter(ingest_pb2.RegisterMeterRequest(meter=common_pb2.Meter(**meter)))


async def _hours_stored(platform: Platform) -> int:
    conn = await platform.db()
    try:
        return int(await conn.fetchval("SELECT count(*) FROM readings_hourly"))
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def fleet(nats_url: str, admin_db_url: str, log_dir: Path) -> AsyncIterator[Platform]:
    """One platform for the module: readings of 5 homes (6 weeks) and of an analysed home with 12 peers
    (60 days) pushed through ingest and stored by the writer; the forecast service running."""
    p = Platform(nats_url=nats_url, admin_db_url=admin_db_url, log_dir=log_dir, extra_env=ENV)
    await p.create()
    try:
        await p.start_writer()
        await p.start_ingest()
        await p.start_forecast()
        rng = np.random.default_rng(7)
        async with p.channel() as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            for m in FLEET:
                # F-4 reads every 15 minutes and has no tariff.
                if m == "F-4":
                    await _register(stub, m, interval_seconds=900, tariff_id="")
                else:
                    await _register(stub, m)
            await _register(stub, "F-9", tariff_id="")  # no tariff, no readings yet
            for m in [ANALYSED, *PEERS]:
                await _register(stub, m, tariff_id="in-gj-rgp-rural", time_zone="Asia/Kolkata")
            rows = fleet_readings(rng) + analysis_readings(rng)
            for i in range(0, len(rows), 10_000):
                resp = await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=rows[i : i + 10_000]))
                assert resp.accepted_count == len(rows[i : i + 10_000]), resp.rejections[:3]
        hours = 4 * DAYS * 24 + DAYS * 24 + 13 * 60 * 24
        await wait_for(
            lambda: _hours_stored(p), lambda n: n >= hours, timeout=60, what=f"{hours} stored hours"
        )
        yield p
    finally:
        await p.destroy()


def stub_of(ch: grpc.aio.Channel) -> forecast_pb2_grpc.ForecastServiceStub:
    return forecast_pb2_grpc.ForecastServiceStub(ch)


def ts(t: dt.datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(t)
    return out


def inline(values: list[float], start: dt.datetime, **kw: object) -> forecast_pb2.InlineHistory:
    return forecast_pb2.InlineHistory(start_time=ts(start), energy_kwh=values, **kw)


def history_values(hours: int, end: dt.datetime = END) -> list[float]:
    start = end - dt.timedelta(hours=hours)
    return [profile_kwh(1.0, start + dt.timedelta(hours=k)) for k in range(hours)]


def ordered(points: list[forecast_pb2.ForecastPoint]) -> bool:
    return all(0 <= p.p10_energy_kwh <= p.p50_energy_kwh <= p.p90_energy_kwh for p in points)


# --- forecasts without a trained model ---------------------------------------------------------------


async def test_a_stored_meter_is_forecast_by_a_baseline_that_says_why(fleet: Platform) -> None:
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        resp = await stub_of(ch).GetForecast(
            forecast_pb2.GetForecastRequest(meter_id="F-4", horizon_hours=48), timeout=30
        )
    assert resp.meter_id == "F-4"
    assert resp.model_version.startswith("baseline-") and resp.fallback_reason == "no trained model"
    assert len(resp.points) == 48 and ordered(list(resp.points))
    # The forecast starts right after the last complete stored hour, hour after hour.
    assert [p.start_time.seconds for p in resp.points] == [END_S + k * HOUR for k in range(48)]

    # The 15-minute readings were aggregated to hours (2.2 kWh in an evening hour, 0.55 at night), and
    # the median follows the evening peak.
    def local_hour(p: forecast_pb2.ForecastPoint) -> int:
        return dt.datetime.fromtimestamp(p.start_time.seconds, IST).hour

    evening = [p.p50_energy_kwh for p in resp.points if 18 <= local_hour(p) < 21]
    night = [p.p50_energy_kwh for p in resp.points if 0 <= local_hour(p) < 5]
    assert 1.5 < np.mean(evening) < 3.5 and 0.3 < np.mean(night) < 0.9, (evening, night)
    assert any(p.p90_energy_kwh > p.p10_energy_kwh for p in resp.points)


async def test_an_inline_history_is_forecast_with_the_quantiles_asked_for(fleet: Platform) -> None:
    start = END - dt.timedelta(hours=72)
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        resp = await stub_of(ch).GetForecast(
            forecast_pb2.GetForecastRequest(
                inline_history=inline(history_values(72), start, time_zone="Asia/Kolkata"),
                quantiles=[forecast_pb2.QUANTILE_P50, forecast_pb2.QUANTILE_P90],
            ),
            timeout=30,
        )
    assert resp.meter_id == "" and len(resp.points) == 24  # horizon 0 means 24
    assert resp.model_version == "baseline-previous-day"
    assert resp.fallback_reason in ("no trained model", "history shorter than 168 h")
    assert resp.points[0].start_time.seconds == END_S
    for p in resp.points:
        assert (
            not p.HasField("p10_energy_kwh") and p.HasField("p50_energy_kwh") and p.HasField("p90_energy_kwh")
        )
        assert p.p50_energy_kwh <= p.p90_energy_kwh
    # Yesterday repeated: the values of the last 24 hours, in order (NaN-free, so exactly).
    assert [round(p.p50_energy_kwh, 9) for p in resp.points] == [round(v, 9) for v in history_values(24)]


def _gap(values: list[float], at: int, length: int) -> list[float]:
    return values[:at] + [math.nan] * length + values[at + length :]


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (forecast_pb2.GetForecastRequest(meter_id="NOPE"), grpc.StatusCode.NOT_FOUND, "meter_id 'NOPE'"),
        (
            forecast_pb2.GetForecastRequest(meter_id="F-0", horizon_hours=500),
            grpc.StatusCode.INVALID_ARGUMENT,
            "horizon_hours is 500",
        ),
        (
            forecast_pb2.GetForecastRequest(meter_id="F-0", horizon_hours=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "horizon_hours is -1",
        ),
        (
            forecast_pb2.GetForecastRequest(meter_id="F-0", quantiles=[7]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "quantiles[0] is 7",
        ),
        (forecast_pb2.GetForecastRequest(), grpc.StatusCode.INVALID_ARGUMENT, "history is unset"),
        (
            forecast_pb2.GetForecastRequest(meter_id="F-9"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "F-9 has 0 hours of stored history",
        ),
        (
            forecast_pb2.GetForecastRequest(inline_history=inline([1.0] * 23, END - dt.timedelta(hours=23))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inline_history.energy_kwh has 23 values",
        ),
        (
            forecast_pb2.GetForecastRequest(
                inline_history=inline([1.0] * 30 + [-0.5] + [1.0] * 9, END - dt.timedelta(hours=40))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inline_history.energy_kwh[30] is -0.5",
        ),
        (
            forecast_pb2.GetForecastRequest(
                inline_history=inline([1.0] * 24 + [math.inf], END - dt.timedelta(hours=25))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inline_history.energy_kwh[24] is inf",
        ),
        (
            forecast_pb2.GetForecastRequest(
                inline_history=inline([1.0] * 48, END - dt.timedelta(hours=48, minutes=30))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inline_history.start_time",
        ),
        (
            forecast_pb2.GetForecastRequest(
                inline_history=inline([1.0] * 48, END - dt.timedelta(hours=48), time_zone="Mars/Olympus")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inline_history.time_zone 'Mars/Olympus'",
        ),
        (
            forecast_pb2.GetForecastRequest(
                inline_history=inline([math.nan] * 48, END - dt.timedelta(hours=48))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "every value is NaN",
        ),
        (
            # 10 missing hours inside the last day, which previous-day persistence needs.
            forecast_pb2.GetForecastRequest(
                inline_history=inline(_gap(history_values(72), 60, 10), END - dt.timedelta(hours=72))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inline_history.energy_kwh[60] starts a run of 10 missing hours",
        ),
    ],
)
async def test_get_forecast_rejects_bad_requests_precisely(
    fleet: Platform, request_: forecast_pb2.GetForecastRequest, code: grpc.StatusCode, needle: str
) -> None:
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub_of(ch).GetForecast(request_, timeout=30)
    assert err.value.code() == code and needle in (err.value.details() or ""), err.value.details()


async def test_a_long_gap_before_the_needed_context_is_no_error(fleet: Platform) -> None:
    values = _gap(history_values(96), 10, 20)  # 20 missing hours, but more than a day before the end
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        resp = await stub_of(ch).GetForecast(
            forecast_pb2.GetForecastRequest(
                inline_history=inline(values, END - dt.timedelta(hours=96)), horizon_hours=6
            ),
            timeout=30,
        )
    assert len(resp.points) == 6 and resp.model_version == "baseline-previous-day"


# --- monthly projection --------------------------------------------------------------------------------


async def test_a_monthly_projection_prices_the_projected_month_and_survives_billing_down(
    fleet: Platform,
) -> None:
    billing = await fleet.start_billing()
    local = END.astimezone(IST)
    req = forecast_pb2.ProjectMonthlyUsageRequest(meter_id="F-0", year=local.year, month=local.month)
    month_start = dt.datetime(local.year, local.month, 1, tzinfo=IST).astimezone(UTC)
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        stub = stub_of(ch)
        resp = await stub.ProjectMonthlyUsage(req, timeout=30)
        assert (resp.meter_id, resp.year, resp.month) == ("F-0", local.year, local.month)
        # Measured up to the end of the last complete stored hour (or the month's start).
        assert resp.as_of_time.seconds == max(END_S, int(month_start.timestamp()))
        assert resp.consumed_energy_kwh >= 0 and resp.forecast_rest_energy_kwh > 0
        assert math.isclose(
            resp.projected_total_energy_kwh, resp.consumed_energy_kwh + resp.forecast_rest_energy_kwh
        )
        assert (
            resp.projected_total_p10_energy_kwh
            <= resp.projected_total_energy_kwh
            <= resp.projected_total_p90_energy_kwh
        )
        # 13.3 kWh on a working day and 14.8 on a day off for this home, over the whole month.
        first = dt.date(local.year, local.month, 1)
        days = (dt.date(local.year + local.month // 12, local.month % 12 + 1, 1) - first).days
        assert 0.85 * 13.3 * days < resp.projected_total_energy_kwh < 1.15 * 14.8 * days
        assert resp.model_version.startswith("baseline-") and resp.fallback_reason == "no trained model"
        assert resp.bill_available and resp.bill_unavailable_reason == "" and resp.tariff_id == TARIFF
        descriptions = [line.description for line in resp.projected_bill_lines]
        assert any(d.startswith("Energy charge") for d in descriptions), descriptions
        assert resp.projected_bill_total.currency_code == "INR"
        # The lines add up to the total, and the slabs bill the projected kWh.
        assert sum(Decimal(line.amount.amount) for line in resp.projected_bill_lines) == Decimal(
            resp.projected_bill_total.amount
        )
        slabs = [line for line in resp.projected_bill_lines if line.description.startswith("Energy charge")]
        assert all(line.unit == "kWh" and line.HasField("rate") for line in slabs)
        assert math.isclose(
            float(sum(Decimal(line.quantity) for line in slabs)),
            resp.projected_total_energy_kwh,
            abs_tol=0.01,
        )

        # Billing away: the kWh are still projected, and the response says why there is no bill.
        billing.kill()
        down = await stub.ProjectMonthlyUsage(req, timeout=30)
        assert not down.bill_available and down.bill_unavailable_reason.startswith("billing unavailable")
        assert (
            not down.projected_bill_lines and not down.HasField("projected_bill_total") and not down.tariff_id
        )
        assert math.isclose(down.consumed_energy_kwh, resp.consumed_energy_kwh)

        # A meter without a tariff: no bill, and why.
        none = await stub.ProjectMonthlyUsage(
            forecast_pb2.ProjectMonthlyUsageRequest(meter_id="F-4", year=local.year, month=local.month),
            timeout=30,
        )
        assert none.projected_total_energy_kwh > 0
        assert not none.bill_available and none.bill_unavailable_reason == "meter has no tariff"


async def test_a_past_month_is_all_measured(fleet: Platform) -> None:
    local = (END - dt.timedelta(days=DAYS - 1)).astimezone(IST)
    month_start = dt.datetime(local.year, local.month, 1, tzinfo=IST).astimezone(UTC)
    month_end = dt.datetime(local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=IST).astimezone(
        UTC
    )
    assert month_end < END  # 6 weeks of data always cover the end of an earlier month
    conn = await fleet.db()
    try:
        # F-4's 15-minute intervals that start inside the month (the month starts at 18:30 UTC).
        wh = await conn.fetchval(
            "SELECT sum(import_energy_wh) FROM readings WHERE meter_id = 'F-4' "
            "AND read_time - interval '15 minutes' >= $1 AND read_time - interval '15 minutes' < $2",
            month_start,
            month_end,
        )
    finally:
        await conn.close()
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        resp = await stub_of(ch).ProjectMonthlyUsage(
            forecast_pb2.ProjectMonthlyUsageRequest(meter_id="F-4", year=local.year, month=local.month),
            timeout=30,
        )
    assert resp.forecast_rest_energy_kwh == 0 and resp.model_version == ""
    assert resp.consumed_energy_kwh == pytest.approx(wh / 1000.0, rel=1e-9)
    assert resp.projected_total_energy_kwh == resp.projected_total_p90_energy_kwh == resp.consumed_energy_kwh
    assert resp.as_of_time.seconds == int(month_end.timestamp())
    assert not resp.bill_available and resp.bill_unavailable_reason == "meter has no tariff"


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (
            forecast_pb2.ProjectMonthlyUsageRequest(meter_id="NOPE", year=2026, month=1),
            grpc.StatusCode.NOT_FOUND,
            "meter_id 'NOPE'",
        ),
        (
            forecast_pb2.ProjectMonthlyUsageRequest(meter_id="F-0", year=2026, month=13),
            grpc.StatusCode.INVALID_ARGUMENT,
            "month is 13",
        ),
        (
            forecast_pb2.ProjectMonthlyUsageRequest(meter_id="F-0", year=0, month=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "year is 0",
        ),
        (
            forecast_pb2.ProjectMonthlyUsageRequest(meter_id="F-0", year=2100, month=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "more than a year ahead",
        ),
    ],
)
async def test_project_monthly_usage_rejects_bad_requests_precisely(
    fleet: Platform, request_: forecast_pb2.ProjectMonthlyUsageRequest, code: grpc.StatusCode, needle: str
) -> None:
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub_of(ch).ProjectMonthlyUsage(request_, timeout=30)
    assert err.value.code() == code and needle in (err.value.details() or ""), err.value.details()


# --- analysis ------------------------------------------------------------------------------------------


async def test_analysis_explains_the_score_against_peers_and_the_past(fleet: Platform) -> None:
    period = common_pb2.TimeRange(start_time=ts(END - dt.timedelta(days=30)), end_time=ts(END))
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        a = await stub_of(ch).AnalyzeConsumption(
            forecast_pb2.AnalyzeConsumptionRequest(meter_id=ANALYSED, time_range=period), timeout=30
        )
    assert a.meter_id == ANALYSED and a.time_range == period
    assert a.data_coverage_percent == pytest.approx(100.0)
    assert a.total_energy_kwh == pytest.approx(a.mean_daily_energy_kwh * 30, rel=1e-6)
    # 0.5 kW always on, plus the 0.25 x 1.5 kW of the home's quietest hours.
    assert 0.8 <= a.base_load_kw <= 0.95
    assert set(a.peak_hours) <= {18, 19, 20, 21, 22} and len(a.peak_hours) == 3
    assert 0 < a.night_share_percent < 100 and a.weekday_weekend_ratio > 0
    pc = a.peer_comparison
    assert pc.peer_count == 12 and pc.peer_group == "residential meters on in-gj-rgp-rural"
    assert pc.percentile == 100.0 and pc.peer_median_daily_energy_kwh < a.mean_daily_energy_kwh
    past = a.past_comparison  # no data a year before: the 30 days just before
    assert past.past_range.end_time == period.start_time
    assert past.change_percent == pytest.approx(
        100 * (a.mean_daily_energy_kwh / past.past_daily_energy_kwh - 1)
    )
    assert 20 < past.change_percent < 35
    assert 0 <= a.efficiency_score < 60 and a.efficiency_explanation
    codes = [r.code for r in a.recommendations]
    assert "reduce_base_load" in codes and "check_increase" in codes
    savings = [r.estimated_saving_kwh_per_month for r in a.recommendations]
    assert savings == sorted(savings, reverse=True) and all(s > 0 for s in savings)


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (
            forecast_pb2.AnalyzeConsumptionRequest(meter_id="NOPE"),
            grpc.StatusCode.NOT_FOUND,
            "meter_id 'NOPE'",
        ),
        (
            forecast_pb2.AnalyzeConsumptionRequest(
                meter_id=ANALYSED,
                time_range=common_pb2.TimeRange(start_time=ts(END - dt.timedelta(days=3)), end_time=ts(END)),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "analyse 7 days to 2 years",
        ),
        (
            forecast_pb2.AnalyzeConsumptionRequest(
                meter_id=ANALYSED, time_range=common_pb2.TimeRange(start_time=ts(END))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "time_range needs start_time and end_time",
        ),
        (
            forecast_pb2.AnalyzeConsumptionRequest(meter_id="F-9"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "F-9 has 0 stored hours",
        ),
    ],
)
async def test_analyze_consumption_rejects_bad_requests_precisely(
    fleet: Platform, request_: forecast_pb2.AnalyzeConsumptionRequest, code: grpc.StatusCode, needle: str
) -> None:
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub_of(ch).AnalyzeConsumption(request_, timeout=30)
    assert err.value.code() == code and needle in (err.value.details() or ""), err.value.details()


# --- training and the registry -------------------------------------------------------------------------


async def train(
    stub: forecast_pb2_grpc.ForecastServiceStub, **kw: object
) -> list[forecast_pb2.TrainForecasterResponse]:
    return [r async for r in stub.TrainForecaster(forecast_pb2.TrainForecasterRequest(**kw), timeout=300)]


async def test_training_promotes_a_better_version_and_refuses_a_worse_one(fleet: Platform) -> None:
    window = common_pb2.TimeRange(start_time=ts(END - dt.timedelta(days=DAYS + 1)), end_time=ts(NOW))
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        stub = stub_of(ch)
        call = stub.TrainForecaster(
            forecast_pb2.TrainForecasterRequest(training_range=window, meter_ids=FLEET, epochs=4, seed=11),
            timeout=300,
        )
        first = [await call.read()]
        # One run at a time: a second one is refused while the first goes on.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await train(stub, training_range=window, meter_ids=FLEET, epochs=1)
        assert err.value.code() == grpc.StatusCode.ABORTED and "already in progress" in (
            err.value.details() or ""
        )
        while (msg := await call.read()) != grpc.aio.EOF:
            first.append(msg)
        progress = [r.progress for r in first[:-1]]
        assert progress and all(r.HasField("progress") for r in first[:-1]) and first[-1].HasField("result")
        fractions = [p.fraction_done for p in progress]
        assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 1
        stages = {p.stage for p in progress}
        assert stages >= {
            forecast_pb2.TRAINING_STAGE_LOADING_DATA,
            forecast_pb2.TRAINING_STAGE_BUILDING_FEATURES,
            forecast_pb2.TRAINING_STAGE_FITTING,
            forecast_pb2.TRAINING_STAGE_BACKTESTING,
            forecast_pb2.TRAINING_STAGE_REGISTERING,
        }
        epochs = [p for p in progress if p.HasField("validation_loss")]
        assert sorted({p.epoch for p in epochs}) == list(range(1, 5)) and all(
            p.total_epochs == 4 for p in epochs
        )
        result = first[-1].result
        m = result.model
        baselines = {b.baseline: b.metrics for b in m.baseline_metrics}
        assert set(baselines) == {"baseline-previous-day", "baseline-previous-week", "baseline-ensemble"}
        best = min(b.nrmse_percent for b in baselines.values())
        assert result.promoted, (result.promotion_reason, m.metrics, baselines)
        assert m.metrics.nrmse_percent < best and result.previous_model_version == ""
        assert not result.HasField("previous_metrics")
        assert (m.model_version, m.state, m.meter_count, m.epochs) == (
            "lstm-1",
            forecast_pb2.MODEL_STATE_SERVING,
            5,
            4,
        )
        assert m.metrics.meter_count == 5 and m.metrics.window_count > 0
        assert all(b.window_count == m.metrics.window_count for b in baselines.values())
        assert 0 < m.metrics.p10_p90_coverage_percent <= 100 and m.HasField("promote_time")
        assert m.backtest_range.start_time.seconds > m.training_range.start_time.seconds

        # The promoted version answers now.
        resp = await stub.GetForecast(
            forecast_pb2.GetForecastRequest(meter_id="F-1", horizon_hours=168), timeout=30
        )
        assert resp.model_version == "lstm-1" and resp.fallback_reason == "" and len(resp.points) == 168
        assert ordered(list(resp.points))

        # One epoch cannot beat the serving version on the same held-out windows: a candidate only.
        worse = (await train(stub, training_range=window, meter_ids=FLEET, epochs=1, seed=12))[-1].result
        assert not worse.promoted and worse.model.state == forecast_pb2.MODEL_STATE_CANDIDATE
        assert worse.model.model_version == "lstm-2" and worse.previous_model_version == "lstm-1"
        assert worse.previous_metrics.nrmse_percent == pytest.approx(m.metrics.nrmse_percent)
        assert "does not beat serving lstm-1" in worse.promotion_reason, worse.promotion_reason
        skipped = (
            await train(stub, training_range=window, meter_ids=FLEET[:2], epochs=1, skip_promotion=True)
        )[-1]
        assert not skipped.result.promoted and skipped.result.promotion_reason == "promotion skipped"

        listed = await stub.ListForecastModels(forecast_pb2.ListForecastModelsRequest(page_size=2))
        assert [x.model_version for x in listed.models] == ["lstm-3", "lstm-2"] and listed.next_page_token
        rest = await stub.ListForecastModels(
            forecast_pb2.ListForecastModelsRequest(page_size=2, page_token=listed.next_page_token)
        )
        assert [x.model_version for x in rest.models] == ["lstm-1"] and not rest.next_page_token
        assert rest.models[0].metrics == m.metrics and list(rest.models[0].baseline_metrics) == list(
            m.baseline_metrics
        )
        serving = await stub.ListForecastModels(
            forecast_pb2.ListForecastModelsRequest(state=forecast_pb2.MODEL_STATE_SERVING)
        )
        assert [x.model_version for x in serving.models] == ["lstm-1"]

    # A restarted service loads the serving version from the registry.
    [old] = [p for p in fleet.procs if p.name == "forecast" and p.running]
    assert await old.stop(30) == 0
    await fleet.start_forecast()
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        stub = stub_of(ch)
        resp = await stub.GetForecast(
            forecast_pb2.GetForecastRequest(
                inline_history=inline(history_values(24 * 9), END - dt.timedelta(days=9))
            ),
            timeout=30,
        )
        assert resp.model_version == "lstm-1"
        short = await stub.GetForecast(
            forecast_pb2.GetForecastRequest(
                inline_history=inline(history_values(100), END - dt.timedelta(hours=100))
            ),
            timeout=30,
        )
        assert (
            short.model_version == "baseline-previous-day"
            and short.fallback_reason == "history shorter than 168 h"
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetForecast(
                forecast_pb2.GetForecastRequest(
                    inline_history=inline(
                        _gap(history_values(24 * 9), 24 * 5, 12), END - dt.timedelta(days=9)
                    )
                ),
                timeout=30,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"inline_history.energy_kwh[{24 * 5}] starts a run of 12 missing hours" in (
            err.value.details() or ""
        )


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (
            forecast_pb2.TrainForecasterRequest(epochs=5000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "epochs is 5000",
        ),
        (
            forecast_pb2.TrainForecasterRequest(meter_ids=["F-0", "NOPE"]),
            grpc.StatusCode.NOT_FOUND,
            "'NOPE' not registered",
        ),
        (
            forecast_pb2.TrainForecasterRequest(
                training_range=common_pb2.TimeRange(
                    start_time=ts(END), end_time=ts(END - dt.timedelta(days=1))
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "the end must be after the start",
        ),
        (
            forecast_pb2.TrainForecasterRequest(meter_ids=["F-9"]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "no meter has the 840 stored hours training needs",
        ),
    ],
)
async def test_train_forecaster_rejects_bad_requests_precisely(
    fleet: Platform, request_: forecast_pb2.TrainForecasterRequest, code: grpc.StatusCode, needle: str
) -> None:
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await train(stub_of(ch), **{f.name: v for f, v in request_.ListFields()})
    assert err.value.code() == code and needle in (err.value.details() or ""), err.value.details()


async def test_list_forecast_models_rejects_bad_requests_precisely(fleet: Platform) -> None:
    async with fleet.channel_to(fleet.forecast_addr) as ch:
        stub = stub_of(ch)
        for req, needle in [
            (forecast_pb2.ListForecastModelsRequest(page_size=5000), "page_size is 5000"),
            (forecast_pb2.ListForecastModelsRequest(state=9), "state is 9"),
            (forecast_pb2.ListForecastModelsRequest(page_token="zzz"), "page_token 'zzz'"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListForecastModels(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in (
                err.value.details() or ""
            )
