"""Persistence baselines, always available beside the LSTM (and its fallback).

API (history: hourly kWh, 1-D (T,) or a batch (n, T) with time last; the forecast starts right after it):
- `previous_day(history, horizon)`: the last day repeated: p50[h] = history[T - 24 + h % 24]. Needs 24 h.
- `previous_week(history, horizon)`: the last week repeated: p50[h] = history[T - 168 + h % 168]. Needs 168 h.
- `ensemble(history, horizon)`: the mean of the two. Needs 168 h.
- `baseline_quantiles(name, history, horizon) -> (horizon, 3)` (or (n, horizon, 3)): p10/p50/p90 with
  name in BASELINES ("baseline-previous-day", "baseline-previous-week", "baseline-ensemble").
- `best_baseline_name(history)`: the baseline with the lowest in-sample day-ahead MAE over the last
  4 weeks; previous-day with less than 168 h of history (ValueError below 24 h).
- `available_baselines(hours)`: the names that can answer a history of that length.

p10/p90 come from the baseline's own empirical hourly errors over the history (as the proto says):
the forecast it would have made for each past hour at the same lead (day k of the horizon uses
history[t - 24 (k + 1)] for previous-day), over the last ERROR_WINDOW_HOURS; p10 = p50 + the 10th
percentile of the errors, p90 = p50 + the 90th, clipped at 0 and never crossing p50. The errors are
additive (kWh) and pooled over all hours of the day. When the history is too short for at least
MIN_ERRORS of the baseline's own errors (previous-week needs 168 + 24 h), the errors of previous-day
persistence stand in; with less than 48 h, the deviations of the hours from their median.
Missing hours (NaN) in the source hour of a p50 are replaced by the other persistence source, else by
the history's mean at that hour of the day, else its mean.
"""

from __future__ import annotations

import warnings

import numpy as np

DAY = 24
WEEK = 168
PREVIOUS_DAY = "baseline-previous-day"
PREVIOUS_WEEK = "baseline-previous-week"
ENSEMBLE = "baseline-ensemble"
BASELINES: tuple[str, ...] = (PREVIOUS_DAY, PREVIOUS_WEEK, ENSEMBLE)
MIN_HOURS = {PREVIOUS_DAY: DAY, PREVIOUS_WEEK: WEEK, ENSEMBLE: WEEK}
ERROR_WINDOW_HOURS = 28 * DAY
MIN_ERRORS = 24


def _as2d(history: np.ndarray) -> tuple[np.ndarray, bool]:
    h = np.asarray(history, dtype=np.float64)
    if h.ndim == 1:
        return h[None, :], True
    if h.ndim != 2:
        raise ValueError(f"history must be (T,) or (n, T), got shape {h.shape}")
    return h, False


def _need(name: str, hours: int) -> None:
    need = MIN_HOURS[name]
    if hours < need:
        raise ValueError(f"{name} needs at least {need} hours of history, got {hours}")


def available_baselines(hours: int) -> tuple[str, ...]:
    """The baselines that can forecast from a history of `hours` hours."""
    return tuple(name for name in BASELINES if hours >= MIN_HOURS[name])


def _repeat(h: np.ndarray, period: int, horizon: int) -> np.ndarray:
    T = h.shape[1]
    return h[:, T - period + np.arange(horizon) % period]


def _hour_of_day_mean(h: np.ndarray, horizon: int) -> np.ndarray:
    """Each forecast hour's mean over the same hour of the day in the history (NaN-aware)."""
    T = h.shape[1]
    days = T // DAY
    if days == 0:
        return np.repeat(np.nanmean(h, axis=1, keepdims=True), horizon, axis=1)
    last = h[:, T - days * DAY :].reshape(len(h), days, DAY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        prof = np.nanmean(last, axis=1)
        overall = np.nanmean(h, axis=1, keepdims=True)
    prof = np.where(np.isfinite(prof), prof, overall)
    return prof[:, np.arange(horizon) % DAY]


def _fill(p50: np.ndarray, *alternatives: np.ndarray) -> np.ndarray:
    out = p50
    for alt in alternatives:
        out = np.where(np.isfinite(out), out, alt)
    return np.where(np.isfinite(out), out, 0.0)


def _point(name: str, h: np.ndarray, horizon: int) -> np.ndarray:
    _need(name, h.shape[1])
    day = _repeat(h, DAY, horizon)
    prof = _hour_of_day_mean(h, horizon)
    if name == PREVIOUS_DAY:
        week = _repeat(h, WEEK, horizon) if h.shape[1] >= WEEK else prof
        return _fill(day, week, prof)
    week = _repeat(h, WEEK, horizon)
    if name == PREVIOUS_WEEK:
        return _fill(week, day, prof)
    if name == ENSEMBLE:
        both = (day + week) / 2.0
        return _fill(both, week, day, prof)
    raise ValueError(f"unknown baseline {name!r}; use one of {', '.join(BASELINES)}")


def previous_day(history: np.ndarray, horizon: int) -> np.ndarray:
    """p50 of previous-day persistence: (horizon,) or (n, horizon)."""
    h, one = _as2d(history)
    out = _point(PREVIOUS_DAY, h, horizon)
    return out[0] if one else out


def previous_week(history: np.ndarray, horizon: int) -> np.ndarray:
    """p50 of previous-week persistence: (horizon,) or (n, horizon)."""
    h, one = _as2d(history)
    out = _point(PREVIOUS_WEEK, h, horizon)
    return out[0] if one else out


def ensemble(history: np.ndarray, horizon: int) -> np.ndarray:
    """p50 of the persistence ensemble (mean of previous-day and previous-week)."""
    h, one = _as2d(history)
    out = _point(ENSEMBLE, h, horizon)
    return out[0] if one else out


def _errors(name: str, h: np.ndarray, lead_day: int) -> np.ndarray:
    """(n, m) in-sample errors y[t] - forecast[t] of the baseline at lead day k over the last
    ERROR_WINDOW_HOURS hours (NaN where undefined); m may be 0."""
    T = h.shape[1]
    lag_d = DAY * (lead_day + 1)
    lag = lag_d if name == PREVIOUS_DAY else WEEK
    lo = max(lag, T - ERROR_WINDOW_HOURS)
    if lo >= T:
        return np.zeros((len(h), 0))
    t = np.arange(lo, T)
    if name == PREVIOUS_DAY:
        return h[:, t] - h[:, t - lag_d]
    if name == PREVIOUS_WEEK:
        return h[:, t] - h[:, t - WEEK]
    return h[:, t] - (h[:, t - lag_d] + h[:, t - WEEK]) / 2.0


def _error_quantiles(name: str, h: np.ndarray, lead_day: int) -> np.ndarray:
    """(n, 2): the 10th and 90th percentiles of the baseline's errors at that lead day."""
    n = len(h)
    out = np.full((n, 2), np.nan)
    candidates: list[np.ndarray] = [_errors(name, h, lead_day)]
    if name != PREVIOUS_DAY:
        candidates.append(_errors(PREVIOUS_DAY, h, min(lead_day, max(0, h.shape[1] // DAY - 2))))
    else:
        for k in range(lead_day - 1, -1, -1):  # shorter leads when the history is short
            candidates.append(_errors(PREVIOUS_DAY, h, k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(h, axis=1, keepdims=True)
        candidates.append(h - med)
        for e in candidates:
            todo = ~np.isfinite(out[:, 0])
            if not todo.any():
                break
            if e.shape[1] == 0:
                continue
            enough = todo & (np.isfinite(e).sum(axis=1) >= MIN_ERRORS)
            if enough.any():
                out[enough] = np.nanquantile(e[enough], [0.1, 0.9], axis=1).T
        # A history with too few known hours: no interval at all rather than an invented one.
        out = np.where(np.isfinite(out), out, 0.0)
    return out


def baseline_quantiles(name: str, history: np.ndarray, horizon: int) -> np.ndarray:
    """p10/p50/p90 of a baseline: (horizon, 3) for a 1-D history, (n, horizon, 3) for a batch."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; use one of {', '.join(BASELINES)}")
    h, one = _as2d(history)
    p50 = _point(name, h, horizon)
    out = np.empty((len(h), horizon, 3))
    out[:, :, 1] = p50
    for k in range(0, (horizon + DAY - 1) // DAY):
        q = _error_quantiles(name, h, k)
        sl = slice(k * DAY, min(horizon, (k + 1) * DAY))
        out[:, sl, 0] = p50[:, sl] + q[:, :1]
        out[:, sl, 2] = p50[:, sl] + q[:, 1:]
    out = np.maximum(out, 0.0)
    out[:, :, 0] = np.minimum(out[:, :, 0], out[:, :, 1])
    out[:, :, 2] = np.maximum(out[:, :, 2], out[:, :, 1])
    return out[0] if one else out


def in_sample_mae(name: str, history: np.ndarray) -> np.ndarray:
    """(n,) day-ahead MAE of the baseline over the last 4 weeks of the history where all three
    baselines are defined (NaN when there is no such hour)."""
    h, _ = _as2d(history)
    e = _errors(name, h, 0)
    T = h.shape[1]
    lo = max(WEEK, T - ERROR_WINDOW_HOURS)
    e = e[:, e.shape[1] - max(0, T - lo) :] if e.shape[1] else e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.abs(e), axis=1) if e.shape[1] else np.full(len(h), np.nan)


def best_baseline_name(history: np.ndarray) -> str:
    """The baseline to answer from for a 1-D history: the lowest in-sample day-ahead MAE over the last
    4 weeks; the ensemble when fewer than MIN_ERRORS hours can compare them (it is the best persistence
    forecast on average, BuildingsBench); previous-day below 168 h."""
    h = np.asarray(history, dtype=np.float64).reshape(-1)
    if len(h) < DAY:
        raise ValueError(f"a baseline forecast needs at least {DAY} hours of history, got {len(h)}")
    if len(h) < WEEK:
        return PREVIOUS_DAY
    if len(h) - WEEK < MIN_ERRORS:
        return ENSEMBLE
    mae = [float(in_sample_mae(name, h)[0]) for name in BASELINES]
    if not np.isfinite(mae).any():
        return ENSEMBLE
    return BASELINES[int(np.nanargmin(mae))]
