"""Per-meter state of the anomaly detector, kept as columns: what the rules and the learned detectors
need to know about each meter's past (last reading, flat-line run, export history, night baseline,
hour-of-week profile, electrical statistics, the unfinished local day), updated a whole batch of
readings at a time with numpy and persisted as one compact, versioned record per meter.

Every meter owns a slot; each field of its state (`_RECORD`) lives in a numpy array indexed by slot.
A batch is sorted once by (slot, read_time) and folded in with grouped numpy operations (bincount,
unique, maximum.accumulate), so the cost per reading is a few dozen vectorised operations whatever the
batch size; Python loops run only per time zone, per distinct hour of the batch, per completed day,
and per meter only for a dictionary lookup and an identity check of its MeterInfo.

Persisted format, version 1 (`dirty()`, `snapshot()`, `load()`): one byte 0x01, then one packed
little-endian `_RECORD` (2185 bytes): never pickle, exact round trip, a new layout gets a new version.

Statistics are "capped running" means and variances: exact running mean/variance (Chan's parallel
merge) until a bucket has `window` observations, after which the old statistics keep the weight of
`window` observations, so each new one weighs about 1/(window+1), like an EWMA that starts without bias.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from services.anomaly.model import MeterInfo
from services.ingest.columns import FLOAT_COLUMNS, ReadingColumns

NO_TIME = int(np.iinfo(np.int64).min)  # "never": unknown read time, no open episode, no current day
HOURS_PER_WEEK = 168
HOUR_US = 3_600_000_000
DAY_US = 86_400_000_000
FORMAT_VERSION = 1
EPISODE_COLUMNS = 7  # open-episode slots per meter; rules.py decides which kind uses which column

# Defaults used when update() runs without the rule layer (the rule layer passes its own masks).
DEFAULT_NIGHT_HOURS = (0, 5)
DEFAULT_LOAD_CURRENT_A = 0.5
DEFAULT_LOAD_POWER_W = 50.0

# Effective memory (in observations) of the capped running statistics.
PROFILE_WINDOW = 16  # per hour-of-week bucket: ~4 weeks of 15-minute readings
NIGHT_WINDOW = 400  # night baseline: ~20 nights of 15-minute readings
ELECTRICAL_WINDOW = 2000  # voltage/current/power: ~3 weeks of 15-minute readings

_ELECTRICAL = ("voltage_v", "current_a", "active_power_w")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday: (day + 3) % 7 has Monday = 0

# One meter's state. Little-endian and packed, so the bytes are the same on every machine and the
# persisted record is simply version byte + record bytes.
_RECORD = np.dtype(
    [
        ("last_read_us", "<i8"),  # newest read_time folded in (NO_TIME: none yet)
        ("first_read_us", "<i8"),  # oldest in-order read_time ever folded in
        ("reading_count", "<i8"),  # in-order readings folded in
        ("flat_count", "<i8"),  # length of the flat run the last reading ended (0: not flat)
        ("flat_start_us", "<i8"),  # read_time of that run's first reading
        ("day", "<i8"),  # local day number (days since 1970-01-01 local) of the unfinished day
        ("episode_start_us", "<i8", (EPISODE_COLUMNS,)),  # open rule episodes (see rules.py)
        ("episode_count", "<i8", (EPISODE_COLUMNS,)),
        ("ever_exported", "u1"),  # 1 once any reading had export_energy_wh > 0
        ("last_values", "<f8", (len(FLOAT_COLUMNS),)),  # FLOAT_COLUMNS of the newest reading
        ("night", "<f8", (3,)),  # night import energy rate (Wh/h): mean, variance, count
        ("electrical", "<f8", (3, 3)),  # voltage, current, active power x mean, variance, count
        ("how_mean", "<f4", (HOURS_PER_WEEK,)),  # hour-of-week import energy rate (Wh/h)
        ("how_var", "<f4", (HOURS_PER_WEEK,)),
        ("how_count", "<u2", (HOURS_PER_WEEK,)),  # saturates at 65535
        ("day_wh", "<f8", (24,)),  # unfinished day's import energy per local hour (NaN: no reading)
    ]
)


def _empty_record() -> np.ndarray:
    r = np.zeros((), dtype=_RECORD)
    for f in ("last_read_us", "first_read_us", "flat_start_us", "day", "episode_start_us"):
        r[f] = NO_TIME
    r["last_values"] = np.nan
    r["night"] = (np.nan, np.nan, 0.0)
    r["electrical"][:, :2] = np.nan
    r["how_mean"] = np.nan
    r["how_var"] = np.nan
    r["day_wh"] = np.nan
    return r


_EMPTY = _empty_record()


def _new_columns(capacity: int) -> dict[str, np.ndarray]:
    """Empty state for `capacity` slots, one array per field of _RECORD (struct of arrays: a batch
    touches a few fields of many meters, which is cache-friendlier than one record per meter)."""
    out = {}
    for name in _RECORD.names:
        field = _RECORD.fields[name][0]
        a = np.empty((capacity, *field.shape), dtype=field.base)
        a[...] = _EMPTY[name]
        out[name] = a
    return out


@dataclass(frozen=True)
class RowBaseline:
    """Per reading (in the batch's row order): the meter's typical values before the batch, NaN when
    unknown. Energy rates are Wh per hour (import_energy_wh * 3600 / interval_seconds); the energy
    statistics are those of the row's local hour-of-week bucket."""

    energy_mean_wh_per_h: np.ndarray
    energy_std_wh_per_h: np.ndarray
    energy_count: np.ndarray  # int64 observations in the bucket
    voltage_mean_v: np.ndarray
    voltage_std_v: np.ndarray
    current_mean_a: np.ndarray
    current_std_a: np.ndarray
    power_mean_w: np.ndarray
    power_std_w: np.ndarray
    # Night baseline (the phantom-load rule's reference) and where the row sits in local time.
    night_mean_wh_per_h: np.ndarray
    night_std_wh_per_h: np.ndarray
    night_count: np.ndarray  # int64
    hour_of_week: np.ndarray  # int64, local, of the interval start; Monday 00:00-01:00 = 0
    energy_wh_per_h: np.ndarray  # the row's own import energy rate

    def __len__(self) -> int:
        return int(self.energy_count.shape[0])


@dataclass(frozen=True)
class CompletedDays:
    """Local days that a batch completed (a reading of a later local day arrived), grouped by meter,
    days ascending. energy_wh holds import energy per local hour, bucketed by the local hour in which
    each reading's interval starts: on a 23-hour DST day the skipped hour is NaN, on a 25-hour day
    the repeated hour holds the energy of both."""

    meter_ids: list[str]
    day_start_us: np.ndarray  # int64: local midnight as UTC unix microseconds
    energy_wh: np.ndarray  # (n, 24) float64, NaN where the hour had no reading
    scale_wh: np.ndarray  # (n,) typical hourly energy: mean of the hour-of-week profile, NaN if unknown

    def __len__(self) -> int:
        return len(self.meter_ids)

    @staticmethod
    def empty() -> CompletedDays:
        return CompletedDays([], np.zeros(0, np.int64), np.zeros((0, 24)), np.zeros(0))


# ---------------------------------------------------------------------------------------------------
# Local time


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    """The zone; UTC for a name zoneinfo does not know (a bad registration must not stop the detector)."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return ZoneInfo("UTC")


def _offset_at_us(tz: str, utc_us: int) -> int:
    moment = _EPOCH + timedelta(microseconds=utc_us)
    off = moment.astimezone(_zone(tz)).utcoffset()
    return 0 if off is None else off // _ONE_US


@functools.lru_cache(maxsize=1 << 16)
def _hour_offsets(tz: str, hour: int) -> tuple[int, int]:
    """UTC offsets (µs) of zone tz at the first and the last microsecond of UTC hour `hour`."""
    return _offset_at_us(tz, hour * HOUR_US), _offset_at_us(tz, (hour + 1) * HOUR_US - 1)


@functools.lru_cache(maxsize=1 << 16)
def local_midnight_us(tz: str, day: int) -> int:
    """Local midnight starting local day `day` (days since 1970-01-01 local) as UTC µs. A midnight
    that DST skips resolves like zoneinfo does with fold=0 (the offset before the transition)."""
    aware = (_EPOCH_NAIVE + timedelta(days=day)).replace(tzinfo=_zone(tz))
    return (aware - _EPOCH) // _ONE_US


def utc_offsets_us(tz: str, utc_us: np.ndarray) -> np.ndarray:
    """UTC offset (µs) of zone tz at each instant: computed with zoneinfo once per distinct UTC hour
    of the batch, and per row only in hours that contain a transition (zones whose transitions are
    not on a whole UTC hour, such as America/St_Johns)."""
    if tz in ("UTC", "Etc/UTC", "") or not len(utc_us):
        return np.zeros(len(utc_us), dtype=np.int64)
    hours = np.floor_divide(utc_us, HOUR_US)
    lo, hi = int(hours.min()), int(hours.max())
    if hi - lo < 4096:
        span = range(lo, hi + 1)
        pairs = np.array([_hour_offsets(tz, h) for h in span], dtype=np.int64).reshape(-1, 2)
        inv = hours - lo
    else:
        uh, inv = np.unique(hours, return_inverse=True)
        pairs = np.array([_hour_offsets(tz, h) for h in uh.tolist()], dtype=np.int64).reshape(-1, 2)
    off = pairs[inv, 0]
    split = pairs[:, 0] != pairs[:, 1]
    if split.any():
        for r in np.flatnonzero(split[inv]).tolist():
            off[r] = _offset_at_us(tz, int(utc_us[r]))
    return off


def solar_label(info: MeterInfo) -> int:
    """From labels["solar"]: 1 registered with solar (export expected), -1 registered without, 0 not said."""
    v = str(info.labels.get("solar", "")).strip().lower()
    if v in ("true", "yes", "1"):
        return 1
    if v in ("false", "no", "0"):
        return -1
    return 0


# ---------------------------------------------------------------------------------------------------
# Statistics helpers


def _group_stats(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Distinct keys, and per key: count, mean and sum of squared deviations of `values`."""
    uk, inv = np.unique(keys, return_inverse=True)
    n = np.bincount(inv, minlength=len(uk)).astype(np.float64)
    mean = np.bincount(inv, weights=values, minlength=len(uk)) / n
    d = values - mean[inv]
    m2 = np.bincount(inv, weights=d * d, minlength=len(uk))
    return uk, n, mean, m2


def _slot_stats(b: Batch, ok: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Like _group_stats keyed by meter slot, for the rows `ok`, using the batch's sorted groups."""
    gid = b.group[ok]
    k = len(b.group_slot)
    n = np.bincount(gid, minlength=k).astype(np.float64)
    x = values[ok]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(gid, weights=x, minlength=k) / n
    d = x - mean[gid]
    m2 = np.bincount(gid, weights=d * d, minlength=k)
    has = n > 0
    return b.group_slot[has], n[has], mean[has], m2[has]


def _merge(
    mean_a: np.ndarray,
    var_a: np.ndarray,
    n_a: np.ndarray,
    window: int,
    n_b: np.ndarray,
    mean_b: np.ndarray,
    m2_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan's merge of (old statistics, weighted as at most `window` observations) with a new group."""
    w_a = np.minimum(n_a, window).astype(np.float64)
    known = n_a > 0
    mean_a = np.where(known, mean_a, 0.0)
    var_a = np.where(known, var_a, 0.0)
    w = w_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * n_b / w
    var = (var_a * w_a + m2_b + delta * delta * w_a * n_b / w) / w
    return mean, np.maximum(var, 0.0), n_a + n_b


def _nan_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(a), b, np.where(np.isnan(b), a, a + b))


def _std(var: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, np.sqrt(var), np.nan)


# ---------------------------------------------------------------------------------------------------
# A batch lined up against the state


class Batch:
    """One batch of readings lined up against a StateTable before it is folded in: rows sorted by
    (meter slot, read_time) (stable, so of two readings with the same read_time the first in the batch
    comes first), each row's local time, and for the rows that extend the meter's sequence ("in
    order": newer than every reading folded in so far and not a duplicate read_time) the previous
    reading. Arrays are in sorted order unless named otherwise; `order[i]` is sorted row i's index in
    the batch. The rule layer sets `night`, `learn` and `flat` before update(); update() derives the
    defaults when they are None."""

    def __init__(self, state: StateTable, cols: ReadingColumns, meters: Mapping[str, MeterInfo]):
        self.state = state
        self.cols = cols
        infos = list(map(meters.get, cols.meter_ids))
        if any(map(operator.is_, infos, itertools.repeat(None))):  # `None in` would call __eq__
            infos = [i if i is not None else MeterInfo(m) for m, i in zip(cols.meter_ids, infos, strict=True)]
        self.infos: list[MeterInfo] = infos
        self.meter_slot = state.slots(cols.meter_ids)
        n = len(cols)
        self.n = n
        rec = state._rec
        mi0 = cols.meter_index.astype(np.int64)
        slot0 = self.meter_slot[mi0] if n else np.zeros(0, np.int64)
        time0 = cols.read_time_unix_micros.astype(np.int64)
        order = np.lexsort((time0, slot0))
        self.order = order
        self.mi = mi0[order]
        self.slot = slot0[order]
        self.time = time0[order]
        self.interval_s = cols.interval_seconds.astype(np.int64)[order]
        self.values = {c: getattr(cols, c)[order] for c in FLOAT_COLUMNS}

        # Meter attributes per row, from the state's per-slot cache of them.
        state._refresh_attributes(self.meter_slot, self.infos)
        self.nominal_v = state._attr[self.slot, 0]
        self.rated_a = state._attr[self.slot, 1]
        self.solar = state._attr[self.slot, 2].astype(np.int64)
        self.category_code = state._category_code[self.slot]

        # Sequence.
        self.first = np.ones(n, dtype=bool)
        self.first[1:] = self.slot[1:] != self.slot[:-1]
        self.group = np.cumsum(self.first) - 1  # rank of the row's meter among the batch's meters
        self.group_slot = self.slot[self.first]
        self.dup = np.zeros(n, dtype=bool)  # same read_time as the previous row of the same meter
        self.dup[1:] = ~self.first[1:] & (self.time[1:] == self.time[:-1])
        self.last_read_before = rec["last_read_us"][self.slot]
        self.first_read_before = rec["first_read_us"][self.slot]
        self.ever_exported_before = rec["ever_exported"][self.slot] > 0
        self.in_order = (self.time > self.last_read_before) & ~self.dup
        io = np.flatnonzero(self.in_order)
        self.io = io
        io_slot = self.slot[io]
        self.io_first = np.ones(len(io), dtype=bool)
        self.io_first[1:] = io_slot[1:] != io_slot[:-1]
        self.io_last = np.ones(len(io), dtype=bool)
        self.io_last[:-1] = io_slot[1:] != io_slot[:-1]
        io_time = self.time[io]
        self.prev_time = np.empty(len(io), dtype=np.int64)
        if len(io):
            self.prev_time[1:] = io_time[:-1]
            self.prev_time[self.io_first] = self.last_read_before[io][self.io_first]
        last_values = rec["last_values"][io_slot]
        self.prev_values = {}
        for j, c in enumerate(FLOAT_COLUMNS):
            v = self.values[c][io]
            p = np.empty(len(io))
            if len(io):
                p[1:] = v[:-1]
                p[self.io_first] = last_values[self.io_first, j]
            self.prev_values[c] = p

        # Local time of each interval's start.
        start = self.time - self.interval_s * 1_000_000
        offsets = np.zeros(n, dtype=np.int64)
        tz_code = state._tz_code[self.slot]
        distinct = np.unique(state._tz_code[self.meter_slot]).tolist() if n else []
        if len(distinct) == 1:
            offsets = utc_offsets_us(state._tz_names[distinct[0]], start)
        else:
            for code in distinct:
                rows = np.flatnonzero(tz_code == code)
                offsets[rows] = utc_offsets_us(state._tz_names[code], start[rows])
        local = start + offsets
        self.local_day = np.floor_divide(local, DAY_US)
        self.local_hour = np.floor_divide(local, HOUR_US) % 24
        self.hour_of_week = ((self.local_day + _EPOCH_WEEKDAY) % 7) * 24 + self.local_hour
        with np.errstate(divide="ignore", invalid="ignore"):
            self.rate = np.where(
                self.interval_s > 0,
                self.values["import_energy_wh"] * 3600.0 / np.maximum(self.interval_s, 1),
                np.nan,
            )

        # Set by the rule layer (sorted-order masks; flat: per in-order row).
        self.night: np.ndarray | None = None
        self.learn: np.ndarray | None = None
        self.flat: tuple[np.ndarray, np.ndarray] | None = None

    def unsort(self, x: np.ndarray) -> np.ndarray:
        """A sorted-order array back in the batch's row order."""
        out = np.empty_like(x)
        out[self.order] = x
        return out

    def category_in(self, categories: Iterable[str]) -> np.ndarray:
        """Rows whose meter's category is one of `categories`."""
        codes = [self.state._category_index[c] for c in categories if c in self.state._category_index]
        return np.isin(self.category_code, codes)

    def night_mask(self, start_hour: int, end_hour: int) -> np.ndarray:
        """Rows whose interval starts in local hours [start_hour, end_hour) (wrapping past midnight)."""
        h = self.local_hour
        if start_hour <= end_hour:
            return (h >= start_hour) & (h < end_hour)
        return (h >= start_hour) | (h < end_hour)

    def loaded(self, min_current_a: float, min_power_w: float) -> np.ndarray:
        """Rows whose current or active power says a load is drawn from the grid. Current is a
        magnitude, so it counts only while nothing is exported and power is not negative."""
        v = self.values
        p = v["active_power_w"]
        by_current = (v["current_a"] > min_current_a) & ~(v["export_energy_wh"] > 0) & ~(p < 0)
        return (p > min_power_w) | by_current

    def flat_runs(self, loaded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per in-order row: the length of the flat run it ends (0 when not flat) and the read_time of
        the run's first reading. A reading is flat when it repeats the previous non-zero import energy
        (unless its measured active power accounts for that energy: a constant load), when it records
        zero import energy while a load is drawn, or when it repeats every value of the previous reading
        while something flows (export, current or power not zero). A run of k equal values is k readings
        long: it includes the first reading of the value. Zero energy with no current or power (an empty
        house at night) is never flat."""
        io = self.io
        n = len(io)
        if not n:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        imp = self.values["import_energy_wh"][io]
        exp = self.values["export_energy_wh"][io]
        prev = self.prev_values
        pw = self.values["active_power_w"][io]
        cur = self.values["current_a"][io]
        ident = (exp > 0) | (cur > 0) | ((pw != 0) & np.isfinite(pw))
        for c in FLOAT_COLUMNS:
            a, b = self.values[c][io], prev[c]
            ident &= (a == b) | (np.isnan(a) & np.isnan(b))
        # A constant load (a pump's standby, a street light) repeats its energy exactly on a meter with
        # coarse resolution; when the measured power accounts for the energy, the register is working.
        explained = np.abs(pw * self.interval_s[io] / 3600.0 - imp) <= np.maximum(0.5, 0.02 * imp)
        eq = (imp == prev["import_energy_wh"]) & (imp > 0) & ~explained
        pair = eq | ident
        stuck = pair | ((imp == 0) & loaded[io])
        prev_stuck = np.zeros(n, dtype=bool)
        prev_stuck[1:] = stuck[:-1]
        prev_stuck &= ~self.io_first
        starts = stuck & ~prev_stuck
        idx = np.arange(n)
        start_idx = np.maximum.accumulate(np.where(starts, idx, 0))
        rec = self.state._rec
        io_slot = self.slot[io]
        carry_n = np.where(self.io_first, rec["flat_count"][io_slot], 0)
        carry_t = rec["flat_start_us"][io_slot]
        carry = self.io_first & (carry_n > 0)
        base = np.where(carry, carry_n, pair.astype(np.int64))
        base_t = np.where(carry, carry_t, np.where(pair, self.prev_time, self.time[io]))
        run = np.where(stuck, base[start_idx] + idx - start_idx + 1, 0)
        run_start = np.where(stuck, base_t[start_idx], NO_TIME)
        return run.astype(np.int64), run_start.astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# The table


class StateTable:
    """Columnar per-meter state: a slot per meter; one numpy array per field of _RECORD, indexed by slot
    and grown geometrically."""

    def __init__(self, capacity: int = 64) -> None:
        self._ids: list[str] = []
        self._slot: dict[str, int] = {}
        self._cap = max(capacity, 1)
        self._rec = _new_columns(self._cap)
        self._dirty = np.zeros(self._cap, dtype=bool)
        # Meter attributes per slot (not persisted): refreshed whenever a batch brings a different
        # MeterInfo object than the one they were taken from, so a cached registry costs one identity
        # check per meter and batch.
        self._info: list[MeterInfo | None] = []
        self._info_id = np.zeros(self._cap, dtype=np.int64)
        self._attr = np.zeros((self._cap, 3))  # nominal voltage, rated current, solar label
        self._tz_code = np.zeros(self._cap, dtype=np.int64)
        self._category_code = np.zeros(self._cap, dtype=np.int64)
        self._tz_names: list[str] = ["UTC"]
        self._tz_index: dict[str, int] = {"UTC": 0}
        self._category_names: list[str] = ["residential"]
        self._category_index: dict[str, int] = {"residential": 0}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self._slot

    @property
    def meter_ids(self) -> list[str]:
        return list(self._ids)

    # -- slots --------------------------------------------------------------------------------------

    def _grow(self, need: int) -> None:
        cap = self._cap
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        n = len(self._ids)
        rec = _new_columns(cap)
        for name, a in rec.items():
            a[:n] = self._rec[name][:n]
        self._rec, self._cap = rec, cap
        self._dirty = np.concatenate([self._dirty[:n], np.zeros(cap - n, dtype=bool)])
        self._attr = np.concatenate([self._attr[:n], np.zeros((cap - n, 3))])
        self._info_id = np.concatenate([self._info_id[:n], np.zeros(cap - n, dtype=np.int64)])
        self._tz_code = np.concatenate([self._tz_code[:n], np.zeros(cap - n, dtype=np.int64)])
        self._category_code = np.concatenate([self._category_code[:n], np.zeros(cap - n, dtype=np.int64)])

    def slots(self, meter_ids: Sequence[str]) -> np.ndarray:
        """The slot of each meter (int64), creating empty state for meters not seen before."""
        out = np.fromiter(map(self._slot.get, meter_ids, itertools.repeat(-1)), np.int64, len(meter_ids))
        missing = np.flatnonzero(out < 0)
        if missing.size:
            for i in missing.tolist():
                m = meter_ids[i]
                s = self._slot.get(m)
                if s is None:
                    s = len(self._ids)
                    self._grow(s + 1)
                    self._ids.append(m)
                    self._info.append(None)
                    self._slot[m] = s
                out[i] = s
        return out

    def _refresh_attributes(self, slots: np.ndarray, infos: Sequence[MeterInfo]) -> None:
        # id() is safe as an identity test here: _info holds a reference, so the id is not reused.
        ids = np.fromiter(map(id, infos), np.int64, len(infos))
        for j in np.flatnonzero(self._info_id[slots] != ids).tolist():
            s, info = int(slots[j]), infos[j]
            self._info[s] = info
            self._info_id[s] = ids[j]
            self._attr[s] = (info.nominal_voltage_v, info.rated_current_a, solar_label(info))
            self._tz_code[s] = self._code(self._tz_names, self._tz_index, info.time_zone)
            self._category_code[s] = self._code(self._category_names, self._category_index, info.category)

    @staticmethod
    def _code(names: list[str], index: dict[str, int], name: str) -> int:
        code = index.get(name)
        if code is None:
            code = index[name] = len(names)
            names.append(name)
        return code

    def _lookup(self, meter_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter(map(self._slot.get, meter_ids, itertools.repeat(-1)), np.int64, len(meter_ids))

    # -- reading the state ---------------------------------------------------------------------------

    def batch(self, cols: ReadingColumns, meters: Mapping[str, MeterInfo]) -> Batch:
        """The batch lined up against this state (creates empty slots for new meters)."""
        return Batch(self, cols, meters)

    def last_read_us(self, meter_ids: Sequence[str]) -> np.ndarray:
        """Newest read_time folded in per meter (int64 µs), NO_TIME for meters never seen."""
        s = self._lookup(meter_ids)
        out = np.full(len(s), NO_TIME, dtype=np.int64)
        known = s >= 0
        out[known] = self._rec["last_read_us"][s[known]]
        return out

    def episodes(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Open rule episodes of these slots: start read_time and reading count, (n, EPISODE_COLUMNS)."""
        return self._rec["episode_start_us"][slots], self._rec["episode_count"][slots]

    def set_episodes(self, column: int, slots: np.ndarray, start_us: np.ndarray, count: np.ndarray) -> None:
        """Records the open episode of one rule (count 0: none open) for these slots."""
        self._rec["episode_start_us"][slots, column] = np.where(count > 0, start_us, NO_TIME)
        self._rec["episode_count"][slots, column] = count
        self._dirty[slots] = True

    def row_baseline(
        self, cols: ReadingColumns, meters: Mapping[str, MeterInfo], *, batch: Batch | None = None
    ) -> RowBaseline:
        """Each row's meter's typical values before this batch (see RowBaseline). Changes no meter's
        state (it may give new meters an empty slot)."""
        b = batch if batch is not None else self.batch(cols, meters)
        rec = self._rec
        s, how = b.slot, b.hour_of_week
        count = rec["how_count"][s, how].astype(np.int64)
        mean = np.where(count > 0, rec["how_mean"][s, how].astype(np.float64), np.nan)
        std = _std(rec["how_var"][s, how].astype(np.float64), count)
        night = rec["night"][s]
        elec = rec["electrical"][s]
        ec = elec[:, :, 2]
        u = b.unsort
        return RowBaseline(
            energy_mean_wh_per_h=u(mean),
            energy_std_wh_per_h=u(std),
            energy_count=u(count),
            voltage_mean_v=u(elec[:, 0, 0]),
            voltage_std_v=u(_std(elec[:, 0, 1], ec[:, 0])),
            current_mean_a=u(elec[:, 1, 0]),
            current_std_a=u(_std(elec[:, 1, 1], ec[:, 1])),
            power_mean_w=u(elec[:, 2, 0]),
            power_std_w=u(_std(elec[:, 2, 1], ec[:, 2])),
            night_mean_wh_per_h=u(night[:, 0]),
            night_std_wh_per_h=u(_std(night[:, 1], night[:, 2])),
            night_count=u(night[:, 2].astype(np.int64)),
            hour_of_week=u(b.hour_of_week),
            energy_wh_per_h=u(b.rate),
        )

    # -- folding a batch in ---------------------------------------------------------------------------

    def update(
        self, cols: ReadingColumns, meters: Mapping[str, MeterInfo], *, batch: Batch | None = None
    ) -> CompletedDays:
        """Folds the batch into the state and returns the local days it completed. Rows are taken per
        meter in read_time order; readings not newer than the meter's last one (late or duplicate)
        leave the sequence (last reading, flat-line run, gaps, the current day) alone but still teach
        the statistical profiles (unless a rule flagged them, see Batch.learn, or their read_time was
        seen already: a duplicate)."""
        b = batch if batch is not None else self.batch(cols, meters)
        if b.state is not self:
            raise ValueError("the batch was lined up against another StateTable; use this table's batch()")
        if b.n == 0:
            return CompletedDays.empty()
        rec = self._rec
        learn = b.learn if b.learn is not None else np.ones(b.n, dtype=bool)
        # A second reading with a read_time already seen is a duplicate (a redelivery): learn it once.
        learn = learn & ~b.dup & (b.time != b.last_read_before)
        night = b.night if b.night is not None else b.night_mask(*DEFAULT_NIGHT_HOURS)
        if b.flat is None:
            b.flat = b.flat_runs(b.loaded(DEFAULT_LOAD_CURRENT_A, DEFAULT_LOAD_POWER_W))
        flat_len, flat_start = b.flat

        # Completed days first: they read the unfinished day as it was before the batch.
        days = self._fold_days(b)

        # Sequence: last reading, flat run, first read, count.
        io = b.io
        if len(io):
            io_slot = b.slot[io]
            last = b.io_last
            ls = io_slot[last]
            rec["last_read_us"][ls] = b.time[io][last]
            last_rows = io[last]
            rec["last_values"][ls] = np.stack([b.values[c][last_rows] for c in FLOAT_COLUMNS], axis=1)
            rec["flat_count"][ls] = flat_len[last]
            rec["flat_start_us"][ls] = flat_start[last]
            fs = io_slot[b.io_first]
            fresh = rec["first_read_us"][fs] == NO_TIME
            rec["first_read_us"][fs[fresh]] = b.time[io][b.io_first][fresh]
            counts = np.diff(np.append(np.flatnonzero(b.io_first), len(io)))
            rec["reading_count"][fs] += counts

        exported = b.values["export_energy_wh"] > 0
        if exported.any():
            rec["ever_exported"][b.slot[exported]] = 1

        # Hour-of-week profile of the import energy rate.
        ok = learn & np.isfinite(b.rate)
        if ok.any():
            keys = b.slot[ok] * HOURS_PER_WEEK + b.hour_of_week[ok]
            uk, n, mean, m2 = _group_stats(keys, b.rate[ok])
            s, h = uk // HOURS_PER_WEEK, uk % HOURS_PER_WEEK
            old_n = rec["how_count"][s, h].astype(np.int64)
            mean, var, cnt = _merge(
                rec["how_mean"][s, h].astype(np.float64),
                rec["how_var"][s, h].astype(np.float64),
                old_n,
                PROFILE_WINDOW,
                n,
                mean,
                m2,
            )
            rec["how_mean"][s, h] = mean.astype(np.float32)
            rec["how_var"][s, h] = var.astype(np.float32)
            rec["how_count"][s, h] = np.minimum(cnt, np.iinfo(np.uint16).max).astype(np.uint16)

        # Night baseline.
        ok_night = ok & night
        if ok_night.any():
            uk, n, mean, m2 = _slot_stats(b, ok_night, b.rate)
            nb = rec["night"][uk]
            mean, var, cnt = _merge(nb[:, 0], nb[:, 1], nb[:, 2], NIGHT_WINDOW, n, mean, m2)
            rec["night"][uk] = np.stack([mean, var, cnt], axis=1)

        # Voltage, current and active power.
        for j, c in enumerate(_ELECTRICAL):
            v = b.values[c]
            ok_c = learn & np.isfinite(v)
            if not ok_c.any():
                continue
            uk, n, mean, m2 = _slot_stats(b, ok_c, v)
            e = rec["electrical"][uk, j]
            mean, var, cnt = _merge(e[:, 0], e[:, 1], e[:, 2], ELECTRICAL_WINDOW, n, mean, m2)
            rec["electrical"][uk, j] = np.stack([mean, var, cnt], axis=1)

        self._dirty[b.slot[b.first]] = True
        if len(days[0]):
            return self._completed(*days)
        return CompletedDays.empty()

    def _fold_days(self, b: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Accumulates in-order rows into local days; returns the completed days as (slot, local day,
        energy (n, 24)), grouped by meter, days ascending."""
        rec = self._rec
        io = b.io
        none = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 24)))
        if not len(io):
            return none
        sl = b.slot[io]
        hour = b.local_hour[io]
        imp = b.values["import_energy_wh"][io]
        state_day = rec["day"][sl]
        day = b.local_day[io]
        day = np.where(state_day == NO_TIME, day, np.maximum(day, state_day))
        # A fall-back transition at midnight can step the local day back: keep days monotone per meter.
        gid = np.cumsum(b.io_first) - 1
        d0 = day.min()
        width = int(day.max() - d0) + 1
        day = np.maximum.accumulate(gid * width + (day - d0)) - gid * width + d0

        seg_start = b.io_first.copy()
        seg_start[1:] |= day[1:] != day[:-1]
        seg = np.cumsum(seg_start) - 1
        nseg = int(seg[-1]) + 1
        finite = np.isfinite(imp)
        cell = seg * 24 + hour
        energy = np.bincount(cell, weights=np.where(finite, imp, 0.0), minlength=nseg * 24)
        seen = np.bincount(cell, weights=finite.astype(np.float64), minlength=nseg * 24)
        energy = np.where(seen > 0, energy, np.nan).reshape(nseg, 24)

        first_rows = np.flatnonzero(seg_start)
        seg_slot = sl[first_rows]
        seg_day = day[first_rows]
        seg_meter_first = b.io_first[first_rows]
        seg_meter_last = np.ones(nseg, dtype=bool)
        seg_meter_last[:-1] = seg_slot[1:] != seg_slot[:-1]
        sd = rec["day"][seg_slot]
        same = seg_meter_first & (seg_day == sd)
        if same.any():
            energy[same] = _nan_add(rec["day_wh"][seg_slot[same]], energy[same])
        closes_state = seg_meter_first & (sd != NO_TIME) & (seg_day > sd)

        # Completed: the state's unfinished day where the batch reaches a later day, and every
        # segment but each meter's last. Ranks keep them grouped by meter, days ascending.
        done = ~seg_meter_last
        c_slot = np.concatenate([seg_slot[closes_state], seg_slot[done]])
        c_day = np.concatenate([sd[closes_state], seg_day[done]])
        c_energy = np.concatenate([rec["day_wh"][seg_slot[closes_state]], energy[done]])
        rank = np.concatenate([np.flatnonzero(closes_state) - 0.5, np.flatnonzero(done).astype(float)])
        o = np.argsort(rank, kind="stable")

        last = seg_meter_last
        rec["day"][seg_slot[last]] = seg_day[last]
        rec["day_wh"][seg_slot[last]] = energy[last]
        return c_slot[o], c_day[o], c_energy[o]

    def _completed(self, slots: np.ndarray, day: np.ndarray, energy: np.ndarray) -> CompletedDays:
        rec = self._rec
        tz = [self._tz_names[c] for c in self._tz_code[slots].tolist()]
        start = np.fromiter(
            (local_midnight_us(z, d) for z, d in zip(tz, day.tolist(), strict=True)), np.int64, len(slots)
        )
        cnt = rec["how_count"][slots] > 0
        total = np.where(cnt, rec["how_mean"][slots].astype(np.float64), 0.0).sum(axis=1)
        k = cnt.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(k > 0, total / np.maximum(k, 1), np.nan)
        return CompletedDays(
            meter_ids=[self._ids[s] for s in slots.tolist()],
            day_start_us=start,
            energy_wh=np.ascontiguousarray(energy, dtype=np.float64),
            scale_wh=scale,
        )

    # -- copies and persistence -----------------------------------------------------------------------

    def subset(self, meter_ids: Iterable[str], *, keep_sequence: bool = True) -> StateTable:
        """An independent deep copy of these meters' state (meters never seen are left out). With
        keep_sequence=False the copy keeps what was learned (profiles, baselines, export history) but
        forgets the sequence (last reading, flat run, open episodes, unfinished day), so that readings
        older than the meter's newest one (stored history) are scored as a sequence of their own."""
        ids = [m for m in dict.fromkeys(meter_ids) if m in self._slot]
        out = StateTable(capacity=max(len(ids), 1))
        if ids:
            s = self._lookup(ids)
            out._ids = ids
            out._info = [None] * len(ids)
            out._slot = {m: i for i, m in enumerate(ids)}
            for name, a in out._rec.items():
                a[: len(ids)] = self._rec[name][s]
            if not keep_sequence:
                for f in (
                    "last_read_us",
                    "first_read_us",
                    "reading_count",
                    "flat_count",
                    "flat_start_us",
                    "day",
                    "episode_start_us",
                    "episode_count",
                    "last_values",
                    "day_wh",
                ):
                    out._rec[f][: len(ids)] = _EMPTY[f]
        return out

    def record(self, meter_id: str) -> np.ndarray:
        """A copy of one meter's state as a 0-d _RECORD (for inspection and tests)."""
        return self._records(self._lookup([meter_id]))[0]

    def _records(self, slots: np.ndarray) -> np.ndarray:
        if (slots < 0).any():
            raise KeyError("no state for some of the meters")
        out = np.empty(len(slots), dtype=_RECORD)
        for name, a in self._rec.items():
            out[name] = a[slots]
        return out

    def _encode(self, slots: np.ndarray) -> list[bytes]:
        buf = self._records(slots).tobytes()
        size = _RECORD.itemsize
        version = bytes((FORMAT_VERSION,))
        return [version + buf[i * size : (i + 1) * size] for i in range(len(slots))]

    def snapshot(self, meter_ids: Iterable[str] | None = None) -> list[tuple[str, bytes]]:
        """(meter_id, encoded state) of these meters (default: all), skipping meters never seen."""
        ids = list(self._ids) if meter_ids is None else [m for m in meter_ids if m in self._slot]
        return list(zip(ids, self._encode(self._lookup(ids)), strict=True))

    def dirty(self) -> list[tuple[str, bytes]]:
        """(meter_id, encoded state) of the meters changed since clear_dirty()."""
        slots = np.flatnonzero(self._dirty[: len(self._ids)])
        return list(zip([self._ids[s] for s in slots.tolist()], self._encode(slots), strict=True))

    def clear_dirty(self) -> None:
        self._dirty[:] = False

    def load(self, rows: Iterable[tuple[str, bytes]]) -> None:
        """Replaces the state of each meter with its encoded state (from dirty() or snapshot())."""
        latest = {}
        for meter_id, data in rows:
            decode_record(meter_id, data)  # validates
            latest[meter_id] = data
        if not latest:
            return
        slots = self.slots(list(latest))
        recs = np.frombuffer(b"".join(d[1:] for d in latest.values()), dtype=_RECORD)
        for name, a in self._rec.items():
            a[slots] = recs[name]


def decode_record(meter_id: str, data: bytes) -> np.ndarray:
    """One meter's encoded state as a 0-d record. Format 1: one byte 0x01, then the packed
    little-endian record `_RECORD` (_RECORD.itemsize bytes)."""
    if not data:
        raise ValueError(f"state of meter {meter_id!r} is empty; expected format version {FORMAT_VERSION}")
    version = data[0]
    if version != FORMAT_VERSION:
        raise ValueError(
            f"state of meter {meter_id!r} has format version {version}; this build reads only "
            f"version {FORMAT_VERSION} (drop the stored state to relearn it, or run a newer build)"
        )
    if len(data) != 1 + _RECORD.itemsize:
        raise ValueError(
            f"state of meter {meter_id!r} is {len(data)} bytes; format {FORMAT_VERSION} has "
            f"{1 + _RECORD.itemsize}"
        )
    return np.frombuffer(data, dtype=_RECORD, count=1, offset=1)[0]


RECORD_BYTES = 1 + _RECORD.itemsize
