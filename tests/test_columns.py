"""ReadingColumns (services/ingest/columns.py): selecting and joining batches without losing or
mixing up readings, and the hourly rollup the storage writer maintains, checked against a plain
Python aggregation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.columns import (
    FLOAT_COLUMNS,
    ReadingColumns,
    hour_of_interval_start,
    rollup_hourly,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_US = 3_600_000_000
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Row(NamedTuple):
    meter_id: str
    read_time_unix_micros: int
    interval_seconds: int = 900
    import_energy_wh: float = 1.0
    export_energy_wh: float = 0.0
    voltage_v: float = math.nan
    current_a: float = math.nan
    active_power_w: float = math.nan
    power_factor: float = math.nan
    frequency_hz: float = math.nan


def columns(rows: list[Row], meter_ids: list[str] | None = None) -> ReadingColumns:
    """Columns holding `rows`; the dictionary is `meter_ids` (any order, may hold unused ids) or the ids
    in order of first appearance."""
    ids = list(dict.fromkeys(r.meter_id for r in rows)) if meter_ids is None else meter_ids
    pos = {m: i for i, m in enumerate(ids)}
    return ReadingColumns(
        meter_ids=ids,
        meter_index=np.array([pos[r.meter_id] for r in rows], dtype=np.uint32),
        read_time_unix_micros=np.array([r.read_time_unix_micros for r in rows], dtype=np.int64),
        interval_seconds=np.array([r.interval_seconds for r in rows], dtype=np.int32),
        **{c: np.array([getattr(r, c) for r in rows], dtype=np.float64) for c in FLOAT_COLUMNS},
    )


def comparable(row: Row) -> tuple[object, ...]:
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in row)


def rows_of(cols: ReadingColumns) -> list[tuple[object, ...]]:
    """The readings of `cols`, checking on the way that the columns are well formed."""
    assert cols.meter_index.dtype == np.uint32
    assert cols.read_time_unix_micros.dtype == np.int64
    assert cols.interval_seconds.dtype == np.int32
    for c in FLOAT_COLUMNS:
        assert getattr(cols, c).dtype == np.float64, c
        assert len(getattr(cols, c)) == len(cols), c
    ids = cols.per_row_meter_ids()
    return [
        comparable(
            Row(
                str(ids[i]),
                int(cols.read_time_unix_micros[i]),
                int(cols.interval_seconds[i]),
                *(float(getattr(cols, c)[i]) for c in FLOAT_COLUMNS),
            )
        )
        for i in range(len(cols))
    ]


def us(*args: int) -> int:
    """Microseconds since the epoch of a UTC datetime(*args)."""
    return (datetime(*args, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)


meter_ids = st.sampled_from(["M-1", "M-2", "M-10", "B-7", "a-1", "Z", "Ω-3"])
optional = st.just(math.nan) | st.floats(-1e6, 1e6)


BASE = us(2025, 3, 30, 22)
# A few hours either side of a day boundary, at any microsecond, or around the epoch.
read_times = st.integers(BASE - 3 * HOUR_US, BASE + 3 * HOUR_US) | st.integers(-3 * HOUR_US, 3 * HOUR_US)
intervals = st.sampled_from([0, 60, 900, 1800, 3600, 86_400])


@st.composite
def numbered_rows(draw: st.DrawFn, max_size: int = 30) -> list[Row]:
    """Rows with drawn keys and distinct values derived from their position (cheap to generate)."""
    keys = draw(st.lists(st.tuples(meter_ids, read_times), max_size=max_size))
    return [
        Row(
            m,
            t,
            interval_seconds=900 * (k % 3),
            import_energy_wh=float(k),
            export_energy_wh=k / 4,
            voltage_v=math.nan if k % 3 == 0 else 200.0 + k,
            current_a=math.nan if k % 2 else float(k),
            active_power_w=-float(k),
            power_factor=math.nan if k % 5 == 1 else 1 / (k + 1),
            frequency_hz=50.0 + k / 100,
        )
        for k, (m, t) in enumerate(keys)
    ]


def rollup_rows(max_size: int = 40) -> st.SearchStrategy[list[Row]]:
    """Rows with every value the rollup reads drawn; NaN stands for "not measured"."""
    return st.lists(
        st.builds(
            Row,
            meter_id=meter_ids,
            read_time_unix_micros=read_times,
            interval_seconds=intervals,
            import_energy_wh=st.floats(0, 1e6),
            export_energy_wh=st.floats(0, 1e6),
            voltage_v=optional,
            current_a=optional,
            active_power_w=optional,
        ),
        max_size=max_size,
    )


# --- take and concat -------------------------------------------------------------------------------


def test_take_keeps_the_chosen_rows_in_the_given_order_with_a_pruned_dictionary_in_its_order() -> None:
    t = us(2025, 1, 1)
    rows = [
        Row("M-9", t, import_energy_wh=1.0),
        Row("M-1", t, import_energy_wh=2.0, voltage_v=230.0),
        Row("M-5", t, import_energy_wh=3.0),
        Row("M-9", t + HOUR_US, import_energy_wh=4.0),
        Row("M-3", t, import_energy_wh=5.0),
    ]
    cols = columns(rows, meter_ids=["M-9", "M-1", "UNUSED", "M-5", "M-3"])
    picked = cols.take(np.array([3, 1, 0]))
    assert picked.meter_ids == ["M-9", "M-1"]  # the parent dictionary's order, unused ids dropped
    assert rows_of(picked) == [comparable(rows[i]) for i in (3, 1, 0)]


def test_take_accepts_a_boolean_mask() -> None:
    t = us(2025, 1, 1)
    rows = [Row(m, t + k * HOUR_US, import_energy_wh=float(k)) for k, m in enumerate(["C", "A", "B", "A"])]
    picked = columns(rows).take(np.array([False, True, True, False]))
    assert sorted(picked.meter_ids) == ["A", "B"]
    assert rows_of(picked) == [comparable(rows[1]), comparable(rows[2])]


def test_take_of_nothing_is_an_empty_batch() -> None:
    picked = columns([Row("M-1", 0)]).take(np.array([], dtype=np.int64))
    assert len(picked) == 0 and picked.meter_ids == [] and rows_of(picked) == []


@FAST
@given(numbered_rows(), st.data())
def test_take_of_any_selection_preserves_its_rows(rows: list[Row], data: st.DataObject) -> None:
    selection = data.draw(st.lists(st.integers(0, len(rows) - 1), max_size=40) if rows else st.just([]))
    dictionary = data.draw(st.permutations(sorted({r.meter_id for r in rows})))
    picked = columns(rows, meter_ids=list(dictionary)).take(np.array(selection, dtype=np.int64))
    assert rows_of(picked) == [comparable(rows[i]) for i in selection]
    assert picked.meter_ids == [m for m in dictionary if m in {rows[i].meter_id for i in selection}]


def test_concat_remaps_parts_with_different_dictionaries_onto_one_sorted_dictionary() -> None:
    t = us(2025, 1, 1)
    first = [Row("Z-1", t, import_energy_wh=1.0), Row("A-1", t, import_energy_wh=2.0)]
    second = [Row("B-1", t, import_energy_wh=3.0), Row("A-1", t + HOUR_US, import_energy_wh=4.0)]
    third = [Row("Z-1", t + HOUR_US, import_energy_wh=5.0, current_a=7.5)]
    joined = ReadingColumns.concat([columns(first), columns(second), columns([]), columns(third)])
    assert joined.meter_ids == ["A-1", "B-1", "Z-1"]
    assert rows_of(joined) == [comparable(r) for r in first + second + third]


def test_concat_of_a_single_part_sorts_its_dictionary() -> None:
    rows = [Row("M-2", 0), Row("M-1", 1), Row("M-2", 2)]
    joined = ReadingColumns.concat([columns(rows)])
    assert joined.meter_ids == ["M-1", "M-2"]
    assert rows_of(joined) == [comparable(r) for r in rows]


@FAST
@given(numbered_rows(), st.lists(st.integers(0, 30), max_size=5))
def test_concat_of_the_parts_of_a_batch_equals_the_whole(rows: list[Row], cuts: list[int]) -> None:
    whole = columns(rows)
    bounds = [0, *sorted(min(c, len(rows)) for c in cuts), len(rows)]
    parts = [whole.take(np.arange(a, b)) for a, b in itertools.pairwise(bounds)]
    joined = ReadingColumns.concat(parts)
    assert rows_of(joined) == rows_of(whole) == [comparable(r) for r in rows]
    assert joined.meter_ids == sorted({r.meter_id for r in rows})


# --- hour_of_interval_start ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("read_time", "interval_seconds", "hour_start"),
    [
        (us(2025, 6, 1, 10), 900, us(2025, 6, 1, 9)),
        (us(2025, 6, 1, 10), 0, us(2025, 6, 1, 10)),
        (us(2025, 6, 1, 10) + 1, 900, us(2025, 6, 1, 9)),
        (us(2025, 6, 1, 10, 15), 900, us(2025, 6, 1, 10)),
        (us(2025, 6, 1, 10, 59, 59) + 999_999, 0, us(2025, 6, 1, 10)),
        (us(2025, 6, 1, 10), 3600, us(2025, 6, 1, 9)),
        (us(2025, 6, 1, 10), 86_400, us(2025, 5, 31, 10)),
        (us(1970, 1, 1), 900, us(1969, 12, 31, 23)),
        (us(1970, 1, 1), 0, us(1970, 1, 1)),
        (us(1969, 12, 31, 23), 0, us(1969, 12, 31, 23)),
        (us(1969, 12, 31, 23) - 1, 0, us(1969, 12, 31, 22)),
        (us(1901, 7, 4, 12, 30), 1800, us(1901, 7, 4, 12)),
    ],
    ids=lambda v: str(v),
)
def test_a_reading_belongs_to_the_hour_its_interval_starts_in(
    read_time: int, interval_seconds: int, hour_start: int
) -> None:
    hours = hour_of_interval_start(
        np.array([read_time], dtype=np.int64), np.array([interval_seconds], np.int32)
    )
    assert hours.tolist() == [hour_start // HOUR_US]


def test_hour_of_interval_start_handles_whole_columns() -> None:
    t = np.array([us(2025, 6, 1, 10), us(2025, 6, 1, 10), us(1969, 12, 31, 23, 30)], dtype=np.int64)
    iv = np.array([900, 0, 0], dtype=np.int32)
    expected = [us(2025, 6, 1, 9), us(2025, 6, 1, 10), us(1969, 12, 31, 23)]
    assert hour_of_interval_start(t, iv).tolist() == [h // HOUR_US for h in expected]


# --- rollup_hourly ---------------------------------------------------------------------------------


def reference_rollup(rows: list[Row]) -> dict[tuple[str, int], dict[str, float]]:
    """Per (meter_id, hour of interval start): sums, count and NaN-ignoring extremes, in plain Python."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        start = r.read_time_unix_micros - r.interval_seconds * 1_000_000
        groups.setdefault((r.meter_id, start // HOUR_US), []).append(r)

    def extreme(fn: Callable[[list[float]], float], values: list[float]) -> float:
        measured = [v for v in values if not math.isnan(v)]
        return fn(measured) if measured else math.nan

    return {
        key: {
            "import_energy_wh": math.fsum(r.import_energy_wh for r in g),
            "export_energy_wh": math.fsum(r.export_energy_wh for r in g),
            "reading_count": len(g),
            "min_voltage_v": extreme(min, [r.voltage_v for r in g]),
            "max_voltage_v": extreme(max, [r.voltage_v for r in g]),
            "max_current_a": extreme(max, [r.current_a for r in g]),
            "max_active_power_w": extreme(max, [r.active_power_w for r in g]),
        }
        for key, g in groups.items()
    }


def assert_matches_reference(rows: list[Row], cols: ReadingColumns) -> None:
    got = rollup_hourly(cols)
    want = reference_rollup(rows)
    keys = list(zip(got.meter_ids, got.hour_unix.tolist(), strict=True))
    assert keys == sorted(want), "one row per (meter_id, hour), in that order"
    for k, key in enumerate(keys):
        for name, expected in want[key].items():
            value = getattr(got, name)[k]
            if isinstance(expected, float) and math.isnan(expected):
                assert math.isnan(value), (key, name, value)
            else:
                assert value == pytest.approx(expected, rel=1e-12), (key, name)


@FAST
@given(rollup_rows())
def test_rollup_matches_a_plain_python_aggregation(rows: list[Row]) -> None:
    # Via concat, as the writer does: that is what gives the dictionary its meter_id order.
    assert_matches_reference(rows, ReadingColumns.concat([columns(rows)]))


def test_rollup_voltage_extremes_ignore_unmeasured_readings_and_stay_nan_when_none_was_measured() -> None:
    h9 = us(2025, 6, 1, 9)
    rows = [
        Row("M-1", h9 + 15 * 60_000_000, voltage_v=math.nan, import_energy_wh=1.0),  # 09:00 hour
        Row("M-1", h9 + 30 * 60_000_000, voltage_v=231.5, import_energy_wh=2.0),
        Row("M-1", h9 + 45 * 60_000_000, voltage_v=228.25, import_energy_wh=4.0, current_a=3.0),
        Row("M-1", h9 + 75 * 60_000_000, import_energy_wh=8.0),  # 10:00 hour: nothing measured
        Row("M-1", h9 + 90 * 60_000_000, import_energy_wh=16.0),
    ]
    got = rollup_hourly(ReadingColumns.concat([columns(rows)]))
    assert got.hour_unix.tolist() == [h9 // HOUR_US, h9 // HOUR_US + 1]
    assert got.reading_count.tolist() == [3, 2]
    assert got.import_energy_wh.tolist() == [7.0, 24.0]
    assert got.min_voltage_v[0] == 228.25 and got.max_voltage_v[0] == 231.5
    assert got.max_current_a[0] == 3.0
    assert np.isnan([got.min_voltage_v[1], got.max_voltage_v[1], got.max_current_a[1]]).all()


def test_rollup_rows_come_out_in_meter_id_then_hour_order_whatever_the_input_order() -> None:
    h = us(2025, 6, 1, 12)
    rows = [
        Row("M-2", h + 2 * HOUR_US),
        Row("M-10", h + HOUR_US),
        Row("M-2", h),
        Row("A-1", h + 3 * HOUR_US),
        Row("M-10", h - 5 * HOUR_US),
        Row("M-2", h + 2 * HOUR_US + 1),
    ]
    got = rollup_hourly(ReadingColumns.concat([columns(rows)]))
    assert list(zip(got.meter_ids, got.hour_unix.tolist(), got.reading_count.tolist(), strict=True)) == [
        ("A-1", h // HOUR_US + 2, 1),
        ("M-10", h // HOUR_US - 6, 1),
        ("M-10", h // HOUR_US, 1),
        ("M-2", h // HOUR_US - 1, 1),
        ("M-2", h // HOUR_US + 1, 2),
    ]


def test_rollup_of_an_empty_batch_is_empty() -> None:
    got = rollup_hourly(columns([]))
    assert len(got) == 0
    assert len(got.hour_unix) == len(got.reading_count) == len(got.min_voltage_v) == 0
