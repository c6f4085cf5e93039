"""bench-anomaly: (1) scoring throughput of the full detector stack (rules, Isolation Forest, autoencoder)
on 10,000-reading batches, beside the cost of merely decoding the same batches; (2) end-to-end latency
from the ingest acknowledgement of a surge reading to its alert change arriving on WatchAlerts, under a
steady 20,000 readings/s of live traffic through ingest, writer, anomaly and alerts.

    make bench-anomaly        # or: .venv/bin/python -m bench.anomaly --write BENCHMARKS.md
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
import numpy as np
from metermesh.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from metermesh.ingest.v1 import ingest_pb2

from bench.report import drop_streams, machine, write_section
from services.anomaly.model import MeterInfo
from services.anomaly.pipeline import DetectorStack
from services.anomaly.rules import RuleConfig, RuleEngine
from services.anomaly.state import StateTable
from services.common.db import apply_migrations, with_database
from services.common.embedded import env_or_embedded, free_port
from services.common.procs import ServiceProcess
from services.ingest.codec import from_batch, to_batch
from services.ingest.columns import ReadingColumns

BATCH = 10_000


def synthetic(meters: int, intervals: int, start: int, seed: int = 1) -> ReadingColumns:
    """meters x intervals 15-minute readings with a daily shape, every field set."""
    rng = np.random.default_rng(seed)
    n = meters * intervals
    t = start + np.repeat(np.arange(intervals, dtype=np.int64) * 900, meters)
    idx = np.tile(np.arange(meters, dtype=np.uint32), intervals)
    hour = (t // 3600) % 24
    level = np.random.default_rng(0).uniform(50, 300, meters)[idx]  # each meter's own level, in every call
    wh = level * (0.6 + 0.8 * np.exp(-((hour - 19) ** 2) / 8.0)) * rng.lognormal(0, 0.15, n)
    v = rng.normal(231, 2, n)
    return ReadingColumns(
        meter_ids=[f"B-{j:05d}" for j in range(meters)],
        meter_index=idx,
        read_time_unix_micros=t * 1_000_000,
        interval_seconds=np.full(n, 900, dtype=np.int32),
        import_energy_wh=wh,
        export_energy_wh=np.zeros(n),
        voltage_v=v,
        current_a=wh * 4 / v,
        active_power_w=wh * 4,
        power_factor=np.full(n, 0.95),
        frequency_hz=np.full(n, 50.0),
    )


def scoring(meters: int, train_days: int, batches: int) -> dict[str, float]:
    from services.anomaly.training import train_autoencoder, train_isolation_forest

    start = (int(time.time()) - 200 * 86400) // 86400 * 86400
    infos = {f"B-{j:05d}": MeterInfo(f"B-{j:05d}", rated_current_a=60.0) for j in range(meters)}
    history = synthetic(min(meters, 200), train_days * 96, start)
    hist_meters = {m: infos[m] for m in history.meter_ids}
    print(f"training the Isolation Forest and the autoencoder on {len(history):,} readings ...", flush=True)
    iforest = train_isolation_forest(
        history, hist_meters, version="iforest-bench", seed=1, progress=lambda p: None
    )
    ae = train_autoencoder(
        history, hist_meters, version="autoencoder-bench", seed=1, epochs=10, progress=lambda p: None
    )
    stack = DetectorStack(rules=RuleEngine(RuleConfig()), iforest=iforest.detector, autoencoder=ae.detector)
    state = StateTable()
    # Warm the per-meter baselines with two weeks, as a running service has them.
    warm = synthetic(meters, 14 * 96, start + train_days * 86400, seed=2)
    for i in range(0, len(warm), 50_000):
        stack.rules.score(warm.take(np.arange(i, min(i + 50_000, len(warm)))), infos, state)
    t0 = start + (train_days + 14) * 86400
    per = BATCH // meters
    cols = [synthetic(meters, per, t0 + b * per * 900, seed=10 + b) for b in range(batches)]
    payloads = [to_batch(c).SerializeToString() for c in cols]
    rules_state = state.subset(list(infos))  # the same warm state, for the rules-only run beside it
    tic = time.perf_counter()
    for p in payloads:
        from_batch(p)
    decode = time.perf_counter() - tic
    tic = time.perf_counter()
    for c in cols:
        stack.rules.score(c, infos, rules_state)
    rules_only = time.perf_counter() - tic
    tic = time.perf_counter()
    events = 0
    for c in cols:
        events += len(stack.score(c, infos, state).events)
    score = time.perf_counter() - tic
    n = batches * BATCH
    return {
        "scored": n / score,
        "rules": n / rules_only,
        "decoded": n / decode,
        "events": events,
        "readings": n,
    }


async def latency(
    db_url: str, nats_url: str, meters: int, rate: float, seconds: float, logs: Path
) -> dict[str, float]:
    prefix = "MMB" + uuid.uuid4().hex[:8].upper() + "_"
    env = {
        "NATS_URL": nats_url,
        "DATABASE_URL": db_url,
        "METERMESH_STREAM_PREFIX": prefix,
        "METERMESH_LOG_LEVEL": "warning",
        # Old read times would make every meter look silent to the gap sweep: not what is measured.
        "METERMESH_ANOMALY_GAP_SWEEP_SECONDS": "3600",
    }
    procs = []
    addrs = {}
    order = (
        ("writer", "services.ingest.writer"),
        ("alerts", "services.alerts"),
        ("anomaly", "services.anomaly"),
        ("ingest", "services.ingest"),
    )
    for name, _ in order:
        addrs[name] = f"127.0.0.1:{free_port()}"
        env[f"METERMESH_{name.upper()}_ADDR"] = addrs[name]
    for name, module in order:
        p = ServiceProcess(name, module, addrs[name], env, logs / f"{name}.log")
        p.start()
        procs.append(p)
    try:
        for p in procs:
            await p.wait_serving(90)
        conn = await asyncpg.connect(db_url)
        await conn.execute(
            "INSERT INTO meters (meter_id, category) SELECT 'L-' || lpad(i::text, 5, '0'), 'residential' "
            "FROM generate_series(0, $1 - 1) i",
            meters,
        )
        await conn.close()
        rng = np.random.default_rng(7)
        intervals = int(seconds * rate / meters) + 1
        start = (int(time.time()) - (intervals + 2) * 900) // 900 * 900
        period = meters / rate  # one interval of every meter per period
        sent: dict[tuple[str, int], float] = {}
        received: dict[tuple[str, int], float] = {}
        ch_ingest = grpc.aio.insecure_channel(
            addrs["ingest"], options=[("grpc.max_send_message_length", 64 << 20)]
        )
        ch_alerts = grpc.aio.insecure_channel(addrs["alerts"])
        push = ch_ingest.unary_unary(
            "/metermesh.ingest.v1.IngestService/PushReadings",
            request_serializer=lambda b: b,
            response_deserializer=ingest_pb2.PushReadingsResponse.FromString,
        )
        watch = alerts_pb2_grpc.AlertServiceStub(ch_alerts).WatchAlerts(alerts_pb2.WatchAlertsRequest())

        async def watcher() -> None:
            async for update in watch:
                e = update.update.alert.last_event
                received.setdefault((e.meter_id, e.start_time.seconds), time.perf_counter())

        wtask = asyncio.create_task(watcher())
        print(f"latency: {meters:,} meters, {rate:,.0f} readings/s for {seconds:.0f} s ...", flush=True)
        batches = []
        for k in range(intervals):
            t = start + k * 900
            wh = rng.uniform(20, 400, meters)
            v = rng.normal(231, 2, meters)
            surge = rng.choice(meters, 2, replace=False)
            v[surge] = 290.0
            req = ingest_pb2.PushReadingsRequest()
            for j in range(meters):
                r = req.readings.add(
                    meter_id=f"L-{j:05d}",
                    interval_seconds=900,
                    import_energy_wh=float(wh[j]),
                    voltage_v=float(v[j]),
                    current_a=float(wh[j] * 4 / v[j]),
                    active_power_w=float(wh[j] * 4),
                )
                r.read_time.seconds = t
            batches.append((req.SerializeToString(), [(f"L-{j:05d}", t) for j in surge.tolist()]))
        tic = time.perf_counter()
        for k, (payload, surges) in enumerate(batches):
            # Steady pace: batch k goes at tic + k * period, whatever the previous one took.
            delay = tic + k * period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            resp = await push(payload, timeout=30)
            assert resp.accepted_count == meters, resp.rejections[:2]
            acked = time.perf_counter()
            for key in surges:
                sent[key] = acked
        elapsed = time.perf_counter() - tic
        deadline = time.monotonic() + 60
        while len(received.keys() & sent.keys()) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        wtask.cancel()
        await ch_ingest.close()
        await ch_alerts.close()
        lat = sorted((received[k] - sent[k]) * 1000 for k in sent if k in received)
        return {
            "offered": intervals * meters / elapsed,
            "surges": len(sent),
            "arrived": len(lat),
            "p50": statistics.median(lat) if lat else float("nan"),
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
            "max": lat[-1] if lat else float("nan"),
        }
    finally:
        for p in reversed(procs):
            await p.stop(30)
        await drop_streams(nats_url, prefix)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--meters", type=int, default=1000, help="meters in the scoring batches (10 intervals each)"
    )
    ap.add_argument("--batches", type=int, default=30, help="10,000-reading batches scored")
    ap.add_argument("--live-meters", type=int, default=10_000, help="meters of the live-traffic run")
    ap.add_argument("--rate", type=float, default=20_000, help="readings/s of the live-traffic run")
    ap.add_argument("--seconds", type=float, default=30, help="length of the live-traffic run")
    ap.add_argument("--write", type=Path, help="update the bench-anomaly section of this markdown file")
    args = ap.parse_args()
    if not 1 <= args.live_meters <= BATCH:
        ap.error(f"--live-meters is {args.live_meters}; use 1-{BATCH} (one push per interval)")
    s = scoring(args.meters, 21, args.batches)
    print(
        f"scoring: {s['scored']:,.0f} readings/s (rules alone {s['rules']:,.0f}/s, decoding alone "
        f"{s['decoded']:,.0f}/s), {s['events']} events"
    )
    with tempfile.TemporaryDirectory(prefix="mmbench-") as tmp:
        nats_url, admin_url, embedded = await asyncio.to_thread(env_or_embedded, Path(tmp) / "data")
        name = "mmbench" + uuid.uuid4().hex[:8]
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        db_url = with_database(admin_url, name)
        conn = await asyncpg.connect(db_url)
        await apply_migrations(conn)
        await conn.close()
        logs = Path(tmp) / "logs"
        logs.mkdir()
        try:
            lat = await latency(db_url, nats_url, args.live_meters, args.rate, args.seconds, logs)
        finally:
            admin = await asyncpg.connect(admin_url)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
            for e in reversed(embedded):
                await asyncio.to_thread(e.stop)
    print(
        f"latency: offered {lat['offered']:,.0f} readings/s; {lat['arrived']}/{lat['surges']} surges arrived; "
        f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms"
    )
    if args.write:
        body = (
            "### bench-anomaly: detector scoring and ingest-to-alert latency\n\n"
            f"Command: `python -m bench.anomaly --meters {args.meters} --batches {args.batches} "
            f"--live-meters {args.live_meters} --rate {args.rate:.0f} --seconds {args.seconds:.0f}` "
            "(part of `make bench`)\n\n"
            f"Measured {dt.date.today().isoformat()} on {machine()}; NATS "
            f"{'external' if os.environ.get('NATS_URL') else 'embedded'}, PostgreSQL "
            f"{'external' if os.environ.get('DATABASE_URL') else 'embedded'}.\n\n"
            f"Scoring: {s['readings']:,} readings in 10,000-reading batches ({args.meters:,} meters x "
            f"{BATCH // args.meters} intervals, every field set, baselines warmed with two weeks), through rules + "
            "Isolation Forest + autoencoder in one process, one core; beside it, in the same run, the rule layer "
            "alone on the same batches and warm state, and decoding the READINGS messages alone.\n\n"
            "| measure | value |\n|---|---|\n"
            f"| scoring, full detector stack | {s['scored']:,.0f} readings/s (target 200,000) |\n"
            f"| rules and state alone | {s['rules']:,.0f} readings/s |\n"
            f"| full stack / rules alone | {s['scored'] / s['rules']:.2f} |\n"
            f"| decoding the READINGS messages alone | {s['decoded']:,.0f} readings/s |\n"
            f"| events raised (synthetic healthy meters) | {s['events']:,} in {s['readings']:,} readings |\n\n"
            f"Latency: {args.live_meters:,} meters pushing one interval each per "
            f"{args.live_meters / args.rate:.2f} s (offered {lat['offered']:,.0f} readings/s) through ingest -> "
            "READINGS -> writer and anomaly -> ANOMALIES -> alerts -> WatchAlerts, all on this machine; two "
            "surge readings per batch; latency from the PushReadings acknowledgement to the alert change "
            "arriving on a WatchAlerts stream.\n\n"
            "| measure | value |\n|---|---|\n"
            f"| surges measured | {lat['arrived']} of {lat['surges']} |\n"
            f"| p50 | {lat['p50']:.0f} ms |\n"
            f"| p99 | {lat['p99']:.0f} ms (target < 1,000 ms) |\n"
            f"| max | {lat['max']:.0f} ms |\n"
        )
        write_section(args.write, "bench-anomaly", body)


if __name__ == "__main__":
    asyncio.run(main())
