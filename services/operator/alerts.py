"""`metermesh alerts watch|list`: follow alert changes live (resuming by sequence when the alert
service restarts) or list the alerts matching a filter."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import grpc
import typer
from metermesh.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from metermesh.anomaly.v1 import anomaly_pb2
from rich.markup import escape
from rich.table import Table

from services.common import clients
from services.operator.output import (
    EXIT_OK,
    EXIT_RPC,
    Out,
    OutputFormat,
    OutputOpt,
    TimeoutOpt,
    addr_option,
    call,
    default_addr,
    enum_short,
    parse_enum,
    run,
    to_dict,
    ts_iso,
)

alerts_app = typer.Typer(
    name="alerts",
    help="Follow alert changes live, or list alerts.",
    no_args_is_help=True,
    add_completion=False,
)

_SEV = {
    anomaly_pb2.SEVERITY_CRITICAL: "red",
    anomaly_pb2.SEVERITY_MAJOR: "magenta",
    anomaly_pb2.SEVERITY_WARNING: "yellow",
}

SeverityOpt = Annotated[
    str | None, typer.Option("--severity", help="At least this severe: info, warning, major or critical.")
]
MeterOpt = Annotated[list[str] | None, typer.Option("--meter", help="Only this meter (repeatable).")]
KindOpt = Annotated[
    list[str] | None, typer.Option("--kind", help="Only this anomaly kind (repeatable), e.g. voltage_surge.")
]
StateOpt = Annotated[
    list[str] | None,
    typer.Option("--state", help="Only alerts in this state (repeatable): open, acknowledged, resolved."),
]


def build_filter(
    out: Out,
    severity: str | None,
    meters: list[str] | None,
    kinds: list[str] | None,
    states: list[str] | None,
) -> alerts_pb2.AlertFilter:
    f = alerts_pb2.AlertFilter(meter_ids=meters or [])
    if severity:
        f.min_severity = parse_enum(out, anomaly_pb2.Severity, "SEVERITY_", severity, "--severity")  # type: ignore[assignment]
    for k in kinds or []:
        f.kinds.append(parse_enum(out, anomaly_pb2.AnomalyKind, "ANOMALY_KIND_", k, "--kind"))  # type: ignore[arg-type]
    for s in states or []:
        f.states.append(parse_enum(out, alerts_pb2.AlertState, "ALERT_STATE_", s, "--state"))  # type: ignore[arg-type]
    return f


def alert_fields(a: alerts_pb2.Alert) -> dict[str, Any]:
    return {
        "alert_id": a.alert_id,
        "meter_id": a.meter_id,
        "kind": enum_short(anomaly_pb2.AnomalyKind, a.kind, "ANOMALY_KIND_"),
        "severity": enum_short(anomaly_pb2.Severity, a.severity, "SEVERITY_"),
        "state": enum_short(alerts_pb2.AlertState, a.state, "ALERT_STATE_"),
        "event_count": a.event_count,
        "first_seen_time": ts_iso(a.first_seen_time),
        "last_seen_time": ts_iso(a.last_seen_time),
        "summary": a.summary,
        "explanation": a.last_event.explanation,
    }


def update_fields(u: alerts_pb2.AlertUpdate) -> dict[str, Any]:
    return {
        "sequence": u.sequence,
        "change_kind": enum_short(alerts_pb2.AlertChangeKind, u.change_kind, "ALERT_CHANGE_KIND_"),
        "change_time": ts_iso(u.change_time),
        **alert_fields(u.alert),
        "alert": to_dict(u.alert),
    }


_LINE = "{time:<20} {seq:>8}  {change:<12} {sev:<8} {state:<12} {meter:<20} {kind:<18} {count:>6}  {summary}"


def _print_update(out: Out, u: alerts_pb2.AlertUpdate) -> None:
    f = update_fields(u)
    colour = _SEV.get(u.alert.severity, "default")
    when = (f["change_time"] or "").replace("T", " ").rstrip("Z")[:19]
    line = _LINE.format(
        time=when,
        seq=f["sequence"],
        change=f["change_kind"],
        sev=f["severity"],
        state=f["state"],
        meter=f["meter_id"],
        kind=f["kind"],
        count=f["event_count"],
        summary=f["summary"],
    )
    out.console.print(f"[{colour}]{escape(line)}[/]", soft_wrap=True, markup=True, highlight=False)


def watch_channel(addr: str) -> grpc.aio.Channel:
    """A channel for a long, often quiet stream: keepalive pings no more often than the server's
    default minimum interval without data (5 minutes), which otherwise answers GOAWAY too_many_pings."""
    return grpc.aio.insecure_channel(
        addr,
        options=[
            ("grpc.max_receive_message_length", clients.MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 330_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ],
    )


async def watch_loop(
    out: Out,
    addr: str,
    req: alerts_pb2.WatchAlertsRequest,
    *,
    timeout: float,
    reconnect: bool,
    max_updates: int,
) -> int:
    seen = 0
    last_seq: int | None = req.after_sequence if req.HasField("after_sequence") else None
    delay = 0.5
    first = True
    if not out.json:
        out.console.print(
            _LINE.format(
                time="changed (UTC)",
                seq="sequence",
                change="change",
                sev="severity",
                state="state",
                meter="meter",
                kind="kind",
                count="events",
                summary="summary",
            ),
            style="bold",
        )
    while True:
        async with watch_channel(addr) as ch:
            if first:
                try:
                    await asyncio.wait_for(ch.channel_ready(), timeout)
                except TimeoutError:
                    out.fail(
                        EXIT_RPC,
                        f"alerts at {addr}: UNAVAILABLE: no connection within {timeout:g} s "
                        "(is the alerts service running? `metermesh status` shows what is up)",
                        service="alerts",
                        addr=addr,
                        code="UNAVAILABLE",
                    )
                first = False
            if last_seq is not None:
                req.after_sequence = last_seq
            stream = alerts_pb2_grpc.AlertServiceStub(ch).WatchAlerts(req)
            try:
                async for resp in stream:
                    delay = 0.5
                    u = resp.update
                    last_seq = u.sequence
                    if out.json:
                        out.line(update_fields(u))
                    else:
                        _print_update(out, u)
                    seen += 1
                    if max_updates and seen >= max_updates:
                        stream.cancel()
                        return seen
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    out.fail(
                        EXIT_RPC,
                        f"alerts at {addr}: OUT_OF_RANGE: {exc.details()}; watch again without --after-sequence "
                        "(it starts from the active alerts)",
                        service="alerts",
                        addr=addr,
                        code="OUT_OF_RANGE",
                    )
                if exc.code() != grpc.StatusCode.UNAVAILABLE or not reconnect:
                    out.rpc_failed("alerts", addr, exc)
                where = f"after sequence {last_seq}" if last_seq is not None else "from the active alerts"
                out.note(
                    f"[yellow]alerts: {escape(exc.details() or 'UNAVAILABLE')}; resuming {where} in {delay:g} s[/]"
                )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


@alerts_app.command("watch")
def watch(
    severity: SeverityOpt = None,
    meter: MeterOpt = None,
    kind: KindOpt = None,
    state: StateOpt = None,
    after_sequence: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Replay the changes after this sequence first (0: the retained history); default: the active alerts.",
        ),
    ] = None,
    max_updates: Annotated[
        int, typer.Option(min=0, help="Stop after this many updates (0: run until Ctrl-C).")
    ] = 0,
    reconnect: Annotated[
        bool, typer.Option(help="When the alert service restarts, resume after the last sequence seen.")
    ] = True,
    output: OutputOpt = OutputFormat.table,
    alerts: Annotated[str, addr_option("alerts")] = default_addr("alerts"),
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Print alert changes as they happen (WatchAlerts) until Ctrl-C.

    First the active alerts matching the filter (or, with --after-sequence, every change after that sequence), then each change as it is committed: created, updated, escalated, acknowledged, resolved. A change is shown when the alert matches the filter before or after it. If the alert service restarts, the watch resumes after the last sequence it printed, with no gap and no duplicate. `--output json` prints JSON lines: one object per change, flushed at once (sequence, change_kind, the alert's main fields, and the whole alert under "alert").

    Examples:

      metermesh alerts watch --severity major

      metermesh alerts watch --meter GJ-DGVCL-000123 --kind voltage_surge --output json | jq -c .summary

      metermesh alerts watch --after-sequence 1520 --max-updates 100 --output json > changes.jsonl
    """
    out = Out(output)
    req = alerts_pb2.WatchAlertsRequest(filter=build_filter(out, severity, meter, kind, state))
    if after_sequence is not None:
        req.after_sequence = after_sequence
    run(
        out,
        watch_loop(out, alerts, req, timeout=timeout, reconnect=reconnect, max_updates=max_updates),
        interrupted_code=EXIT_OK,
    )
    raise typer.Exit(EXIT_OK)


@alerts_app.command("list")
def list_alerts(
    state: StateOpt = None,
    severity: SeverityOpt = None,
    meter: MeterOpt = None,
    kind: KindOpt = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many alerts, newest first; 0: all.")] = 50,
    output: OutputOpt = OutputFormat.table,
    alerts: Annotated[str, addr_option("alerts")] = default_addr("alerts"),
    timeout: TimeoutOpt = 10.0,
) -> None:
    """List alerts matching a filter, newest first (ListAlerts).

    `--output json` prints one document: {"sequence": N, "alerts": [...]}; pass that sequence to `alerts watch --after-sequence` to follow every change made after the listing.

    Examples:

      metermesh alerts list --state open --severity major

      metermesh alerts list --meter GJ-DGVCL-000123 --limit 0 --output json
    """
    out = Out(output)
    flt = build_filter(out, severity, meter, kind, state)

    async def fetch() -> tuple[list[alerts_pb2.Alert], int]:
        got: list[alerts_pb2.Alert] = []
        sequence = 0
        async with clients.channel(alerts) as ch:
            stub = alerts_pb2_grpc.AlertServiceStub(ch)
            token = ""
            while True:
                size = 1000 if limit == 0 else max(1, min(1000, limit - len(got)))
                req = alerts_pb2.ListAlertsRequest(filter=flt, page_size=size, page_token=token)
                resp = await call(
                    out, "alerts", alerts, lambda req=req: stub.ListAlerts(req, timeout=timeout)
                )
                if not token:
                    sequence = resp.sequence
                got.extend(resp.alerts)
                token = resp.next_page_token
                if not token or (limit and len(got) >= limit):
                    return (got[:limit] if limit else got), sequence

    found, sequence = run(out, fetch())
    if out.json:
        out.doc(
            {
                "sequence": sequence,
                "count": len(found),
                "alerts": [{**alert_fields(a), "alert": to_dict(a)} for a in found],
            }
        )
        return
    t = Table(title=f"{len(found)} alert(s) (as of sequence {sequence})", title_justify="left")
    for col in ("alert_id", "state", "severity", "kind", "meter", "events", "last seen (UTC)", "summary"):
        t.add_column(col)
    for a in found:
        f = alert_fields(a)
        colour = _SEV.get(a.severity, "default")
        t.add_row(
            f["alert_id"],
            f["state"],
            f"[{colour}]{f['severity']}[/]",
            f["kind"],
            f["meter_id"],
            f"{f['event_count']:,}",
            (f["last_seen_time"] or "-").replace("T", " ").rstrip("Z")[:19],
            escape(f["summary"]),
        )
    out.table(t)


__all__ = ["alerts_app"]
