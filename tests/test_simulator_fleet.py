"""Behaviour of the simulated meter fleet that the load generator, benchmarks and downstream tests rely on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.simulator.fleet import (
    CATEGORIES,
    FAULT_KINDS,
    TARIFF_BY_CATEGORY,
    Fleet,
    IntervalReadings,
)

IST = ZoneInfo("Asia/Kolkata")
# Monday 3 March 2025, 00:00 IST: a dry-season week, so clouds rarely hide the sun.
MONDAY = datetime(2025, 3, 3, tzinfo=IST)
COLUMNS = (
    "import_energy_wh",
    "export_energy_wh",
    "voltage_v",
    "current_a",
    "active_power_w",
    "power_factor",
    "frequency_hz",
)
STEP = timedelta(minutes=15)
SLOTS_PER_DAY = 96


@dataclass
class Run:
    """Readings of consecutive intervals stacked as (interval, meter) arrays."""

    fleet: Fleet
    ends: list[datetime]  # read_time of each interval
    values: dict[str, np.ndarray]
    faulted: np.ndarray  # bool (interval, meter)
    fault_kind: np.ndarray  # object (interval, meter): kind or ""

    def mask(self, **attrs: object) -> np.ndarray:
        return np.array([all(getattr(m, k) == v for k, v in attrs.items()) for m in self.fleet.meters])


def simulate(fleet: Fleet, start: datetime, intervals: int) -> Run:
    step = timedelta(seconds=fleet.meters[0].interval_seconds if fleet.meters else 900)
    ends = [start + step * (k + 1) for k in range(intervals)]
    n = len(fleet.meters)
    values = {c: np.empty((intervals, n)) for c in COLUMNS}
    faulted = np.zeros((intervals, n), dtype=bool)
    kind = np.full((intervals, n), "", dtype=object)
    index = {m.meter_id: i for i, m in enumerate(fleet.meters)}
    for k, end in enumerate(ends):
        r = fleet.readings_at(end)
        for c in COLUMNS:
            values[c][k] = getattr(r, c)
        for meter_id, fault in r.faults:
            faulted[k, index[meter_id]] = True
            kind[k, index[meter_id]] = fault
    return Run(fleet, ends, values, faulted, kind)


@pytest.fixture(scope="module")
def week() -> Run:
    """400 meters, Monday to Sunday, interval k covering local slot k % 96 of day k // 96."""
    return simulate(Fleet(400, seed=7), MONDAY, 7 * SLOTS_PER_DAY)


def by_day_slot(a: np.ndarray) -> np.ndarray:
    return a.reshape(7, SLOTS_PER_DAY, -1)


def hours(a: np.ndarray, first: int, last: int) -> np.ndarray:
    """Intervals that lie within local hours [first, last) of each day: shape (7, slots, meters)."""
    return by_day_slot(a)[:, first * 4 : last * 4, :]


def assert_valid(r: IntervalReadings) -> None:
    for c in COLUMNS:
        a = getattr(r, c)
        assert a.dtype == np.float64 and a.shape == (len(r.meter_ids),), c
        assert np.all(np.isfinite(a)), c
    assert np.all(r.import_energy_wh >= 0) and np.all(r.export_energy_wh >= 0)
    assert not np.any(np.signbit(r.import_energy_wh)) and not np.any(np.signbit(r.export_energy_wh))
    assert np.all((r.voltage_v >= 0) & (r.voltage_v <= 500))
    assert np.all((r.power_factor >= -1) & (r.power_factor <= 1))
    assert np.all(r.current_a >= 0)
    # Never importing and exporting in the same interval.
    assert not np.any((r.import_energy_wh > 0) & (r.export_energy_wh > 0))
    # Energy is the average power over the interval.
    net_wh = r.import_energy_wh - r.export_energy_wh
    np.testing.assert_allclose(net_wh, r.active_power_w * r.interval_seconds / 3600, rtol=1e-9, atol=1e-9)
    live = r.voltage_v > 0
    expected_a = r.active_power_w[live] / (r.voltage_v[live] * r.power_factor[live])
    np.testing.assert_allclose(r.current_a[live], expected_a, rtol=1e-9, atol=1e-9)
    assert r.read_time.utcoffset() == timedelta(0)
    assert {m for m, _ in r.faults} <= set(r.meter_ids)
    assert {k for _, k in r.faults} <= set(FAULT_KINDS)


# --- the fleet itself ---------------------------------------------------------------------------


def test_meters_are_registrable_with_category_tariffs() -> None:
    meters = Fleet(300, seed=1).meters
    ids = [m.meter_id for m in meters]
    assert len(set(ids)) == len(ids)
    prefix = {
        "residential": "SIM-RES-",
        "commercial": "SIM-COM-",
        "industrial": "SIM-IND-",
        "agricultural": "SIM-AGR-",
    }
    for m in meters:
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", m.meter_id)
        assert m.meter_id.startswith(prefix[m.category])
        assert m.tariff_id == TARIFF_BY_CATEGORY[m.category]
        assert m.sanctioned_load_kw > 0
        # A healthy meter at full sanctioned load stays within its rating.
        assert m.rated_current_a >= m.sanctioned_load_kw * 1000 / (230 * 0.85)
        assert m.nominal_voltage_v == 230.0
        assert m.interval_seconds == 900
        assert m.time_zone == "Asia/Kolkata"
    assert "SIM-RES-0001" in ids and "SIM-COM-0001" in ids
    assert Fleet(3, interval_seconds=1800).meters[0].interval_seconds == 1800


def test_mix_is_followed_and_solar_is_residential_only() -> None:
    meters = Fleet(1000, seed=2).meters
    counts = {c: sum(m.category == c for m in meters) for c in CATEGORIES}
    assert counts == {"residential": 780, "commercial": 120, "industrial": 40, "agricultural": 60}
    solar = [m for m in meters if m.has_solar]
    assert all(m.category == "residential" for m in solar)
    assert 0.1 < len(solar) / counts["residential"] < 0.3

    only_farms = Fleet(50, mix={"agricultural": 1.0}).meters
    assert {m.category for m in only_farms} == {"agricultural"}
    # Every category shows up early, so even a small test fleet exercises all of them.
    assert {m.category for m in Fleet(30).meters} == set(CATEGORIES)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        Fleet(-1)
    with pytest.raises(ValueError):
        Fleet(10, interval_seconds=0)
    with pytest.raises(ValueError):
        Fleet(10, fault_rate=1.5)
    with pytest.raises(ValueError):
        Fleet(10, mix={"feeder": 1.0})
    with pytest.raises(ValueError):
        Fleet(10, mix={"residential": 0.0})
    with pytest.raises(ValueError):
        Fleet(10).readings_at(datetime(2025, 3, 3, 12, 0))  # naive: ambiguous instant


def test_empty_fleet_gives_empty_columns() -> None:
    r = Fleet(0).readings_at(MONDAY)
    assert r.meter_ids == [] and r.faults == []
    assert all(getattr(r, c).shape == (0,) for c in COLUMNS)


def test_a_smaller_fleet_is_a_prefix_of_a_larger_one() -> None:
    # Growing the simulated fleet must not re-label or change meters that are already registered.
    small, large = Fleet(60, seed=5, fault_rate=0.05), Fleet(600, seed=5, fault_rate=0.05)
    assert large.meters[:60] == small.meters
    t = MONDAY + timedelta(hours=23)
    a, b = small.readings_at(t), large.readings_at(t)
    for c in COLUMNS:
        np.testing.assert_array_equal(getattr(b, c)[:60], getattr(a, c))
    assert [f for f in b.faults if f[0] in set(a.meter_ids)] == a.faults


# --- load shapes --------------------------------------------------------------------------------


def test_residential_evening_peak_exceeds_small_hours(week: Run) -> None:
    res = week.mask(category="residential", has_solar=False)
    p = week.values["active_power_w"][:, res]
    evening = hours(p, 19, 22).mean()
    small_hours = hours(p, 3, 4).mean()
    morning = hours(p, 7, 9).mean()
    assert evening > 2.5 * small_hours
    assert morning > 1.5 * small_hours


def test_residential_weekend_daytime_exceeds_weekday_daytime(week: Run) -> None:
    res = week.mask(category="residential", has_solar=False)
    daytime = hours(week.values["active_power_w"][:, res], 10, 16)
    assert daytime[6].mean() > 1.2 * daytime[:5].mean()


def test_commercial_weekday_midday_exceeds_sunday_and_night(week: Run) -> None:
    com = week.mask(category="commercial")
    p = week.values["active_power_w"][:, com]
    weekday_midday = hours(p, 11, 15)[:5].mean()
    assert weekday_midday > 2.5 * hours(p, 11, 15)[6].mean()
    assert weekday_midday > 3 * hours(p, 1, 5)[:5].mean()


def test_industrial_load_is_near_flat_on_working_days(week: Run) -> None:
    ind = week.mask(category="industrial")
    hourly = by_day_slot(week.values["active_power_w"][:, ind])[:5].reshape(5, 24, 4, -1).mean(axis=(0, 2, 3))
    assert hourly.min() > 0.6 * hourly.max()


def test_agricultural_pumps_run_in_supply_blocks(week: Run) -> None:
    agr = week.mask(category="agricultural")
    sanctioned = np.array([m.sanctioned_load_kw * 1000 for m in week.fleet.meters])[agr]
    p = week.values["active_power_w"][:, agr]
    healthy = ~week.faulted[:, agr]
    running = (p > 0.5 * sanctioned) & healthy
    off = (p < 0.05 * sanctioned) & healthy
    assert running.any()
    # A pump is either running near its rating or (nearly) off: there is no half load.
    assert np.all(running | off | ~healthy)
    per_day = by_day_slot(running).sum(axis=1)
    assert per_day.max() <= 8 * 4  # the utility supplies farm power 8 hours a day
    for j in range(running.shape[1]):
        hours_used = set(np.flatnonzero(by_day_slot(running)[:, :, j].any(axis=0)) // 4)
        assert len(hours_used) <= 8


def test_summer_load_exceeds_winter_load() -> None:
    fleet = Fleet(150, seed=3, fault_rate=0.0)
    res = np.array([m.category == "residential" and not m.has_solar for m in fleet.meters])

    def energy(start: datetime) -> float:
        return float(simulate(fleet, start, 2 * SLOTS_PER_DAY).values["import_energy_wh"][:, res].sum())

    # Same weekdays (Tuesday and Wednesday) in mid-May and mid-January.
    assert energy(datetime(2025, 5, 13, tzinfo=IST)) > 1.25 * energy(datetime(2025, 1, 14, tzinfo=IST))


# --- solar --------------------------------------------------------------------------------------


def test_solar_meters_export_at_noon_but_not_at_night(week: Run) -> None:
    solar = week.mask(has_solar=True)
    assert solar.sum() >= 10
    export = week.values["export_energy_wh"]
    healthy = ~week.faulted
    noon = hours(export[:, solar], 12, 13)
    noon_healthy = hours(healthy[:, solar], 12, 13)
    assert (noon[noon_healthy] > 0).mean() > 0.8
    assert hours(week.values["active_power_w"][:, solar], 12, 13).mean() < 0
    assert np.all(hours(export[:, solar], 20, 24) == 0)
    assert np.all(hours(export[:, solar], 0, 5) == 0)
    assert np.all(export[:, ~solar] == 0)


def test_exporting_meters_report_a_negative_power_factor(week: Run) -> None:
    exporting = week.values["export_energy_wh"] > 0
    pf = week.values["power_factor"]
    assert exporting.any()
    assert np.all(pf[exporting] < 0) and np.all(pf[~exporting] > 0)


# --- validity and power quality ----------------------------------------------------------------


def test_every_reading_of_a_week_passes_ingest_validation() -> None:
    fleet = Fleet(200, seed=11)
    for k in range(7 * SLOTS_PER_DAY):
        assert_valid(fleet.readings_at(MONDAY + STEP * (k + 1)))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**63),
    start=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
    ),
    fault_rate=st.sampled_from([0.0, 0.002, 0.05, 1.0]),
    interval_seconds=st.sampled_from([60, 900, 1800, 3600]),
    weights=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4).filter(lambda w: sum(w) > 0),
)
def test_readings_always_pass_ingest_validation(
    seed: int, start: datetime, fault_rate: float, interval_seconds: int, weights: list[float]
) -> None:
    mix = dict(zip(CATEGORIES, weights, strict=True))
    fleet = Fleet(200, seed=seed, fault_rate=fault_rate, interval_seconds=interval_seconds, mix=mix)
    step = timedelta(seconds=interval_seconds)
    for k in range(0, 48):
        r = fleet.readings_at(start + step * k * max(1, 3600 // interval_seconds))
        assert_valid(r)
        assert r.interval_seconds == interval_seconds


def test_healthy_meters_stay_within_statutory_voltage_and_their_rating(week: Run) -> None:
    healthy = ~week.faulted
    v = week.values["voltage_v"]
    assert np.all((v[healthy] >= 207) & (v[healthy] <= 253))  # 230 V +- 10 %
    rated = np.array([m.rated_current_a for m in week.fleet.meters])
    assert np.all(week.values["current_a"][healthy] <= np.broadcast_to(rated, v.shape)[healthy])


def test_voltage_and_frequency_look_like_a_real_grid(week: Run) -> None:
    healthy = ~week.faulted
    v = week.values["voltage_v"]
    assert 226 < v[healthy].mean() < 234
    assert 1.5 < v[healthy].std() < 3.5
    v_healthy = np.where(healthy, v, np.nan)
    assert np.nanmean(hours(v_healthy, 19, 22)) < np.nanmean(hours(v_healthy, 10, 16)) - 1
    f = week.values["frequency_hz"][healthy]
    assert abs(f.mean() - 50) < 0.02 and 0.01 < f.std() < 0.05
    # Meters differ from each other, not only in time.
    assert v[0, healthy[0]].std() > 1


def test_power_factor_depends_on_category(week: Run) -> None:
    pf = week.values["power_factor"]
    importing = ~(week.values["export_energy_wh"] > 0)
    assert np.all((pf[importing] >= 0.85) & (pf[importing] <= 0.99))
    mean_pf = {c: pf[:, m][importing[:, m]].mean() for c in CATEGORIES for m in [week.mask(category=c)]}
    assert mean_pf["residential"] > mean_pf["commercial"] > mean_pf["industrial"] > mean_pf["agricultural"]


# --- faults -------------------------------------------------------------------------------------


def test_faults_come_at_the_configured_rate() -> None:
    # A night and a day: every kind of fault is possible.
    run = simulate(Fleet(2000, seed=4, fault_rate=0.01), MONDAY + timedelta(hours=18), 48)
    expected = 0.01 * run.faulted.size
    assert abs(run.faulted.sum() - expected) < 0.15 * expected
    kinds = set(run.fault_kind[run.faulted])
    assert kinds == set(FAULT_KINDS)
    assert Fleet(500, fault_rate=0.0).readings_at(MONDAY).faults == []
    assert len(Fleet(50, fault_rate=1.0).readings_at(MONDAY).faults) == 50


def test_faults_show_in_the_values_and_nowhere_else() -> None:
    t0 = MONDAY + timedelta(hours=20)
    faulty = simulate(Fleet(1000, seed=9, fault_rate=0.05), t0, 40)
    clean = simulate(Fleet(1000, seed=9, fault_rate=0.0), t0, 40)
    assert not clean.faulted.any()
    v, i, p = (faulty.values[c] for c in ("voltage_v", "current_a", "active_power_w"))
    kind = faulty.fault_kind
    rated = np.broadcast_to(np.array([m.rated_current_a for m in faulty.fleet.meters]), v.shape)

    # Meters without a fault read exactly as they would with faults switched off.
    for c in COLUMNS:
        np.testing.assert_array_equal(faulty.values[c][~faulty.faulted], clean.values[c][~faulty.faulted])

    surge, sag, outage = kind == "voltage_surge", kind == "voltage_sag", kind == "outage"
    over, phantom = kind == "overcurrent", kind == "phantom_load"
    assert all(m.any() for m in (surge, sag, outage, over, phantom))
    assert np.all((v[surge] >= 255) & (v[surge] <= 280)) and np.all(v[surge] > 253)
    assert np.all((v[sag] >= 180) & (v[sag] <= 205)) and np.all(v[sag] < 207)
    assert np.all(v[outage] == 0) and np.all(i[outage] == 0) and np.all(p[outage] == 0)
    assert np.all(faulty.values["import_energy_wh"][outage] == 0)
    assert np.all(faulty.values["export_energy_wh"][outage] == 0)
    assert np.all((i[over] >= 1.2 * rated[over]) & (i[over] <= 1.8 * rated[over]))
    sanctioned_w = np.broadcast_to(
        np.array([m.sanctioned_load_kw * 1e3 for m in faulty.fleet.meters]), v.shape
    )
    extra_wh = faulty.values["import_energy_wh"][phantom] - clean.values["import_energy_wh"][phantom]
    assert np.all(extra_wh >= 0.15 * sanctioned_w[phantom] * 0.25 - 1e-6)  # >= 15 % of sanctioned load
    # Only injected overcurrents exceed the rating.
    assert np.all(i[~over] <= rated[~over])

    # A phantom load is a night-time anomaly.
    local_hours = np.array([(e - STEP / 2).astimezone(IST).hour for e in faulty.ends])
    night_rows = (local_hours >= 22) | (local_hours < 6)
    assert not phantom[~night_rows].any()


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_and_time_give_identical_readings_after_a_restart() -> None:
    t = MONDAY + timedelta(hours=13, minutes=15)
    a = Fleet(300, seed=21, fault_rate=0.05).readings_at(t)
    b = Fleet(300, seed=21, fault_rate=0.05).readings_at(t)  # a fresh process would build this
    for c in COLUMNS:
        np.testing.assert_array_equal(getattr(a, c), getattr(b, c))
    assert a.faults == b.faults and a.faults
    assert a.meter_ids == b.meter_ids

    # The same instant written in another zone is the same interval.
    c_ = Fleet(300, seed=21, fault_rate=0.05).readings_at(t.astimezone(UTC))
    np.testing.assert_array_equal(c_.import_energy_wh, a.import_energy_wh)
    assert c_.read_time == t and c_.read_time.tzinfo == UTC

    # Order of generation does not matter: no hidden state between calls.
    fleet = Fleet(300, seed=21, fault_rate=0.05)
    fleet.readings_at(t + STEP)
    np.testing.assert_array_equal(fleet.readings_at(t).voltage_v, a.voltage_v)


def test_different_time_or_seed_gives_different_readings() -> None:
    t = MONDAY + timedelta(hours=13, minutes=15)
    fleet = Fleet(300, seed=21)
    a, later = fleet.readings_at(t), fleet.readings_at(t + STEP)
    other_seed = Fleet(300, seed=22).readings_at(t)
    for c in ("import_energy_wh", "voltage_v", "frequency_hz"):
        assert not np.array_equal(getattr(a, c), getattr(later, c))
        assert not np.array_equal(getattr(a, c), getattr(other_seed, c))


def test_returned_arrays_do_not_alias_fleet_state() -> None:
    fleet = Fleet(20, seed=1)
    r = fleet.readings_at(MONDAY)
    r.meter_ids.clear()
    fleet.meters.clear()
    assert len(fleet.readings_at(MONDAY).meter_ids) == 20 and len(fleet.meters) == 20
