"""The rule layer of the anomaly detector (services/anomaly/rules.py): each rule on both sides of its
limit, one event per anomalous reading (counting the episode so far), NaN never firing, learned baselines (phantom load, export history),
flat-lines, communication gaps and their deterministic ids, and late or redelivered readings."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.anomaly.model import DetectorKind, Event, Kind, MeterInfo, Severity
from services.anomaly.rules import RuleConfig, RuleEngine
from services.anomaly.state import NO_TIME, StateTable
from tests.test_anomaly_state import MONDAY, Q, R, cols, normal, us

ENGINE = RuleEngine()
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T = MONDAY + timedelta(hours=12)  # Monday noon UTC: not night anywhere the tests look


def score(
    rows: list[R], meters: dict[str, MeterInfo] | None = None, state: StateTable | None = None
) -> list[Event]:
    return ENGINE.score(cols(rows), meters or {}, state if state is not None else StateTable()).events


def kinds(events: list[Event]) -> list[Kind]:
    return [e.kind for e in events]


def no_gaps(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind != Kind.COMMUNICATION_GAP]


def one(events: list[Event], kind: Kind) -> Event:
    found = of(events, kind)
    assert len(found) == 1, events
    return found[0]


def of(events: list[Event], kind: Kind) -> list[Event]:
    return [e for e in events if e.kind == kind]


def at_reading(e: Event, row: R) -> bool:
    """A point event: it starts and ends at its one reading."""
    return e.start_time_us == e.end_time_us == us(row.t)


SURGE_LIMIT = "above the 253 V surge limit (nominal 230 V + 10%)"
SAG_LIMIT = "below the 207 V sag limit (nominal 230 V - 10%)"


def readings(meter_id: str, first: datetime, values: list[float], column: str, **fixed: float) -> list[R]:
    """Healthy readings every 15 minutes with `column` set to the given values in turn."""
    rows = normal(meter_id, first, len(values), **fixed)
    return [r._replace(**{column: v}) for r, v in zip(rows, values, strict=True)]


def check_event_shape(e: Event) -> None:
    assert e.detector == DetectorKind.RULES and e.model_version == "rules-1"
    assert 0.0 <= e.score <= 1.0
    assert e.features and sum(f.contribution for f in e.features) <= 1.0 + 1e-9
    contributions = [f.contribution for f in e.features]
    assert contributions == sorted(contributions, reverse=True)
    assert e.start_time_us <= e.end_time_us and e.explanation.endswith(".")


# --- voltage ---------------------------------------------------------------------------------------


def test_surge_fires_just_above_253_v_and_not_just_below():
    assert score(readings("A", T, [252.9], "voltage_v")) == []
    e = one(score(readings("A", T, [253.1], "voltage_v")), Kind.VOLTAGE_SURGE)
    check_event_shape(e)
    assert e.severity == Severity.WARNING and e.features[0].expected == pytest.approx(253.0)


@pytest.mark.parametrize(
    ("volts", "severity"),
    [(264.0, Severity.WARNING), (265.0, Severity.MAJOR), (287.0, Severity.MAJOR), (288.0, Severity.CRITICAL)],
)
def test_surge_severity_rises_at_15_and_25_percent(volts: float, severity: Severity):
    assert one(score(readings("A", T, [volts], "voltage_v")), Kind.VOLTAGE_SURGE).severity == severity


def test_each_surge_reading_is_its_own_event_counting_the_consecutive_readings_so_far():
    rows = readings("A", T, [240.0, 255.0, 262.4, 258.0, 240.0, 256.0], "voltage_v")
    events = score(rows)
    assert kinds(events) == [Kind.VOLTAGE_SURGE] * 4
    surged = [rows[1], rows[2], rows[3], rows[5]]
    for e, row in zip(events, surged, strict=True):
        check_event_shape(e)
        assert at_reading(e, row) and e.meter_id == "A"
        assert e.features[0].value == row.voltage_v and e.features[0].expected == pytest.approx(253.0)
    assert len({e.event_id for e in events}) == 4
    assert [e.explanation for e in events] == [
        f"Voltage 255 V, {SURGE_LIMIT}.",
        f"Voltage 262.4 V, {SURGE_LIMIT}; 2 consecutive readings above it.",
        f"Voltage 258 V, {SURGE_LIMIT}; 3 consecutive readings above it.",
        f"Voltage 256 V, {SURGE_LIMIT}.",  # after a normal reading: a new episode
    ]
    # Each event is scored on its own reading, not the episode's worst.
    assert events[1].score > events[2].score > events[3].score > events[0].score


def test_a_hundred_surge_readings_are_a_hundred_events_with_distinct_ids():
    rows = readings("A", T, [260.0 + i % 3 for i in range(100)], "voltage_v")
    events = score(rows)
    assert kinds(events) == [Kind.VOLTAGE_SURGE] * 100
    assert all(at_reading(e, row) for e, row in zip(events, rows, strict=True))
    assert len({e.event_id for e in events}) == 100
    assert events[-1].explanation == f"Voltage 260 V, {SURGE_LIMIT}; 100 consecutive readings above it."


def test_surge_score_is_monotone_in_the_excess():
    scores = [
        one(score(readings("A", T, [v], "voltage_v")), Kind.VOLTAGE_SURGE).score for v in (254, 260, 280)
    ]
    assert 0.5 <= scores[0] < scores[1] < scores[2] <= 1.0


def test_limits_follow_the_meters_nominal_voltage():
    meters = {"US": MeterInfo("US", nominal_voltage_v=120.0)}
    e = one(score(readings("US", T, [132.5], "voltage_v"), meters), Kind.VOLTAGE_SURGE)
    assert e.features[0].expected == pytest.approx(132.0)
    assert score(readings("US", T, [131.9], "voltage_v"), meters) == []


def test_sag_between_207_v_and_the_outage_level():
    assert score(readings("A", T, [207.1], "voltage_v")) == []
    e = one(score(readings("A", T, [206.9], "voltage_v")), Kind.VOLTAGE_SAG)
    check_event_shape(e)
    assert e.severity == Severity.WARNING
    assert e.explanation == f"Voltage 206.9 V, {SAG_LIMIT}."
    assert one(score(readings("A", T, [190.0], "voltage_v")), Kind.VOLTAGE_SAG).severity == Severity.MAJOR


def test_a_sustained_sag_is_major_from_its_fourth_reading_also_across_batches():
    rows = readings("A", T, [205.0, 204.0, 205.5, 203.0, 204.5, 230.0, 205.0], "voltage_v")
    events = score(rows)
    assert kinds(events) == [Kind.VOLTAGE_SAG] * 6
    assert [e.severity for e in events] == [Severity.WARNING] * 3 + [Severity.MAJOR] * 2 + [Severity.WARNING]
    assert all(at_reading(e, row) for e, row in zip(events, rows[:5] + rows[6:], strict=True))
    assert [e.features[0].value for e in events] == [205.0, 204.0, 205.5, 203.0, 204.5, 205.0]
    assert events[3].explanation == f"Voltage 203 V, {SAG_LIMIT}; 4 consecutive readings below it."
    assert events[5].explanation == f"Voltage 205 V, {SAG_LIMIT}."  # the normal reading ended the sag
    # The episode's count is carried in the state: batches of 2, 2 and 3 find exactly the same events.
    state = StateTable()
    assert (
        score(rows[:2], state=state) + score(rows[2:4], state=state) + score(rows[4:], state=state) == events
    )


def test_outage_when_a_reporting_meter_sees_almost_no_voltage():
    e = one(score(readings("A", T, [0.0], "voltage_v", current_a=0.0, active_power_w=0.0)), Kind.OUTAGE)
    check_event_shape(e)
    assert e.severity == Severity.CRITICAL
    assert kinds(score(readings("A", T, [45.9], "voltage_v"))) == [Kind.OUTAGE]
    assert kinds(score(readings("A", T, [46.1], "voltage_v"))) == [Kind.VOLTAGE_SAG]


# --- current, power, energy ------------------------------------------------------------------------


def test_overcurrent_only_above_a_known_rating():
    rated = {"A": MeterInfo("A", rated_current_a=60.0)}
    assert score(readings("A", T, [59.9], "current_a"), rated) == []
    e = one(score(readings("A", T, [60.1], "current_a"), rated), Kind.OVERCURRENT)
    check_event_shape(e)
    assert e.severity == Severity.MAJOR and e.features[0].expected == 60.0
    assert (
        one(score(readings("A", T, [75.1], "current_a"), rated), Kind.OVERCURRENT).severity
        == Severity.CRITICAL
    )
    assert score(readings("A", T, [500.0], "current_a"), {"A": MeterInfo("A")}) == []  # rating unknown


def test_unmeasured_values_never_fire_a_rule():
    nan = math.nan
    # A consumption-only meter: energy only, sometimes none at all (an empty house), for two days.
    rows = [
        R(
            "C",
            MONDAY + (i + 1) * Q,
            import_energy_wh=0.0 if i % 3 else 50.0 + i % 7,
            export_energy_wh=0.0,
            voltage_v=nan,
            current_a=nan,
            active_power_w=nan,
            power_factor=nan,
            frequency_hz=nan,
        )
        for i in range(192)
    ]
    state = StateTable()
    rated = {"C": MeterInfo("C", rated_current_a=10.0)}
    assert ENGINE.score(cols(rows[:96]), rated, state).events == []
    assert ENGINE.score(cols(rows[96:]), rated, state).events == []


def test_tamper_when_load_is_drawn_but_the_register_does_not_advance():
    e = one(
        score(readings("A", T, [0.0], "import_energy_wh", current_a=3.0, active_power_w=650.0)), Kind.TAMPER
    )
    check_event_shape(e)
    assert e.severity == Severity.MAJOR
    assert e.features[0].name == "import_energy_wh" and e.features[0].expected == pytest.approx(162.5)
    # Below "clearly > 0": standby current, no power reading.
    assert score(readings("A", T, [0.0], "import_energy_wh", current_a=0.4, active_power_w=math.nan)) == []
    assert kinds(
        score(readings("A", T, [0.0], "import_energy_wh", current_a=0.6, active_power_w=math.nan))
    ) == [Kind.TAMPER]
    # Energy recorded: no tamper.
    assert score(readings("A", T, [0.5], "import_energy_wh", current_a=3.0, active_power_w=650.0)) == []


def test_a_solar_meter_exporting_is_neither_tamper_nor_reverse_energy():
    solar = {"S": MeterInfo("S", labels={"solar": "true"})}
    rows = readings(
        "S", T, [0.0] * 4, "import_energy_wh", export_energy_wh=200.0, current_a=3.5, active_power_w=-800.0
    )
    assert score(rows, solar) == []


def test_reverse_energy_on_a_meter_registered_without_solar():
    no_solar = {"A": MeterInfo("A", labels={"solar": "false"})}
    assert score(readings("A", T, [0.0], "export_energy_wh"), no_solar) == []
    rows = readings("A", T, [25.0, 30.0], "export_energy_wh")
    first, second = of(score(rows, no_solar), Kind.REVERSE_ENERGY)
    for e, row in ((first, rows[0]), (second, rows[1])):
        check_event_shape(e)
        assert at_reading(e, row) and e.severity == Severity.MAJOR
        assert (e.features[0].name, e.features[0].value) == ("export_energy_wh", row.export_energy_wh)
    assert first.event_id != second.event_id
    assert first.explanation == (
        "Energy flowing to the grid (25 Wh exported in one interval) at a meter registered without "
        "solar: undeclared solar, a reversed connection or tampering."
    )
    assert second.explanation.startswith("Energy flowing to the grid (30 Wh exported in one interval)")
    assert second.explanation.endswith("tampering; 2 consecutive readings exporting.")
    negative = one(score(readings("A", T, [-400.0], "active_power_w"), no_solar), Kind.REVERSE_ENERGY)
    assert negative.features[0].name == "active_power_w"
    assert score(readings("A", T, [-9.0], "active_power_w"), no_solar) == []


def test_reverse_energy_after_a_day_without_export_but_not_on_a_meter_that_exported_before():
    state = StateTable()
    score(normal("A", MONDAY + Q, 100), state=state)  # a day of import only
    score(normal("B", MONDAY + Q, 4, export_energy_wh=10.0) + normal("B", MONDAY + 5 * Q, 96), state=state)
    later = MONDAY + timedelta(days=1, hours=2)
    events = score(
        readings("A", later, [40.0], "export_energy_wh") + readings("B", later, [40.0], "export_energy_wh"),
        state=state,
    )
    e = one(events, Kind.REVERSE_ENERGY)
    assert e.meter_id == "A" and e.severity == Severity.WARNING
    # Once it has exported, A is a solar meter: no more events.
    assert score(readings("A", later + Q, [35.0], "export_energy_wh"), state=state) == []


def test_a_new_meter_exporting_in_its_first_day_is_learned_as_solar():
    state = StateTable()
    assert score(readings("N", T, [0.0, 20.0, 30.0], "export_energy_wh"), state=state) == []
    assert no_gaps(score(readings("N", T + timedelta(days=2), [50.0], "export_energy_wh"), state=state)) == []


# --- phantom load ----------------------------------------------------------------------------------


def nights(meter_id: str, tz: ZoneInfo, days: int, import_wh: float) -> list[R]:
    """Quiet readings over local 00:00-05:00 of each day (20 per night)."""
    out = []
    for d in range(days):
        midnight = datetime(2025, 1, 6 + d, tzinfo=tz)
        out += [
            R(meter_id, (midnight + (i + 1) * Q).astimezone(UTC), import_energy_wh=import_wh + (i % 3) * 0.5)
            for i in range(20)
        ]
    return out


def test_phantom_load_only_once_the_night_baseline_exists():
    tz = ZoneInfo("Asia/Kolkata")
    meters = {"H": MeterInfo("H", time_zone="Asia/Kolkata")}
    spike_time = datetime(2025, 1, 20, 2, tzinfo=tz).astimezone(UTC)
    spike = [R("H", spike_time, import_energy_wh=100.0)]  # 400 Wh/h against ~25 Wh/h
    # No baseline yet: not flagged.
    fresh = StateTable()
    assert score(spike, meters, fresh) == []
    state = StateTable()
    score(nights("H", tz, 2, 6.0), meters, state)
    e = one(no_gaps(score(spike, meters, state)), Kind.PHANTOM_LOAD)
    check_event_shape(e)
    assert e.severity == Severity.WARNING and "local 01:00" in e.explanation
    assert e.features[0].name == "night_import_energy_wh_per_h" and e.features[0].value == 400.0
    # Same load by day is not a phantom load; and a modest night rise stays below the limit.
    day = datetime(2025, 1, 20, 14, tzinfo=tz).astimezone(UTC)
    assert no_gaps(score([R("H", day, import_energy_wh=100.0)], meters, state)) == []
    modest = [R("H", spike_time + timedelta(days=1), import_energy_wh=20.0)]
    assert no_gaps(score(modest, meters, state)) == []


@pytest.mark.parametrize(
    ("night_wh", "dominant"),
    [(50.0, "3x"), (0.5, "+100 Wh/h")],  # ~200 Wh/h: 3x the mean decides; ~2 Wh/h: the 100 Wh/h floor
)
def test_phantom_load_limit_against_the_night_baseline(night_wh: float, dominant: str):
    state = StateTable()
    meters = {"H": MeterInfo("H")}
    score(nights("H", ZoneInfo("UTC"), 1, night_wh), meters, state)  # 1 night = 20 observations
    night = datetime(2025, 1, 7, 4, 45, tzinfo=UTC)  # the next night, 04:30-04:45
    base = ENGINE.score(cols([R("H", night)]), meters, state.subset(["H"])).baseline
    mean, std = base.night_mean_wh_per_h[0], base.night_std_wh_per_h[0]
    limit = max(3 * mean, mean + 4 * std, mean + 100.0)
    assert limit == pytest.approx(3 * mean if dominant == "3x" else mean + 100.0)

    def at(rate_wh_per_h: float) -> list[Kind]:
        return kinds(
            no_gaps(score([R("H", night, import_energy_wh=rate_wh_per_h / 4)], meters, state.subset(["H"])))
        )

    assert at(limit * 0.999) == []
    assert at(limit * 1.001) == [Kind.PHANTOM_LOAD]


# --- flat-line ---------------------------------------------------------------------------------------


def test_flatline_after_eight_repeats_of_the_same_energy():
    assert score(readings("A", T, [300.0] * 7, "import_energy_wh")) == []
    rows = readings("A", T, [300.0] * 10, "import_energy_wh")
    e = one(score(rows), Kind.FLATLINE)
    check_event_shape(e)
    assert (e.start_time_us, e.end_time_us) == (us(rows[0].t), us(rows[-1].t))
    assert e.severity == Severity.WARNING and "10 consecutive readings" in e.explanation


def test_an_empty_house_is_not_a_flatline():
    zeros = readings("A", T, [0.0] * 40, "import_energy_wh", current_a=0.0, active_power_w=0.0)
    assert score(zeros) == []


def test_zero_energy_under_load_is_a_flatline_and_a_tamper():
    rows = readings("A", T, [0.0] * 8, "import_energy_wh", current_a=4.0, active_power_w=880.0)
    events = score(rows)
    flat = one(events, Kind.FLATLINE)
    assert (flat.start_time_us, flat.end_time_us) == (us(rows[0].t), us(rows[-1].t))
    tampers = of(events, Kind.TAMPER)
    assert len(tampers) == len(events) - 1 == 8
    assert all(at_reading(e, row) for e, row in zip(tampers, rows, strict=True))
    assert len({e.event_id for e in tampers}) == 8
    assert tampers[0].explanation == (
        "Load drawn (880 W and 4 A) while the import register did not advance (0 Wh): possible bypass "
        "or tampering."
    )
    assert tampers[-1].explanation.endswith("tampering; 8 consecutive readings like this.")


def test_a_flatline_across_batches_keeps_its_start_and_event_id():
    state = StateTable()
    rows = readings("A", T, [77.0] * 20, "import_energy_wh")
    first = one(score(rows[:10], state=state), Kind.FLATLINE)
    second = one(score(rows[10:], state=state), Kind.FLATLINE)
    assert first.start_time_us == second.start_time_us == us(rows[0].t)
    assert first.event_id == second.event_id and second.end_time_us == us(rows[-1].t)
    assert "20 consecutive" in second.explanation
    # Starting across a batch boundary: 5 + 5 repeats.
    state = StateTable()
    assert score(rows[:5], state=state) == []
    assert one(score(rows[5:10], state=state), Kind.FLATLINE).start_time_us == us(rows[0].t)


# --- communication gaps ------------------------------------------------------------------------------


def test_gap_within_a_batch_longer_than_four_intervals():
    on_time = normal("A", T, 3) + normal("A", T + 2 * Q + 4 * Q, 2)  # exactly 4 intervals: no gap
    assert score(on_time) == []
    rows = normal("A", T, 3) + normal("A", T + 2 * Q + 4 * Q + timedelta(seconds=1), 2)
    e = one(score(rows), Kind.COMMUNICATION_GAP)
    check_event_shape(e)
    assert (e.start_time_us, e.end_time_us) == (us(rows[2].t), us(rows[3].t))
    assert e.severity == Severity.MAJOR


def test_gap_across_batches_and_the_sweep_agree_on_the_event_id():
    state = StateTable()
    meters = {"A": MeterInfo("A"), "B": MeterInfo("B")}
    score(normal("A", T, 4) + normal("B", T, 4), meters, state)
    last = us(T + 3 * Q)
    now = last + 2 * 3_600_000_000
    info = [meters["A"], meters["B"], MeterInfo("never-read")]
    sweep = ENGINE.gap_events(info, state.last_read_us(["A", "B", "never-read"]), now)
    again = ENGINE.gap_events(info, state.last_read_us(["A", "B", "never-read"]), now + 600_000_000)
    assert [e.meter_id for e in sweep] == ["A", "B"]
    assert [e.event_id for e in sweep] == [e.event_id for e in again]  # the same ongoing gap
    assert all(e.start_time_us == last and e.end_time_us == now for e in sweep)
    assert sweep[0].severity == Severity.MAJOR
    # A returns: the gap event of its first reading is the same anomaly.
    back = one(score(normal("A", T + 3 * Q + timedelta(hours=3), 1), meters, state), Kind.COMMUNICATION_GAP)
    assert back.event_id == sweep[0].event_id and back.end_time_us == us(T + 3 * Q + timedelta(hours=3))


def test_gap_sweep_respects_each_meters_interval_and_escalates_after_a_day():
    hourly = MeterInfo("H", interval_seconds=3600)
    quarter = MeterInfo("Q")
    last = np.array([us(T), us(T), NO_TIME], dtype=np.int64)
    now = us(T) + int(3.5 * 3_600_000_000)  # 3.5 h: over 4 x 15 min, under 4 x 1 h
    events = ENGINE.gap_events([hourly, quarter, MeterInfo("X")], last, now)
    assert [e.meter_id for e in events] == ["Q"]
    late = ENGINE.gap_events([quarter], last[1:2], us(T) + 25 * 3_600_000_000)
    assert late[0].severity == Severity.CRITICAL and late[0].score > events[0].score


# --- order, redelivery, episodes, results ----------------------------------------------------------


def test_batch_order_does_not_change_the_events():
    rows = readings("A", T, [240.0, 255.0, 262.4, 258.0, 240.0], "voltage_v") + normal(
        "B", T + timedelta(hours=3), 3
    )
    rows += normal("B", T + timedelta(hours=6), 2)
    shuffled = [rows[i] for i in np.random.default_rng(7).permutation(len(rows))]
    assert score(rows) == score(shuffled)


def test_a_redelivered_batch_adds_no_flatline_or_gap_and_repeats_the_same_event_ids():
    state = StateTable()
    rows = readings("A", T, [240.0, 262.0, 263.0], "voltage_v")
    first = score(rows, state=state)
    assert kinds(first) == [Kind.VOLTAGE_SURGE] * 2
    again = score(rows, state=state)
    assert [e.event_id for e in again] == [e.event_id for e in first]
    assert again == first  # the same events: values, counts and severities too


def test_a_late_reading_does_not_break_the_sequence():
    state = StateTable()
    rows = readings("A", T, [55.0] * 6, "import_energy_wh")
    score(rows[:3] + rows[4:], state=state)  # the 4th arrives in the next batch
    assert score([rows[3]], state=state) == []
    # The late reading neither reset the flat run (5 in-order repeats so far) nor counted: 3 more make 8.
    assert kinds(score(readings("A", T + 6 * Q, [55.0] * 3, "import_energy_wh"), state=state)) == [
        Kind.FLATLINE
    ]


def test_a_surge_continuing_into_the_next_batch_gives_the_events_of_one_batch():
    rows = readings("A", T, [260.0, 261.0, 262.0, 263.0, 232.0, 258.0], "voltage_v")
    whole = score(rows)
    state = StateTable()
    a = score(rows[:2], state=state)
    b = score(rows[2:4], state=state)
    c = score(rows[4:], state=state)
    assert [e.event_id for e in a + b + c] == [e.event_id for e in whole]
    assert a + b + c == whole
    assert len(whole) == 5 and len({e.event_id for e in whole}) == 5
    assert all(at_reading(e, row) for e, row in zip(b, rows[2:4], strict=True))
    assert b[-1].explanation == f"Voltage 263 V, {SURGE_LIMIT}; 4 consecutive readings above it."
    (restart,) = c  # interrupted by a normal reading: a new episode, counted from 1
    assert at_reading(restart, rows[5]) and restart.explanation == f"Voltage 258 V, {SURGE_LIMIT}."


def test_score_returns_the_baseline_before_the_batch_and_the_completed_days():
    state = StateTable()
    meters = {"A": MeterInfo("A")}
    first = ENGINE.score(cols(normal("A", MONDAY + Q, 96)), meters, state)
    assert np.isnan(first.baseline.voltage_mean_v).all() and len(first.completed_days) == 0
    nxt = ENGINE.score(cols(normal("A", MONDAY + 97 * Q, 2)), meters, state)
    assert not np.isnan(nxt.baseline.voltage_mean_v).any()
    assert nxt.completed_days.meter_ids == ["A"] and nxt.completed_days.day_start_us.tolist() == [us(MONDAY)]


def test_anomalous_readings_do_not_teach_the_baseline():
    state = StateTable()
    score(normal("A", T, 10), state=state)
    score(readings("A", T + 10 * Q, [0.0] * 5, "voltage_v", current_a=0.0, active_power_w=0.0), state=state)
    b = ENGINE.score(cols(normal("A", T + 15 * Q, 1)), {}, state).baseline
    assert b.voltage_mean_v[0] > 229.0


def test_unregistered_meters_are_scored_with_default_limits():
    events = score(readings("stranger", T, [253.1], "voltage_v", current_a=900.0))
    assert kinds(events) == [Kind.VOLTAGE_SURGE]


def test_config_is_validated_with_the_field_name():
    with pytest.raises(ValueError, match="flatline_intervals"):
        RuleConfig(flatline_intervals=0)
    with pytest.raises(ValueError, match="surge_fraction"):
        RuleConfig(surge_fraction=-0.1)
    assert (
        RuleEngine(RuleConfig(flatline_intervals=3))
        .score(cols(readings("A", T, [9.0] * 3, "import_energy_wh")), {}, StateTable())
        .events[0]
        .kind
        == Kind.FLATLINE
    )


def test_empty_batch():
    empty = cols([R("A", T)]).take(np.zeros(0, dtype=np.int64))
    result = ENGINE.score(empty, {}, StateTable())
    assert result.events == [] and len(result.baseline) == 0 and len(result.completed_days) == 0


# --- batching does not change what is found --------------------------------------------------------

NO_PHANTOM = RuleEngine(RuleConfig(phantom_min_observations=10**9))  # the one rule scored against a
# baseline taken before each batch, which legitimately depends on where batches start


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B"]),
            st.sampled_from([1, 1, 1, 2, 6]),  # quarter-hours since the meter's previous reading
            st.sampled_from([230.0, 252.9, 253.1, 270.0, 206.9, 30.0, math.nan]),
            st.sampled_from([0.0, 55.0, 55.0, 80.0]),
            st.sampled_from([0.0, 2.0, 70.0]),
            st.sampled_from([0.0, 0.0, 5.0]),
        ),
        min_size=1,
        max_size=60,
    ),
    st.lists(st.integers(min_value=0, max_value=60), max_size=4),
)
def test_event_ids_do_not_depend_on_how_readings_are_batched(rows, cuts):
    meters = {"A": MeterInfo("A", rated_current_a=60.0, labels={"solar": "false"}), "B": MeterInfo("B")}
    clock = {"A": T, "B": T}
    readings_ = []
    for meter_id, step, volts, energy, amps, export in rows:
        clock[meter_id] += step * Q
        readings_.append(
            R(
                meter_id,
                clock[meter_id],
                import_energy_wh=energy,
                export_energy_wh=export,
                voltage_v=volts,
                current_a=amps,
                active_power_w=amps * 200.0,
            )
        )

    def ids(parts: list[list[R]]) -> set[str]:
        state = StateTable()
        return {e.event_id for p in parts if p for e in NO_PHANTOM.score(cols(p), meters, state).events}

    bounds = sorted({0, len(readings_), *(min(c, len(readings_)) for c in cuts)})
    parts = [readings_[a:b] for a, b in itertools.pairwise(bounds)]
    assert ids(parts) == ids([readings_])


def test_a_constant_load_that_the_power_accounts_for_is_not_a_flatline():
    # A pump's 5 W standby: exactly 1.25 Wh every 15 minutes, for hours, with the voltage moving.
    rows = readings("P", T, [1.25] * 40, "import_energy_wh", active_power_w=5.0, current_a=0.02)
    assert score(rows) == []
    # A frozen meter repeats every value, power included: that is a flat-line.
    frozen = [r._replace(voltage_v=231.4) for r in rows[:10]]
    assert kinds(score(frozen)) == [Kind.FLATLINE]


def test_a_duplicate_read_time_in_one_batch_counts_once():
    rows = readings("A", T, [262.0, 240.0], "voltage_v")
    events = score([rows[0], rows[0], rows[1], rows[1]])
    assert kinds(events) == [Kind.VOLTAGE_SURGE] and at_reading(events[0], rows[0])
    assert events[0].explanation == f"Voltage 262 V, {SURGE_LIMIT}."  # not 2 consecutive readings


def test_a_redelivered_batch_merged_with_new_readings_repeats_the_old_events_and_continues_the_count():
    state = StateTable()
    rows = readings("A", T, [262.0, 263.0, 264.0, 265.0, 266.0], "voltage_v")
    first = score(rows[:3], state=state)
    again = score(rows[:3] + rows[3:], state=state)  # the old three come back with two new ones
    assert again[:3] == first
    assert again == score(rows)  # as if all five had arrived at once
    assert all(at_reading(e, row) for e, row in zip(again, rows, strict=True))
    assert [e.features[0].value for e in again[3:]] == [265.0, 266.0]
    assert again[3].severity == Severity.MAJOR  # 265 V is beyond +15%: severity is per reading
    assert again[4].explanation == f"Voltage 266 V, {SURGE_LIMIT}; 5 consecutive readings above it."
