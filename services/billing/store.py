"""PostgreSQL access of the billing service: meters to bill, usage aggregated from the hourly rollups
(one query per chunk of meters, summed per meter and time-of-use bucket inside PostgreSQL), and bills
(written in chunks through COPY, never twice, every version kept)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.billing.bills import COLUMNS, SUPERSEDED, Issued, StoredBill
from services.billing.metering import HEAD, TAIL, Grid, ScanPlan
from services.billing.periods import BillingPeriod

Conn = asyncpg.Connection | asyncpg.Pool

UsageRows = dict[str, list[tuple[int, float, float, int]]]


@dataclass(frozen=True, slots=True)
class MeterRow:
    meter_id: str
    category: str
    tariff_id: str
    sanctioned_load_kw: float
    time_zone: str


_METER_COLUMNS = "meter_id, category, tariff_id, sanctioned_load_kw, time_zone"


async def get_meter(conn: Conn, meter_id: str) -> MeterRow | None:
    row = await conn.fetchrow(f"SELECT {_METER_COLUMNS} FROM meters WHERE meter_id = $1", meter_id)
    return None if row is None else MeterRow(*row)


async def select_meters(
    conn: Conn, *, category: str | None, tariff_id: str | None, meter_ids: Sequence[str] | None
) -> list[MeterRow]:
    """The meters a cycle covers, by tariff then meter id (so each tariff's meters come together).
    With meter_ids, those that exist whatever their tariff (the caller reports the ones without);
    otherwise every meter with a tariff."""
    rows = await conn.fetch(
        f"""SELECT {_METER_COLUMNS} FROM meters
            WHERE ($1::text[] IS NOT NULL OR tariff_id <> '')
              AND ($1::text[] IS NULL OR meter_id = ANY($1::text[]))
              AND ($2::text IS NULL OR category = $2)
              AND ($3::text IS NULL OR tariff_id = $3)
            ORDER BY tariff_id, meter_id""",
        None if meter_ids is None else list(meter_ids),
        category,
        tariff_id,
    )
    return [MeterRow(*r) for r in rows]


def usage_query(grid: Grid) -> tuple[str, tuple[Any, ...]]:
    """The SQL (and its parameters after $1, the meter ids) that sums a chunk of meters' rollups over
    grid per meter and bucket code (see services.billing.metering): whole watt-hours per hour (round()
    of a double is half to even, as numpy's rint), summed. Only rows of the period are touched: the
    primary key (meter_id, hour_start_time) gives an index range per meter."""
    lo = grid.first_hour
    hi = lo + dt.timedelta(hours=grid.n_utc_hours)
    head = (
        "sum(round(import_energy_wh)) AS import_wh, sum(round(export_energy_wh)) AS export_wh, "
        "count(*)::int AS hours"
    )
    where = "meter_id = ANY($1::text[]) AND hour_start_time >= $2 AND hour_start_time < $3"
    if grid.codes is None:
        return (f"SELECT meter_id, 0 AS code, {head} FROM readings_hourly WHERE {where} GROUP BY meter_id"), (
            lo,
            hi,
        )
    if not grid.time_of_use:
        # Only the two straddling hours differ from the rest: a CASE costs far less than an array look-up.
        code = f"CASE hour_start_time WHEN $2 THEN {HEAD} WHEN $4 THEN {TAIL} ELSE 0 END"
        extra: tuple[Any, ...] = (hi - dt.timedelta(hours=1),)
    else:
        code = "($4::int2[])[((date_part('epoch', hour_start_time) - $5::float8) / 3600)::int + 1]"
        extra = (grid.codes.tolist(), lo.timestamp())
    return (
        f"SELECT meter_id, {code} AS code, {head} FROM readings_hourly WHERE {where} GROUP BY 1, 2",
        (lo, hi, *extra),
    )


async def read_usage(conn: Conn, grid: Grid, meter_ids: Sequence[str]) -> UsageRows:
    """meter_id -> [(bucket code, import Wh, export Wh, hours)] for the meters with any rollup."""
    sql, params = usage_query(grid)
    out: UsageRows = {}
    for r in await conn.fetch(sql, list(meter_ids), *params):
        out.setdefault(r[0], []).append((r[1], r[2], r[3], r[4]))
    return out


# The rows of a scan come when PostgreSQL has read every row of the period (about 10 s for 100,000
# meters here): far beyond the pool's per-query timeout.
SCAN_TIMEOUT_SECONDS = 1800.0


async def scan_usage(
    conn: asyncpg.Connection, plan: ScanPlan, meter_ids: Sequence[str] | None
) -> list[asyncpg.Record]:
    """Rows (meter_id, class, import Wh, export Wh, hours) of every meter with rollups in the plan's
    hours, summed per meter and class in one pass over those hours (with parallel workers, and a BRIN
    range scan on hour_start_time where the table spans more than the period). meter_ids, when given,
    keeps only those meters (worth it when they are a small part of the table). Fetched whole: a
    cursor would rule out parallel workers, and a 100,000-meter cycle brings back under a million rows;
    the class of an hour no grid reads is NULL (the caller skips those rows)."""
    lo = plan.first_hour
    hi = lo + dt.timedelta(hours=plan.n_hours)
    keep = "AND meter_id = ANY($5::text[])" if meter_ids is not None else ""
    sql = f"""SELECT meter_id,
                     ($3::int2[])[((date_part('epoch', hour_start_time) - $4::float8) / 3600)::int + 1],
                     sum(round(import_energy_wh)), sum(round(export_energy_wh)), count(*)::int
              FROM readings_hourly
              WHERE hour_start_time >= $1 AND hour_start_time < $2 {keep}
              GROUP BY 1, 2"""
    params: list[Any] = [lo, hi, list(plan.classes), lo.timestamp()]
    if meter_ids is not None:
        params.append(list(meter_ids))
    async with conn.transaction():
        # One hash table of (meter, class) groups per worker: keep it in memory rather than spill.
        await conn.execute("SET LOCAL work_mem = '256MB'")
        # A large meter_ids array is hashed only in a plan made for its value.
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        return await conn.fetch(sql, *params, timeout=SCAN_TIMEOUT_SECONDS)


async def issued_bills(
    conn: Conn, period: BillingPeriod, meter_ids: Sequence[str] | None = None
) -> dict[str, Issued]:
    """The bills in force for period, by meter (every meter's, or those of meter_ids)."""
    rows = await conn.fetch(
        """SELECT meter_id, bill_id, version, inputs_hash, total, currency_code, billing_cycle_id
           FROM bills
           WHERE period_start_date = $1 AND period_end_date = $2 AND status = 'issued'
             AND ($3::text[] IS NULL OR meter_id = ANY($3::text[]))""",
        period.start,
        period.end,
        None if meter_ids is None else list(meter_ids),
    )
    return {r[0]: Issued(r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows}


_STAGE = "billing_stage"


async def write_bills(conn: asyncpg.Connection, bills: Sequence[StoredBill]) -> set[str]:
    """Stores bills in one transaction and returns the ids actually stored. A revision (version > 1)
    is stored only if the bill it replaces is still the issued one, which it then supersedes; a bill
    whose id or meter-and-period slot is already taken (a concurrent computation won) is left out."""
    if not bills:
        return set()
    async with conn.transaction():
        # Staged through a temporary table: COPY cannot skip conflicts, INSERT ... SELECT can.
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE bills INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(_STAGE, records=[b.record() for b in bills], columns=COLUMNS)
        if any(b.previous_bill_id for b in bills):
            replaced = await conn.fetch(
                f"""UPDATE bills b SET status = '{SUPERSEDED}', superseded_by_bill_id = s.bill_id
                    FROM {_STAGE} s
                    WHERE s.previous_bill_id IS NOT NULL AND b.bill_id = s.previous_bill_id
                      AND b.status = 'issued'
                    RETURNING s.bill_id"""
            )
            await conn.execute(
                f"DELETE FROM {_STAGE} WHERE previous_bill_id IS NOT NULL AND NOT (bill_id = ANY($1::text[]))",
                [r[0] for r in replaced],
            )
        rows = await conn.fetch(
            f"INSERT INTO bills SELECT * FROM {_STAGE} ON CONFLICT DO NOTHING RETURNING bill_id"
        )
        # A revision that got this far superseded the issued bill under its row lock, so its slot
        # is free: only a version 1 can meet a conflict here (a concurrent computation stored it).
        stored = {r[0] for r in rows}
    return stored


_BILL_COLUMNS = ", ".join(COLUMNS)


async def get_bill(conn: Conn, bill_id: str) -> StoredBill | None:
    row = await conn.fetchrow(f"SELECT {_BILL_COLUMNS} FROM bills WHERE bill_id = $1", bill_id)
    return None if row is None else StoredBill.from_row(row)


async def get_issued(conn: Conn, meter_id: str, period: BillingPeriod) -> StoredBill | None:
    row = await conn.fetchrow(
        f"""SELECT {_BILL_COLUMNS} FROM bills
            WHERE period_start_date = $1 AND period_end_date = $2 AND meter_id = $3 AND status = 'issued'""",
        period.start,
        period.end,
        meter_id,
    )
    return None if row is None else StoredBill.from_row(row)


async def list_bills(
    conn: Conn,
    meter_id: str,
    *,
    overlapping: tuple[dt.datetime | None, dt.datetime | None],
    include_superseded: bool,
    after: tuple[dt.date, dt.date, int] | None,
    limit: int,
) -> list[StoredBill]:
    """A meter's bills, newest billing period first (then newest version), after the page key."""
    start, end = overlapping
    rows = await conn.fetch(
        f"""SELECT {_BILL_COLUMNS} FROM bills
            WHERE meter_id = $1
              AND ($2::timestamptz IS NULL OR end_time > $2)
              AND ($3::timestamptz IS NULL OR start_time < $3)
              AND ($4 OR status = 'issued')
              AND ($5::date IS NULL
                   OR (period_start_date, period_end_date, version) < ($5::date, $6::date, $7::int))
            ORDER BY period_start_date DESC, period_end_date DESC, version DESC
            LIMIT $8""",
        meter_id,
        start,
        end,
        include_superseded,
        None if after is None else after[0],
        None if after is None else after[1],
        None if after is None else after[2],
        limit,
    )
    return [StoredBill.from_row(r) for r in rows]
