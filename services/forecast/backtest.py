"""Backtests on the BuildingsBench protocol: any forecaster, the same windows, the same metrics.

API:
- `PredictFn = Callable[[contexts (n, 168) kWh, start_us (n,), time_zones list[str]], (n, 24, 3) kWh]`:
  a batch of contexts, the UTC start of each window's first forecast hour and each meter's time zone
  -> p10/p50/p90. `baseline_predict_fn(name)` makes one for a persistence baseline;
  `services.forecast.training.model_predict_fn(model, holidays)` for the LSTM.
- `windows(series, start_us, end_us)` -> `Windows` (contexts, actuals, start_us, time zones, meter of
  each window): every 24-hour window whose first hour starts in [start_us, end_us) at a stride of
  24 h from start_us, ends by end_us, and has 168 h of history before it in the series.
- `backtest(predict_fn, series, start_us, end_us) -> Metrics` (start_us/end_us: one time for all
  series, or one per series); `score(windows, forecasts) -> Metrics`; `summarize(per_meter) -> Metrics`.
- `Metrics(nrmse_percent, mae_kwh, mape_percent, coverage, meter_count, window_count, per_meter)`;
  `MeterMetrics` (the same figures of one meter); `Metrics.coverage_percent`.

Protocol (BuildingsBench, Emami et al. 2023): 168 h of history, a 24 h horizon, windows rolling over
the test period with a stride of 24 h; each metric is computed per meter over all its windows' hours,
then the median across meters is reported:
- NRMSE% = RMSE(p50) / mean(actual) * 100 (a meter whose actual mean is not positive has none);
- MAE = mean |p50 - actual|, kWh per hour;
- MAPE% = mean |p50 - actual| / actual * 100 over the hours with actual > 0 only: zero hours are
  left out (the proto's "hours with non-zero actual consumption"); NaN when a meter has none, and
  the median is over the meters that have one (NaN when none has). Near-zero hours still inflate it:
  read it beside NRMSE, never alone;
- coverage = the share of actual hours inside [p10, p90], as a fraction 0-1 (ideal 0.8).
Missing hours: a window's history gets fill_gaps (up to 6 hours in a row); a window whose history
has a longer gap is skipped; missing actual hours are left out of the metrics; a window without any
actual hour is skipped. `window_count` counts the windows scored.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.forecast.baselines import baseline_quantiles
from services.forecast.series import HOUR_US, GapTooLong, HourlySeries, fill_gaps

CONTEXT_HOURS = 168
HORIZON_HOURS = 24
STRIDE_HOURS = 24
MAX_GAP_HOURS = 6
CHUNK = 4096

PredictFn = Callable[[np.ndarray, np.ndarray, list[str]], np.ndarray]


@dataclass(frozen=True)
class MeterMetrics:
    meter_id: str
    nrmse_percent: float
    mae_kwh: float
    mape_percent: float
    coverage: float
    window_count: int
    hour_count: int


@dataclass(frozen=True)
class Metrics:
    nrmse_percent: float  # median over meters
    mae_kwh: float
    mape_percent: float  # NaN when undefined
    coverage: float  # share of actual hours inside [p10, p90], 0-1
    meter_count: int
    window_count: int
    per_meter: tuple[MeterMetrics, ...] = field(default=(), compare=False, repr=False)

    @property
    def coverage_percent(self) -> float:
        return self.coverage * 100.0


@dataclass(frozen=True)
class Windows:
    contexts: np.ndarray  # (n, 168) kWh, gaps filled
    actuals: np.ndarray  # (n, 24) kWh, NaN = missing
    start_us: np.ndarray  # (n,) UTC start of the first forecast hour
    time_zones: list[str]
    meter_ids: list[str]  # of each window
    skipped: int = 0  # windows left out for a history gap too long to fill or no actual hour

    def __len__(self) -> int:
        return len(self.start_us)


def _per_series(value: int | Sequence[int] | np.ndarray, n: int, name: str) -> list[int]:
    if np.ndim(value) == 0:
        return [int(value)] * n  # type: ignore[arg-type]
    out = [int(v) for v in value]  # type: ignore[union-attr]
    if len(out) != n:
        raise ValueError(f"{name}: {len(out)} values for {n} series")
    return out


def windows(
    series: Sequence[HourlySeries],
    start_us: int | Sequence[int] | np.ndarray,
    end_us: int | Sequence[int] | np.ndarray,
    *,
    context_hours: int = CONTEXT_HOURS,
    horizon: int = HORIZON_HOURS,
    stride_hours: int = STRIDE_HOURS,
    max_gap_hours: int = MAX_GAP_HOURS,
) -> Windows:
    """The backtest windows of the series over [start_us, end_us) (see the module docstring)."""
    starts = _per_series(start_us, len(series), "start_us")
    ends = _per_series(end_us, len(series), "end_us")
    ctx: list[np.ndarray] = []
    act: list[np.ndarray] = []
    t0s: list[int] = []
    zones: list[str] = []
    ids: list[str] = []
    skipped = 0
    for s, lo, hi in zip(series, starts, ends, strict=True):
        first = -(-lo // HOUR_US) * HOUR_US  # the first whole hour at or after lo
        i = max(s.hour_index(first), context_hours)
        # keep the stride anchored on start_us even when the series starts later
        i += (-(i - s.hour_index(first))) % stride_hours
        last = min(len(s), s.hour_index(hi))
        v = s.values_kwh
        while i + horizon <= last:
            a = v[i : i + horizon]
            if not np.isfinite(a).any():
                skipped += 1
                i += stride_hours
                continue
            try:
                c = fill_gaps(
                    v[i - context_hours : i], max_gap_hours=max_gap_hours, context_hours=context_hours
                )
            except GapTooLong:
                skipped += 1
                i += stride_hours
                continue
            ctx.append(c)
            act.append(a)
            t0s.append(s.start_us + i * HOUR_US)
            zones.append(s.time_zone or "UTC")
            ids.append(s.meter_id)
            i += stride_hours
    return Windows(
        contexts=np.array(ctx, dtype=np.float64).reshape(-1, context_hours),
        actuals=np.array(act, dtype=np.float64).reshape(-1, horizon),
        start_us=np.array(t0s, dtype=np.int64),
        time_zones=zones,
        meter_ids=ids,
        skipped=skipped,
    )


def forecast(predict_fn: PredictFn, w: Windows, *, chunk: int = CHUNK) -> np.ndarray:
    """(n, horizon, 3) forecasts of predict_fn for the windows, in chunks."""
    horizon = w.actuals.shape[1]
    out = np.empty((len(w), horizon, 3))
    for s in range(0, len(w), chunk):
        e = min(len(w), s + chunk)
        f = np.asarray(predict_fn(w.contexts[s:e], w.start_us[s:e], w.time_zones[s:e]), dtype=np.float64)
        if f.shape != (e - s, horizon, 3):
            raise ValueError(f"predict_fn returned shape {f.shape}, expected {(e - s, horizon, 3)}")
        out[s:e] = f
    return out


def _median(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else float("nan")


def summarize(per_meter: Sequence[MeterMetrics]) -> Metrics:
    """Medians across meters of their metrics."""
    pm = tuple(per_meter)
    return Metrics(
        nrmse_percent=_median([m.nrmse_percent for m in pm]),
        mae_kwh=_median([m.mae_kwh for m in pm]),
        mape_percent=_median([m.mape_percent for m in pm]),
        coverage=_median([m.coverage for m in pm]),
        meter_count=len(pm),
        window_count=sum(m.window_count for m in pm),
        per_meter=pm,
    )


def score(w: Windows, forecasts: np.ndarray) -> Metrics:
    """Metrics of forecasts (n, horizon, 3) against the windows' actuals."""
    f = np.asarray(forecasts, dtype=np.float64)
    y = w.actuals
    ok = np.isfinite(y)
    p10, p50, p90 = f[..., 0], f[..., 1], f[..., 2]
    ids = np.asarray(w.meter_ids, dtype=object)
    per: list[MeterMetrics] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for m in dict.fromkeys(w.meter_ids):
            rows = ids == m
            k = ok[rows]
            a = y[rows][k]
            p = p50[rows][k]
            err = p - a
            mean = float(a.mean()) if len(a) else float("nan")
            rmse = float(np.sqrt(np.mean(err**2))) if len(a) else float("nan")
            pos = a > 0
            per.append(
                MeterMetrics(
                    meter_id=str(m),
                    nrmse_percent=rmse / mean * 100.0 if mean > 0 else float("nan"),
                    mae_kwh=float(np.mean(np.abs(err))) if len(a) else float("nan"),
                    mape_percent=float(np.mean(np.abs(err[pos]) / a[pos]) * 100.0)
                    if pos.any()
                    else float("nan"),
                    coverage=float(np.mean((a >= p10[rows][k]) & (a <= p90[rows][k])))
                    if len(a)
                    else float("nan"),
                    window_count=int(rows.sum()),
                    hour_count=len(a),
                )
            )
    return summarize(per)


def backtest(
    predict_fn: PredictFn,
    series: Sequence[HourlySeries],
    start_us: int | Sequence[int] | np.ndarray,
    end_us: int | Sequence[int] | np.ndarray,
) -> Metrics:
    """BuildingsBench backtest of predict_fn over [start_us, end_us) of every series."""
    w = windows(series, start_us, end_us)
    if len(w) == 0:
        return summarize([])
    return score(w, forecast(predict_fn, w))


def baseline_predict_fn(name: str, *, horizon: int = HORIZON_HOURS) -> PredictFn:
    """A PredictFn for a persistence baseline (its quantiles from the context's own errors)."""

    def predict(contexts: np.ndarray, start_us: np.ndarray, time_zones: list[str]) -> np.ndarray:
        return baseline_quantiles(
            name, np.asarray(contexts, dtype=np.float64).reshape(len(contexts), -1), horizon
        )

    return predict
