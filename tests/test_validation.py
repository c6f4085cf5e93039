"""Validation of incoming readings (services/ingest/validation.py), without servers: which readings of a
batch are rejected, why, and that everything else is kept exactly as sent."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metermesh.common.v1 import common_pb2

from services.ingest.codec import from_readings
from services.ingest.columns import FLOAT_COLUMNS, OPTIONAL_COLUMNS, ReadingColumns
from services.ingest.validation import Reason, ValidationResult, validate

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
RETENTION_DAYS = 30
KNOWN = frozenset({"M-1", "M-2", "M-3"})
ENERGY_COLUMNS = ("import_energy_wh", "export_energy_wh")


def micros(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


def set_read_time(r: common_pb2.Reading, unix_micros: int) -> None:
    secs, us = divmod(unix_micros, 1_000_000)
    r.read_time.seconds = secs
    r.read_time.nanos = us * 1000


def reading(
    meter_id: str = "M-1",
    at: datetime | None = NOW - timedelta(minutes=15),
    wh: float = 100.0,
    **fields: float,
) -> common_pb2.Reading:
    """A 15-minute reading (unless interval_seconds is given) ending at `at`; at=None leaves read_time unset."""
    fields.setdefault("interval_seconds", 900)
    r = common_pb2.Reading(meter_id=meter_id, import_energy_wh=wh, **fields)
    if at is not None:
        set_read_time(r, micros(at))
    return r


def check(
    readings: list[common_pb2.Reading],
    *,
    known: frozenset[str] = KNOWN,
    now: int | datetime = NOW,
    retention_days: int = RETENTION_DAYS,
) -> ValidationResult:
    cols, has_meter, has_time = from_readings(readings)
    return validate(
        cols,
        has_meter_id=has_meter,
        has_read_time=has_time,
        known_meters=known,
        now_unix_micros=now if isinstance(now, int) else micros(now),
        retention_days=retention_days,
    )


def rows(cols: ReadingColumns) -> list[tuple[object, ...]]:
    """Per reading: meter id, read time, interval and every float (None for NaN, so rows compare)."""
    ids = cols.per_row_meter_ids()
    return [
        (
            str(ids[i]),
            int(cols.read_time_unix_micros[i]),
            int(cols.interval_seconds[i]),
            *(None if math.isnan(v) else v for v in (float(getattr(cols, c)[i]) for c in FLOAT_COLUMNS)),
        )
        for i in range(len(cols))
    ]


def verdicts(result: ValidationResult) -> dict[int, Reason]:
    return {r.index: r.reason for r in result.rejections}


# (id, reading, reason, fragments the message must contain: the field and the value)
RULES = [
    ("empty meter_id", reading(""), Reason.MISSING_FIELD, ["meter_id is empty"]),
    ("unset read_time", reading(at=None), Reason.MISSING_FIELD, ["read_time is not set"]),
    ("unknown meter", reading("GHOST-7"), Reason.UNKNOWN_METER, ["meter_id 'GHOST-7'", "not registered"]),
    ("nan import", reading(wh=math.nan), Reason.NOT_FINITE, ["import_energy_wh is nan"]),
    ("inf import", reading(wh=math.inf), Reason.NOT_FINITE, ["import_energy_wh is inf"]),
    ("nan export", reading(export_energy_wh=math.nan), Reason.NOT_FINITE, ["export_energy_wh is nan"]),
    ("-inf export", reading(export_energy_wh=-math.inf), Reason.NOT_FINITE, ["export_energy_wh is -inf"]),
    *((f"inf {c}", reading(**{c: math.inf}), Reason.NOT_FINITE, [f"{c} is inf"]) for c in OPTIONAL_COLUMNS),
    ("-inf current", reading(current_a=-math.inf), Reason.NOT_FINITE, ["current_a is -inf"]),
    ("negative import", reading(wh=-0.5), Reason.NEGATIVE_ENERGY, ["import_energy_wh is -0.5"]),
    (
        "negative export",
        reading(export_energy_wh=-12.0),
        Reason.NEGATIVE_ENERGY,
        ["export_energy_wh is -12.0"],
    ),
    ("voltage above", reading(voltage_v=500.5), Reason.VOLTAGE_OUT_OF_RANGE, ["voltage_v is 500.5"]),
    ("voltage below", reading(voltage_v=-0.1), Reason.VOLTAGE_OUT_OF_RANGE, ["voltage_v is -0.1"]),
    ("pf above", reading(power_factor=1.01), Reason.POWER_FACTOR_OUT_OF_RANGE, ["power_factor is 1.01"]),
    ("pf below", reading(power_factor=-1.5), Reason.POWER_FACTOR_OUT_OF_RANGE, ["power_factor is -1.5"]),
    (
        "negative interval",
        reading(interval_seconds=-1),
        Reason.INTERVAL_OUT_OF_RANGE,
        ["interval_seconds is -1"],
    ),
    (
        "interval over a day",
        reading(interval_seconds=86_401),
        Reason.INTERVAL_OUT_OF_RANGE,
        ["interval_seconds is 86401"],
    ),
    (
        "future",
        reading(at=NOW + timedelta(hours=1)),
        Reason.READ_TIME_IN_FUTURE,
        ["read_time 2025-06-01T13:00:00", "5 minutes ahead", "2025-06-01T12:00:00"],
    ),
    (
        "too old",
        reading(at=NOW - timedelta(days=31)),
        Reason.READ_TIME_TOO_OLD,
        ["read_time 2025-05-01T12:00:00", "retention window (30 days)"],
    ),
]


@pytest.mark.parametrize(("bad", "reason", "fragments"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule_rejects_only_the_bad_reading_and_names_the_field_and_value(
    bad: common_pb2.Reading, reason: Reason, fragments: list[str]
) -> None:
    neighbours = [reading("M-2", NOW - timedelta(minutes=30)), reading("M-3", NOW - timedelta(minutes=30))]
    result = check([neighbours[0], bad, neighbours[1]])
    assert [(r.index, r.meter_id, r.reason) for r in result.rejections] == [(1, bad.meter_id, reason)]
    for fragment in fragments:
        assert fragment in result.rejections[0].message, result.rejections[0].message
    assert result.accepted_rows.tolist() == [0, 2]
    assert rows(result.accepted) == rows(from_readings(neighbours)[0])


@pytest.mark.parametrize(
    "fields",
    [
        {"voltage_v": 0.0},
        {"voltage_v": 500.0},
        {"power_factor": -1.0},
        {"power_factor": 1.0},
        {"interval_seconds": 0},
        {"interval_seconds": 86_400},
        {"import_energy_wh": 0.0, "export_energy_wh": 0.0},
        {"active_power_w": -4_000.0, "current_a": 0.0, "frequency_hz": 50.0},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_values_on_the_edge_of_a_range_are_accepted(fields: dict[str, float]) -> None:
    r = common_pb2.Reading(meter_id="M-1", **{"interval_seconds": 900, "import_energy_wh": 1.0, **fields})
    set_read_time(r, micros(NOW - timedelta(hours=1)))
    result = check([r])
    assert result.rejections == []
    assert result.accepted_rows.tolist() == [0]


def test_nan_in_an_optional_column_means_not_measured_and_is_accepted() -> None:
    measured_nothing = reading(**{c: math.nan for c in OPTIONAL_COLUMNS})
    unset = reading("M-2")
    result = check([measured_nothing, unset])
    assert result.rejections == []
    for c in OPTIONAL_COLUMNS:
        assert np.isnan(getattr(result.accepted, c)).all(), c


# Rules in the order the validator documents (the order of Reason): mutations that break one rule each,
# with the field they touch (two breakers of one field cannot be combined) and a message fragment.
Breaker = tuple[Reason, str, Callable[[common_pb2.Reading], None], str]
BREAKERS: list[Breaker] = [
    (Reason.MISSING_FIELD, "meter_id", lambda r: setattr(r, "meter_id", ""), "meter_id is empty"),
    (Reason.MISSING_FIELD, "read_time", lambda r: r.ClearField("read_time"), "read_time is not set"),
    (
        Reason.UNKNOWN_METER,
        "meter_id",
        lambda r: setattr(r, "meter_id", "GHOST"),
        "'GHOST' is not registered",
    ),
    (
        Reason.NOT_FINITE,
        "export_energy_wh",
        lambda r: setattr(r, "export_energy_wh", math.nan),
        "export_energy_wh is nan",
    ),
    (
        Reason.NOT_FINITE,
        "frequency_hz",
        lambda r: setattr(r, "frequency_hz", math.inf),
        "frequency_hz is inf",
    ),
    (
        Reason.NEGATIVE_ENERGY,
        "import_energy_wh",
        lambda r: setattr(r, "import_energy_wh", -3.0),
        "import_energy_wh is -3.0",
    ),
    (
        Reason.VOLTAGE_OUT_OF_RANGE,
        "voltage_v",
        lambda r: setattr(r, "voltage_v", 900.0),
        "voltage_v is 900.0",
    ),
    (
        Reason.POWER_FACTOR_OUT_OF_RANGE,
        "power_factor",
        lambda r: setattr(r, "power_factor", 2.0),
        "power_factor is 2.0",
    ),
    (
        Reason.INTERVAL_OUT_OF_RANGE,
        "interval_seconds",
        lambda r: setattr(r, "interval_seconds", 100_000),
        "interval_seconds is 100000",
    ),
    (
        Reason.READ_TIME_IN_FUTURE,
        "read_time",
        lambda r: set_read_time(r, micros(NOW + timedelta(days=1))),
        "read_time 2025-06-02T12:00:00",
    ),
    (
        Reason.READ_TIME_TOO_OLD,
        "read_time",
        lambda r: set_read_time(r, micros(NOW - timedelta(days=400))),
        "older than the retention window",
    ),
]
PAIRS = [(a, b) for a, b in itertools.combinations(BREAKERS, 2) if a[1] != b[1]]


def test_the_breakers_follow_the_documented_rule_order() -> None:
    order = [list(Reason).index(b[0]) for b in BREAKERS]
    assert order == sorted(order)
    # Every rule but the duplicate one (which is judged last, among valid readings) is exercised.
    assert {b[0] for b in BREAKERS} == set(Reason) - {Reason.DUPLICATE_IN_BATCH}


@pytest.mark.parametrize(("first", "later"), PAIRS, ids=[f"{a[3]} + {b[3]}" for a, b in PAIRS])
def test_a_reading_breaking_two_rules_is_reported_once_for_the_first(first: Breaker, later: Breaker) -> None:
    bad = reading()
    # Apply the later rule's breaker first, so the order of mutation does not decide the outcome.
    later[2](bad)
    first[2](bad)
    result = check([reading("M-2"), bad])
    assert [(r.index, r.reason) for r in result.rejections] == [(1, first[0])]
    assert first[3] in result.rejections[0].message
    assert later[3] not in result.rejections[0].message


def test_a_reading_breaking_every_rule_at_once_is_reported_for_the_first() -> None:
    bad = reading(
        "GHOST",
        at=NOW + timedelta(days=1),
        wh=-1.0,
        export_energy_wh=math.nan,
        voltage_v=-5.0,
        power_factor=3.0,
        interval_seconds=-900,
    )
    assert [r.reason for r in check([bad]).rejections] == [Reason.UNKNOWN_METER]


def test_duplicate_in_batch_keeps_the_first_occurrence_and_names_it() -> None:
    t = NOW - timedelta(minutes=45)
    batch = [
        reading("M-1", t, wh=1.0),
        reading("M-2", t, wh=2.0),  # same time, other meter: not a duplicate
        reading("M-1", t + timedelta(microseconds=1), wh=3.0),  # one microsecond later: not a duplicate
        reading("M-1", t, wh=4.0),
        reading("M-1", t, wh=5.0),
    ]
    result = check(batch)
    assert verdicts(result) == {3: Reason.DUPLICATE_IN_BATCH, 4: Reason.DUPLICATE_IN_BATCH}
    for rej in result.rejections:
        assert rej.meter_id == "M-1"
        assert "meter_id 'M-1' read_time 2025-06-01T11:15:00" in rej.message
        assert "repeats reading 0 of this batch" in rej.message
    assert result.accepted.import_energy_wh.tolist() == [1.0, 2.0, 3.0]


def test_an_invalid_first_occurrence_does_not_make_a_later_valid_one_a_duplicate() -> None:
    t = NOW - timedelta(hours=2)
    batch = [
        reading("M-1", t, wh=-1.0),
        reading("M-1", t, wh=7.0, voltage_v=999.0),
        reading("M-1", t, wh=8.0),
        reading("M-1", t, wh=9.0),
    ]
    result = check(batch)
    assert verdicts(result) == {
        0: Reason.NEGATIVE_ENERGY,
        1: Reason.VOLTAGE_OUT_OF_RANGE,
        3: Reason.DUPLICATE_IN_BATCH,
    }
    assert "repeats reading 2 of this batch" in result.rejections[-1].message
    assert result.accepted_rows.tolist() == [2]
    assert result.accepted.import_energy_wh.tolist() == [8.0]


def test_an_invalid_repeat_is_reported_for_its_own_rule_not_as_a_duplicate() -> None:
    t = NOW - timedelta(hours=2)
    result = check([reading("M-1", t), reading("M-1", t, power_factor=-7.0)])
    assert verdicts(result) == {1: Reason.POWER_FACTOR_OUT_OF_RANGE}


def test_read_time_up_to_five_minutes_ahead_is_accepted_and_one_microsecond_more_rejected() -> None:
    now = micros(NOW) + 123_457  # the server clock need not sit on a whole second
    limit = now + 5 * 60 * 1_000_000
    batch = []
    for t in (limit, limit - 1, limit + 1):
        r = reading()
        set_read_time(r, t)
        batch.append(r)
    result = check(batch, now=now)
    assert verdicts(result) == {2: Reason.READ_TIME_IN_FUTURE}
    assert result.accepted.read_time_unix_micros.tolist() == [limit, limit - 1]


def test_read_time_exactly_at_the_retention_limit_is_accepted_and_one_microsecond_older_rejected() -> None:
    now = micros(NOW) + 654_321
    oldest = now - 7 * 86_400 * 1_000_000
    batch = []
    for t in (oldest, oldest + 1, oldest - 1):
        r = reading()
        set_read_time(r, t)
        batch.append(r)
    result = check(batch, now=now, retention_days=7)
    assert verdicts(result) == {2: Reason.READ_TIME_TOO_OLD}
    assert "retention window (7 days)" in result.rejections[0].message
    assert result.accepted.read_time_unix_micros.tolist() == [oldest, oldest + 1]


def test_read_time_at_the_epoch_counts_as_given_and_is_judged_by_age() -> None:
    r = reading(at=None)
    r.read_time.SetInParent()  # explicitly 1970-01-01T00:00:00Z, not unset
    r = common_pb2.Reading.FromString(r.SerializeToString())  # as it arrives over gRPC
    result = check([r], retention_days=365 * 100)
    assert result.rejections == []
    result = check([r])
    assert verdicts(result) == {0: Reason.READ_TIME_TOO_OLD}


NOW_S = micros(NOW) // 1_000_000


@pytest.mark.parametrize(
    ("seconds", "reason"),
    [
        (NOW_S + 2**58, Reason.READ_TIME_IN_FUTURE),  # times 10**6 wraps to exactly now in int64
        (NOW_S - 2**58, Reason.READ_TIME_TOO_OLD),
        (2**63 - 1, Reason.READ_TIME_IN_FUTURE),
        (-(2**63), Reason.READ_TIME_TOO_OLD),
    ],
    ids=["now+2^58 s", "now-2^58 s", "int64 max", "int64 min"],
)
def test_a_read_time_far_beyond_the_timestamp_range_is_rejected_not_wrapped_into_range(
    seconds: int, reason: Reason
) -> None:
    r = reading()
    r.read_time.seconds = seconds
    r = common_pb2.Reading.FromString(r.SerializeToString())  # as it arrives over gRPC
    result = check([r, reading("M-2", NOW)])
    assert verdicts(result) == {0: reason}


def test_accepted_columns_are_exactly_the_valid_rows_in_order_with_their_values() -> None:
    t = NOW - timedelta(hours=3)
    batch = [
        reading("M-3", t, wh=1.5, voltage_v=231.2, current_a=4.1, power_factor=0.97),
        reading("GHOST", t, wh=2.0),
        reading("M-1", t, wh=3.25, export_energy_wh=0.75, active_power_w=-120.0, frequency_hz=49.98),
        reading("M-2", t, wh=-4.0),
        reading("M-1", t + timedelta(minutes=15), wh=5.0, interval_seconds=0),
        reading("M-3", t, wh=6.0),  # duplicate of reading 0
        reading("M-2", t + timedelta(minutes=15), wh=7.0, voltage_v=math.nan),
    ]
    result = check(batch)
    valid = [0, 2, 4, 6]
    assert result.accepted_rows.tolist() == valid
    assert [r.index for r in result.rejections] == [1, 3, 5]
    assert rows(result.accepted) == [rows(from_readings(batch)[0])[i] for i in valid]
    # The dictionary carries only the meters of accepted readings.
    assert sorted(result.accepted.meter_ids) == ["M-1", "M-2", "M-3"]


def test_a_batch_with_nothing_wrong_is_accepted_whole() -> None:
    batch = [reading(m, NOW - timedelta(minutes=15 * k)) for k in range(1, 5) for m in ("M-2", "M-1")]
    result = check(batch)
    assert result.rejections == []
    assert result.accepted_rows.tolist() == list(range(len(batch)))
    assert rows(result.accepted) == rows(from_readings(batch)[0])


def test_an_empty_batch_validates_to_nothing() -> None:
    result = check([])
    assert result.rejections == [] and len(result.accepted) == 0 and result.accepted_rows.tolist() == []


# --- property: random mixes of valid and invalid readings -----------------------------------------

NOW_US = micros(NOW)
DAY_US = 86_400 * 1_000_000
SPECIAL_FLOATS = [0.0, 1.0, 230.0, 500.0, 500.5, -0.5, -1.0, 1.01, math.nan, math.inf, -math.inf]
SPECIAL_TIMES = [
    NOW_US - 900_000_000,
    NOW_US - 1_800_000_000,
    NOW_US + 300_000_000,
    NOW_US + 300_000_001,
    NOW_US - RETENTION_DAYS * DAY_US,
    NOW_US - RETENTION_DAYS * DAY_US - 1,
]


def expected_reason(r: common_pb2.Reading) -> Reason | None:
    """The documented rules, one reading at a time, in plain Python."""
    if not r.meter_id or not r.HasField("read_time"):
        return Reason.MISSING_FIELD
    if r.meter_id not in KNOWN:
        return Reason.UNKNOWN_METER
    for c in FLOAT_COLUMNS:
        v = getattr(r, c)
        if math.isinf(v) or (c in ENERGY_COLUMNS and math.isnan(v)):
            return Reason.NOT_FINITE
    if r.import_energy_wh < 0 or r.export_energy_wh < 0:
        return Reason.NEGATIVE_ENERGY
    if r.HasField("voltage_v") and not math.isnan(r.voltage_v) and not 0 <= r.voltage_v <= 500:
        return Reason.VOLTAGE_OUT_OF_RANGE
    pf = r.power_factor
    if r.HasField("power_factor") and not math.isnan(pf) and not -1 <= pf <= 1:
        return Reason.POWER_FACTOR_OUT_OF_RANGE
    if not 0 <= r.interval_seconds <= 86_400:
        return Reason.INTERVAL_OUT_OF_RANGE
    t = r.read_time.seconds * 1_000_000 + r.read_time.nanos // 1000
    if t > NOW_US + 300_000_000:
        return Reason.READ_TIME_IN_FUTURE
    if t < NOW_US - RETENTION_DAYS * DAY_US:
        return Reason.READ_TIME_TOO_OLD
    return None


floats = st.sampled_from(SPECIAL_FLOATS) | st.floats()


@st.composite
def readings(draw: st.DrawFn) -> common_pb2.Reading:
    r = common_pb2.Reading(
        meter_id=draw(st.sampled_from(["M-1", "M-2", "M-3", "", "GHOST"])),
        interval_seconds=draw(
            st.sampled_from([0, 900, 86_400, -1, 86_401]) | st.integers(-(2**31), 2**31 - 1)
        ),
        import_energy_wh=draw(floats),
        export_energy_wh=draw(st.just(0.0) | floats),
    )
    for c in OPTIONAL_COLUMNS:
        v = draw(st.none() | floats)
        if v is not None:
            setattr(r, c, v)
    if draw(st.integers(0, 9)):  # mostly set
        t = draw(
            st.sampled_from(SPECIAL_TIMES)
            | st.integers(NOW_US - 40 * DAY_US, NOW_US + DAY_US)
            # Any int64 seconds, far beyond the dates a Timestamp may hold.
            | st.integers(-(2**63), 2**63 - 1).map(lambda s: s * 1_000_000)
        )
        set_read_time(r, t)
    return r


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings(), max_size=20))
def test_every_reading_is_either_accepted_or_rejected_once_for_the_first_rule_it_breaks(
    batch: list[common_pb2.Reading],
) -> None:
    result = check(batch)
    n = len(batch)
    rejected = [r.index for r in result.rejections]
    accepted = result.accepted_rows.tolist()
    assert rejected == sorted(set(rejected))
    assert accepted == sorted(set(accepted))
    assert sorted(accepted + rejected) == list(range(n))

    expected: dict[int, Reason] = {}
    first_seen: dict[tuple[str, int], int] = {}
    for i, r in enumerate(batch):
        reason = expected_reason(r)
        if reason is None:
            key = (r.meter_id, r.read_time.seconds * 1_000_000 + r.read_time.nanos // 1000)
            if key in first_seen:
                reason = Reason.DUPLICATE_IN_BATCH
            else:
                first_seen[key] = i
        if reason is not None:
            expected[i] = reason
    assert verdicts(result) == expected
    assert all(r.meter_id == batch[r.index].meter_id for r in result.rejections)
    assert len(result.accepted) == len(accepted)
    assert rows(result.accepted) == [rows(from_readings(batch)[0])[i] for i in accepted]
