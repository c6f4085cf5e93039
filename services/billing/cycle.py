"""Billing cycles: bill every selected meter for one period, fast, and safely re-runnable.

How a cycle runs:
- Admission, under a transaction-level advisory lock so two requests cannot both get in: a cycle for an
  overlapping period whose advisory lock is held (its process is alive and running it) makes the new
  request ABORTED. An unfinished cycle of the identical request (period, filters, recompute) whose
  process died or was cancelled is resumed under its own cycle_id; otherwise a new cycle starts. The
  cycle's session-level advisory lock is then held on one connection until the run ends, so a crashed
  process releases it with its connections.
- Meters are read once (by tariff, then id) and so are the period's issued bills. Without recompute, a
  meter with an issued bill is skipped (or counted billed if this cycle issued it in an earlier run);
  with recompute, one this cycle already re-billed is not redone, the rest are priced again and only
  those whose inputs changed get a new version. So a re-run after a crash finishes the remaining
  meters only and never doubles a bill (the bills table's unique indexes guarantee it regardless).
- The rest go through a three-stage pipeline in chunks of meters on one tariff: PostgreSQL sums a
  chunk's rollups per meter and bucket (one query) while a thread prices the previous chunk, while
  another connection stores the chunk before (COPY into a staging table, INSERT ... ON CONFLICT DO
  NOTHING, in one transaction). Counters move when a chunk's transaction commits."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
import structlog

from services.billing import store
from services.billing.biller import Biller, ChunkResult
from services.billing.bills import Issued
from services.billing.errors import BillingError, UnknownTariff
from services.billing.metering import Grid, scan_plan
from services.billing.periods import BillingPeriod
from services.billing.store import MeterRow
from services.common import metrics

log = structlog.get_logger(__name__)

LOCK_NAMESPACE = 0x62696C6C  # "bill": first key of the billing service's advisory locks
ADMISSION = 0  # second key of the lock that serialises admissions
MAX_FAILURES_REPORTED = 1000


class CycleBusy(Exception):
    pass


@dataclass(frozen=True)
class CycleRequest:
    start: dt.datetime
    end: dt.datetime
    category: str | None = None
    tariff_id: str | None = None
    meter_ids: tuple[str, ...] | None = None
    recompute: bool = False

    @property
    def key(self) -> str:
        text = "|".join(
            (
                self.start.astimezone(dt.UTC).isoformat(),
                self.end.astimezone(dt.UTC).isoformat(),
                self.category or "",
                self.tariff_id or "",
                ",".join(sorted(self.meter_ids)) if self.meter_ids is not None else "*",
                str(self.recompute),
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class CycleState:
    """The counters a cycle's progress reports show, and the failures of its summary."""

    cycle_id: str
    start_time: dt.datetime
    resumed: bool = False
    total: int = 0
    billed: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    billed_totals: dict[str, Decimal] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "price": 0.0, "write": 0.0})
    finished: bool = False
    end_time: dt.datetime | None = None

    @property
    def done(self) -> int:
        return self.billed + self.skipped + self.failed

    def fail(self, meter_id: str, reason: str) -> None:
        self.failed += 1
        self.failures.append((meter_id, reason))

    def add_total(self, currency: str, amount: Decimal) -> None:
        self.billed_totals[currency] = self.billed_totals.get(currency, Decimal(0)) + amount

    def sorted_failures(self) -> list[tuple[str, str]]:
        return sorted(self.failures)[:MAX_FAILURES_REPORTED]


@dataclass
class _Chunk:
    grid: Grid
    meters: list[MeterRow]
    existing: dict[str, Issued]
    usage: store.UsageRows | None = None
    result: ChunkResult | None = None


class CycleRunner:
    def __init__(
        self, pool: asyncpg.Pool, biller: Biller, *, chunk_meters: int, scan_min_percent: float
    ) -> None:
        self.pool = pool
        self.biller = biller
        self.chunk_meters = chunk_meters
        self.scan_min_percent = scan_min_percent

    async def admit(self, conn: asyncpg.Connection, req: CycleRequest) -> CycleState:
        """Registers (or resumes) the cycle and takes its advisory lock on conn; raises CycleBusy."""
        key = req.key
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, ADMISSION)
            rows = await conn.fetch(
                """SELECT cycle_id, request_key, lock_key, state, create_time FROM billing_cycles
                   WHERE state <> 'finished' AND start_time < $2 AND end_time > $1
                   ORDER BY create_time""",
                req.start,
                req.end,
            )
            held = {
                int(r[0])
                for r in await conn.fetch(
                    """SELECT objid::int8 FROM pg_locks
                       WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::int8::oid
                         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
                    LOCK_NAMESPACE,
                )
            }
            for r in rows:
                if r["lock_key"] in held:
                    raise CycleBusy(
                        f"billing cycle {r['cycle_id']} is running for an overlapping period; wait for it "
                        f"to finish (or cancel it) and run this one again"
                    )
            resume = next((r for r in rows if r["request_key"] == key), None)
            if resume is not None:
                cycle_id, lock_key, created = resume["cycle_id"], resume["lock_key"], resume["create_time"]
                await conn.execute(
                    """UPDATE billing_cycles SET state = 'running', run_count = run_count + 1
                       WHERE cycle_id = $1""",
                    cycle_id,
                )
            else:
                day = "%Y%m%d"
                cycle_id = (
                    f"cycle-{req.start.astimezone(dt.UTC):{day}}-{req.end.astimezone(dt.UTC):{day}}-"
                    f"{secrets.token_hex(4)}"
                )
                lock_key = secrets.randbelow(2**31 - 1) + 1
                created = await conn.fetchval(
                    """INSERT INTO billing_cycles (cycle_id, request_key, start_time, end_time, category,
                                                   tariff_id, meter_ids, recompute, state, lock_key)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9) RETURNING create_time""",
                    cycle_id,
                    key,
                    req.start,
                    req.end,
                    req.category or "",
                    req.tariff_id or "",
                    list(req.meter_ids or ()),
                    req.recompute,
                    lock_key,
                )
            # Cycles whose process died mid-run stay resumable; they are just no longer running.
            stale = [r["cycle_id"] for r in rows if r["state"] == "running" and r["cycle_id"] != cycle_id]
            if stale:
                await conn.execute(
                    "UPDATE billing_cycles SET state = 'interrupted' WHERE cycle_id = ANY($1::text[])", stale
                )
            await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_NAMESPACE, lock_key)
        log.info("billing cycle admitted", cycle_id=cycle_id, resumed=resume is not None)
        return CycleState(cycle_id, created, resumed=resume is not None)

    async def run(self, req: CycleRequest, state: CycleState, lock_conn: asyncpg.Connection) -> None:
        """Runs an admitted cycle to the end, updating state as chunks commit."""
        t0 = time.perf_counter()
        chunks = await self._plan(req, state)
        metrics.count_bills(skipped=state.skipped, failed=state.failed)  # decided while planning
        log.info(
            "billing cycle planned",
            cycle_id=state.cycle_id,
            meters=state.total,
            to_bill=sum(len(c.meters) for c in chunks),
            already=state.done,
            seconds=round(time.perf_counter() - t0, 3),
        )
        if chunks:
            await self._pipeline(req, state, chunks, lock_conn)
        state.end_time = dt.datetime.now(dt.UTC)
        state.finished = True
        await lock_conn.execute(
            """UPDATE billing_cycles SET state = 'finished', finish_time = $2, total_count = $3,
                   billed_count = $4, skipped_count = $5, failed_count = $6
               WHERE cycle_id = $1""",
            state.cycle_id,
            state.end_time,
            state.total,
            state.billed,
            state.skipped,
            state.failed,
        )
        log.info(
            "billing cycle finished",
            cycle_id=state.cycle_id,
            meters=state.total,
            billed=state.billed,
            skipped=state.skipped,
            failed=state.failed,
            seconds=round(time.perf_counter() - t0, 3),
            read_seconds=round(state.seconds["read"], 3),
            price_seconds=round(state.seconds["price"], 3),
            write_seconds=round(state.seconds["write"], 3),
        )

    async def interrupted(self, state: CycleState) -> None:
        """Marks a run that did not finish (cancelled, failed) as resumable."""
        with contextlib.suppress(Exception):
            await self.pool.execute(
                "UPDATE billing_cycles SET state = 'interrupted' WHERE cycle_id = $1 AND state = 'running'",
                state.cycle_id,
            )

    async def _scan(self, chunks: list[_Chunk], state: CycleState, all_meters: int) -> None:
        """Fills every chunk's usage from one pass over the period's rollups (see ScanPlan)."""
        t = time.perf_counter()
        grids: dict[int, Grid] = {}
        for c in chunks:
            grids.setdefault(id(c.grid), c.grid)
        plan = scan_plan(grids.values())
        index = {key: i for i, key in enumerate(grids)}
        grid_of: dict[str, int] = {}
        for c in chunks:
            gi = index[id(c.grid)]
            for m in c.meters:
                grid_of[m.meter_id] = gi
        # Filtering by meter costs a hash probe per row: worth it only when most rows are not wanted.
        only = list(grid_of) if len(grid_of) * 2 < all_meters else None
        folded: dict[str, dict[int, list[float]]] = {}
        codes = plan.class_codes
        async with self.pool.acquire() as conn:
            scanned = await store.scan_usage(conn, plan, only)
        sql_seconds = time.perf_counter() - t
        rows = len(scanned)
        for meter_id, cls, imp, exp, hours in scanned:
            gi = grid_of.get(meter_id)
            if gi is None or cls is None:
                continue
            code = codes[cls][gi]
            if code is None:
                continue
            acc = folded.setdefault(meter_id, {}).setdefault(code, [0.0, 0.0, 0])
            acc[0] += imp
            acc[1] += exp
            acc[2] += hours
        del scanned
        for c in chunks:
            c.usage = {
                m.meter_id: [(code, a[0], a[1], a[2]) for code, a in folded[m.meter_id].items()]
                for m in c.meters
                if m.meter_id in folded
            }
        state.seconds["read"] += time.perf_counter() - t
        log.info(
            "rollups scanned",
            cycle_id=state.cycle_id,
            meters=len(grid_of),
            filtered=only is not None,
            hours=plan.n_hours,
            classes=len(plan.class_codes),
            rows=rows,
            sql_seconds=round(sql_seconds, 3),
            seconds=round(time.perf_counter() - t, 3),
        )

    async def _plan(self, req: CycleRequest, state: CycleState) -> list[_Chunk]:
        meters = await store.select_meters(
            self.pool, category=req.category, tariff_id=req.tariff_id, meter_ids=req.meter_ids
        )
        if req.meter_ids is not None:
            found = {m.meter_id for m in meters}
            for meter_id in sorted(set(req.meter_ids) - found):
                state.total += 1
                state.fail(
                    meter_id,
                    "not registered"
                    if req.category is None and req.tariff_id is None
                    else "not registered, or not of the category / tariff asked for",
                )
        state.total += len(meters)
        existing_by_period: dict[BillingPeriod, dict[str, Issued]] = {}
        chunks: list[_Chunk] = []
        by_tariff: dict[str, list[MeterRow]] = {}
        for m in meters:
            if not m.tariff_id:
                state.fail(m.meter_id, "has no tariff; register it with a tariff_id")
                continue
            by_tariff.setdefault(m.tariff_id, []).append(m)
        for tariff_id, group in by_tariff.items():
            try:
                period = self.biller.period_for(tariff_id, req.start, req.end)
                grid = self.biller.grid(tariff_id, period)
            except UnknownTariff:
                for m in group:
                    state.fail(m.meter_id, f"tariff {tariff_id!r} is not loaded")
                continue
            except BillingError as exc:
                for m in group:
                    state.fail(m.meter_id, f"{exc.field}: {exc.message}" if exc.field else exc.message)
                continue
            if period not in existing_by_period:
                existing_by_period[period] = await store.issued_bills(self.pool, period)
            existing = existing_by_period[period]
            todo: list[MeterRow] = []
            for m in group:
                issued = existing.get(m.meter_id)
                if issued is None:
                    todo.append(m)
                elif issued.billing_cycle_id == state.cycle_id:
                    # Billed by this cycle in an earlier run: done, and part of its totals.
                    state.billed += 1
                    state.add_total(issued.currency_code, issued.total)
                elif req.recompute:
                    todo.append(m)
                else:
                    state.skipped += 1
            for i in range(0, len(todo), self.chunk_meters):
                part = todo[i : i + self.chunk_meters]
                chunks.append(
                    _Chunk(
                        grid, part, {m.meter_id: existing[m.meter_id] for m in part if m.meter_id in existing}
                    )
                )
        return chunks

    async def _pipeline(
        self, req: CycleRequest, state: CycleState, chunks: list[_Chunk], write_conn: asyncpg.Connection
    ) -> None:
        read_q: asyncio.Queue[_Chunk | None] = asyncio.Queue(maxsize=2)
        write_q: asyncio.Queue[_Chunk | None] = asyncio.Queue(maxsize=2)
        n_meters = sum(len(c.meters) for c in chunks)

        all_meters = await self.pool.fetchval("SELECT count(*) FROM meters")

        async def reader() -> None:
            if n_meters * 100 >= all_meters * self.scan_min_percent:
                await self._scan(chunks, state, all_meters)
                for c in chunks:
                    await read_q.put(c)
            else:
                # Few meters: each one's hours through the primary key beat reading the whole period.
                async with self.pool.acquire() as conn:
                    for c in chunks:
                        t = time.perf_counter()
                        c.usage = await store.read_usage(conn, c.grid, [m.meter_id for m in c.meters])
                        state.seconds["read"] += time.perf_counter() - t
                        await read_q.put(c)
            await read_q.put(None)

        async def pricer() -> None:
            while (c := await read_q.get()) is not None:
                t = time.perf_counter()
                assert c.usage is not None
                c.result = await asyncio.to_thread(
                    self.biller.price,
                    c.grid,
                    c.meters,
                    c.usage,
                    c.existing,
                    recompute=req.recompute,
                    cycle_id=state.cycle_id,
                    now=dt.datetime.now(dt.UTC),
                )
                c.usage = None
                state.seconds["price"] += time.perf_counter() - t
                await write_q.put(c)
            await write_q.put(None)

        async def writer() -> None:
            while (c := await write_q.get()) is not None:
                assert c.result is not None
                t = time.perf_counter()
                stored = await store.write_bills(write_conn, c.result.bills)
                state.seconds["write"] += time.perf_counter() - t
                r = c.result
                for b in r.bills:
                    if b.bill_id in stored:
                        state.billed += 1
                        state.add_total(b.currency_code, b.total)
                    else:
                        state.skipped += 1  # a concurrent ComputeBill stored this meter's bill first
                state.skipped += len(r.skipped)
                for meter_id, reason in r.failures:
                    state.fail(meter_id, reason)
                skipped = len(r.bills) - len(stored) + len(r.skipped)
                metrics.count_bills(issued=len(stored), skipped=skipped, failed=len(r.failures))

        async with asyncio.TaskGroup() as tg:
            tg.create_task(reader())
            tg.create_task(pricer())
            tg.create_task(writer())
