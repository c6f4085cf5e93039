"""bench-ingest: sustained readings per second end to end (client -> ingest -> JetStream -> writer ->
committed in PostgreSQL), and in the same run raw asyncpg COPY of the same rows into the same table.

    make bench-ingest            # or: .venv/bin/python -m bench.ingest --write BENCHMARKS.md

Uses NATS_URL / DATABASE_URL when set, otherwise embedded servers in a temporary directory. Each round
runs raw COPY first, empties the tables, then the pipeline, so both start from the same empty table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import nats
import numpy as np
import psutil
from metermesh.ingest.v1 import ingest_pb2

from bench.report import drop_streams, machine, write_section
from services.common.db import apply_migrations
from services.common.embedded import env_or_embedded, free_port
from services.common.procs import ServiceProcess
from services.ingest.pgcopy import READINGS_COLUMNS
from services.ingest.store import ReadingStore, month_starts

BATCH = 10_000


def make_batches(meters: int, batches: int, start: int, energy_only: bool = False) -> list[bytes]:
    """Serialized PushReadingsRequests: every meter, consecutive 15-minute intervals, with every value
    set (the widest row a meter sends) or only energy (a consumption-only meter)."""
    rng = np.random.default_rng(1)
    per = BATCH // meters
    out = []
    for b in range(batches):
        req = ingest_pb2.PushReadingsRequest()
        for k in range(per):
            t = start + (b * per + k) * 900
            wh = rng.uniform(10, 500, meters).tolist()
            v = rng.normal(231, 2, meters).tolist()
            for j in range(meters):
                if energy_only:
                    r = req.readings.add(
                        meter_id=f"BENCH-{j:05d}", interval_seconds=900, import_energy_wh=wh[j]
                    )
                    r.read_time.seconds = t
                    continue
                r = req.readings.add(
                    meter_id=f"BENCH-{j:05d}",
                    interval_seconds=900,
                    import_energy_wh=wh[j],
                    export_energy_wh=0.0,
                    voltage_v=v[j],
                    current_a=wh[j] / 57.0,
                    active_power_w=wh[j] * 4,
                    power_factor=0.95,
                    frequency_hz=50.0,
                )
                r.read_time.seconds = t
        out.append(req.SerializeToString())
    return out


def records(payloads: list[bytes]) -> list[list[tuple]]:
    """The same readings as tuples, the way a hand-written COPY loader would hold them."""
    out = []
    for p in payloads:
        req = ingest_pb2.PushReadingsRequest.FromString(p)
        rows = []
        for r in req.readings:
            rows.append(
                (
                    r.meter_id,
                    r.read_time.ToDatetime(dt.UTC),
                    r.interval_seconds,
                    r.import_energy_wh,
                    r.export_energy_wh,
                    r.voltage_v,
                    r.current_a,
                    r.active_power_w,
                    r.power_factor,
                    r.frequency_hz,
                )
            )
        out.append(rows)
    return out


async def raw_copy(db_url: str, batches: list[list[tuple]]) -> float:
    conn = await asyncpg.connect(db_url)
    try:
        t0 = time.perf_counter()
        for rows in batches:
            async with conn.transaction():
                await conn.copy_records_to_table("readings", records=rows, columns=READINGS_COLUMNS)
        return sum(map(len, batches)) / (time.perf_counter() - t0)
    finally:
        await conn.close()


async def pipeline(
    ingest_addr: str, nats_url: str, prefix: str, payloads: list[bytes], concurrency: int
) -> tuple[float, float]:
    """Returns (acked readings/s, committed readings/s), both from the first request sent."""
    total = len(payloads) * BATCH
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    ch = grpc.aio.insecure_channel(ingest_addr, options=[("grpc.max_send_message_length", 64 << 20)])
    # Pre-serialized requests: the client costs almost nothing, so the figure is the platform's.
    push = ch.unary_unary(
        "/metermesh.ingest.v1.IngestService/PushReadings",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.PushReadingsResponse.FromString,
    )
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for p in payloads:
        queue.put_nowait(p)

    async def client() -> None:
        while not queue.empty():
            p = queue.get_nowait()
            while True:
                try:
                    resp = await push(p, timeout=60)
                    assert resp.accepted_count == BATCH, resp.rejections[:2]
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.05)

    async def drained() -> bool:
        info = await js.consumer_info(f"{prefix}READINGS", "readings-writer")
        return info.num_pending == 0 and info.num_ack_pending == 0

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    t_acked = time.perf_counter()
    while not await drained():
        await asyncio.sleep(0.02)
    t_done = time.perf_counter()
    await ch.close()
    await nc.close()
    return total / (t_acked - t0), total / (t_done - t0)


def cpu_snapshot(ingest: int, writer: int) -> dict[int, tuple[str, float]]:
    """pid -> (group, user+system CPU seconds) for every process of the run."""
    groups = {ingest: "ingest", writer: "writer", os.getpid(): "bench client"}
    out = {}
    for p in psutil.process_iter(["name", "pid"]):
        name = groups.get(p.info["pid"]) or {"nats-server": "nats-server", "postgres": "postgres"}.get(
            p.info["name"]
        )
        if name is None:
            continue
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        out[p.info["pid"]] = (name, t.user + t.system)
    return out


def cpu_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per group between two snapshots; processes started in between count from zero."""
    used: dict[str, float] = {}
    for pid, (name, t) in after.items():
        used[name] = used.get(name, 0.0) + t - before.get(pid, (name, 0.0))[1]
    return used


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=60, help="10,000-reading batches per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4, help="client requests in flight")
    ap.add_argument("--energy-only", action="store_true", help="consumption-only meters (no V/I/P/PF/Hz)")
    ap.add_argument("--label", default="bench-ingest", help="section name in the --write file")
    ap.add_argument("--write", type=Path, help="update this markdown file's section for --label")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    nats_url, admin_url, embedded = await asyncio.to_thread(env_or_embedded, tmp)
    name = "mmbench" + uuid.uuid4().hex[:8]
    prefix = name.upper() + "_"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    db_url = (
        admin_url.rsplit("/", 1)[0] + "/" + name
        if "?" not in admin_url
        else admin_url.replace("/metermesh?", f"/{name}?").replace("/postgres?", f"/{name}?")
    )
    env = {
        "NATS_URL": nats_url,
        "DATABASE_URL": db_url,
        "METERMESH_STREAM_PREFIX": prefix,
        "METERMESH_LOG_LEVEL": "warning",
    }
    ingest_addr, writer_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    logs = tmp / "logs"
    logs.mkdir()
    writer = ServiceProcess(
        "writer",
        "services.ingest.writer",
        writer_addr,
        {**env, "METERMESH_WRITER_ADDR": writer_addr},
        logs / "writer.log",
    )
    ingest = ServiceProcess(
        "ingest",
        "services.ingest",
        ingest_addr,
        {**env, "METERMESH_INGEST_ADDR": ingest_addr},
        logs / "ingest.log",
    )
    e2e, acked, raw = [], [], []
    cpu_share: list[dict[str, float]] = []
    try:
        conn = await asyncpg.connect(db_url)
        await apply_migrations(conn)
        writer.start()
        ingest.start()
        await writer.wait_serving()
        await ingest.wait_serving()
        # Registered directly: the benchmark is about readings, and 10,000 RegisterMeter calls are not.
        await conn.execute(
            "INSERT INTO meters (meter_id, category) SELECT 'BENCH-' || lpad(i::text, 5, '0'), 'residential' "
            "FROM generate_series(0, $1 - 1) i",
            args.meters,
        )
        start = (int(time.time()) - 400 * 86400) // 900 * 900
        span = args.batches * BATCH // args.meters * 900
        # Partitions exist before either contender runs, so neither pays for creating them.
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
        last = start + args.rounds * span
        await ReadingStore(pool).ensure_partitions(month_starts(np.array([start, last]) * 1_000_000))
        await pool.close()
        for r in range(args.rounds):
            # Fresh readings each round: a re-sent batch would (rightly) be deduplicated by JetStream.
            print(f"round {r + 1}: building {args.batches} batches of {BATCH} readings ...", flush=True)
            payloads = make_batches(args.meters, args.batches, start + r * span, args.energy_only)
            rows = records(payloads)
            await conn.execute("TRUNCATE readings, readings_hourly")
            raw.append(await raw_copy(db_url, rows))
            await conn.execute("TRUNCATE readings, readings_hourly")
            pids = (ingest.proc.pid, writer.proc.pid)  # type: ignore[union-attr]
            before = cpu_snapshot(*pids)
            wall = time.perf_counter()
            a, e = await pipeline(ingest_addr, nats_url, prefix, payloads, args.concurrency)
            wall = time.perf_counter() - wall
            cpu = cpu_used(before, cpu_snapshot(*pids))
            cpu_share.append(cpu)
            print(
                f"  CPU seconds during the pipeline (wall {wall:.1f} s): "
                + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()),
                flush=True,
            )
            n = await conn.fetchval("SELECT count(*) FROM readings")
            assert n == args.batches * BATCH, f"round {r}: {n} rows stored, expected {args.batches * BATCH}"
            acked.append(a)
            e2e.append(e)
            print(
                f"round {r + 1}: raw COPY {raw[-1]:,.0f} rows/s | end to end {e:,.0f} readings/s "
                f"(acked {a:,.0f}/s) | ratio {e / raw[-1]:.2f}",
                flush=True,
            )
        await conn.close()
    finally:
        await ingest.stop()
        await writer.stop()
        await drop_streams(nats_url, prefix)
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        for e in reversed(embedded):
            e.stop()

    med = statistics.median
    ratio = med(e / r for e, r in zip(e2e, raw, strict=True))
    per_million = {
        k: med(c.get(k, 0.0) for c in cpu_share) / (args.batches * BATCH) * 1e6
        for k in ("ingest", "writer", "nats-server", "postgres", "bench client")
    }
    cpu_line = ", ".join(f"{k} {v:.1f}" for k, v in per_million.items())
    summary = (
        f"| end to end (client -> ingest -> JetStream -> writer -> committed) | {med(e2e):,.0f} readings/s |\n"
        f"| ingest acknowledged (stored in JetStream) | {med(acked):,.0f} readings/s |\n"
        f"| raw asyncpg `copy_records_to_table`, same rows, same table | {med(raw):,.0f} rows/s |\n"
        f"| ratio end to end / raw COPY (median of per-round ratios) | {ratio:.2f} |\n"
        f"| CPU seconds per million readings, end to end | {cpu_line} |\n"
    )
    print(summary)
    if args.write:
        per = BATCH // args.meters
        intervals = "one 15-minute interval" if per == 1 else f"{per} consecutive 15-minute intervals"
        shape = f"{intervals} of {args.meters:,} meters per batch" + (
            ", energy only" if args.energy_only else ", every field set"
        )
        body = (
            f"### {args.label}: {shape}\n\n"
            f"Command: `python -m bench.ingest --label {args.label} --meters {args.meters} --batches {args.batches} "
            f"--rounds {args.rounds} --concurrency {args.concurrency}{' --energy-only' if args.energy_only else ''}` "
            "(part of `make bench`)\n\n"
            f"Measured {dt.date.today().isoformat()} on {machine()}; "
            f"NATS {'external' if os.environ.get('NATS_URL') else 'embedded'} (JetStream file storage, sync always), "
            f"PostgreSQL {'external' if os.environ.get('DATABASE_URL') else 'embedded'}; "
            f"{args.batches * BATCH:,} readings per round, medians of "
            f"{args.rounds} rounds. Both contenders write the same rows into the same empty `readings` table "
            "(primary key on meter and time, monthly partitions); the pipeline also keeps the hourly rollup in "
            "the same transactions and the meters' last-seen times.\n\n"
            "| measure | median |\n|---|---|\n" + summary
        )
        write_section(args.write, args.label, body)


if __name__ == "__main__":
    asyncio.run(main())
