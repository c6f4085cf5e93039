"""Conversions of services/ingest/codec.py: client readings into columns, and the columnar ReadingBatch
that carries accepted readings over the READINGS stream to the storage writer."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays as hnp_arrays
from metermesh.common.v1 import common_pb2

from services.ingest.codec import BadBatch, from_batch, from_readings, to_batch
from services.ingest.columns import FLOAT_COLUMNS, OPTIONAL_COLUMNS, ReadingColumns

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_748_779_200  # 2025-06-01T12:00:00Z


def wire(readings: list[common_pb2.Reading]) -> list[common_pb2.Reading]:
    """The readings as the server sees them: serialized and parsed again, as over gRPC."""
    return [common_pb2.Reading.FromString(r.SerializeToString()) for r in readings]


def reading(meter_id: str = "M-1", seconds: int = T0, nanos: int = 0, **fields: float) -> common_pb2.Reading:
    fields.setdefault("interval_seconds", 900)
    r = common_pb2.Reading(meter_id=meter_id, **fields)
    r.read_time.seconds = seconds
    r.read_time.nanos = nanos
    return r


def encode(cols: ReadingColumns) -> bytes:
    return to_batch(cols).SerializeToString()


def assert_same_columns(a: ReadingColumns, b: ReadingColumns) -> None:
    assert a.meter_ids == b.meter_ids
    for name in ("meter_index", "read_time_unix_micros", "interval_seconds", *FLOAT_COLUMNS):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


# --- from_readings ---------------------------------------------------------------------------------


def test_unset_optional_fields_become_nan_and_an_explicit_zero_stays_zero() -> None:
    unset = reading(import_energy_wh=5.0)
    zeros = reading(import_energy_wh=0.0, **{c: 0.0 for c in OPTIONAL_COLUMNS})
    measured = reading(
        voltage_v=231.5, current_a=4.25, active_power_w=-950.0, power_factor=-0.5, frequency_hz=50.01
    )
    cols, _, _ = from_readings(wire([unset, zeros, measured]))
    for c in OPTIONAL_COLUMNS:
        column = getattr(cols, c)
        assert math.isnan(column[0]), c
        assert column[1] == 0.0, c
        assert column[2] == getattr(measured, c), c
    assert cols.import_energy_wh.tolist() == [5.0, 0.0, 0.0]
    assert cols.export_energy_wh.tolist() == [0.0, 0.0, 0.0]


def test_an_explicit_negative_zero_keeps_its_sign() -> None:
    cols, _, _ = from_readings(wire([reading(active_power_w=-0.0)]))
    assert cols.active_power_w[0] == 0.0 and math.copysign(1.0, cols.active_power_w[0]) == -1.0


def test_an_unset_read_time_is_flagged_and_an_explicit_epoch_is_not() -> None:
    unset = common_pb2.Reading(meter_id="M-1", interval_seconds=900)
    epoch = common_pb2.Reading(meter_id="M-1", interval_seconds=900)
    epoch.read_time.SetInParent()
    cols, has_meter, has_time = from_readings(wire([reading(), unset, epoch, reading(seconds=-1)]))
    assert has_time.tolist() == [True, False, True, True]
    assert has_meter.tolist() == [True, True, True, True]
    assert cols.read_time_unix_micros.tolist()[2:] == [0, -1_000_000]


def test_an_empty_meter_id_is_flagged_and_every_row_keeps_its_meter() -> None:
    ids = ["M-2", "", "M-1", "M-2", ""]
    cols, has_meter, _ = from_readings(wire([reading(m) for m in ids]))
    assert has_meter.tolist() == [True, False, True, True, False]
    assert cols.per_row_meter_ids().tolist() == ids
    assert sorted(cols.meter_ids) == ["", "M-1", "M-2"]


@pytest.mark.parametrize(
    ("seconds", "nanos", "unix_micros"),
    [
        (T0, 0, T0 * 1_000_000),
        (T0, 999, T0 * 1_000_000),
        (T0, 1_000, T0 * 1_000_000 + 1),
        (T0, 1_999, T0 * 1_000_000 + 1),
        (T0, 999_999_999, T0 * 1_000_000 + 999_999),
        (-1, 500_000_000, -500_000),  # 1969-12-31T23:59:59.5Z
        (-1, 999, -1_000_000),
    ],
)
def test_read_time_nanos_are_truncated_to_microseconds(seconds: int, nanos: int, unix_micros: int) -> None:
    cols, _, _ = from_readings(wire([reading(seconds=seconds, nanos=nanos)]))
    assert cols.read_time_unix_micros.tolist() == [unix_micros]


def test_from_readings_carries_every_value() -> None:
    r = reading(
        "GJ-DGVCL-000123",
        seconds=T0,
        nanos=250_000_000,
        interval_seconds=1800,
        import_energy_wh=412.5,
        export_energy_wh=12.25,
        voltage_v=229.9,
        current_a=1.75,
        active_power_w=-130.0,
        power_factor=0.91,
        frequency_hz=49.97,
    )
    cols, has_meter, has_time = from_readings(wire([r]))
    assert cols.meter_ids == ["GJ-DGVCL-000123"] and cols.meter_index.tolist() == [0]
    assert cols.read_time_unix_micros.tolist() == [T0 * 1_000_000 + 250_000]
    assert cols.interval_seconds.tolist() == [1800]
    assert {c: float(getattr(cols, c)[0]) for c in FLOAT_COLUMNS} == {c: getattr(r, c) for c in FLOAT_COLUMNS}
    assert has_meter.tolist() == has_time.tolist() == [True]


# --- ReadingBatch: to_batch / from_batch -----------------------------------------------------------


@st.composite
def reading_columns(draw: st.DrawFn) -> ReadingColumns:
    ids = draw(st.lists(st.text(max_size=12), unique=True, max_size=6))
    n = draw(st.integers(0, 20)) if ids else 0

    def column(dtype: type, elements: st.SearchStrategy[object]) -> st.SearchStrategy[np.ndarray]:
        return hnp_arrays(dtype, n, elements=elements) if n else st.just(np.zeros(0, dtype))

    return ReadingColumns(
        meter_ids=ids,
        meter_index=draw(column(np.uint32, st.integers(0, max(len(ids) - 1, 0)))),
        read_time_unix_micros=draw(column(np.int64, st.integers(-(2**63), 2**63 - 1))),
        interval_seconds=draw(column(np.int32, st.integers(-(2**31), 2**31 - 1))),
        **{c: draw(column(np.float64, st.floats())) for c in FLOAT_COLUMNS},
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reading_columns())
def test_a_batch_decodes_to_exactly_the_columns_it_was_encoded_from(cols: ReadingColumns) -> None:
    decoded = from_batch(encode(cols))
    assert_same_columns(decoded, cols)
    # Signed zeros survive too (a NaN's payload need not).
    for c in FLOAT_COLUMNS:
        a, b = getattr(decoded, c), getattr(cols, c)
        assert np.array_equal(np.signbit(a[~np.isnan(a)]), np.signbit(b[~np.isnan(b)])), c


def test_readings_survive_the_trip_through_the_stream() -> None:
    readings = wire(
        [
            reading("M-2", seconds=T0, nanos=123_456_000, import_energy_wh=1.5, voltage_v=230.0),
            reading("M-1", seconds=T0 - 900, import_energy_wh=0.0, export_energy_wh=3.0),
            reading("M-2", seconds=-86_400, interval_seconds=0, power_factor=0.0),
        ]
    )
    cols, _, _ = from_readings(readings)
    assert_same_columns(from_batch(encode(cols)), cols)


def test_garbage_bytes_raise_bad_batch() -> None:
    with pytest.raises(BadBatch, match=r"not a metermesh\.common\.v1\.ReadingBatch"):
        from_batch(b"this is not a protobuf message \xff\xff")


@pytest.mark.parametrize("short", ["read_time_unix_micros", "interval_seconds", *FLOAT_COLUMNS])
def test_a_batch_whose_columns_differ_in_length_raises_bad_batch(short: str) -> None:
    cols, _, _ = from_readings(wire([reading("M-1", seconds=T0), reading("M-2", seconds=T0)]))
    batch = to_batch(cols)
    del getattr(batch, short)[-1]
    with pytest.raises(BadBatch, match="columns of different lengths"):
        from_batch(batch.SerializeToString())


def test_a_batch_with_a_column_longer_than_meter_index_raises_bad_batch() -> None:
    cols, _, _ = from_readings(wire([reading("M-1")]))
    batch = to_batch(cols)
    batch.voltage_v.append(230.0)
    with pytest.raises(BadBatch, match="columns of different lengths"):
        from_batch(batch.SerializeToString())


def test_a_meter_index_beyond_the_meter_ids_raises_bad_batch() -> None:
    cols, _, _ = from_readings(wire([reading("M-1"), reading("M-2")]))
    batch = to_batch(cols)
    batch.meter_index[1] = 2
    with pytest.raises(BadBatch, match="meter_index 2 beyond 2 meter_ids"):
        from_batch(batch.SerializeToString())
    del batch.meter_ids[:]
    batch.meter_index[1] = 0
    with pytest.raises(BadBatch, match="beyond 0 meter_ids"):
        from_batch(batch.SerializeToString())


def test_an_empty_batch_decodes_to_no_readings() -> None:
    assert len(from_batch(b"")) == 0


# --- deterministic encoding (the Nats-Msg-Id is a hash of these bytes) -----------------------------

SAMPLE = [
    reading(m, seconds=T0 + 900 * k, nanos=1000 * k, import_energy_wh=float(k), voltage_v=230.0 + k)
    for k in range(3)
    for m in ["M-3", "M-10", "Ω-7", "A-1", "z-9", "M-2", "B-4", "M-1"]
] + [reading("M-1", seconds=T0 + 99, export_energy_wh=2.5), reading("Ω-7", seconds=T0 + 99, current_a=0.0)]


def published(readings: list[common_pb2.Reading]) -> tuple[bytes, bytes]:
    """The encoding of the columns as decoded, and of the take the publisher sends per partition."""
    cols, _, _ = from_readings(readings)
    return encode(cols), encode(cols.take(np.arange(len(cols))))


def test_the_same_readings_always_encode_to_the_same_bytes() -> None:
    # A retried request arrives as new objects parsed from new bytes; the encoding must not change.
    assert published(wire(SAMPLE)) == published(wire(SAMPLE)) == published(SAMPLE)


def test_another_process_encodes_the_same_readings_to_the_same_bytes() -> None:
    """Every ingest replica (each with its own string hash seed) must compute the same Nats-Msg-Id."""
    script = """
import sys
import numpy as np
from metermesh.common.v1 import common_pb2
from services.ingest.codec import from_readings, to_batch
data, readings = sys.stdin.buffer.read(), []
while data:
    n = int.from_bytes(data[:4], "big")
    readings.append(common_pb2.Reading.FromString(data[4 : 4 + n]))
    data = data[4 + n :]
cols = from_readings(readings)[0]
whole = to_batch(cols).SerializeToString()
taken = to_batch(cols.take(np.arange(len(cols)))).SerializeToString()
sys.stdout.buffer.write(len(whole).to_bytes(4, "big") + whole + taken)
"""
    payload = b"".join(len(b).to_bytes(4, "big") + b for b in (r.SerializeToString() for r in SAMPLE))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=payload,
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    n = int.from_bytes(out[:4], "big")
    assert (out[4 : 4 + n], out[4 + n :]) == published(wire(SAMPLE))
