"""Readings as columns (numpy arrays plus a dictionary of meter ids): the shape in which ingest
validates batches, JetStream carries them and the storage writer copies them, with no per-reading
Python work beyond pulling values out of protobuf."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FLOAT_COLUMNS = (
    "import_energy_wh",
    "export_energy_wh",
    "voltage_v",
    "current_a",
    "active_power_w",
    "power_factor",
    "frequency_hz",
)
# Columns where NaN stands for "the meter did not measure it" (NULL in PostgreSQL).
OPTIONAL_COLUMNS = FLOAT_COLUMNS[2:]


@dataclass(frozen=True)
class ReadingColumns:
    meter_ids: list[str]  # distinct ids; meter_index points into it
    meter_index: np.ndarray  # uint32
    read_time_unix_micros: np.ndarray  # int64
    interval_seconds: np.ndarray  # int32
    import_energy_wh: np.ndarray  # float64, the rest likewise
    export_energy_wh: np.ndarray
    voltage_v: np.ndarray
    current_a: np.ndarray
    active_power_w: np.ndarray
    power_factor: np.ndarray
    frequency_hz: np.ndarray

    def __len__(self) -> int:
        return int(self.meter_index.shape[0])

    def per_row_meter_ids(self) -> np.ndarray:
        return np.asarray(self.meter_ids, dtype=object)[self.meter_index]

    def take(self, rows: np.ndarray) -> ReadingColumns:
        """The readings at `rows` (indices or a boolean mask), with the dictionary pruned to the meters
        they use, kept in dictionary order (so a sorted dictionary stays sorted)."""
        idx = self.meter_index[rows]
        used = np.unique(idx)
        remap = np.zeros(len(self.meter_ids), dtype=np.uint32)
        remap[used] = np.arange(len(used), dtype=np.uint32)
        return ReadingColumns(
            meter_ids=[self.meter_ids[i] for i in used.tolist()],
            meter_index=remap[idx],
            read_time_unix_micros=self.read_time_unix_micros[rows],
            interval_seconds=self.interval_seconds[rows],
            **{c: getattr(self, c)[rows] for c in FLOAT_COLUMNS},
        )

    @staticmethod
    def concat(parts: Sequence[ReadingColumns]) -> ReadingColumns:
        """One batch from several, with one dictionary sorted by meter_id (so that per-meter work, such
        as rollup updates, always locks rows in the same order)."""
        if len(parts) == 1 and parts[0].meter_ids == sorted(parts[0].meter_ids):
            return parts[0]
        ids = sorted({m for p in parts for m in p.meter_ids})
        pos = {m: i for i, m in enumerate(ids)}
        index = [
            np.asarray([pos[m] for m in p.meter_ids], dtype=np.uint32)[p.meter_index]
            if len(p.meter_ids)
            else np.zeros(0, dtype=np.uint32)
            for p in parts
        ]
        return ReadingColumns(
            meter_ids=ids,
            meter_index=np.concatenate(index) if index else np.zeros(0, dtype=np.uint32),
            read_time_unix_micros=np.concatenate([p.read_time_unix_micros for p in parts]),
            interval_seconds=np.concatenate([p.interval_seconds for p in parts]),
            **{c: np.concatenate([getattr(p, c) for p in parts]) for c in FLOAT_COLUMNS},
        )


@dataclass(frozen=True)
class HourlyRollup:
    """Per meter and hour: sums and extremes of the readings whose interval starts in that hour."""

    meter_ids: list[str]
    hour_unix: np.ndarray  # int64 hours since the epoch (UTC)
    import_energy_wh: np.ndarray
    export_energy_wh: np.ndarray
    reading_count: np.ndarray  # int64
    min_voltage_v: np.ndarray  # NaN where no reading of the hour had a voltage
    max_voltage_v: np.ndarray
    max_current_a: np.ndarray
    max_active_power_w: np.ndarray

    def __len__(self) -> int:
        return len(self.meter_ids)


HOUR_MICROS = 3_600_000_000


def hour_of_interval_start(read_time_unix_micros: np.ndarray, interval_seconds: np.ndarray) -> np.ndarray:
    """read_time ends an interval, so a 15-minute reading at 10:00 belongs to the 09:00 hour."""
    start = read_time_unix_micros - interval_seconds.astype(np.int64) * 1_000_000
    return np.floor_divide(start, HOUR_MICROS)


def _reduce(fn: np.ufunc, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return fn.reduceat(values, starts) if len(values) else values[:0]


def rollup_hourly(cols: ReadingColumns) -> HourlyRollup:
    """Groups by (meter, hour) with one sort, no Python loop. Rows come out in (meter_id, hour) order
    when the dictionary is sorted, which ReadingColumns.concat guarantees."""
    hours = hour_of_interval_start(cols.read_time_unix_micros, cols.interval_seconds)
    key = np.lexsort((hours, cols.meter_index))
    m_sorted = cols.meter_index[key]
    h_sorted = hours[key]
    if len(key):
        change = np.flatnonzero((np.diff(m_sorted) != 0) | (np.diff(h_sorted) != 0)) + 1
        starts = np.concatenate(([0], change))
    else:
        starts = np.zeros(0, dtype=np.int64)
    ends = np.append(starts[1:], len(key))
    ids = np.asarray(cols.meter_ids, dtype=object)
    return HourlyRollup(
        meter_ids=list(ids[m_sorted[starts]]) if len(key) else [],
        hour_unix=h_sorted[starts],
        import_energy_wh=_reduce(np.add, cols.import_energy_wh[key], starts),
        export_energy_wh=_reduce(np.add, cols.export_energy_wh[key], starts),
        reading_count=(ends - starts).astype(np.int64),
        min_voltage_v=_reduce(np.fmin, cols.voltage_v[key], starts),
        max_voltage_v=_reduce(np.fmax, cols.voltage_v[key], starts),
        max_current_a=_reduce(np.fmax, cols.current_a[key], starts),
        max_active_power_w=_reduce(np.fmax, cols.active_power_w[key], starts),
    )
