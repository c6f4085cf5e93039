"""bench-gateway: unary calls per second through the gRPC-web gateway beside the same call made
directly to the service over gRPC, in one run and on the same service process, and their ratio.

    make bench-gateway        # or: .venv/bin/python -m bench.gateway --write BENCHMARKS.md

The call is IngestService.GetMeter (a PostgreSQL look-up: the cheapest call a dashboard makes, so the
gateway's own cost weighs the most) for 100 registered meters in turn. Direct: one gRPC channel (HTTP/2)
with `--concurrency` calls in flight. Through the gateway: `--concurrency` keep-alive HTTP/1.1
connections, each with one gRPC-web call in flight (as browsers do), as an operator with a bearer token
(signature checked once, then cached), rate limit off. Both clients run in this process with their
bytes prepared in advance, so neither pays for protobuf encoding. Phases alternate (direct, gateway,
direct, gateway ...) so that drift (PostgreSQL caches, CPU boost) hits both; each figure is the median
of its rounds. Uses NATS_URL / DATABASE_URL when set, otherwise embedded servers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import statistics
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2

from bench.report import drop_streams, machine, write_section
from gateway.auth import issue_token
from services.common.db import with_database
from services.common.embedded import env_or_embedded, free_port
from services.common.procs import ServiceProcess

GET_METER = "/metermesh.ingest.v1.IngestService/GetMeter"
REGISTER = "/metermesh.ingest.v1.IngestService/RegisterMeter"


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one when pid is None)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    mode: str
    calls: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds during the phase

    def cpu_us_per_call(self, process: str) -> float:
        return self.cpu.get(process, 0.0) / max(self.calls, 1) * 1e6

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def requests(meters: int) -> list[bytes]:
    return [ingest_pb2.GetMeterRequest(meter_id=f"BG-{i:04d}").SerializeToString() for i in range(meters)]


async def run_direct(addr: str, bodies: list[bytes], concurrency: int, seconds: float) -> Phase:
    async with grpc.aio.insecure_channel(addr) as ch:
        call = ch.unary_unary(GET_METER)  # bytes in, bytes out
        await call(bodies[0], timeout=10)
        stop = time.perf_counter() + seconds
        latencies: list[float] = []
        errors = 0

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while (t := time.perf_counter()) < stop:
                try:
                    await call(bodies[i % len(bodies)], timeout=10)
                    latencies.append(time.perf_counter() - t)
                except grpc.aio.AioRpcError:
                    errors += 1
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return Phase("direct", len(latencies), errors, time.perf_counter() - t0, latencies)


def http_request(host: str, token: str, body: bytes) -> bytes:
    framed = struct.pack(">BI", 0, len(body)) + body
    head = (
        f"POST {GET_METER} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/grpc-web+proto\r\n"
        f"x-grpc-web: 1\r\nauthorization: Bearer {token}\r\ncontent-length: {len(framed)}\r\n\r\n"
    )
    return head.encode() + framed


async def run_gateway(addr: str, token: str, bodies: list[bytes], concurrency: int, seconds: float) -> Phase:
    host, port = addr.rsplit(":", 1)
    wire = [http_request(addr, token, b) for b in bodies]
    latencies: list[float] = []
    errors = 0
    conns = [await asyncio.open_connection(host, int(port)) for _ in range(concurrency)]

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> bool:
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await reader.readexactly(length)
        return head.startswith(b"HTTP/1.1 200") and b"grpc-status: 0\r\n" in body

    for reader, writer in conns:  # warm each connection once
        await one(reader, writer, wire[0])
    stop = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal errors
        reader, writer = conns[k]
        i = k
        while (t := time.perf_counter()) < stop:
            if await one(reader, writer, wire[i % len(wire)]):
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1
            i += concurrency

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - t0
    for _, writer in conns:
        writer.close()
    return Phase("gateway", len(latencies), errors, elapsed, latencies)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each measured phase")
    ap.add_argument("--rounds", type=int, default=3, help="direct/gateway phase pairs")
    ap.add_argument("--meters", type=int, default=100)
    ap.add_argument("--write", type=Path, help="update the bench-gateway section of this markdown file")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-gateway-"))
    nats_url, admin_url, embedded = await asyncio.to_thread(env_or_embedded, tmp / "data")
    name = "mmbench" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    ingest_addr, gateway_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    secret = secrets.token_urlsafe(48)
    env = {
        "NATS_URL": nats_url,
        "DATABASE_URL": with_database(admin_url, name),
        "METERMESH_STREAM_PREFIX": name.upper() + "_",
        "METERMESH_INGEST_ADDR": ingest_addr,
        # Neither side logs each call: what is measured is the call path, the same for both.
        "METERMESH_LOG_LEVEL": "warning",
    }
    ingest = ServiceProcess("ingest", "services.ingest", ingest_addr, env, tmp / "ingest.log")
    gateway = ServiceProcess(
        "gateway",
        "gateway",
        gateway_addr,
        {
            **env,
            "METERMESH_GATEWAY_ADDR": gateway_addr,
            "METERMESH_GATEWAY_JWT_SECRET": secret,
            "METERMESH_GATEWAY_RATE_PER_SECOND": "0",
        },
        tmp / "gateway.log",
        health_url=f"http://{gateway_addr}/healthz",
    )
    phases: list[Phase] = []
    load_before = os.getloadavg()[0]
    try:
        ingest.start()
        gateway.start()
        await ingest.wait_serving(60)
        await gateway.wait_serving(60)
        async with grpc.aio.insecure_channel(ingest_addr) as ch:
            register = ch.unary_unary(
                REGISTER, response_deserializer=ingest_pb2.RegisterMeterResponse.FromString
            )
            for i in range(args.meters):
                meter = common_pb2.Meter(
                    meter_id=f"BG-{i:04d}",
                    category=common_pb2.METER_CATEGORY_RESIDENTIAL,
                    interval_seconds=900,
                )
                await register(ingest_pb2.RegisterMeterRequest(meter=meter).SerializeToString(), timeout=10)
        token = issue_token(secret, role="operator", subject="bench", ttl_seconds=3600)
        bodies = requests(args.meters)
        # Warm-up: both paths, so connections, caches and the token cache are hot.
        await run_direct(ingest_addr, bodies, args.concurrency, 1.0)
        await run_gateway(gateway_addr, token, bodies, args.concurrency, 1.0)
        pids = {"client": None, "ingest": ingest.proc.pid, "gateway": gateway.proc.pid}  # type: ignore[union-attr]
        for r in range(args.rounds):
            for mode in ("direct", "gateway"):
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                if mode == "direct":
                    phase = await run_direct(ingest_addr, bodies, args.concurrency, args.seconds)
                else:
                    phase = await run_gateway(gateway_addr, token, bodies, args.concurrency, args.seconds)
                phase.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
                phases.append(phase)
                cpu = "  ".join(f"{n} {phase.cpu_us_per_call(n):4.0f}" for n in pids)
                print(
                    f"round {r + 1} {phase.mode:>7}: {phase.rate:8,.0f} calls/s  p50 {phase.pct(0.5):6.2f} ms  "
                    f"p99 {phase.pct(0.99):6.2f} ms  errors {phase.errors}  CPU us/call: {cpu}",
                    flush=True,
                )
    finally:
        await gateway.stop()
        await ingest.stop()
        await drop_streams(nats_url, name.upper() + "_")
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        for e in reversed(embedded):
            await asyncio.to_thread(e.stop)

    def summary(mode: str) -> tuple[float, float, float, int, str]:
        ps = [p for p in phases if p.mode == mode]
        cpu = " / ".join(
            f"{statistics.median(p.cpu_us_per_call(n) for p in ps):.0f}"
            for n in ("client", "gateway", "ingest")
        )
        return (
            statistics.median(p.rate for p in ps),
            statistics.median(p.pct(0.5) for p in ps),
            statistics.median(p.pct(0.99) for p in ps),
            sum(p.errors for p in ps),
            cpu,
        )

    d_rate, d_p50, d_p99, d_err, d_cpu = summary("direct")
    g_rate, g_p50, g_p99, g_err, g_cpu = summary("gateway")
    ratio = g_rate / d_rate
    table = (
        "| path | calls/s | p50 latency | p99 latency | errors | CPU µs per call: client / gateway / ingest |\n"
        "|---|---|---|---|---|---|\n"
        f"| direct gRPC to the ingest service | {d_rate:,.0f} | {d_p50:.2f} ms | {d_p99:.2f} ms | {d_err} | "
        f"{d_cpu} |\n"
        f"| through the gateway (gRPC-web, HTTP/1.1) | {g_rate:,.0f} | {g_p50:.2f} ms | {g_p99:.2f} ms | "
        f"{g_err} | {g_cpu} |\n"
        f"| **ratio gateway / direct** | **{ratio:.2f}** (target >= 0.5) | | | | |\n"
    )
    print(table)
    if args.write:
        body = (
            "### bench-gateway: unary calls through the gRPC-web gateway vs direct gRPC\n\n"
            f"Command: `python -m bench.gateway --concurrency {args.concurrency} --seconds {args.seconds:g} "
            f"--rounds {args.rounds}` (`make bench-gateway`)\n\n"
            f"Measured {dt.date.today().isoformat()} on {machine()}; NATS and PostgreSQL "
            f"{'external' if not embedded else 'embedded'}. `IngestService.GetMeter` over {args.meters} "
            f"meters, {args.concurrency} calls in flight; direct: one gRPC channel; gateway: "
            f"{args.concurrency} keep-alive HTTP/1.1 connections, operator bearer token, rate limit off. "
            "Service, gateway (uvicorn, h11) and the load generator share the machine's cores (1-minute "
            f"load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after: other work was "
            f"running too); phases alternate, {args.rounds} rounds of {args.seconds:g} s each, medians shown. "
            "CPU per call is each process's user + system time over the phase divided by the calls "
            "answered.\n\n" + table
        )
        write_section(args.write, "bench-gateway", body)


if __name__ == "__main__":
    asyncio.run(main())
