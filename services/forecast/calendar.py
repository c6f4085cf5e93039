"""Calendar features of forecast hours, in the meter's local time, with the deployment's holidays.

API:
- `HolidayCalendar(dates: Iterable[datetime.date] = ())`: a set of local dates treated as holidays;
  `date in calendar`, `len()`, `ordinals()`. `HolidayCalendar.from_env_value("2026-01-26,2026-08-15")`
  parses the deployment setting: ISO dates (YYYY-MM-DD) separated by commas, semicolons or
  whitespace; empty means no holidays. A bad date raises ValueError naming it.
- `calendar_features(start_us, hours, time_zone, holidays) -> np.ndarray (hours, F)` float32:
  FEATURE_NAMES = hour-of-day sin/cos, weekday sin/cos (Monday = 0), month sin/cos (the position in
  the year by month and day of the month), holiday flag (1 on the local dates of the calendar).
- `calendar_features_batch(start_us (n,), hours, time_zones, holidays) -> (n, hours, F)`: the same for
  many meters, computed once per distinct time zone over the union of the ranges.

A holiday is a whole local day (the deployment lists the dates in the meters' own calendar); one
calendar serves the whole deployment. The holiday flag is what lets the model treat a holiday like a
Sunday, which persistence cannot.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

HOUR_US = 3_600_000_000
FEATURE_NAMES: tuple[str, ...] = (
    "hour_sin",
    "hour_cos",
    "weekday_sin",
    "weekday_cos",
    "month_sin",
    "month_cos",
    "holiday",
)
FEATURE_COUNT = len(FEATURE_NAMES)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


class HolidayCalendar:
    """Public holidays as local dates, e.g. HolidayCalendar([date(2026, 1, 26), date(2026, 8, 15)])."""

    def __init__(self, dates: Iterable[dt.date] = ()) -> None:
        self.dates: frozenset[dt.date] = frozenset(
            d.date() if isinstance(d, dt.datetime) else d for d in dates
        )
        self._ordinals = np.array(sorted(d.toordinal() for d in self.dates), dtype=np.int64)

    @classmethod
    def from_env_value(cls, value: str | None) -> HolidayCalendar:
        """Parses the deployment's holiday list, e.g. "2026-01-26,2026-08-15,2026-10-02"."""
        dates = []
        for item in re.split(r"[,;\s]+", (value or "").strip()):
            if not item:
                continue
            try:
                dates.append(dt.date.fromisoformat(item))
            except ValueError:
                raise ValueError(
                    f"holiday {item!r} is not a date: list holidays as YYYY-MM-DD separated by commas, "
                    "e.g. 2026-01-26,2026-08-15"
                ) from None
        return cls(dates)

    def __contains__(self, day: object) -> bool:
        return day in self.dates

    def __len__(self) -> int:
        return len(self.dates)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HolidayCalendar) and self.dates == other.dates

    def __hash__(self) -> int:
        return hash(self.dates)

    def __repr__(self) -> str:
        return f"HolidayCalendar({len(self.dates)} dates)"

    def ordinals(self) -> np.ndarray:
        """The dates as proleptic Gregorian ordinals (date.toordinal()), sorted."""
        return self._ordinals


@lru_cache(maxsize=256)
def _zone(name: str) -> dt.tzinfo:
    if not name or name.upper() == "UTC":
        return dt.UTC
    try:
        return ZoneInfo(name)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError for malformed keys
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as 'Asia/Kolkata'") from exc


def local_offsets_us(start_us: int, hours: int, time_zone: str) -> np.ndarray:
    """UTC offset (microseconds) of the local clock at the start of each hour."""
    tz = _zone(time_zone)
    if tz is dt.UTC:
        return np.zeros(hours, dtype=np.int64)
    base = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(start_us))
    out = np.empty(hours, dtype=np.int64)
    step = dt.timedelta(hours=1)
    t = base
    for i in range(hours):
        off = t.astimezone(tz).utcoffset()
        out[i] = int(off // dt.timedelta(microseconds=1)) if off is not None else 0
        t += step
    return out


def _features_from_local(local_us: np.ndarray, holidays: HolidayCalendar | None) -> np.ndarray:
    """Features of hours given their local wall-clock start as microseconds since 1970-01-01 local."""
    local_h = np.floor_divide(local_us, HOUR_US)
    hour = np.mod(local_h, 24).astype(np.float64)
    days = np.floor_divide(local_h, 24)
    weekday = np.mod(days + 3, 7).astype(np.float64)  # 1970-01-01 was a Thursday (Monday = 0)
    d64 = days.astype("datetime64[D]")
    month0 = (d64.astype("datetime64[M]").astype(np.int64) % 12).astype(np.float64)
    month_start = d64.astype("datetime64[M]").astype("datetime64[D]")
    next_month = (d64.astype("datetime64[M]") + 1).astype("datetime64[D]")
    day_frac = (d64 - month_start).astype(np.float64) / (next_month - month_start).astype(np.float64)
    month_pos = month0 + day_frac
    out = np.empty((*local_us.shape, FEATURE_COUNT), dtype=np.float32)
    out[..., 0] = np.sin(2 * np.pi * hour / 24)
    out[..., 1] = np.cos(2 * np.pi * hour / 24)
    out[..., 2] = np.sin(2 * np.pi * weekday / 7)
    out[..., 3] = np.cos(2 * np.pi * weekday / 7)
    out[..., 4] = np.sin(2 * np.pi * month_pos / 12)
    out[..., 5] = np.cos(2 * np.pi * month_pos / 12)
    if holidays is not None and len(holidays):
        out[..., 6] = np.isin(days + _EPOCH_ORDINAL, holidays.ordinals())
    else:
        out[..., 6] = 0.0
    return out


def local_hour_starts_us(start_us: int, hours: int, time_zone: str) -> np.ndarray:
    """Local wall-clock start of each hour (microseconds since 1970-01-01 local)."""
    utc = int(start_us) + np.arange(hours, dtype=np.int64) * HOUR_US
    return utc + local_offsets_us(start_us, hours, time_zone)


def calendar_features(
    start_us: int, hours: int, time_zone: str, holidays: HolidayCalendar | None
) -> np.ndarray:
    """(hours, F) float32 features of the hours starting at start_us (UTC), in time_zone's local time."""
    return _features_from_local(local_hour_starts_us(start_us, hours, time_zone), holidays)


def calendar_features_batch(
    start_us: np.ndarray, hours: int, time_zones: Sequence[str], holidays: HolidayCalendar | None
) -> np.ndarray:
    """(n, hours, F) features for n ranges [start_us[i], start_us[i] + hours h), one time zone each."""
    starts = np.asarray(start_us, dtype=np.int64).reshape(-1)
    n = len(starts)
    if len(time_zones) != n:
        raise ValueError(f"{n} start times but {len(time_zones)} time zones")
    local = np.empty((n, hours), dtype=np.int64)
    steps = np.arange(hours, dtype=np.int64) * HOUR_US
    zones = np.asarray([z or "UTC" for z in time_zones], dtype=object)
    phase = starts % HOUR_US  # 0 for series on whole UTC hours; grouped so offsets line up
    for zone, ph in dict.fromkeys(zip(zones.tolist(), phase.tolist(), strict=True)):
        rows = np.flatnonzero((zones == zone) & (phase == ph))
        lo = int(starts[rows].min())
        span = int((starts[rows].max() - lo) // HOUR_US) + hours
        off = local_offsets_us(lo, span, zone)
        idx = ((starts[rows] - lo) // HOUR_US)[:, None] + np.arange(hours)[None, :]
        local[rows] = starts[rows][:, None] + steps[None, :] + off[idx]
    return _features_from_local(local, holidays)
