"""`metermesh status`: every service's health, the API it serves, and the platform's key figures
(readings per second, consumer lag, stream fill, dead letters, open alerts)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import grpc
import httpx
import nats
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from metermesh.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from metermesh.anomaly.v1 import anomaly_pb2
from metermesh.common.v1 import common_pb2
from nats.js import api as jsapi
from rich.markup import escape
from rich.table import Table

from services.common import clients
from services.common.jetstream import Topology
from services.operator.output import (
    EXIT_FAILURES,
    EXIT_OK,
    Out,
    OutputFormat,
    OutputOpt,
    TimeoutOpt,
    addr_option,
    default_addr,
    enum_short,
    package_version,
    run,
)
from services.stack import SERVICES

_STATUS_NAME = {v: k for k, v in health_pb2.HealthCheckResponse.ServingStatus.items()}
_SEVERITIES = ("critical", "major", "warning", "info")
MAX_ALERT_PAGES = 20  # 20,000 active alerts counted at most; more is shown as "at least"


async def check_service(name: str, addr: str, timeout: float) -> dict[str, Any]:
    """gRPC health of the whole server (service ""), and the metermesh APIs it lists by reflection."""
    t0 = time.monotonic()
    row: dict[str, Any] = {"name": name, "addr": addr, "status": "DOWN", "api": [], "latency_ms": None}
    async with clients.channel(addr) as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            row["error"] = f"{exc.code().name}: {exc.details()}"
            return row
        row["latency_ms"] = round((time.monotonic() - t0) * 1000, 1)
        row["status"] = _STATUS_NAME.get(resp.status, str(resp.status))
        with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
            call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=timeout
            )
            async for r in call:
                row["api"] = sorted(
                    s.name for s in r.list_services_response.service if s.name.startswith("metermesh.")
                )
                break
            call.cancel()
    return row


async def check_http(name: str, addr: str, path: str, timeout: float) -> dict[str, Any]:
    """A process without gRPC health (the gateway): HTTP GET addr+path, 200 meaning ready."""
    url = addr if addr.startswith(("http://", "https://")) else f"http://{addr}"
    row: dict[str, Any] = {"name": name, "addr": addr, "status": "DOWN", "api": [], "latency_ms": None}
    t0 = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.get(url.rstrip("/") + path)
    except httpx.HTTPError as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    row["latency_ms"] = round((time.monotonic() - t0) * 1000, 1)
    row["status"] = "SERVING" if resp.status_code == 200 else "NOT_SERVING"
    row["api"] = [f"HTTP {path}"]
    if resp.status_code != 200:
        row["error"] = f"HTTP {resp.status_code}: {resp.text[:200]}"
    return row


@dataclass(frozen=True)
class Target:
    name: str
    addr: str
    http_health_path: str | None = None
    # False for a process checked only in case it runs here (the gateway at its default address):
    # left out of the report when nothing answers.
    required: bool = True


async def check(target: Target, timeout: float) -> dict[str, Any]:
    if target.http_health_path:
        return await check_http(target.name, target.addr, target.http_health_path, timeout)
    return await check_service(target.name, target.addr, timeout)


async def _consumer_lags(js: Any, topo: Topology) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for spec in topo.consumers():
        try:
            info = await js.consumer_info(spec.stream, spec.durable)
        except Exception as exc:  # a missing consumer is a finding, not a crash
            out[spec.durable] = {"stream": spec.stream, "durable": spec.durable, "error": repr(exc)}
            continue
        out[spec.durable] = {
            "stream": spec.stream,
            "durable": spec.durable,
            "num_pending": int(info.num_pending or 0),
            "num_ack_pending": int(info.num_ack_pending or 0),
            "lag": int(info.num_pending or 0) + int(info.num_ack_pending or 0),
            "num_redelivered": int(info.num_redelivered or 0),
        }
    return out


async def jetstream_figures(url: str, prefix: str, sample_seconds: float, timeout: float) -> dict[str, Any]:
    """Stream fill, consumer lag (sampled twice, to show whether it grows) and readings/s: an ephemeral
    ordered consumer (no acks, so it holds nothing back) counts the readings stored during the sample."""

    async def quiet(*_: Any) -> None:
        return None

    result: dict[str, Any] = {"url": url, "status": "DOWN"}
    try:
        # One attempt (nats-py waits forever on a refused connection with allow_reconnect=False), and
        # a deadline of our own on top.
        nc = await asyncio.wait_for(
            nats.connect(
                url,
                connect_timeout=timeout,
                allow_reconnect=True,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=quiet,
                disconnected_cb=quiet,
                closed_cb=quiet,
                name="metermesh-status",
            ),
            timeout * 2 + 1,
        )
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    try:
        js = nc.jetstream(timeout=timeout)
        topo = Topology(prefix=prefix)
        result["status"] = "UP"
        streams = []
        for name in (topo.readings_stream, topo.anomalies_stream, topo.dead_letter_stream):
            try:
                info = await js.stream_info(name)
            except Exception as exc:
                streams.append({"name": name, "error": repr(exc)})
                continue
            max_bytes = int(info.config.max_bytes or -1)
            streams.append(
                {
                    "name": name,
                    "messages": int(info.state.messages),
                    "bytes": int(info.state.bytes),
                    "max_bytes": max_bytes,
                    "fill_percent": round(100.0 * info.state.bytes / max_bytes, 2) if max_bytes > 0 else None,
                }
            )
        result["streams"] = streams
        dead = next((s for s in streams if s["name"] == topo.dead_letter_stream), {})
        result["dead_letters"] = dead.get("messages")
        before = await _consumer_lags(js, topo)
        result["readings_per_second"] = None
        result["sample_seconds"] = sample_seconds
        if sample_seconds > 0:
            counted = {"readings": 0, "messages": 0}

            async def on_msg(msg: Any) -> None:
                batch = common_pb2.ReadingBatch.FromString(msg.data)
                counted["readings"] += len(batch.read_time_unix_micros)
                counted["messages"] += 1

            sub = None
            with contextlib.suppress(Exception):
                sub = await js.subscribe(
                    f"{prefix}readings.v1.>",
                    stream=topo.readings_stream,
                    cb=on_msg,
                    ordered_consumer=True,
                    deliver_policy=jsapi.DeliverPolicy.NEW,
                )
            t0 = time.monotonic()
            await asyncio.sleep(sample_seconds)
            elapsed = time.monotonic() - t0
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                result["readings_per_second"] = round(counted["readings"] / elapsed, 1)
                result["reading_messages_per_second"] = round(counted["messages"] / elapsed, 2)
            after = await _consumer_lags(js, topo)
            for durable, row in after.items():
                if "lag" in row and "lag" in before.get(durable, {}):
                    row["lag_change"] = row["lag"] - before[durable]["lag"]
            before = after
        result["consumers"] = list(before.values())
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return result


async def alert_counts(addr: str, timeout: float) -> dict[str, Any]:
    """Active alerts by state and severity, through ListAlerts."""
    counts: dict[str, Any] = {"open": dict.fromkeys(_SEVERITIES, 0), "acknowledged": 0, "complete": True}
    async with clients.channel(addr) as ch:
        stub = alerts_pb2_grpc.AlertServiceStub(ch)
        token = ""
        for _ in range(MAX_ALERT_PAGES):
            resp = await stub.ListAlerts(
                alerts_pb2.ListAlertsRequest(
                    filter=alerts_pb2.AlertFilter(
                        states=[alerts_pb2.ALERT_STATE_OPEN, alerts_pb2.ALERT_STATE_ACKNOWLEDGED]
                    ),
                    page_size=1000,
                    page_token=token,
                ),
                timeout=timeout,
            )
            for a in resp.alerts:
                if a.state == alerts_pb2.ALERT_STATE_ACKNOWLEDGED:
                    counts["acknowledged"] += 1
                else:
                    sev = enum_short(anomaly_pb2.Severity, a.severity, "SEVERITY_")
                    counts["open"][sev] = counts["open"].get(sev, 0) + 1
            token = resp.next_page_token
            if not token:
                break
        else:
            counts["complete"] = False
    counts["open_total"] = sum(counts["open"].values())
    return counts


async def gather_status(
    targets: Sequence[Target],
    *,
    nats_url: str | None,
    prefix: str,
    sample_seconds: float,
    timeout: float,
) -> dict[str, Any]:
    checks = [check(t, timeout) for t in targets]
    alerts_addr = next((t.addr for t in targets if t.name == "alerts"), None)

    async def no_nats() -> dict[str, Any]:
        return {"url": None, "status": "NOT_CONFIGURED"}

    async def alerts() -> dict[str, Any] | None:
        if alerts_addr is None:
            return None
        try:
            return await alert_counts(alerts_addr, timeout)
        except grpc.aio.AioRpcError as exc:
            return {"error": f"{exc.code().name}: {exc.details()}"}

    services_task = asyncio.gather(*checks)
    js_task = jetstream_figures(nats_url, prefix, sample_seconds, timeout) if nats_url else no_nats()
    checked, js, open_alerts = await asyncio.gather(services_task, js_task, alerts())
    services = [row for t, row in zip(targets, checked, strict=True) if t.required or row["status"] != "DOWN"]
    down = [s["name"] for s in services if s["status"] != "SERVING"]
    if js["status"] == "DOWN":
        down.append("nats")
    return {
        "version": package_version(),
        "ok": not down,
        "down": down,
        "services": services,
        "nats": {k: js[k] for k in ("url", "status", "error") if k in js},
        "readings_per_second": js.get("readings_per_second"),
        "reading_messages_per_second": js.get("reading_messages_per_second"),
        "sample_seconds": js.get("sample_seconds"),
        "consumers": js.get("consumers", []),
        "streams": js.get("streams", []),
        "dead_letters": js.get("dead_letters"),
        "alerts": open_alerts,
    }


def _render(out: Out, st: dict[str, Any]) -> None:
    t = Table(title=f"metermesh {st['version']}", title_justify="left")
    for col in ("service", "address", "status", "api", "latency"):
        t.add_column(col)
    colour = {"SERVING": "green", "NOT_SERVING": "yellow"}
    for s in st["services"]:
        status = s["status"]
        c = colour.get(status, "red")
        detail = f" ({escape(s['error'])})" if s.get("error") and status != "DOWN" else ""
        t.add_row(
            s["name"],
            s["addr"],
            f"[{c}]{status}[/]{detail}",
            ", ".join(s["api"]) or "-",
            f"{s['latency_ms']:.0f} ms" if s["latency_ms"] is not None else "-",
        )
    nats_row = st["nats"]
    if nats_row["status"] != "NOT_CONFIGURED":
        c = "green" if nats_row["status"] == "UP" else "red"
        t.add_row("nats", nats_row["url"] or "", f"[{c}]{nats_row['status']}[/]", "JetStream", "-")
    out.table(t)

    if st["consumers"]:
        ct = Table(
            title="consumer lag (messages; one message carries a batch of readings)", title_justify="left"
        )
        for col in (
            "consumer",
            "stream",
            "pending",
            "ack pending",
            "lag",
            f"change in {st['sample_seconds']:g} s",
        ):
            ct.add_column(col, justify="right" if col not in ("consumer", "stream") else "left")
        for c in st["consumers"]:
            if "error" in c:
                ct.add_row(c["durable"], c["stream"], f"[red]{escape(c['error'])}[/]", "", "", "")
                continue
            change = c.get("lag_change")
            ct.add_row(
                c["durable"],
                c["stream"],
                f"{c['num_pending']:,}",
                f"{c['num_ack_pending']:,}",
                f"{c['lag']:,}",
                "-" if change is None else (f"[red]+{change:,}[/]" if change > 0 else f"{change:,}"),
            )
        out.table(ct)
    if st["streams"]:
        sts = Table(title="streams", title_justify="left")
        for col in ("stream", "messages", "bytes", "fill of max_bytes"):
            sts.add_column(col, justify="left" if col == "stream" else "right")
        for s in st["streams"]:
            if "error" in s:
                sts.add_row(s["name"], f"[red]{escape(s['error'])}[/]", "", "")
                continue
            fill = s["fill_percent"]
            fill_txt = "-" if fill is None else (f"[red]{fill:.1f}%[/]" if fill >= 80 else f"{fill:.1f}%")
            sts.add_row(s["name"], f"{s['messages']:,}", f"{s['bytes']:,}", fill_txt)
        out.table(sts)

    figures = []
    if nats_row["status"] == "DOWN":
        figures.append(
            f"[red]NATS at {escape(nats_row['url'] or '')}: {escape(nats_row.get('error', ''))}[/]"
        )
    if st["readings_per_second"] is not None:
        figures.append(
            f"readings/s: {st['readings_per_second']:,.1f} (sampled over {st['sample_seconds']:g} s)"
        )
    elif nats_row["status"] == "NOT_CONFIGURED":
        figures.append("readings/s and consumer lag: set NATS_URL (or --nats) to see them")
    if st["dead_letters"]:
        figures.append(f"[yellow]dead letters: {st['dead_letters']:,}[/]")
    elif st["dead_letters"] == 0:
        figures.append("dead letters: 0")
    a = st["alerts"]
    if a and "error" not in a:
        sev = ", ".join(f"{k} {v}" for k, v in a["open"].items())
        more = "" if a["complete"] else " (at least)"
        figures.append(f"open alerts{more}: {a['open_total']} ({sev}); acknowledged: {a['acknowledged']}")
    elif a:
        figures.append(f"[red]open alerts: unknown ({escape(a['error'])})[/]")
    for f in figures:
        out.console.print(f)
    if st["down"]:
        out.console.print(f"[red]DOWN: {', '.join(st['down'])}[/]")
    else:
        out.console.print(f"[green]all {len(st['services'])} services SERVING[/]")


def status(
    output: OutputOpt = OutputFormat.table,
    ingest: Annotated[str, addr_option("ingest")] = default_addr("ingest"),
    writer: Annotated[str, addr_option("writer")] = default_addr("writer"),
    anomaly: Annotated[str, addr_option("anomaly")] = default_addr("anomaly"),
    alerts: Annotated[str, addr_option("alerts")] = default_addr("alerts"),
    billing: Annotated[str, addr_option("billing")] = default_addr("billing"),
    forecast: Annotated[str, addr_option("forecast")] = default_addr("forecast"),
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway",
            envvar="METERMESH_GATEWAY_ADDR",
            metavar="HOST:PORT",
            help="The gRPC-web gateway, checked by HTTP GET /healthz. When unset, its default address is "
            "checked and it is shown only if it answers.",
        ),
    ] = None,
    nats_url: Annotated[
        str | None,
        typer.Option(
            "--nats", envvar="NATS_URL", help="NATS for stream and consumer figures; skipped when unset."
        ),
    ] = None,
    stream_prefix: Annotated[
        str, typer.Option(envvar="METERMESH_STREAM_PREFIX", help="Prefix of the JetStream stream names.")
    ] = "",
    sample: Annotated[
        float,
        typer.Option(min=0, help="Seconds to sample readings/s and the lag trend; 0 skips the sample."),
    ] = 2.0,
    skip: Annotated[
        list[str] | None,
        typer.Option(help="A service not deployed here (repeatable), e.g. --skip forecast."),
    ] = None,
    timeout: TimeoutOpt = 3.0,
) -> None:
    """Health of every service and the platform's key figures; exit 1 when anything is down.

    Checks each service's gRPC health and lists the API it serves (by reflection); the gateway by HTTP /healthz (at METERMESH_GATEWAY_ADDR; when that is unset, at its default address, shown only if it answers). With NATS_URL it also shows readings/s (the readings stored during a short sample), the lag of each durable consumer (pending + ack-pending messages, and how it changed during the sample), how full each stream is and the dead letters; and the open alerts by severity. `--output json` prints one JSON document; "down" names whatever is not SERVING.

    Examples:

      metermesh status

      metermesh status --output json | jq .down

      NATS_URL=nats://nats:4222 metermesh status --ingest ingest:50051 --skip forecast
    """
    out = Out(output)
    skipped = set(skip or [])
    unknown = skipped - {s.name for s in SERVICES} - {"gateway"}
    names = ", ".join(dict.fromkeys([*(s.name for s in SERVICES), "gateway"]))
    if unknown:
        out.fail(2, f"--skip {', '.join(sorted(unknown))}: not a service ({names})")
    given = {
        "ingest": ingest,
        "writer": writer,
        "anomaly": anomaly,
        "alerts": alerts,
        "billing": billing,
        "forecast": forecast,
        "gateway": gateway,
    }
    targets = []
    for svc in SERVICES:
        if svc.name in skipped:
            continue
        addr = given.get(svc.name) or svc.addr
        http_path = getattr(svc, "http_health_path", None)
        targets.append(Target(svc.name, addr, http_path, required=bool(given.get(svc.name)) or not http_path))
    if gateway and "gateway" not in skipped and all(t.name != "gateway" for t in targets):
        targets.append(Target("gateway", gateway, "/healthz"))
    st = run(
        out,
        gather_status(
            targets,
            nats_url=nats_url or None,
            prefix=stream_prefix,
            sample_seconds=sample if nats_url else 0.0,
            timeout=timeout,
        ),
    )
    if out.json:
        out.doc(st)
    else:
        _render(out, st)
    if st["down"] and out.json:
        out.note(f"[red]down:[/] {', '.join(st['down'])}")
    raise typer.Exit(EXIT_FAILURES if st["down"] else EXIT_OK)
