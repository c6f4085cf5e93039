"""`metermesh bill cycle`: run a billing cycle for a calendar month (or a range of days), following
its streamed progress, and show the summary with every failure and its reason."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from typing import Annotated, Any

import grpc
import typer
from metermesh.billing.v1 import billing_pb2, billing_pb2_grpc
from metermesh.common.v1 import common_pb2
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.common import clients
from services.operator.output import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_RPC,
    EXIT_USAGE,
    Out,
    OutputFormat,
    OutputOpt,
    addr_option,
    default_addr,
    fmt_seconds,
    parse_enum,
    run,
    set_ts,
    ts_iso,
)

bill_app = typer.Typer(
    name="bill",
    help="Billing: run a billing cycle over many meters.",
    no_args_is_help=True,
    add_completion=False,
)

MAX_FAILURES_SHOWN = 50


class PeriodError(ValueError):
    pass


def parse_period(text: str) -> tuple[dt.date, dt.date]:
    """'2026-10' -> (2026-10-01, 2026-11-01); '2026-10-01..2026-10-16' -> those days, end exclusive."""
    text = text.strip()
    m = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if m:
        year, month = int(m.group(1)), int(m.group(2))
        if not 1 <= month <= 12:
            raise PeriodError(f"{text!r}: month {month} is not 1-12")
        start = dt.date(year, month, 1)
        end = dt.date(year + month // 12, month % 12 + 1, 1)
        return start, end
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})", text)
    if m:
        try:
            start, end = dt.date.fromisoformat(m.group(1)), dt.date.fromisoformat(m.group(2))
        except ValueError as exc:
            raise PeriodError(f"{text!r}: {exc}") from None
        if end <= start:
            raise PeriodError(f"{text!r}: the end (exclusive) must be after the start")
        return start, end
    raise PeriodError(f"{text!r}: give a month YYYY-MM or days YYYY-MM-DD..YYYY-MM-DD (end exclusive)")


def period_range(start: dt.date, end: dt.date) -> common_pb2.TimeRange:
    """UTC midnights: the billing service reads them as those calendar days in each tariff's own zone."""
    tr = common_pb2.TimeRange()
    set_ts(tr.start_time, dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC))
    set_ts(tr.end_time, dt.datetime(end.year, end.month, end.day, tzinfo=dt.UTC))
    return tr


def _money(items: Any) -> list[dict[str, str]]:
    return [{"currency_code": m.currency_code, "amount": m.amount} for m in items]


async def run_cycle(
    out: Out, addr: str, req: billing_pb2.RunBillingCycleRequest, *, idle_timeout: float, deadline: float
) -> tuple[billing_pb2.BillingCycleSummary, int]:
    progress = Progress(
        TextColumn("[bold]billing[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=out.err,
        disable=out.json,
    )
    n = 0
    async with clients.channel(addr) as ch:
        call = billing_pb2_grpc.BillingServiceStub(ch).RunBillingCycle(req, timeout=deadline)
        stream = call.__aiter__()
        with progress:
            task = progress.add_task("cycle", total=None, detail="starting")
            while True:
                try:
                    resp = await asyncio.wait_for(stream.__anext__(), idle_timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    call.cancel()
                    progress.stop()
                    out.fail(
                        EXIT_RPC,
                        f"billing at {addr}: no progress for {idle_timeout:g} s; gave up (the bills issued so "
                        "far stay; running the same cycle again continues it)",
                        service="billing",
                        addr=addr,
                        code="DEADLINE_EXCEEDED",
                    )
                except grpc.aio.AioRpcError as exc:
                    progress.stop()
                    out.rpc_failed("billing", addr, exc)
                n += 1
                if resp.HasField("summary"):
                    s = resp.summary
                    progress.update(task, total=s.total_count, completed=s.total_count, detail="done")
                    return s, n
                p = resp.progress
                progress.update(
                    task,
                    total=p.total_count,
                    completed=p.done_count,
                    detail=f"billed {p.billed_count:,}  skipped {p.skipped_count:,}  failed {p.failed_count:,}",
                )
    out.fail(EXIT_RPC, f"billing at {addr}: the cycle's stream ended without a summary", service="billing")


@bill_app.command("cycle")
def cycle(
    period: Annotated[
        str,
        typer.Option(
            help="A calendar month YYYY-MM, or days YYYY-MM-DD..YYYY-MM-DD (end exclusive).",
            show_default=False,
        ),
    ],
    tariff: Annotated[
        str | None, typer.Option(help="Only meters on this tariff, e.g. in-gj-rgp-urban.")
    ] = None,
    category: Annotated[
        str | None, typer.Option(help="Only meters of this category, e.g. residential.")
    ] = None,
    meter: Annotated[list[str] | None, typer.Option(help="Only this meter (repeatable).")] = None,
    recompute: Annotated[
        bool,
        typer.Option(help="Bill meters again that already have a bill (re-issued only if inputs changed)."),
    ] = False,
    output: OutputOpt = OutputFormat.table,
    billing: Annotated[str, addr_option("billing")] = default_addr("billing"),
    idle_timeout: Annotated[
        float,
        typer.Option(
            min=1, help="Give up when the service sends nothing for this long (it reports every 1-2 s)."
        ),
    ] = 60.0,
    deadline: Annotated[float, typer.Option(min=1, help="Deadline of the whole cycle, in seconds.")] = 4
    * 3600.0,
) -> None:
    """Bill every meter with a tariff (or those selected) for one period (RunBillingCycle).

    A month is sent as UTC midnights (2026-10-01T00:00Z..2026-11-01T00:00Z), which the billing service reads as those calendar days in each tariff's own time zone, so one cycle bills meters in India, California and Britain together. Meters that already have a bill for the period are skipped, so an interrupted cycle is simply run again. Shows the progress the service streams, then billed, skipped and failed counts, the billed totals per currency and each failure with its reason. Exit 1 when any meter failed; 3 when the cycle could not run (e.g. ABORTED: another cycle for an overlapping period is running). `--output json` prints one document: the summary.

    Examples:

      metermesh bill cycle --period 2026-10

      metermesh bill cycle --period 2026-10 --tariff in-gj-rgp-urban --output json | jq .failures

      metermesh bill cycle --period 2026-10-01..2026-10-16 --meter GJ-DGVCL-000123 --recompute
    """
    out = Out(output)
    try:
        start, end = parse_period(period)
    except PeriodError as exc:
        out.fail(EXIT_USAGE, f"--period {exc}")
    req = billing_pb2.RunBillingCycleRequest(
        billing_period=period_range(start, end),
        tariff_id=tariff or "",
        meter_ids=meter or [],
        recompute=recompute,
    )
    if category:
        req.category = parse_enum(out, common_pb2.MeterCategory, "METER_CATEGORY_", category, "--category")  # type: ignore[assignment]
    t0 = time.monotonic()
    summary, n = run(out, run_cycle(out, billing, req, idle_timeout=idle_timeout, deadline=deadline))
    doc = {
        "cycle_id": summary.cycle_id,
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "billing_period": {
            "start_time": ts_iso(summary.billing_period.start_time),
            "end_time": ts_iso(summary.billing_period.end_time),
        },
        "total": summary.total_count,
        "billed": summary.billed_count,
        "skipped": summary.skipped_count,
        "failed": summary.failed_count,
        "billed_totals": _money(summary.billed_totals),
        "failures": [{"meter_id": f.meter_id, "reason": f.reason} for f in summary.failures],
        "failures_truncated": summary.failed_count > len(summary.failures),
        "start_time": ts_iso(summary.start_time),
        "end_time": ts_iso(summary.end_time),
        "progress_messages": n - 1,
        "seconds": round(time.monotonic() - t0, 3),
    }
    if out.json:
        out.doc(doc)
    else:
        out.console.print(f"billing cycle {summary.cycle_id}: {start}..{end} (end exclusive)")
        t = Table()
        for col in ("meters", "billed", "skipped (already billed)", "failed", "billed totals"):
            t.add_column(col, justify="right")
        totals = ", ".join(f"{m['amount']} {m['currency_code']}" for m in doc["billed_totals"]) or "-"
        failed = f"[red]{summary.failed_count:,}[/]" if summary.failed_count else "0"
        t.add_row(
            f"{summary.total_count:,}",
            f"{summary.billed_count:,}",
            f"{summary.skipped_count:,}",
            failed,
            totals,
        )
        out.table(t)
        if summary.failures:
            ft = Table(title=f"{summary.failed_count:,} meter(s) not billed", title_justify="left")
            ft.add_column("meter_id")
            ft.add_column("reason")
            for f in list(summary.failures)[:MAX_FAILURES_SHOWN]:
                ft.add_row(escape(f.meter_id), escape(f.reason))
            out.table(ft)
            if summary.failed_count > MAX_FAILURES_SHOWN:
                out.console.print(
                    f"... and {summary.failed_count - MAX_FAILURES_SHOWN:,} more (--output json lists up to 1,000)"
                )
        out.console.print(f"took {fmt_seconds(doc['seconds'])}")
    raise typer.Exit(EXIT_FAILURES if summary.failed_count else EXIT_OK)
