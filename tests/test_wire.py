"""The fast wire decoder of ingest agrees with protobuf itself on every request, and steps aside
(returns None) for encodings it does not take, so protobuf decides those."""

from __future__ import annotations

import math
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2

from services.ingest.codec import from_readings
from services.ingest.columns import FLOAT_COLUMNS, OPTIONAL_COLUMNS
from services.ingest.wire import decode_readings

finite = st.floats(allow_nan=False, width=64)
anything = st.floats(width=64)  # NaN and infinities too: the decoder must carry them, validation judges


@st.composite
def a_reading(draw: st.DrawFn) -> common_pb2.Reading:
    r = common_pb2.Reading(
        meter_id=draw(st.one_of(st.just(""), st.text(min_size=1, max_size=70))),
        interval_seconds=draw(st.integers(-(2**31), 2**31 - 1)),
        import_energy_wh=draw(anything),
        export_energy_wh=draw(finite),
    )
    if draw(st.booleans()):
        r.read_time.seconds = draw(st.integers(-62135596800, 253402300799))
        r.read_time.nanos = draw(st.integers(0, 999_999_999))
    elif draw(st.booleans()):
        r.read_time.SetInParent()  # present but empty
    for name in OPTIONAL_COLUMNS:
        if draw(st.booleans()):
            setattr(r, name, draw(st.one_of(st.just(0.0), anything)))
    return r


def same(a: tuple, b: tuple) -> None:  # type: ignore[type-arg]
    ca, cb = a[0], b[0]
    assert ca.meter_ids == cb.meter_ids
    for name in ("meter_index", "read_time_unix_micros", "interval_seconds", *FLOAT_COLUMNS):
        x, y = getattr(ca, name), getattr(cb, name)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


@settings(max_examples=150, deadline=None)
@given(st.lists(a_reading(), max_size=40))
def test_the_fast_decoder_reads_exactly_what_protobuf_reads(readings: list[common_pb2.Reading]) -> None:
    data = ingest_pb2.PushReadingsRequest(readings=readings).SerializeToString()
    fast = decode_readings(data)
    expected = from_readings(ingest_pb2.PushReadingsRequest.FromString(data).readings)
    if fast is None:
        # Only the encodings it does not take: an id or a reading too long for one length byte, or ids
        # with NUL bytes (the fixed-width byte matrix would drop trailing NULs).
        assert any(
            len(r.meter_id.encode()) >= 128 or r.ByteSize() >= 16384 or "\0" in r.meter_id for r in readings
        )
        return
    same(fast, expected)


def test_uniform_batches_take_the_loop_free_path_and_agree() -> None:
    readings = []
    for k in range(500):
        r = common_pb2.Reading(meter_id=f"U-{k % 50:04d}", interval_seconds=900, import_energy_wh=k + 0.5)
        r.read_time.seconds = 1_700_000_000 + 900 * (k // 50)
        r.voltage_v = 230.0 + k % 7
        readings.append(r)
    data = ingest_pb2.PushReadingsRequest(readings=readings).SerializeToString()
    fast = decode_readings(data)
    assert fast is not None
    same(fast, from_readings(readings))


def encoded(*fields: bytes) -> bytes:
    reading = b"".join(fields)
    return b"\x0a" + bytes([len(reading)]) + reading


def test_encodings_it_does_not_take_are_left_to_protobuf() -> None:
    meter = b"\x0a\x02M1"
    time_ = b"\x12\x06\x08\x80\xe4\x97\xd0\x06"
    # An unknown field (number 15, varint): legal protobuf, skipped by protobuf, not by us.
    assert decode_readings(encoded(meter, time_, b"\x78\x01")) is None
    # read_time twice in one reading: protobuf merges the two; we do not try.
    assert decode_readings(encoded(meter, time_, time_)) is None
    # Not a PushReadingsRequest at all.
    assert decode_readings(b"\xff\xff\xff") is None
    assert decode_readings(encoded(meter)[:-1]) is None  # truncated


def test_fields_in_any_order_and_repeated_scalars_follow_protobuf() -> None:
    voltage = b"\x31" + struct.pack("<d", 231.5)
    data = encoded(voltage, b"\x0a\x02M1", b"\x21" + struct.pack("<d", 5.0), b"\x0a\x02M2", b"\x18\x84\x07")
    fast = decode_readings(data)
    assert fast is not None
    same(fast, from_readings(ingest_pb2.PushReadingsRequest.FromString(data).readings))
    cols = fast[0]
    assert cols.meter_ids == ["M2"] and cols.interval_seconds[0] == 900 and cols.voltage_v[0] == 231.5
    assert math.isnan(cols.current_a[0])
