"""bench-billing: a billing cycle over many meters (100,000 by default) with a month of hourly rollups,
run through the real BillingService over gRPC: bills per second, total time and where it goes (reading
the rollups, pricing, writing the bills), then the same cycle again (nothing left to do).

    make bench-billing            # or: .venv/bin/python -m bench.billing --write BENCHMARKS.md

Uses DATABASE_URL when set, otherwise an embedded PostgreSQL in a temporary directory; the benchmark
creates (and drops) a database of its own. Meters are spread over the shipped tariffs, each in its
tariff's time zone (Asia/Kolkata, America/Los_Angeles, Europe/London). Their hourly rollups are written
straight into readings_hourly by binary COPY, hour after hour as the storage writer would lay them out
(each hour's meters in a scrambled order, as partitions interleave them), then the billing service bills
the month. The baseline in the same run is PostgreSQL alone summing the month's rollups per meter (the
least any cycle has to read)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import struct
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from metermesh.billing.v1 import billing_pb2, billing_pb2_grpc
from metermesh.common.v1 import common_pb2

from bench.report import machine, write_section
from services.billing.catalog import TariffSet, load_tariffs
from services.billing.metering import make_grid
from services.billing.periods import BillingPeriod
from services.common.db import apply_migrations, with_database
from services.common.embedded import EmbeddedPostgres, free_port
from services.common.procs import ServiceProcess

# (tariff, category, share of meters in percent, mean kWh per day, share with rooftop solar)
MIX = (
    ("in-gj-rgp-urban", "residential", 40, 6.0, 0.05),
    ("in-gj-rgp-rural", "residential", 15, 4.0, 0.0),
    ("in-gj-bpl", "residential", 5, 2.0, 0.0),
    ("in-gj-ag-metered", "agricultural", 6, 12.0, 0.0),
    ("in-gj-ag-unmetered", "agricultural", 2, 0.0, 0.0),  # no meter, no readings: billed per HP
    ("us-ca-pge-e-tou-c", "residential", 20, 18.0, 0.15),
    ("uk-economy-7", "residential", 12, 9.0, 0.05),
)
EPOCH_2000 = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
ROLLUP_COLUMNS = ("meter_id", "hour_start_time", "import_energy_wh", "export_energy_wh", "reading_count")


def ts(t: dt.datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(t)
    return out


def assign(meters: int) -> tuple[list[str], np.ndarray]:
    """Meter ids and each one's MIX index (a fixed-width id keeps COPY rows fixed-width)."""
    weights = np.array([m[2] for m in MIX], dtype=np.float64)
    counts = np.floor(weights / weights.sum() * meters).astype(int)
    counts[0] += meters - counts.sum()
    kinds = np.repeat(np.arange(len(MIX)), counts)
    np.random.default_rng(7).shuffle(kinds)
    return [f"BM-{i:07d}" for i in range(meters)], kinds


async def register(conn: asyncpg.Connection, ids: list[str], kinds: np.ndarray, tariffs: TariffSet) -> None:
    rng = np.random.default_rng(11)
    loads = np.round(rng.uniform(0.5, 9.0, len(ids)), 1)
    rows = []
    for i, meter_id in enumerate(ids):
        tariff_id, category, *_ = MIX[kinds[i]]
        tz = tariffs.versions(tariff_id)[0].spec.time_zone
        rows.append((meter_id, category, tariff_id, float(loads[i]), tz))
    await conn.copy_records_to_table(
        "meters",
        records=rows,
        columns=("meter_id", "category", "tariff_id", "sanctioned_load_kw", "time_zone"),
    )


def tz_hours(tariff_id: str, windows: dict[int, tuple[dt.datetime, int]]) -> float:
    """The tariff zone's UTC offset in hours in the middle of the period (for the load shape only)."""
    from zoneinfo import ZoneInfo

    mid = min(w[0] for w in windows.values()) + dt.timedelta(days=15)
    zone = load_tariffs().versions(tariff_id)[0].tz
    offset = mid.astimezone(ZoneInfo(zone.key)).utcoffset()
    return 0.0 if offset is None else offset.total_seconds() / 3600


def copy_header() -> bytes:
    return b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)


def rollup_chunks(
    ids: list[str], kinds: np.ndarray, windows: dict[int, tuple[dt.datetime, int]], hours_per_chunk: int = 12
) -> tuple[int, list[tuple[dt.datetime, int]]]:
    """The union of the windows as (first hour, hours) chunks, and the total number of rows."""
    lo = min(w[0] for w in windows.values())
    hi = max(w[0] + dt.timedelta(hours=w[1]) for w in windows.values())
    n = int((hi - lo) / dt.timedelta(hours=1))
    total = 0
    counts = np.bincount(kinds, minlength=len(MIX))
    for k, (_start, length) in windows.items():
        total += int(counts[k]) * length
    return total, [
        (lo + dt.timedelta(hours=h), min(hours_per_chunk, n - h)) for h in range(0, n, hours_per_chunk)
    ]


async def rollup_stream(
    ids: list[str], kinds: np.ndarray, windows: dict[int, tuple[dt.datetime, int]]
) -> AsyncIterator[bytes]:
    """Binary COPY rows, hour-major: for each UTC hour, every meter whose period needs it."""
    id_len = len(ids[0])
    row = np.dtype(
        [
            ("nfields", ">i2"),
            ("id_len", ">i4"),
            ("id", f"S{id_len}"),
            ("t_len", ">i4"),
            ("t", ">i8"),
            ("imp_len", ">i4"),
            ("imp", ">f8"),
            ("exp_len", ">i4"),
            ("exp", ">f8"),
            ("n_len", ">i4"),
            ("n", ">i4"),
        ]
    )
    order = np.random.default_rng(3).permutation(len(ids))  # the writer's partitions interleave meters
    id_bytes = np.array(ids, dtype=f"S{id_len}")[order]
    kind = kinds[order]
    daily = np.array([m[3] for m in MIX])[kind] * np.random.default_rng(5).uniform(0.5, 1.5, len(ids))
    solar = np.random.default_rng(6).uniform(0, 1, len(ids)) < np.array([m[4] for m in MIX])[kind]
    offset = np.array([tz_hours(m[0], windows) for m in MIX])[kind]  # local hour of day, roughly
    first = np.array([windows[k][0].timestamp() if k in windows else 0 for k in range(len(MIX))])[kind]
    last = np.array(
        [windows[k][0].timestamp() + 3600 * windows[k][1] if k in windows else 0 for k in range(len(MIX))]
    )[kind]
    rng = np.random.default_rng(9)
    yield copy_header()
    _, chunks = rollup_chunks(ids, kinds, windows)
    for start, length in chunks:
        parts = []
        for h in range(length):
            t = start + dt.timedelta(hours=h)
            sec = t.timestamp()
            live = (first <= sec) & (sec < last)
            n = int(live.sum())
            if n == 0:
                continue
            local_hour = (t.hour + offset[live]) % 24
            shape = (
                0.6
                + 0.8 * np.exp(-(((local_hour - 19.5) % 24) ** 2) / 8.0)
                + 0.3 * ((local_hour > 6) & (local_hour < 10))
            )
            imp = np.round(daily[live] * 1000 / 24 * shape * rng.uniform(0.6, 1.4, n), 1)
            exp = np.where(
                solar[live] & (local_hour > 8) & (local_hour < 17),
                np.round(rng.uniform(200, 1500, n), 1),
                0.0,
            )
            a = np.empty(n, dtype=row)
            a["nfields"] = 5
            a["id_len"] = id_len
            a["id"] = id_bytes[live]
            a["t_len"] = 8
            a["t"] = int((t - EPOCH_2000).total_seconds()) * 1_000_000
            a["imp_len"] = 8
            a["imp"] = imp
            a["exp_len"] = 8
            a["exp"] = exp
            a["n_len"] = 4
            a["n"] = 4
            parts.append(a.tobytes())
        yield b"".join(parts)
    yield struct.pack(">h", -1)


async def load_rollups(
    conn: asyncpg.Connection, ids: list[str], kinds: np.ndarray, windows: dict[int, tuple[dt.datetime, int]]
) -> int:
    total, _ = rollup_chunks(ids, kinds, windows)
    async with conn.transaction():
        # TRUNCATE in the same transaction lets COPY FREEZE write the rows already frozen and
        # all-visible (as old rollups are after VACUUM); the primary key is built once afterwards.
        await conn.execute("TRUNCATE readings_hourly")
        await conn.execute("ALTER TABLE readings_hourly DROP CONSTRAINT readings_hourly_pkey")
        await conn.copy_to_table(
            "readings_hourly",
            source=rollup_stream(ids, kinds, windows),
            columns=ROLLUP_COLUMNS,
            format="binary",
            freeze=True,
            timeout=3600,
        )
        await conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
        await conn.execute(
            "ALTER TABLE readings_hourly ADD PRIMARY KEY (meter_id, hour_start_time)", timeout=3600
        )
    await conn.execute("ANALYZE readings_hourly", timeout=3600)
    return total


async def run_cycle(
    addr: str, start: dt.datetime, end: dt.datetime
) -> tuple[billing_pb2.BillingCycleSummary, float, float, int]:
    """(summary, seconds, longest gap between messages, progress messages)."""
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        req = billing_pb2.RunBillingCycleRequest(
            billing_period=common_pb2.TimeRange(start_time=ts(start), end_time=ts(end))
        )
        t0 = last = time.perf_counter()
        gap = 0.0
        progress = 0
        summary = None
        async for msg in stub.RunBillingCycle(req, timeout=3600):
            now = time.perf_counter()
            gap, last = max(gap, now - last), now
            if msg.HasField("summary"):
                summary = msg.summary
            else:
                progress += 1
        assert summary is not None
        return summary, time.perf_counter() - t0, gap, progress


async def baseline_scan(conn: asyncpg.Connection, lo: dt.datetime, hi: dt.datetime) -> float:
    """PostgreSQL alone: the month's rollups summed per meter (parallel, in memory)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL work_mem = '256MB'")
        t = time.perf_counter()
        await conn.fetch(
            """SELECT meter_id, sum(round(import_energy_wh)), sum(round(export_energy_wh)), count(*)
               FROM readings_hourly WHERE hour_start_time >= $1 AND hour_start_time < $2 GROUP BY 1""",
            lo,
            hi,
            timeout=3600,
        )
        return time.perf_counter() - t


def num(value: object) -> str:
    return f"{float(value):.1f}" if isinstance(value, int | float) else "?"


def cycle_log(path: Path, cycle_id: str) -> dict[str, dict[str, object]]:
    events: dict[str, dict[str, object]] = {}
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("cycle_id") == cycle_id:
            events[str(e.get("event"))] = e
    return events


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=100_000)
    ap.add_argument("--month", default="2026-03", help="the month billed, YYYY-MM")
    ap.add_argument("--write", type=Path, help="update the bench-billing section of this markdown file")
    args = ap.parse_args()

    year, month = map(int, args.month.split("-"))
    first_day = dt.date(year, month, 1)
    next_day = dt.date(year + month // 12, month % 12 + 1, 1)
    start = dt.datetime.combine(first_day, dt.time(0), tzinfo=dt.UTC)
    end = dt.datetime.combine(next_day, dt.time(0), tzinfo=dt.UTC)

    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-billing-"))
    embedded: EmbeddedPostgres | None = None
    admin_url = os.environ.get("DATABASE_URL", "")
    if not admin_url:
        embedded = EmbeddedPostgres(tmp / "pgdata")
        admin_url = await asyncio.to_thread(embedded.start)
    name = "mmbench" + uuid.uuid4().hex[:8]
    db_url = with_database(admin_url, name)
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    addr = f"127.0.0.1:{free_port()}"
    log_path = tmp / "billing.log"
    billing = ServiceProcess(
        "billing",
        "services.billing",
        addr,
        {"DATABASE_URL": db_url, "METERMESH_BILLING_ADDR": addr, "METERMESH_LOG_LEVEL": "info"},
        log_path,
    )
    try:
        conn = await asyncpg.connect(db_url)
        await apply_migrations(conn)
        tariffs = load_tariffs()
        period = BillingPeriod(first_day, next_day)
        windows = {}
        for k, (tariff_id, *_rest) in enumerate(MIX):
            if MIX[k][3] == 0:
                continue  # unmetered: no readings
            g = make_grid(tariffs, tariff_id, period)
            windows[k] = (g.first_hour, g.n_utc_hours)
        ids, kinds = assign(args.meters)
        t = time.perf_counter()
        await register(conn, ids, kinds, tariffs)
        print(f"registered {args.meters:,} meters in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        rows = await load_rollups(conn, ids, kinds, windows)
        load_s = time.perf_counter() - t
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('readings_hourly'))")
        print(f"wrote {rows:,} hourly rollups ({size}) in {load_s:.0f} s", flush=True)
        lo = min(w[0] for w in windows.values())
        hi = max(w[0] + dt.timedelta(hours=w[1]) for w in windows.values())
        base = min([await baseline_scan(conn, lo, hi) for _ in range(2)])
        print(f"baseline: PostgreSQL sums the month per meter in {base:.1f} s", flush=True)

        billing.start()
        await billing.wait_serving(120)
        summary, seconds, gap, progress = await run_cycle(addr, start, end)
        print(
            f"cycle: {summary.billed_count:,} billed, {summary.skipped_count:,} skipped, "
            f"{summary.failed_count:,} failed in {seconds:.1f} s; {progress} progress messages, "
            f"longest gap {gap:.2f} s",
            flush=True,
        )
        for f in list(summary.failures)[:3]:
            print(f"  failure: {f.meter_id}: {f.reason}")
        n_bills = await conn.fetchval("SELECT count(*) FROM bills WHERE status = 'issued'")
        n_dupes = await conn.fetchval(
            "SELECT count(*) FROM (SELECT meter_id FROM bills GROUP BY meter_id HAVING count(*) > 1) d"
        )
        assert n_bills == summary.billed_count and n_dupes == 0, (n_bills, n_dupes)
        again, again_s, _, _ = await run_cycle(addr, start, end)
        print(
            f"re-run: {again.billed_count:,} billed, {again.skipped_count:,} skipped in {again_s:.2f} s",
            flush=True,
        )
        assert await conn.fetchval("SELECT count(*) FROM bills") == n_bills
        await conn.close()
    finally:
        await billing.stop()
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if embedded is not None:
            embedded.stop()

    ev = cycle_log(log_path, summary.cycle_id)
    fin, scan = ev.get("billing cycle finished", {}), ev.get("rollups scanned", {})
    per_tariff = ", ".join(f"{m[0]} {m[2]}%" for m in MIX)
    totals = ", ".join(f"{m.amount} {m.currency_code}" for m in summary.billed_totals)
    table = (
        "| measure | value |\n|---|---|\n"
        f"| meters billed (of {args.meters:,}) | {summary.billed_count:,} billed, "
        f"{summary.failed_count:,} failed |\n"
        f"| **whole cycle over gRPC** (request to summary) | **{seconds:.1f} s = "
        f"{summary.billed_count / seconds:,.0f} bills/s** |\n"
        f"| reading the rollups: one pass, summed per meter and hour class in PostgreSQL "
        f"({scan.get('classes', '?')} classes, {int(scan.get('rows', 0)):,} rows back) | "
        f"{num(fin.get('read_seconds'))} s (of which the query {num(scan.get('sql_seconds'))} s) |\n"
        f"| pricing (the engine in one thread, overlapped with writing) | {num(fin.get('price_seconds'))} s |\n"
        f"| writing the bills (COPY + INSERT ... ON CONFLICT, one transaction per 2,000) | "
        f"{num(fin.get('write_seconds'))} s |\n"
        f"| baseline: PostgreSQL alone sums the month per meter | {base:.1f} s "
        f"(cycle / baseline = {seconds / base:.1f}) |\n"
        f"| progress messages / longest gap between messages | {progress} / {gap:.2f} s |\n"
        f"| re-run of the same cycle (everything already billed) | {again_s:.2f} s, "
        f"{again.skipped_count:,} skipped, 0 new bills |\n"
        f"| bills issued total | {totals} |\n"
    )
    print(table)
    if args.write:
        body = (
            "### bench-billing: a billing cycle over "
            f"{args.meters:,} meters, one month of hourly rollups\n\n"
            f"Command: `python -m bench.billing --meters {args.meters} --month {args.month}` "
            "(`make bench-billing`)\n\n"
            f"Measured {dt.date.today().isoformat()} on {machine()}; PostgreSQL "
            f"{'external (DATABASE_URL)' if embedded is None else 'embedded'}. {rows:,} hourly rollups "
            f"({size}) for {args.month} written by binary COPY in time order (as the storage writer lays "
            f"them out); meters spread {per_tariff}, each in its tariff's time zone (Asia/Kolkata, "
            "America/Los_Angeles with daylight saving on 8 March, Europe/London on 29 March). "
            "The cycle runs in the billing service (`python -m services.billing`) and is driven over gRPC "
            "(RunBillingCycle, streaming progress); its split comes from the service's log. Target: "
            "under 60 s.\n\n" + table
        )
        write_section(args.write, "bench-billing", body)


if __name__ == "__main__":
    asyncio.run(main())
