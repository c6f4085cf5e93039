"""The anomaly detector's per-meter state (services/anomaly/state.py): the baselines the learned layers
read, the local days handed to the autoencoder (time zones and DST), late readings, persistence and
side-effect-free copies."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.anomaly.model import MeterInfo
from services.anomaly.state import (
    NO_TIME,
    RECORD_BYTES,
    StateTable,
    local_midnight_us,
    utc_offsets_us,
)
from services.ingest.columns import FLOAT_COLUMNS, ReadingColumns

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MONDAY = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday, 00:00 UTC
Q = timedelta(minutes=15)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def us(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


class R(NamedTuple):
    """One reading; read_time is the END of the interval."""

    meter_id: str
    t: datetime
    import_energy_wh: float = 100.0
    export_energy_wh: float = 0.0
    voltage_v: float = 230.0
    current_a: float = 2.0
    active_power_w: float = 437.0
    power_factor: float = 0.95
    frequency_hz: float = 50.0
    interval_seconds: int = 900


def cols(rows: list[R]) -> ReadingColumns:
    ids = list(dict.fromkeys(r.meter_id for r in rows))
    pos = {m: i for i, m in enumerate(ids)}
    return ReadingColumns(
        meter_ids=ids,
        meter_index=np.array([pos[r.meter_id] for r in rows], dtype=np.uint32),
        read_time_unix_micros=np.array([us(r.t) for r in rows], dtype=np.int64),
        interval_seconds=np.array([r.interval_seconds for r in rows], dtype=np.int32),
        **{c: np.array([getattr(r, c) for r in rows], dtype=np.float64) for c in FLOAT_COLUMNS},
    )


def normal(meter_id: str, first: datetime, n: int, step: timedelta = Q, **fixed: float) -> list[R]:
    """n healthy readings every `step`, ending at first, first+step, ...; values vary a little so that
    nothing looks stuck. Keyword arguments fix a column."""
    out = []
    for i in range(n):
        v = 230.0 + (i % 5) * 0.7
        a = 2.0 + (i % 3) * 0.1
        row = R(
            meter_id,
            first + i * step,
            import_energy_wh=100.0 + (i % 7) * 1.3,
            voltage_v=v,
            current_a=a,
            active_power_w=round(v * a * 0.95, 3),
            interval_seconds=int(step.total_seconds()),
        )
        out.append(row._replace(**fixed))
    return out


# --- slots and baselines ---------------------------------------------------------------------------


def test_slots_are_stable_and_the_table_grows():
    t = StateTable(capacity=2)
    ids = [f"M{i}" for i in range(1000)]
    first = t.slots(ids)
    assert first.tolist() == list(range(1000))
    assert t.slots(["M999", "new", "M0"]).tolist() == [999, 1000, 0]
    assert len(t) == 1001 and "new" in t


def test_baseline_is_unknown_before_any_reading_and_learned_after():
    t = StateTable()
    c = cols(normal("A", MONDAY + Q, 8))
    b0 = t.row_baseline(c, {})
    assert np.isnan(b0.energy_mean_wh_per_h).all() and (b0.energy_count == 0).all()
    assert np.isnan(b0.voltage_mean_v).all() and np.isnan(b0.power_std_w).all()
    t.update(c, {})
    # Same hours a week later: the same hour-of-week buckets (readings are in UTC, the default zone).
    later = cols(normal("A", MONDAY + timedelta(days=7) + Q, 8))
    b1 = t.row_baseline(later, {})
    rows = normal("A", MONDAY + Q, 8)
    # 15-minute readings: Wh/h = 4 x Wh. Readings 1-3 end in hour 0 (interval starts 00:00-00:30) ...
    hour0 = [4 * r.import_energy_wh for r in rows[:4]]
    assert b1.energy_count[0] == 4
    assert b1.energy_mean_wh_per_h[0] == pytest.approx(np.mean(hour0), rel=1e-6)
    assert b1.energy_std_wh_per_h[0] == pytest.approx(np.std(hour0), rel=1e-5)
    assert b1.voltage_mean_v[0] == pytest.approx(np.mean([r.voltage_v for r in rows]))
    assert b1.current_std_a[0] == pytest.approx(np.std([r.current_a for r in rows]))
    assert b1.power_mean_w[0] == pytest.approx(np.mean([r.active_power_w for r in rows]))
    assert b1.energy_wh_per_h[0] == pytest.approx(4 * later.import_energy_wh[0])


def test_baseline_rows_follow_the_batch_order_not_the_sorted_order():
    t = StateTable()
    t.update(
        cols(normal("A", MONDAY + Q, 4, voltage_v=230.0) + normal("B", MONDAY + Q, 4, voltage_v=240.0)), {}
    )
    c = cols([R("B", MONDAY + 10 * Q), R("A", MONDAY + 10 * Q), R("B", MONDAY + 9 * Q)])
    b = t.row_baseline(c, {})
    assert b.voltage_mean_v.tolist() == [240.0, 230.0, 240.0]


def test_unmeasured_columns_leave_the_electrical_baseline_unknown():
    t = StateTable()
    rows = normal("C", MONDAY + Q, 10, voltage_v=math.nan, current_a=math.nan, active_power_w=math.nan)
    t.update(cols(rows), {})
    b = t.row_baseline(cols([R("C", MONDAY + 11 * Q)]), {})
    assert (
        math.isnan(b.voltage_mean_v[0]) and math.isnan(b.current_std_a[0]) and math.isnan(b.power_mean_w[0])
    )


def test_old_statistics_fade_so_the_baseline_follows_a_new_normal():
    t = StateTable()
    meter = {"A": MeterInfo("A")}
    for day in range(60):
        t.update(cols(normal("A", MONDAY + timedelta(days=day) + Q, 96, voltage_v=230.0)), meter)
    for day in range(60, 120):
        t.update(cols(normal("A", MONDAY + timedelta(days=day) + Q, 96, voltage_v=240.0)), meter)
    b = t.row_baseline(cols([R("A", MONDAY + timedelta(days=121))]), meter)
    assert b.voltage_mean_v[0] > 239.0


# --- sequence: late and duplicate readings ---------------------------------------------------------


def test_late_and_duplicate_readings_do_not_move_the_sequence():
    t = StateTable()
    rows = normal("A", MONDAY + Q, 10)
    t.update(cols(rows), {})
    last = t.last_read_us(["A", "nobody"])
    assert last.tolist() == [us(rows[-1].t), NO_TIME]
    # A redelivery of the same readings and a late one change neither the last read time nor the
    # flat-line run (identical readings would otherwise look stuck).
    before = dict(t.snapshot())["A"]
    t.update(cols([*rows, R("A", MONDAY + Q / 3)]), {})
    assert t.last_read_us(["A"]).tolist() == [us(rows[-1].t)]
    rec = t.record("A")
    assert rec["flat_count"] == 0 and rec["reading_count"] == 10
    assert dict(t.snapshot())["A"] != before  # late readings still teach the profiles


def test_rows_of_a_meter_are_folded_in_read_time_order_whatever_the_batch_order():
    rows = normal("A", MONDAY + Q, 40) + normal("B", MONDAY + Q, 40)
    shuffled = [rows[i] for i in np.random.default_rng(3).permutation(len(rows))]
    a, b = StateTable(), StateTable()
    a.update(cols(rows), {})
    b.update(cols(shuffled), {})
    assert dict(a.snapshot()) == dict(b.snapshot())


# --- local days ------------------------------------------------------------------------------------


def test_a_local_day_completes_when_a_reading_of_the_next_local_day_arrives():
    kolkata = ZoneInfo("Asia/Kolkata")
    meter = {"IN": MeterInfo("IN", time_zone="Asia/Kolkata")}
    t = StateTable()
    local_midnight = datetime(2025, 1, 6, tzinfo=kolkata)  # 2025-01-05 18:30 UTC
    # Readings of 6 Jan local: intervals 00:00-00:15 ... 23:45-24:00 (read at 00:15 ... 24:00).
    day = [
        R("IN", (local_midnight + (i + 1) * Q).astimezone(UTC), import_energy_wh=float(i // 4 + 1))
        for i in range(96)
    ]
    first = t.update(cols(day[:50]), meter)
    second = t.update(cols(day[50:]), meter)
    assert len(first) == 0 and len(second) == 0  # the reading at 24:00 still belongs to 6 Jan
    # The next day's first reading (12.5 Wh in 15 minutes: 50 Wh/h, the day's average rate).
    nxt = t.update(cols([R("IN", (local_midnight + 97 * Q).astimezone(UTC), import_energy_wh=12.5)]), meter)
    assert nxt.meter_ids == ["IN"]
    assert nxt.day_start_us.tolist() == [us(datetime(2025, 1, 5, 18, 30, tzinfo=UTC))]
    assert nxt.energy_wh.shape == (1, 24)
    assert nxt.energy_wh[0].tolist() == [4.0 * (h + 1) for h in range(24)]
    # Typical hourly energy: the mean of the hour-of-week profile (rates of 4 * (h + 1) Wh/h).
    assert nxt.scale_wh[0] == pytest.approx(np.mean([4.0 * (h + 1) for h in range(24)]))


def test_hours_without_readings_are_nan_and_one_batch_can_complete_several_days():
    meter = {"X": MeterInfo("X", interval_seconds=3600)}
    t = StateTable()
    hourly = [
        R("X", MONDAY + timedelta(hours=h + 1), import_energy_wh=10.0, interval_seconds=3600)
        for h in range(72)
    ]
    del hourly[30]  # 06:00-07:00 of day 2 is missing
    done = t.update(cols(hourly), meter)
    assert done.meter_ids == ["X", "X"]
    assert done.day_start_us.tolist() == [us(MONDAY), us(MONDAY + timedelta(days=1))]
    assert np.isnan(done.energy_wh[1, 6]) and np.nansum(done.energy_wh[1]) == 230.0
    assert done.energy_wh[0].tolist() == [10.0] * 24


def test_a_gap_of_days_completes_the_last_day_seen_and_no_empty_ones():
    meter = {"X": MeterInfo("X")}
    t = StateTable()
    t.update(cols(normal("X", MONDAY + Q, 8)), meter)
    done = t.update(cols(normal("X", MONDAY + timedelta(days=5, hours=3), 2)), meter)
    assert done.day_start_us.tolist() == [us(MONDAY)]
    assert np.isnan(done.energy_wh[0, 2:]).all() and not np.isnan(done.energy_wh[0, :2]).any()


@pytest.mark.parametrize(
    ("day", "hours", "folded"),
    [
        (datetime(2025, 3, 30), 23, None),  # spring forward: 01:00-02:00 does not exist
        (datetime(2025, 10, 26), 25, 1),  # fall back: 01:00-02:00 happens twice
    ],
)
def test_dst_days_fold_to_24_local_hours(day: datetime, hours: int, folded: int | None):
    london = ZoneInfo("Europe/London")
    meter = {"UK": MeterInfo("UK", time_zone="Europe/London", interval_seconds=3600)}
    start = day.replace(tzinfo=london).astimezone(UTC)
    end = (day + timedelta(days=1)).replace(tzinfo=london).astimezone(UTC)
    assert (end - start) == timedelta(hours=hours)
    rows = [
        R("UK", start + timedelta(hours=h + 1), import_energy_wh=1.0, interval_seconds=3600)
        for h in range(hours + 1)  # the last one opens the next day
    ]
    t = StateTable()
    done = t.update(cols(rows), meter)
    assert done.day_start_us.tolist() == [us(start)]
    e = done.energy_wh[0]
    if folded is None:
        assert np.isnan(e[1]) and np.nansum(e) == 23.0
    else:
        assert e[folded] == 2.0 and e.sum() == 25.0


def test_local_midnight_and_offsets_match_zoneinfo():
    for tz in ("Asia/Kolkata", "Europe/London", "America/St_Johns", "Australia/Lord_Howe", "UTC"):
        z = ZoneInfo(tz)
        times = np.arange(
            us(datetime(2025, 3, 1, tzinfo=UTC)), us(datetime(2025, 11, 15, tzinfo=UTC)), 7 * 60 * 10**6 * 13
        )
        # St John's and Lord Howe switch at half past a UTC hour: per-row offsets there.
        times = np.concatenate(
            [
                times,
                [us(datetime(2025, 3, 9, 5, 29, tzinfo=UTC)), us(datetime(2025, 3, 9, 5, 31, tzinfo=UTC))],
            ]
        )
        got = utc_offsets_us(tz, times)
        want = [
            (
                datetime.fromtimestamp(int(x) // 10**6, UTC).astimezone(z).utcoffset()
                // timedelta(microseconds=1)
            )
            for x in times
        ]
        assert got.tolist() == want, tz
    assert local_midnight_us("Asia/Kolkata", 20094) == us(
        datetime(2025, 1, 6, tzinfo=ZoneInfo("Asia/Kolkata"))
    )


def test_an_unknown_time_zone_is_treated_as_utc():
    t = StateTable()
    meter = {"Z": MeterInfo("Z", time_zone="Mars/Olympus_Mons", interval_seconds=3600)}
    rows = [R("Z", MONDAY + timedelta(hours=h + 1), interval_seconds=3600) for h in range(25)]
    assert t.update(cols(rows), meter).day_start_us.tolist() == [us(MONDAY)]


def test_meters_in_different_zones_in_one_batch():
    meters = {
        "IN": MeterInfo("IN", time_zone="Asia/Kolkata"),
        "UK": MeterInfo("UK", time_zone="Europe/London"),
    }
    t = StateTable()
    rows = normal("IN", MONDAY + Q, 96 + 48) + normal("UK", MONDAY + Q, 96 + 48)
    done = t.update(cols(rows), meters)
    # 36 hours from Monday 00:00 UTC: 6 Jan is complete in both zones (in Kolkata it began at 05:30).
    assert done.meter_ids == ["IN", "UK"]
    assert done.day_start_us.tolist() == [
        us(datetime(2025, 1, 6, tzinfo=ZoneInfo("Asia/Kolkata"))),
        us(datetime(2025, 1, 6, tzinfo=ZoneInfo("Europe/London"))),
    ]
    assert np.isnan(done.energy_wh[0, :5]).all() and not np.isnan(done.energy_wh[0, 6:]).any()
    assert not np.isnan(done.energy_wh[1]).any()


# --- copies and persistence -------------------------------------------------------------------------


def test_subset_is_an_independent_copy():
    t = StateTable()
    t.update(cols(normal("A", MONDAY + Q, 10) + normal("B", MONDAY + Q, 10)), {})
    snap = dict(t.snapshot())
    copy = t.subset(["A", "unknown"])
    assert copy.meter_ids == ["A"]
    assert dict(copy.snapshot()) == {"A": snap["A"]}
    copy.update(cols(normal("A", MONDAY + 11 * Q, 10, voltage_v=250.0)), {})
    assert dict(t.snapshot()) == snap  # the original did not change
    t.update(cols(normal("A", MONDAY + 11 * Q, 3)), {})
    assert copy.last_read_us(["A"]).tolist() == [us(MONDAY + 20 * Q)]


def test_subset_without_sequence_keeps_what_was_learned():
    t = StateTable()
    t.update(cols(normal("A", MONDAY + Q, 10, export_energy_wh=1.0)), {})
    copy = t.subset(["A"], keep_sequence=False)
    assert copy.last_read_us(["A"]).tolist() == [NO_TIME]
    rec = copy.record("A")
    assert rec["ever_exported"] == 1 and rec["electrical"][0, 2] == 10 and rec["reading_count"] == 0


def test_dirty_lists_changed_meters_until_cleared():
    t = StateTable()
    t.update(cols(normal("A", MONDAY + Q, 3) + normal("B", MONDAY + Q, 3)), {})
    assert sorted(m for m, _ in t.dirty()) == ["A", "B"]
    t.clear_dirty()
    assert t.dirty() == []
    t.update(cols(normal("B", MONDAY + 4 * Q, 1)), {})
    assert [m for m, _ in t.dirty()] == ["B"]
    assert all(len(data) == RECORD_BYTES and data[0] == 1 for _, data in t.dirty())


def test_loading_an_unknown_format_version_names_it():
    t = StateTable()
    t.update(cols(normal("A", MONDAY + Q, 3)), {})
    ((_, data),) = t.snapshot()
    with pytest.raises(ValueError, match="format version 7"):
        StateTable().load([("A", bytes([7]) + data[1:])])
    with pytest.raises(ValueError, match="bytes"):
        StateTable().load([("A", data[:-1])])


reading_values = st.floats(min_value=0, max_value=5000, allow_nan=False) | st.just(math.nan) | st.just(0.0)


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B", "C"]),
            st.integers(min_value=0, max_value=4 * 96),  # quarter-hours over four days
            reading_values,
            st.floats(min_value=0, max_value=50, allow_nan=False),
            reading_values,
        ),
        min_size=1,
        max_size=120,
    ),
    st.sampled_from(["UTC", "Asia/Kolkata", "Europe/London"]),
)
def test_persisted_state_round_trips_exactly(rows, tz):
    meters = {m: MeterInfo(m, time_zone=tz) for m in "ABC"}
    readings = [
        R(m, MONDAY + (k + 1) * Q, import_energy_wh=imp, export_energy_wh=exp, voltage_v=v)
        for m, k, imp, exp, v in rows
    ]
    half = len(readings) // 2
    t = StateTable()
    t.update(cols(readings[: half or 1]), meters)
    restored = StateTable()
    restored.load(t.dirty())
    assert dict(restored.snapshot()) == dict(t.snapshot())
    # ... and the restored state behaves exactly like the original from then on.
    rest = readings[half:]
    a = t.update(cols(rest), meters)
    b = restored.update(cols(rest), meters)
    assert dict(restored.snapshot()) == dict(t.snapshot())
    assert a.meter_ids == b.meter_ids and a.day_start_us.tolist() == b.day_start_us.tolist()
    np.testing.assert_array_equal(a.energy_wh, b.energy_wh)


def test_empty_batch_changes_nothing():
    t = StateTable()
    empty = cols([R("A", MONDAY)]).take(np.zeros(0, dtype=np.int64))
    assert len(t.update(empty, {})) == 0 and len(t.row_baseline(empty, {})) == 0
    assert t.dirty() == []
