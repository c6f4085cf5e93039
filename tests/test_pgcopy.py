"""Round-trip tests for the binary COPY encoder of readings, against a real PostgreSQL."""

from __future__ import annotations

import math
import os
import struct
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.pgcopy import READINGS_COLUMNS, encode_readings_copy

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

PG_EPOCH_UNIX_MICROS = 946_684_800_000_000
# Earliest timestamptz PostgreSQL accepts (4714-11-24 00:00 BC UTC) in Unix microseconds.
MIN_UNIX_MICROS = -211_813_488_000_000_000 + PG_EPOCH_UNIX_MICROS
INT64_MAX = 2**63 - 1
ONE_MICROSECOND = timedelta(microseconds=1)
FLOAT_COLUMNS = READINGS_COLUMNS[3:]
NULLABLE_COLUMNS = READINGS_COLUMNS[5:]

Row = tuple[Any, ...]


@dataclass
class Batch:
    meter_ids: list[str]
    meter_index: npt.NDArray[np.uint32]
    read_time_unix_micros: npt.NDArray[np.int64]
    interval_seconds: npt.NDArray[np.int32]
    floats: dict[str, npt.NDArray[np.float64]]

    def encode(self) -> bytes:
        return encode_readings_copy(
            self.meter_ids,
            self.meter_index,
            self.read_time_unix_micros,
            self.interval_seconds,
            *(self.floats[c] for c in FLOAT_COLUMNS),
        )

    def expected_rows(self) -> dict[tuple[str, int], Row]:
        """What the table must hold, keyed by primary key; NaN as None, floats as exact bit patterns."""
        rows: dict[tuple[str, int], Row] = {}
        for i in range(len(self.meter_index)):
            key = (self.meter_ids[int(self.meter_index[i])], int(self.read_time_unix_micros[i]))
            values = [float(self.floats[c][i]) for c in FLOAT_COLUMNS]
            rows[key] = (
                int(self.interval_seconds[i]),
                *(None if math.isnan(v) else _bits(v) for v in values),
            )
        return rows


def make_batch(
    meter_ids: Sequence[str],
    rows: Sequence[tuple[int, int, int, Sequence[float]]],
) -> Batch:
    """Build a batch from (meter index, unix micros, interval, [7 floats in FLOAT_COLUMNS order]) rows."""
    n = len(rows)
    floats = {
        c: np.array([r[3][k] for r in rows], dtype=np.float64).reshape(n) for k, c in enumerate(FLOAT_COLUMNS)
    }
    return Batch(
        meter_ids=list(meter_ids),
        meter_index=np.array([r[0] for r in rows], dtype=np.uint32).reshape(n),
        read_time_unix_micros=np.array([r[1] for r in rows], dtype=np.int64).reshape(n),
        interval_seconds=np.array([r[2] for r in rows], dtype=np.int32).reshape(n),
        floats=floats,
    )


def _bits(value: float) -> bytes:
    # Compare floats by bit pattern so -0.0 vs 0.0 and inf are checked exactly.
    return struct.pack(">d", value)


def reference_encode(batch: Batch) -> bytes:
    """Obviously-correct per-row encoder (struct), the oracle for byte-exact comparison."""
    parts = [b"PGCOPY\n\xff\r\n\x00", struct.pack(">ii", 0, 0)]
    for i in range(len(batch.meter_index)):
        raw_id = batch.meter_ids[int(batch.meter_index[i])].encode("utf-8")
        parts.append(struct.pack(">hi", len(READINGS_COLUMNS), len(raw_id)) + raw_id)
        parts.append(struct.pack(">iq", 8, int(batch.read_time_unix_micros[i]) - PG_EPOCH_UNIX_MICROS))
        parts.append(struct.pack(">ii", 4, int(batch.interval_seconds[i])))
        for c in FLOAT_COLUMNS:
            v = float(batch.floats[c][i])
            parts.append(struct.pack(">i", -1) if math.isnan(v) else struct.pack(">id", 8, v))
    parts.append(struct.pack(">h", -1))
    return b"".join(parts)


@dataclass
class Target:
    conn: asyncpg.Connection
    schema: str
    table: str

    async def copy(self, payload: bytes) -> None:
        await self.conn.copy_to_table(
            self.table,
            schema_name=self.schema,
            # asyncpg would open bare bytes as a file name (os.fspath accepts bytes).
            source=memoryview(payload),
            format="binary",
            columns=list(READINGS_COLUMNS),
        )

    async def fetch_rows(self) -> dict[tuple[str, int], Row]:
        # Read times come back as an interval since the Unix epoch: exact to the microsecond
        # over the whole timestamptz range, unlike datetime (years 1-9999 only) and
        # extract(epoch ...) (which rounds near the top of the range).
        records = await self.conn.fetch(
            f"""SELECT meter_id, read_time - 'epoch'::timestamptz AS since_epoch, interval_seconds,
                       {", ".join(FLOAT_COLUMNS)}
                FROM "{self.schema}"."{self.table}" """
        )
        return {
            (r["meter_id"], r["since_epoch"] // ONE_MICROSECOND): (
                r["interval_seconds"],
                *(None if r[c] is None else _bits(r[c]) for c in FLOAT_COLUMNS),
            )
            for r in records
        }


@pytest_asyncio.fixture
async def target() -> AsyncIterator[Target]:
    conn = await asyncpg.connect(DATABASE_URL)
    schema = f"pgcopy_test_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        # Same shape as production: partitioned on read_time; one DEFAULT partition takes any time.
        await conn.execute(
            f"""CREATE TABLE "{schema}".readings (
                  meter_id text NOT NULL,
                  read_time timestamptz NOT NULL,
                  interval_seconds integer NOT NULL,
                  import_energy_wh double precision NOT NULL,
                  export_energy_wh double precision NOT NULL,
                  voltage_v double precision,
                  current_a double precision,
                  active_power_w double precision,
                  power_factor double precision,
                  frequency_hz double precision,
                  PRIMARY KEY (meter_id, read_time)
                ) PARTITION BY RANGE (read_time)"""
        )
        await conn.execute(
            f'CREATE TABLE "{schema}".readings_default PARTITION OF "{schema}".readings DEFAULT'
        )
        yield Target(conn, schema, "readings")
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


NAN = math.nan
INF = math.inf
TRICKY_IDS = ["MTR-000001", "Zähler-Ω", "電表-😀", "", "x" * 300, "MTR-2"]
TRICKY_ROWS: list[tuple[int, int, int, list[float]]] = [
    # 1999-12-31 23:59:59.999999 UTC: one microsecond before the PostgreSQL epoch.
    (0, PG_EPOCH_UNIX_MICROS - 1, 900, [1.5, 0.0, 230.1, 4.2, 966.0, 0.99, 50.01]),
    (0, PG_EPOCH_UNIX_MICROS, 900, [2.5, 0.0, NAN, 4.2, -1234.5, NAN, 49.99]),
    (0, PG_EPOCH_UNIX_MICROS + 1, 900, [3.5, 0.25, NAN, NAN, NAN, NAN, NAN]),
    # 2024-02-29 12:34:56.789012 UTC
    (1, 1_709_210_096_789_012, 60, [1e-300, -0.0, 0.0, -0.0, -5e6, -1.0, INF]),
    (2, -500_000, 1, [INF, 7.0, 229.9, NAN, -0.001, 1.0, 50.0]),  # 1969-12-31 23:59:59.5
    (3, 0, -(2**31), [0.0, 0.0, NAN, 1.0, NAN, 0.5, NAN]),  # empty meter id, unix epoch
    (4, 4_102_444_800_123_456, 2**31 - 1, [1.0, 2.0, 3.0, 4.0, -5.0, 0.6, 7.0]),  # 2100-01-01
    (5, MIN_UNIX_MICROS, 900, [1.0, 2.0, NAN, NAN, NAN, NAN, NAN]),  # earliest timestamptz
    (5, INT64_MAX, 900, [1.0, 2.0, 3.0, 4.0, 5.0, 0.7, 50.0]),  # latest Unix value encodable
]


def test_encoding_matches_reference_byte_for_byte() -> None:
    batch = make_batch(TRICKY_IDS, TRICKY_ROWS)
    assert batch.encode() == reference_encode(batch)


def test_empty_batch_is_header_and_trailer() -> None:
    batch = make_batch(["MTR-1"], [])
    assert batch.encode() == b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8 + b"\xff\xff"


@pytest.mark.asyncio
async def test_empty_batch_copies_nothing(target: Target) -> None:
    await target.copy(make_batch([], []).encode())
    assert await target.fetch_rows() == {}


@pytest.mark.asyncio
async def test_round_trip_nulls_unicode_and_timestamps(target: Target) -> None:
    batch = make_batch(TRICKY_IDS, TRICKY_ROWS)
    await target.copy(batch.encode())
    assert await target.fetch_rows() == batch.expected_rows()

    # Also through asyncpg's own timestamptz decoding: instants, not wall-clock strings.
    got = await target.conn.fetchval(
        f'SELECT read_time FROM "{target.schema}".readings WHERE meter_id = $1', "Zähler-Ω"
    )
    assert got == datetime(2024, 2, 29, 12, 34, 56, 789012, tzinfo=UTC)
    nulls = await target.conn.fetchrow(
        f"""SELECT count(*) FILTER (WHERE voltage_v IS NULL) AS v,
                   count(*) FILTER (WHERE frequency_hz IS NULL) AS f
            FROM "{target.schema}".readings"""
    )
    assert (nulls["v"], nulls["f"]) == (4, 3)


@pytest.mark.asyncio
async def test_large_mixed_batch_round_trips(target: Target) -> None:
    # Enough rows that every vectorised path (ragged ids, sparse NULLs) runs at scale.
    rng = np.random.default_rng(7)
    n = 5000
    ids = [f"M-{i}-{'é' * (i % 4)}" for i in range(137)]
    meter_index = rng.integers(0, len(ids), n).astype(np.uint32)
    times = np.arange(n, dtype=np.int64) * 1_000_003 + 1_600_000_000_000_000  # unique per row
    floats = {c: rng.normal(0, 1000, n) for c in FLOAT_COLUMNS}
    for c in NULLABLE_COLUMNS:
        floats[c][rng.random(n) < 0.2] = np.nan
    batch = Batch(ids, meter_index, times, rng.integers(1, 3600, n).astype(np.int32), floats)
    payload = batch.encode()
    assert payload == reference_encode(batch)
    await target.copy(payload)
    assert await target.fetch_rows() == batch.expected_rows()


@pytest.mark.asyncio
async def test_duplicate_key_raises_and_leaves_table_unchanged(target: Target) -> None:
    first = make_batch(["MTR-A", "MTR-B"], [(0, 1_700_000_000_000_000, 900, [1, 0, 230, 1, 230, 1, 50])])
    await target.copy(first.encode())
    before = await target.fetch_rows()
    assert before == first.expected_rows()

    # New rows around an already-stored (meter_id, read_time): the COPY is all or nothing.
    second = make_batch(
        ["MTR-B", "MTR-A"],
        [
            (0, 1_700_000_000_000_000, 900, [2, 0, NAN, NAN, NAN, NAN, NAN]),
            (1, 1_700_000_000_000_000, 900, [9, 9, 9, 9, 9, 0.9, 9]),  # duplicate of the first batch
            (1, 1_700_000_900_000_000, 900, [3, 0, 231, 1, 231, 1, 50]),
        ],
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await target.copy(second.encode())
    assert await target.fetch_rows() == before

    # A duplicate inside one batch is rejected just the same.
    within = make_batch(["MTR-C"], [(0, 5, 900, [1, 1, 1, 1, 1, 1, 1]), (0, 5, 900, [2, 2, 2, 2, 2, 1, 2])])
    with pytest.raises(asyncpg.UniqueViolationError):
        await target.copy(within.encode())
    assert await target.fetch_rows() == before


def _columns(**overrides: Any) -> list[Any]:
    n = 2
    args: dict[str, Any] = {
        "meter_ids": ["MTR-1", "MTR-2"],
        "meter_index": np.array([0, 1], dtype=np.uint32),
        "read_time_unix_micros": np.array([0, 1], dtype=np.int64),
        "interval_seconds": np.full(n, 900, dtype=np.int32),
        **{c: np.ones(n) for c in FLOAT_COLUMNS},
    }
    args.update(overrides)
    return list(args.values())


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"import_energy_wh": np.array([1.0, np.nan])}, ValueError),  # NOT NULL column
        ({"export_energy_wh": np.array([np.nan, 1.0])}, ValueError),
        ({"meter_index": np.array([0, 2], dtype=np.uint32)}, IndexError),
        ({"meter_index": np.array([0, -1], dtype=np.int64)}, IndexError),
        ({"meter_ids": ["MTR-1", "bad\x00id"]}, ValueError),  # text cannot hold NUL
        ({"read_time_unix_micros": np.array([0, MIN_UNIX_MICROS - 1], dtype=np.int64)}, ValueError),
        ({"interval_seconds": np.array([0, 2**31], dtype=np.int64)}, ValueError),
        ({"read_time_unix_micros": np.array([0, 2**63], dtype=np.uint64)}, ValueError),
        ({"voltage_v": np.ones(3)}, ValueError),  # length mismatch
        ({"read_time_unix_micros": np.array([0.0, 1.0])}, TypeError),  # floats would truncate silently
    ],
)
def test_rejects_invalid_input(overrides: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_readings_copy(*_columns(**overrides))


# Property test: random batches encode byte-for-byte like the reference and round-trip exactly.
meter_id_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
)
meter_id_dictionaries = st.one_of(
    st.lists(meter_id_text, min_size=1, max_size=6, unique=True),
    # Same-length ids (the common production shape) take the no-compaction path.
    st.lists(st.integers(0, 999_999), min_size=1, max_size=6, unique=True).map(
        lambda ns: [f"MTR-{n:06d}" for n in ns]
    ),
)
read_times = st.one_of(
    st.integers(PG_EPOCH_UNIX_MICROS - 10**12, PG_EPOCH_UNIX_MICROS + 10**12),  # around 2000-01-01
    st.integers(MIN_UNIX_MICROS, INT64_MAX),
)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    ids = draw(meter_id_dictionaries)
    keys = draw(st.lists(st.tuples(st.integers(0, len(ids) - 1), read_times), max_size=30, unique=True))
    nullable = draw(st.booleans())
    rows = [
        (
            meter,
            t,
            draw(st.integers(-(2**31), 2**31 - 1)),
            [draw(st.floats(allow_nan=False)) for _ in range(2)]
            + [draw(st.floats(allow_nan=nullable)) for _ in range(5)],
        )
        for meter, t in keys
    ]
    return make_batch(ids, rows)


@pytest.mark.asyncio
@settings(
    max_examples=60,
    deadline=None,
    # One table serves every example; it is truncated at the start of each.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batch=batches())
async def test_random_batches_round_trip(target: Target, batch: Batch) -> None:
    await target.conn.execute(f'TRUNCATE "{target.schema}".readings')
    payload = batch.encode()
    assert payload == reference_encode(batch)
    await target.copy(payload)
    assert await target.fetch_rows() == batch.expected_rows()
