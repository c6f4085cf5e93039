"""Hourly consumption series for forecasting: aggregation of interval readings to hours and gap filling.

API:
- `HourlySeries(meter_id, start_us, values_kwh, time_zone="UTC", category="")`: kWh per hour from
  start_us (UTC, on a whole hour); value i covers [start_us + i h, start_us + (i + 1) h); NaN = missing.
  `end_us` (end of the last hour), `len()`, `hour_index(t_us)`, `slice_us(start_us, end_us)`.
- `to_hourly(meter_id, read_time_us, interval_seconds, energy_wh, *, time_zone="UTC", start_us=None,
  end_us=None) -> HourlySeries`: 15-minute, 30-minute and hourly readings to hours.
- `fill_gaps(values, *, max_gap_hours=6, context_hours=168) -> np.ndarray`: short gaps filled, longer
  gaps in the last context_hours raise `GapTooLong(start_index, length)` (a ValueError).

Conventions (as services.ingest.columns.rollup_hourly): a reading's read_time is the END of its
interval, so a 15-minute reading at 10:00 covers 09:45-10:00 and belongs to the 09:00 hour. Readings
with the same read_time are duplicates (a head-end resending): the last one in the input wins. An hour
whose intervals are only partly present is scaled up to the whole hour (sum * 3600 / seconds covered)
when at least half of it is covered, else it is NaN: a half-empty hour says little about the hour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOUR_US = 3_600_000_000
DAY_HOURS = 24
WEEK_HOURS = 168
DEFAULT_MAX_GAP_HOURS = 6


@dataclass(frozen=True)
class HourlySeries:
    meter_id: str
    start_us: int  # UTC start of the first hour, on a whole hour
    values_kwh: np.ndarray  # float64 kWh per hour, NaN = missing
    time_zone: str = "UTC"
    category: str = ""

    def __post_init__(self) -> None:
        if int(self.start_us) % HOUR_US:
            raise ValueError(f"series {self.meter_id!r}: start_us {self.start_us} is not on a whole hour")
        object.__setattr__(self, "start_us", int(self.start_us))
        object.__setattr__(self, "values_kwh", np.asarray(self.values_kwh, dtype=np.float64).reshape(-1))

    def __len__(self) -> int:
        return len(self.values_kwh)

    @property
    def end_us(self) -> int:
        """End of the last hour (exclusive)."""
        return self.start_us + len(self.values_kwh) * HOUR_US

    def hour_index(self, t_us: int) -> int:
        """Index of the hour starting at t_us (may be outside 0..len)."""
        return (int(t_us) - self.start_us) // HOUR_US

    def slice_us(self, start_us: int, end_us: int) -> HourlySeries:
        """The hours in [start_us, end_us), clipped to the series."""
        a = max(0, self.hour_index(start_us))
        b = min(len(self), max(a, self.hour_index(end_us)))
        return HourlySeries(
            self.meter_id,
            self.start_us + a * HOUR_US,
            self.values_kwh[a:b].copy(),
            self.time_zone,
            self.category,
        )


def to_hourly(
    meter_id: str,
    read_time_us: np.ndarray,
    interval_seconds: np.ndarray,
    energy_wh: np.ndarray,
    *,
    time_zone: str = "UTC",
    start_us: int | None = None,
    end_us: int | None = None,
) -> HourlySeries:
    """Hourly kWh from interval readings (read_time = end of the interval, in unix microseconds).

    interval_seconds must divide an hour (900, 1800, 3600, ...). The result covers [start_us, end_us)
    (whole hours; default: the first to the last hour with a reading). Readings outside are ignored.
    """
    t = np.asarray(read_time_us, dtype=np.int64).reshape(-1)
    sec = np.broadcast_to(np.asarray(interval_seconds, dtype=np.int64), t.shape)
    e = np.broadcast_to(np.asarray(energy_wh, dtype=np.float64), t.shape)
    if len(sec) and ((sec <= 0).any() or (3600 % sec).any()):
        bad = int(sec[(sec <= 0) | (3600 % np.maximum(sec, 1) != 0)][0])
        raise ValueError(
            f"meter {meter_id!r}: interval_seconds {bad} does not divide an hour; "
            "use 900 (15 min), 1800 (30 min) or 3600 (1 h) readings"
        )
    for name, v in (("start_us", start_us), ("end_us", end_us)):
        if v is not None and int(v) % HOUR_US:
            raise ValueError(f"meter {meter_id!r}: {name} {v} is not on a whole hour")
    # Drop NaN energies (missing readings) and duplicates (same read_time; the last one wins).
    keep = np.isfinite(e)
    t, sec, e = t[keep], sec[keep], e[keep]
    if len(t):
        rev = np.arange(len(t))[::-1]
        _, first_in_rev = np.unique(t[rev], return_index=True)
        pick = np.sort(rev[first_in_rev])
        t, sec, e = t[pick], sec[pick], e[pick]
    hour = np.floor_divide(t - sec * 1_000_000, HOUR_US)
    if start_us is None:
        if not len(hour):
            raise ValueError(
                f"meter {meter_id!r}: no readings and no start_us/end_us to place an empty series"
            )
        start_h = int(hour.min())
    else:
        start_h = int(start_us) // HOUR_US
    end_h = int(hour.max()) + 1 if end_us is None else int(end_us) // HOUR_US
    n = max(0, end_h - start_h)
    inside = (hour >= start_h) & (hour < end_h)
    idx = (hour[inside] - start_h).astype(np.int64)
    total = np.bincount(idx, weights=e[inside], minlength=n)[:n]
    covered = np.bincount(idx, weights=sec[inside].astype(np.float64), minlength=n)[:n]
    # A partly covered hour is scaled up to the whole hour. More than 3600 s covered happens only with
    # overlapping readings of different lengths (15-minute and hourly for the same hour): their mean.
    factor = np.where(covered >= 1800, 3600.0 / np.maximum(covered, 1.0), np.nan)
    kwh = total / 1000.0 * factor
    return HourlySeries(meter_id, start_h * HOUR_US, kwh, time_zone)


class GapTooLong(ValueError):
    """A run of missing hours too long to fill, inside the hours the forecaster needs."""

    def __init__(
        self,
        start_index: int,
        length: int,
        max_gap_hours: int = DEFAULT_MAX_GAP_HOURS,
        context_hours: int = WEEK_HOURS,
    ) -> None:
        self.start_index = int(start_index)
        self.length = int(length)
        self.max_gap_hours = int(max_gap_hours)
        super().__init__(
            f"{self.length} consecutive missing hours starting at hour {self.start_index} of the history, "
            f"inside the last {context_hours} hours the forecast needs: at most {self.max_gap_hours} "
            "missing hours in a row can be filled; send the missing hours or a history ending before the gap"
        )


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in mask."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)]


def fill_gaps(
    values: np.ndarray, *, max_gap_hours: int = DEFAULT_MAX_GAP_HOURS, context_hours: int = WEEK_HOURS
) -> np.ndarray:
    """A copy of the hourly values with short gaps filled.

    A gap of at most max_gap_hours between two known hours is interpolated linearly. A short gap at
    the end (the last hours not read yet) or at the start takes the same hour a week earlier, else a
    day earlier (at the start: a day, else a week, later), else the nearest known value. A longer
    gap raises GapTooLong when any of it lies in the last context_hours hours (the forecaster's
    context); earlier long gaps and the leading missing hours before the first known one (when they
    end before the context) are left NaN: the model does not need them.
    """
    v = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    n = len(v)
    missing = ~np.isfinite(v)
    if not missing.any():
        return v
    ctx_start = max(0, n - context_hours)
    known = np.flatnonzero(~missing)
    if not len(known):
        raise GapTooLong(0, n, max_gap_hours, context_hours)
    for s, length in _runs(missing):
        e = s + length  # exclusive
        leading, trailing = s == 0, e == n
        if length > max_gap_hours:
            if e > ctx_start:
                raise GapTooLong(s, length, max_gap_hours, context_hours)
            continue
        if not leading and not trailing:
            x0, x1 = v[s - 1], v[e]
            frac = np.arange(1, length + 1) / (length + 1)
            v[s:e] = x0 + (x1 - x0) * frac
            continue
        for i in range(s, e) if not leading else range(e - 1, s - 1, -1):
            lags = (WEEK_HOURS, DAY_HOURS) if trailing else (-DAY_HOURS, -WEEK_HOURS)
            for lag in lags:
                j = i - lag
                if 0 <= j < n and np.isfinite(v[j]):
                    v[i] = v[j]
                    break
            else:
                v[i] = v[i - 1] if trailing else v[i + 1]
    return v
