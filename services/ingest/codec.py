"""Conversions between protobuf readings and ReadingColumns: the client's row-oriented Reading list
in, the columnar ReadingBatch that travels on the READINGS stream in and out."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

import numpy as np
from metermesh.common.v1 import common_pb2

from services.ingest.columns import FLOAT_COLUMNS, OPTIONAL_COLUMNS, ReadingColumns

# One C-level call per reading pulls every field out of the upb message; a Python loop touching each
# field costs about twice as much, and this is the hottest loop of ingest.
_FIELDS = (
    "meter_id",
    "read_time.seconds",
    "read_time.nanos",
    "interval_seconds",
    *FLOAT_COLUMNS,
)
_get_fields = attrgetter(*_FIELDS)


def from_readings(
    readings: Sequence[common_pb2.Reading],
) -> tuple[ReadingColumns, np.ndarray, np.ndarray]:
    """Returns the columns plus, per reading, whether meter_id and read_time were given."""
    n = len(readings)
    if n == 0:
        empty = np.zeros(0, dtype=bool)
        return columns_from_arrays([], [], [], [], [[] for _ in FLOAT_COLUMNS]), empty, empty
    rows = list(map(_get_fields, readings))
    mids, secs, nanos, intervals, *floats = zip(*rows, strict=True)
    cols = columns_from_arrays(mids, secs, nanos, intervals, floats)
    # proto3 `optional` doubles read as 0.0 when unset: only the zeros need a presence check.
    for name in OPTIONAL_COLUMNS:
        values = getattr(cols, name)
        for i in np.flatnonzero(values == 0.0).tolist():
            if not readings[i].HasField(name):
                values[i] = np.nan
    has_time = (np.asarray(secs, dtype=np.int64) != 0) | (np.asarray(nanos, dtype=np.int64) != 0)
    for i in np.flatnonzero(~has_time).tolist():
        has_time[i] = readings[i].HasField("read_time")
    has_meter = np.fromiter((bool(m) for m in mids), dtype=bool, count=n)
    return cols, has_meter, has_time


def columns_from_arrays(
    mids: Sequence[str],
    secs: Sequence[int],
    nanos: Sequence[int],
    intervals: Sequence[int],
    floats: Sequence[Sequence[float]],
) -> ReadingColumns:
    pos: dict[str, int] = {}
    index = np.fromiter((pos.setdefault(m, len(pos)) for m in mids), dtype=np.uint32, count=len(mids))
    micros = np.asarray(secs, dtype=np.int64) * 1_000_000 + np.asarray(nanos, dtype=np.int64) // 1000
    return ReadingColumns(
        meter_ids=list(pos),
        meter_index=index,
        read_time_unix_micros=micros,
        interval_seconds=np.asarray(intervals, dtype=np.int32),
        **{name: np.array(vals, dtype=np.float64) for name, vals in zip(FLOAT_COLUMNS, floats, strict=True)},
    )


def to_batch(cols: ReadingColumns) -> common_pb2.ReadingBatch:
    return common_pb2.ReadingBatch(
        meter_ids=cols.meter_ids,
        meter_index=cols.meter_index.tolist(),
        read_time_unix_micros=cols.read_time_unix_micros.tolist(),
        interval_seconds=cols.interval_seconds.tolist(),
        **{name: getattr(cols, name).tolist() for name in FLOAT_COLUMNS},
    )


class BadBatch(ValueError):
    """A READINGS message that does not decode to a consistent batch."""


def from_batch(data: bytes) -> ReadingColumns:
    try:
        batch = common_pb2.ReadingBatch.FromString(data)
    except Exception as exc:
        raise BadBatch(f"not a metermesh.common.v1.ReadingBatch: {exc}") from exc
    n = len(batch.meter_index)
    cols = ReadingColumns(
        meter_ids=list(batch.meter_ids),
        meter_index=np.array(batch.meter_index, dtype=np.uint32),
        read_time_unix_micros=np.array(batch.read_time_unix_micros, dtype=np.int64),
        interval_seconds=np.array(batch.interval_seconds, dtype=np.int32),
        **{name: np.array(getattr(batch, name), dtype=np.float64) for name in FLOAT_COLUMNS},
    )
    lengths = {len(cols.read_time_unix_micros), len(cols.interval_seconds)} | {
        len(getattr(cols, c)) for c in FLOAT_COLUMNS
    }
    if lengths != {n}:
        raise BadBatch(f"columns of different lengths: meter_index has {n}, others {sorted(lengths)}")
    if n and int(cols.meter_index.max()) >= len(cols.meter_ids):
        raise BadBatch(f"meter_index {int(cols.meter_index.max())} beyond {len(cols.meter_ids)} meter_ids")
    return cols


def to_readings(cols: ReadingColumns) -> list[common_pb2.Reading]:
    out = []
    ids = cols.per_row_meter_ids()
    for i in range(len(cols)):
        r = common_pb2.Reading(
            meter_id=ids[i],
            interval_seconds=int(cols.interval_seconds[i]),
            import_energy_wh=float(cols.import_energy_wh[i]),
            export_energy_wh=float(cols.export_energy_wh[i]),
        )
        t = int(cols.read_time_unix_micros[i])
        r.read_time.seconds, r.read_time.nanos = divmod(t, 1_000_000)
        r.read_time.nanos *= 1000
        for name in OPTIONAL_COLUMNS:
            v = float(getattr(cols, name)[i])
            if not np.isnan(v):
                setattr(r, name, v)
        out.append(r)
    return out
