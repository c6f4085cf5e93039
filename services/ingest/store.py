"""The storage side of ingest: writes batches of readings into PostgreSQL exactly once, keeps the
hourly rollup in the same transaction and each meter's last-seen time close behind.

The common case (none of the readings stored yet) goes straight into the table with binary COPY.
A batch that was already stored, wholly or partly (a redelivery after a crash, a client re-sending),
makes that COPY fail on the primary key; the transaction then falls back to COPY into a temporary
table and INSERT ... ON CONFLICT DO NOTHING, and only the rows actually inserted feed the rollup.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg
import numpy as np
import structlog

from services.ingest.columns import ReadingColumns, rollup_hourly
from services.ingest.pgcopy import READINGS_COLUMNS, encode_readings_copy

log = structlog.get_logger(__name__)

_PARTITION_LOCK = 0x70617274


@dataclass(frozen=True)
class WriteResult:
    inserted: int
    duplicates: int


def month_starts(read_time_unix_micros: np.ndarray) -> list[dt.date]:
    months = np.unique(read_time_unix_micros.astype("datetime64[us]").astype("datetime64[M]"))
    return [m.astype(dt.date) for m in months]


def _next_month(d: dt.date) -> dt.date:
    return dt.date(d.year + d.month // 12, d.month % 12 + 1, 1)


class ReadingStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._partitions: set[dt.date] = set()
        self._last_read: dict[str, int] = {}  # meter_id -> latest read_time (unix µs) not yet flushed

    async def ensure_partitions(self, months: list[dt.date]) -> None:
        """Monthly partitions are made on first use, under a lock, so two writers never race."""
        missing = [m for m in months if m not in self._partitions]
        if not missing:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK)
            for m in missing:
                name = f"readings_y{m.year:04d}m{m.month:02d}"
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF readings "
                    f"FOR VALUES FROM ('{m.isoformat()} 00:00:00+00') TO ('{_next_month(m).isoformat()} 00:00:00+00')"
                )
        self._partitions.update(missing)

    async def write(self, cols: ReadingColumns) -> WriteResult:
        if len(cols) == 0:
            return WriteResult(0, 0)
        await self.ensure_partitions(month_starts(cols.read_time_unix_micros))
        payload = encode_readings_copy(
            cols.meter_ids,
            cols.meter_index,
            cols.read_time_unix_micros,
            cols.interval_seconds,
            cols.import_energy_wh,
            cols.export_energy_wh,
            cols.voltage_v,
            cols.current_a,
            cols.active_power_w,
            cols.power_factor,
            cols.frequency_hz,
        )
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                # A savepoint: a COPY that hits the primary key leaves the outer transaction usable.
                async with conn.transaction():
                    await conn.copy_to_table(
                        "readings", source=memoryview(payload), format="binary", columns=READINGS_COLUMNS
                    )
                inserted = cols
            except asyncpg.UniqueViolationError:
                inserted = await self._insert_new_only(conn, payload, cols)
            await self._update_rollup(conn, inserted)
        self._note_last_read(inserted)
        return WriteResult(inserted=len(inserted), duplicates=len(cols) - len(inserted))

    async def _insert_new_only(
        self, conn: asyncpg.Connection, payload: bytes, cols: ReadingColumns
    ) -> ReadingColumns:
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS readings_incoming (LIKE readings) ON COMMIT DELETE ROWS"
        )
        await conn.copy_to_table(
            "readings_incoming", source=memoryview(payload), format="binary", columns=READINGS_COLUMNS
        )
        rows = await conn.fetch(
            f"""INSERT INTO readings ({", ".join(READINGS_COLUMNS)})
                SELECT {", ".join(READINGS_COLUMNS)} FROM readings_incoming
                ON CONFLICT DO NOTHING
                RETURNING meter_id,
                          (extract(epoch FROM read_time - 'epoch'::timestamptz) * 1000000)::int8 AS t"""
        )
        new = {(r["meter_id"], r["t"]) for r in rows}
        ids = cols.per_row_meter_ids()
        mask = np.fromiter(
            ((ids[i], int(t)) in new for i, t in enumerate(cols.read_time_unix_micros.tolist())),
            dtype=bool,
            count=len(cols),
        )
        # Within one batch the same key can appear twice (two redelivered messages); only the first
        # copy was inserted, so count each inserted key once.
        first = np.zeros(len(cols), dtype=bool)
        seen: set[tuple[str, int]] = set()
        for i in np.flatnonzero(mask).tolist():
            key = (ids[i], int(cols.read_time_unix_micros[i]))
            if key not in seen:
                seen.add(key)
                first[i] = True
        log.info("batch held already-stored readings", rows=len(cols), inserted=int(first.sum()))
        return cols.take(first)

    async def _update_rollup(self, conn: asyncpg.Connection, cols: ReadingColumns) -> None:
        if len(cols) == 0:
            return
        r = rollup_hourly(cols)
        # COPY into a temporary table, then one set-based upsert: about a third cheaper than passing
        # the same rows as unnest() array parameters.
        await conn.execute(
            """CREATE TEMP TABLE IF NOT EXISTS readings_hourly_incoming (
                   meter_id text COLLATE "C", hr int8, imp float8, exp float8, cnt int8,
                   vmin float8, vmax float8, amax float8, pmax float8) ON COMMIT DELETE ROWS"""
        )
        await conn.copy_records_to_table(
            "readings_hourly_incoming",
            records=zip(
                r.meter_ids,
                r.hour_unix.tolist(),
                r.import_energy_wh.tolist(),
                r.export_energy_wh.tolist(),
                r.reading_count.tolist(),
                r.min_voltage_v.tolist(),
                r.max_voltage_v.tolist(),
                r.max_current_a.tolist(),
                r.max_active_power_w.tolist(),
                strict=True,
            ),
        )
        await conn.execute(
            """INSERT INTO readings_hourly AS h (meter_id, hour_start_time, import_energy_wh, export_energy_wh,
                   reading_count, min_voltage_v, max_voltage_v, max_current_a, max_active_power_w)
               SELECT meter_id, 'epoch'::timestamptz + hr * interval '1 hour', imp, exp, cnt,
                      NULLIF(vmin, 'NaN'), NULLIF(vmax, 'NaN'), NULLIF(amax, 'NaN'), NULLIF(pmax, 'NaN')
               FROM readings_hourly_incoming
               ORDER BY meter_id, hr
               ON CONFLICT (meter_id, hour_start_time) DO UPDATE SET
                   import_energy_wh = h.import_energy_wh + EXCLUDED.import_energy_wh,
                   export_energy_wh = h.export_energy_wh + EXCLUDED.export_energy_wh,
                   reading_count = h.reading_count + EXCLUDED.reading_count,
                   min_voltage_v = LEAST(h.min_voltage_v, EXCLUDED.min_voltage_v),
                   max_voltage_v = GREATEST(h.max_voltage_v, EXCLUDED.max_voltage_v),
                   max_current_a = GREATEST(h.max_current_a, EXCLUDED.max_current_a),
                   max_active_power_w = GREATEST(h.max_active_power_w, EXCLUDED.max_active_power_w)"""
        )

    def _note_last_read(self, cols: ReadingColumns) -> None:
        if len(cols) == 0:
            return
        latest = np.full(len(cols.meter_ids), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(latest, cols.meter_index, cols.read_time_unix_micros)
        pending = self._last_read
        for meter_id, t in zip(cols.meter_ids, latest.tolist(), strict=True):
            if t > pending.get(meter_id, t - 1):
                pending[meter_id] = t

    async def flush_last_seen(self) -> int:
        """Writes the meters' last read_time and last-seen time noted since the previous flush.

        Coalesced rather than written in every batch's transaction: at 10,000 meters a batch that
        doubled the writer's PostgreSQL work. GREATEST makes the update order-free and repeatable; a
        crash loses at most one flush interval of last-seen advance, which the meter's next reading
        restores. Returns the number of meters updated."""
        if not self._last_read:
            return 0
        pending, self._last_read = self._last_read, {}
        ids = sorted(pending)  # one lock order for every writer
        try:
            await self.pool.execute(
                """UPDATE meters AS m
                   SET last_read_time = GREATEST(m.last_read_time,
                                                 'epoch'::timestamptz + u.t * interval '1 microsecond'),
                       last_seen_time = now()
                   FROM unnest($1::text[], $2::int8[]) AS u(id, t)
                   WHERE m.meter_id = u.id""",
                ids,
                [pending[m] for m in ids],
            )
        except BaseException:
            # Put them back (keeping any newer value noted meanwhile) for the next flush.
            for m, t in pending.items():
                if t > self._last_read.get(m, t - 1):
                    self._last_read[m] = t
            raise
        return len(ids)
