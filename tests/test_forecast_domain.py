"""The forecasting domain: hourly series, calendar, baselines, backtest metrics, the LSTM and the analysis.

Pure numpy/torch: no service, no database. The LSTM tests train tiny models on synthetic meters so
the whole file stays well under a minute on two cores.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest

from services.forecast.analysis import MIN_PEERS, analyze
from services.forecast.backtest import Metrics, Windows, backtest, score, windows
from services.forecast.baselines import (
    BASELINES,
    ENSEMBLE,
    PREVIOUS_DAY,
    PREVIOUS_WEEK,
    baseline_quantiles,
    best_baseline_name,
    ensemble,
    previous_day,
    previous_week,
)
from services.forecast.calendar import (
    FEATURE_NAMES,
    HolidayCalendar,
    calendar_features,
    calendar_features_batch,
)
from services.forecast.lstm import Forecaster
from services.forecast.series import HOUR_US, GapTooLong, HourlySeries, fill_gaps, to_hourly
from services.forecast.training import evaluate, evaluate_baseline, train_forecaster

T0 = int(dt.datetime(2026, 1, 5, tzinfo=dt.UTC).timestamp()) * 1_000_000  # a Monday, 00:00 UTC
MIN = 60_000_000


def _us(*args: int, tz: dt.tzinfo = dt.UTC) -> int:
    return int(dt.datetime(*args, tzinfo=tz).timestamp()) * 1_000_000


# --- hourly aggregation ------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [900, 1800, 3600])
def test_to_hourly_sums_interval_readings_into_the_hour_they_end_in(interval: int) -> None:
    per_hour = 3600 // interval
    n = 5 * per_hour
    # read_time ends the interval: the first reading (at T0 + interval) belongs to the T0 hour.
    read = T0 + np.arange(1, n + 1) * interval * 1_000_000
    wh = np.arange(n, dtype=np.float64) + 100.0
    s = to_hourly("m1", read, np.full(n, interval), wh)
    assert s.start_us == T0 and len(s) == 5 and s.end_us == T0 + 5 * HOUR_US
    np.testing.assert_allclose(s.values_kwh, wh.reshape(5, per_hour).sum(axis=1) / 1000.0)


def test_partial_hour_is_scaled_up_when_half_present_else_missing() -> None:
    read = T0 + np.arange(1, 13) * 15 * MIN  # three hours of 15-minute readings, 250 Wh each
    keep = np.ones(12, dtype=bool)
    keep[[4, 5]] = False  # hour 1: two of four present -> scaled to the hour
    keep[[8, 9, 10]] = False  # hour 2: one of four -> missing
    s = to_hourly("m1", read[keep], 900, np.full(keep.sum(), 250.0))
    np.testing.assert_allclose(s.values_kwh[:2], [1.0, 1.0])
    assert math.isnan(s.values_kwh[2])


def test_duplicate_readings_count_once_and_the_last_wins() -> None:
    read = T0 + np.array([30, 60, 60]) * MIN
    s = to_hourly("m1", read, 1800, np.array([400.0, 500.0, 600.0]))
    np.testing.assert_allclose(s.values_kwh, [1.0])


def test_hourly_series_is_in_utc_hours_so_a_dst_day_has_23_local_hours() -> None:
    london = dt.timezone(dt.timedelta(0))
    start = _us(2026, 3, 29, 0, tz=london)  # local midnight (GMT) on the spring-forward day
    end = _us(2026, 3, 29, 23, tz=london)  # local midnight of the next day (BST) = 23:00 UTC
    read = np.arange(start + 30 * MIN, end + 1, 30 * MIN)
    s = to_hourly("m1", read, 1800, np.full(len(read), 100.0), time_zone="Europe/London")
    assert len(s) == 23 and s.time_zone == "Europe/London"
    hours = calendar_features(s.start_us, len(s), s.time_zone, None)
    local_hour = np.round(np.degrees(np.arctan2(hours[:, 0], hours[:, 1])) / 15) % 24
    assert local_hour[:3].tolist() == [0, 2, 3]  # 01:00 local does not exist that day
    assert local_hour[-1] == 23


def test_to_hourly_rejects_intervals_that_do_not_divide_an_hour() -> None:
    with pytest.raises(ValueError, match="does not divide an hour"):
        to_hourly("m1", np.array([T0 + 7 * MIN]), 420 * 60, np.array([1.0]))


# --- gap filling -------------------------------------------------------------------------------------


def test_fill_gaps_interpolates_short_gaps_and_fills_the_last_hours_from_last_week() -> None:
    v = np.arange(400, dtype=np.float64)
    v[100:103] = np.nan
    v[396:] = np.nan
    f = fill_gaps(v)
    np.testing.assert_allclose(f[99:104], [99, 100, 101, 102, 103])
    np.testing.assert_allclose(f[396:], np.arange(396, 400) - 168)


def test_gap_too_long_inside_the_context_names_where_and_how_long() -> None:
    v = np.ones(400)
    v[300:310] = np.nan
    with pytest.raises(GapTooLong) as exc:
        fill_gaps(v)
    assert exc.value.start_index == 300 and exc.value.length == 10
    assert isinstance(exc.value, ValueError) and "10 consecutive missing hours" in str(exc.value)


def test_leading_and_early_long_gaps_before_the_context_are_allowed() -> None:
    v = np.ones(400)
    v[:50] = np.nan
    v[100:130] = np.nan
    f = fill_gaps(v)
    assert np.isnan(f[:50]).all() and np.isnan(f[100:130]).all() and np.isfinite(f[232:]).all()


# --- calendar ----------------------------------------------------------------------------------------


def test_calendar_features_are_in_local_time_with_the_holiday_of_the_local_date() -> None:
    holidays = HolidayCalendar.from_env_value("2026-01-26, 2026-08-15")
    start = _us(2026, 1, 25, 18, 30)  # = 2026-01-26 00:00 in Asia/Kolkata (UTC+5:30), a Monday
    f = calendar_features(start, 24, "Asia/Kolkata", holidays)
    assert f.shape == (24, len(FEATURE_NAMES))
    assert f[0, 0] == pytest.approx(0.0, abs=1e-6) and f[0, 1] == pytest.approx(1.0)  # local 00:00
    assert f[0, 2] == pytest.approx(0.0, abs=1e-6) and f[0, 3] == pytest.approx(1.0)  # Monday
    assert (f[:, 6] == 1).all()
    utc = calendar_features(start, 24, "UTC", holidays)
    assert utc[:6, 6].sum() == 0 and (utc[6:, 6] == 1).all()  # in UTC the holiday starts 5.5 h later
    batch = calendar_features_batch(np.array([start, start]), 24, ["Asia/Kolkata", "UTC"], holidays)
    np.testing.assert_allclose(batch[0], f)
    np.testing.assert_allclose(batch[1], utc)


def test_holiday_list_from_the_deployment_setting() -> None:
    cal = HolidayCalendar.from_env_value("2026-01-26,2026-08-15;2026-10-02 ")
    assert len(cal) == 3 and dt.date(2026, 8, 15) in cal
    assert len(HolidayCalendar.from_env_value("")) == 0
    with pytest.raises(ValueError, match="2026-13-01"):
        HolidayCalendar.from_env_value("2026-01-26,2026-13-01")


# --- baselines ---------------------------------------------------------------------------------------


def _weekly(weeks: int = 4, noise: float = 0.0, seed: int = 0, level: float = 1.0) -> np.ndarray:
    t = np.arange(weeks * 168)
    day = 0.5 + 0.4 * np.sin(2 * np.pi * (t % 24) / 24) ** 2
    week = np.where((t // 24) % 7 >= 5, 0.4, 1.0)
    rng = np.random.default_rng(seed)
    return level * (day * week) * (1 + noise * rng.standard_normal(len(t)))


def test_previous_week_is_exact_on_a_weekly_periodic_series() -> None:
    v = _weekly(5)
    np.testing.assert_allclose(previous_week(v[:-168], 168), v[-168:])
    assert not np.allclose(previous_day(v[:-168], 168), v[-168:])


def test_previous_day_is_exact_on_a_daily_periodic_series_and_ensemble_is_the_mean() -> None:
    t = np.arange(400)
    v = 1 + np.sin(2 * np.pi * t / 24) ** 2
    np.testing.assert_allclose(previous_day(v[:-24], 24), v[-24:])
    w = _weekly(4)
    np.testing.assert_allclose(ensemble(w, 48), (previous_day(w, 48) + previous_week(w, 48)) / 2)


def test_baseline_quantiles_are_ordered_non_negative_and_cover_the_noise() -> None:
    v = _weekly(8, noise=0.2, seed=1)
    hist, future = v[:-168], v[-168:]
    for name in BASELINES:
        q = baseline_quantiles(name, hist, 168)
        assert q.shape == (168, 3)
        assert (q >= 0).all() and (q[:, 0] <= q[:, 1]).all() and (q[:, 1] <= q[:, 2]).all()
        inside = np.mean((future >= q[:, 0]) & (future <= q[:, 2]))
        assert 0.5 < inside <= 1.0, (name, inside)
    batch = baseline_quantiles(ENSEMBLE, np.stack([hist, hist * 2]), 24)
    np.testing.assert_allclose(batch[1], 2 * batch[0])


def test_short_history_only_previous_day() -> None:
    v = _weekly(1)[:100]
    assert best_baseline_name(v) == PREVIOUS_DAY
    assert baseline_quantiles(PREVIOUS_DAY, v, 24).shape == (24, 3)
    with pytest.raises(ValueError, match="168 hours"):
        previous_week(v, 24)
    with pytest.raises(ValueError, match="24 hours"):
        best_baseline_name(v[:10])
    assert best_baseline_name(_weekly(5)) == PREVIOUS_WEEK  # exact in sample


# --- backtest ----------------------------------------------------------------------------------------


def test_backtest_metrics_match_a_hand_computed_example() -> None:
    # Meter a: actual 2 kWh every hour, forecast p50 1 (error 1); meter b: actual alternating 0 and 4
    # (mean 2), forecast 2 (error 2). p10/p90 = p50 -/+ 0.5.
    a = HourlySeries("a", T0, np.full(168 + 48, 2.0))
    b = HourlySeries("b", T0, np.tile([0.0, 4.0], (168 + 48) // 2))

    def predict(contexts: np.ndarray, start_us: np.ndarray, zones: list[str]) -> np.ndarray:
        level = np.where(contexts.max(axis=1) > 3, 2.0, 1.0)[:, None]
        p50 = np.repeat(level, 24, axis=1)
        return np.stack([p50 - 0.5, p50, p50 + 0.5], axis=-1)

    m = backtest(predict, [a, b], T0 + 168 * HOUR_US, a.end_us)
    assert (m.meter_count, m.window_count) == (2, 4)
    per = {x.meter_id: x for x in m.per_meter}
    assert per["a"].nrmse_percent == pytest.approx(50.0)  # RMSE 1 / mean 2
    assert per["b"].nrmse_percent == pytest.approx(100.0)  # RMSE 2 / mean 2
    assert m.nrmse_percent == pytest.approx(75.0)  # median of two = their mean
    assert m.mae_kwh == pytest.approx(1.5)
    assert per["a"].mape_percent == pytest.approx(50.0)
    assert per["b"].mape_percent == pytest.approx(50.0)  # zero hours left out: |2-4|/4
    assert per["a"].coverage == 0.0 and per["b"].coverage == 0.0
    assert m.coverage_percent == 0.0


def test_backtest_skips_windows_without_history_and_leaves_missing_actuals_out() -> None:
    v = np.full(168 + 72, 1.0)
    v[170:175] = np.nan  # missing actuals in the first window (short enough to fill in later contexts)
    v[200:240] = np.nan  # the third window has no actual hour at all
    s = HourlySeries("m", T0, v)
    w = windows([s], T0, s.end_us)
    assert len(w) == 2 and w.skipped == 1
    m = score(w, np.ones((2, 24, 3)))
    assert m.per_meter[0].hour_count == 24 - 5 + 8
    assert m.nrmse_percent == 0.0 and m.coverage == 1.0


def test_mape_is_nan_when_every_actual_hour_is_zero() -> None:
    w = Windows(np.ones((1, 168)), np.zeros((1, 24)), np.array([T0]), ["UTC"], ["z"])
    m = score(w, np.ones((1, 24, 3)))
    assert math.isnan(m.mape_percent) and math.isnan(m.nrmse_percent) and m.mae_kwh == 1.0


# --- the LSTM ----------------------------------------------------------------------------------------

TINY = {
    "lstm_hidden": 16,
    "head_hidden": 32,
    "samples_per_epoch": 1536,
    "batch_size": 128,
    "learning_rate": 1e-2,
}


def _fleet(meters: int = 4, days: int = 49, seed: int = 0) -> list[HourlySeries]:
    out = []
    for i in range(meters):
        v = _weekly(days // 7 + 1, noise=0.15, seed=seed + i, level=0.5 + i)[: days * 24]
        out.append(HourlySeries(f"m{i}", T0, v, "Europe/Paris" if i % 2 else "UTC", "residential"))
    return out


@pytest.fixture(scope="module")
def trained():
    return train_forecaster(
        _fleet(), version="lstm-test", seed=3, epochs=4, hyperparameters=TINY, holdout_days=7
    )


def test_lstm_beats_previous_day_on_a_noisy_weekly_signal(trained) -> None:
    lstm = trained.metrics
    prev_day = trained.baseline_metrics[PREVIOUS_DAY]
    assert isinstance(lstm, Metrics) and lstm.meter_count == 4 and lstm.window_count == 4 * 7
    assert lstm.nrmse_percent < 0.9 * prev_day.nrmse_percent, (lstm, prev_day)
    assert set(trained.baseline_metrics) == set(BASELINES)
    assert evaluate(trained.model, trained.heldout) == lstm
    assert evaluate_baseline(PREVIOUS_DAY, trained.heldout) == prev_day
    lo, hi = trained.training_range_us
    assert lo == T0 and hi == trained.heldout_range_us[0] == T0 + 42 * 24 * HOUR_US
    assert trained.meter_count == 4 and trained.sample_count > 1000


def test_lstm_quantiles_never_cross_and_never_go_negative(trained) -> None:
    rng = np.random.default_rng(5)
    contexts = np.abs(rng.standard_normal((50, 168))) * rng.uniform(0.01, 100, (50, 1))
    contexts[0] = 0.0
    contexts[1, :20] = np.nan
    starts = T0 + rng.integers(0, 1000, 50) * HOUR_US
    zones = ["Asia/Kolkata", "UTC", "America/New_York", "Europe/London", "Australia/Sydney"] * 10
    q = trained.model.predict(contexts, starts, zones, 168, HolidayCalendar([dt.date(2026, 1, 26)]))
    assert q.shape == (50, 168, 3) and np.isfinite(q).all()
    assert (q >= 0).all() and (q[..., 0] <= q[..., 1]).all() and (q[..., 1] <= q[..., 2]).all()
    with pytest.raises(ValueError, match="horizon"):
        trained.model.predict(contexts, starts, zones, 169)


def test_model_bytes_round_trip_predicts_identically(trained) -> None:
    model = trained.model
    data = model.to_bytes()
    again = Forecaster.from_bytes(data)
    assert again.version == "lstm-test" and again.hyperparameters == model.hyperparameters
    fleet = _fleet()
    ctx = np.stack([s.values_kwh[-168:] for s in fleet])
    starts = np.full(len(fleet), fleet[0].end_us)
    zones = [s.time_zone for s in fleet]
    np.testing.assert_array_equal(
        model.predict(ctx, starts, zones, 24), again.predict(ctx, starts, zones, 24)
    )
    with pytest.raises(ValueError, match="not a metermesh-lstm-forecaster"):
        Forecaster.from_bytes(_npz_with_header(b'{"format": "other"}'))
    again.version = "lstm-9"
    assert Forecaster.from_bytes(again.to_bytes()).version == "lstm-9"


def _npz_with_header(raw: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(raw, dtype=np.uint8))
    return buf.getvalue()


def test_training_is_deterministic_given_the_seed() -> None:
    fleet = _fleet(meters=2, days=36)
    hp = {**TINY, "samples_per_epoch": 256}
    runs = [train_forecaster(fleet, version="v", seed=s, epochs=1, hyperparameters=hp) for s in (7, 7, 8)]
    a, b, c = (r.model.state for r in runs)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_training_reports_progress_through_every_stage() -> None:
    seen = []
    train_forecaster(
        _fleet(meters=1, days=36),
        version="v",
        epochs=2,
        hyperparameters={**TINY, "samples_per_epoch": 128},
        progress=seen.append,
    )
    assert seen[0].stage == "loading" and seen[-1].stage == "backtesting"
    assert {"features", "fitting"} <= {p.stage for p in seen}
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    epochs = [p for p in seen if p.validation_loss is not None]
    assert [p.epoch for p in epochs] == [1, 2] and all(p.total_epochs == 2 for p in epochs)


def test_too_little_history_says_how_much_is_needed() -> None:
    short = [HourlySeries("m", T0, _weekly(3)[:480])]  # 20 days
    with pytest.raises(ValueError, match=r"at least 35 days .* 20 h|at least 35 days"):
        train_forecaster(short, version="v", epochs=1, hyperparameters=TINY)


# --- analysis ----------------------------------------------------------------------------------------


def _days(
    profile: np.ndarray, days: int = 28, meter: str = "a", noise: float = 0.02, seed: int = 0
) -> HourlySeries:
    rng = np.random.default_rng(seed)
    v = np.tile(profile, days) * (1 + noise * rng.standard_normal(24 * days))
    return HourlySeries(meter, T0, np.maximum(v, 0), "UTC", "residential")


def test_flat_always_on_load_gets_the_base_load_recommendation() -> None:
    a = analyze(_days(np.full(24, 0.5)))
    assert a.base_load_kw == pytest.approx(0.5, rel=0.05)
    assert a.base_load_share_percent > 90
    codes = [r.code for r in a.recommendations]
    assert codes[0] == "reduce_base_load"
    assert "0.4" in a.recommendations[0].text or "0.5" in a.recommendations[0].text
    assert a.recommendations[0].estimated_saving_kwh_per_month > 100
    assert 0 <= a.efficiency_score < 80 and "base load" in a.efficiency_explanation
    assert a.night_share_percent == pytest.approx(100 * 8 / 24, abs=1)


def test_peak_heavy_load_gets_the_peak_shift_recommendation() -> None:
    profile = np.full(24, 0.05)
    profile[17:22] = 1.5
    a = analyze(_days(profile))
    assert set(a.peak_hours) <= set(range(17, 22)) and len(a.peak_hours) == 3
    assert a.peak_share_percent > 80
    shift = [r for r in a.recommendations if r.code == "shift_to_off_peak"]
    assert shift and "17:00-22:00" in shift[0].text and "kWh/day" in shift[0].text
    assert shift[0].estimated_saving_kwh_per_month > 0
    assert "peak window" in a.efficiency_explanation and 0 <= a.efficiency_score <= 80


def test_score_compares_with_peers_and_own_past() -> None:
    profile = np.full(24, 0.1)
    profile[6:9] = 0.6
    profile[18:21] = 0.4
    me = _days(profile * 2, meter="me")
    peers = [_days(profile * (0.8 + 0.05 * i), meter=f"p{i}", seed=i) for i in range(MIN_PEERS + 2)]
    past = _days(profile * 1.4, meter="me")
    a = analyze(me, peers=peers, past=past, peer_group="residential meters on in-gj-rgp-urban")
    assert a.peer_comparison is not None and a.peer_comparison.peer_count == MIN_PEERS + 2
    assert a.peer_comparison.percentile == 100.0
    assert a.past_comparison is not None and a.past_comparison.change_percent == pytest.approx(42.9, abs=2)
    assert 0 <= a.efficiency_score <= 100 and a.reasons
    assert {"reduce_consumption", "check_increase"} <= {r.code for r in a.recommendations}
    savings = [r.estimated_saving_kwh_per_month for r in a.recommendations]
    assert savings == sorted(savings, reverse=True)
    few = analyze(me, peers=peers[: MIN_PEERS - 1])
    assert few.peer_comparison is None and few.past_comparison is None


def test_trend_and_weekday_ratio_of_a_growing_office() -> None:
    days = 56
    t = np.arange(days * 24)
    weekday = ((t // 24) + 0) % 7 < 5  # T0 is a Monday
    v = np.where(weekday, 10.0, 4.0) * (1 + 0.01 * (t // 24))
    a = analyze(HourlySeries("o", T0, v, "UTC", "commercial"))
    assert a.weekday_weekend_ratio == pytest.approx(2.5, rel=0.05)
    assert a.trend_percent_per_month > 10
    with pytest.raises(ValueError, match="at least 24 stored hours"):
        analyze(HourlySeries("o", T0, np.full(30, np.nan)))


# --- the shared data loaders -------------------------------------------------------------------------

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA}")
def test_data_loaders_read_every_dataset_as_hourly_series() -> None:
    from bench.eval_forecast import load_lcl, load_lead, load_sgsc, load_uci

    uci, lcl, sgsc = load_uci(DATA), load_lcl(DATA), load_sgsc(DATA)
    lead, labels = load_lead(DATA)
    assert len(uci) == 1 and len(lcl) == 1 and len(sgsc) == 5 and len(lead) == 3
    for s in uci + lcl + sgsc + lead:
        assert s.start_us % HOUR_US == 0 and len(s) > 24 * 200
        v = s.values_kwh[np.isfinite(s.values_kwh)]
        assert (v >= 0).all() and np.isfinite(s.values_kwh).mean() > 0.95
    assert 0.5 < np.nanmean(uci[0].values_kwh) < 2  # kWh per hour of one home
    assert lead[0].category == "commercial" and labels[lead[0].meter_id].sum() > 0
