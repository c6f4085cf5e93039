"""`metermesh meters import|list`: register meters from a CSV file (concurrently, every row reported),
and list the registered ones."""

from __future__ import annotations

import asyncio
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
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
    TimeoutOpt,
    addr_option,
    call,
    default_addr,
    enum_choices,
    enum_short,
    parse_enum,
    retrying,
    run,
    ts_iso,
)

meters_app = typer.Typer(
    name="meters",
    help="Register meters from a CSV file and list the registered ones.",
    no_args_is_help=True,
    add_completion=False,
)

COLUMNS = (
    "meter_id",
    "category",
    "tariff_id",
    "sanctioned_load_kw",
    "rated_current_a",
    "nominal_voltage_v",
    "interval_seconds",
    "time_zone",
    "labels",
)
REQUIRED = ("meter_id", "category")
_CATEGORY_PREFIX = "METER_CATEGORY_"


class RowError(ValueError):
    pass


@dataclass
class Row:
    line: int
    meter_id: str
    meter: common_pb2.Meter | None = None
    error: str = ""
    code: str = ""
    created: bool | None = None


def _number(row: dict[str, str], name: str, *, integer: bool = False) -> float:
    raw = (row.get(name) or "").strip()
    if not raw:
        return 0
    try:
        v = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise RowError(f"{name} {raw!r} is not {kind}") from None
    if not math.isfinite(v):
        raise RowError(f"{name} {raw!r} is not a finite number")
    return v


def parse_labels(raw: str) -> dict[str, str]:
    """'feeder=F12;substation=S3' -> {'feeder': 'F12', 'substation': 'S3'}."""
    labels: dict[str, str] = {}
    for part in raw.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise RowError(f"labels {raw!r}: {part.strip()!r} is not key=value (labels are k=v;k=v)")
        labels[key.strip()] = value.strip()
    return labels


def parse_meter(row: dict[str, str]) -> common_pb2.Meter:
    """A CSV row as a Meter; RowError names the field and the value. Empty cells take the server's
    defaults (nominal voltage 230 V, interval 900 s, time zone UTC)."""
    meter_id = (row.get("meter_id") or "").strip()
    if not meter_id:
        raise RowError("meter_id is empty")
    raw_cat = (row.get("category") or "").strip()
    name = _CATEGORY_PREFIX + raw_cat.upper().removeprefix(_CATEGORY_PREFIX)
    if not raw_cat or name not in common_pb2.MeterCategory.keys() or name.endswith("UNSPECIFIED"):
        choices = ", ".join(enum_choices(common_pb2.MeterCategory, _CATEGORY_PREFIX))
        raise RowError(f"category {raw_cat!r} is not one of {choices}")
    return common_pb2.Meter(
        meter_id=meter_id,
        category=common_pb2.MeterCategory.Value(name),  # type: ignore[arg-type]
        tariff_id=(row.get("tariff_id") or "").strip(),
        sanctioned_load_kw=_number(row, "sanctioned_load_kw"),
        rated_current_a=_number(row, "rated_current_a"),
        nominal_voltage_v=_number(row, "nominal_voltage_v"),
        interval_seconds=int(_number(row, "interval_seconds", integer=True)),
        time_zone=(row.get("time_zone") or "").strip(),
        labels=parse_labels(row.get("labels") or ""),
    )


def read_meters_csv(out: Out, path: Path) -> list[Row]:
    """Every data row with its line number (the header is line 1), parsed or with its error."""
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        out.fail(EXIT_USAGE, f"cannot read {path}: {exc.strerror}")
    rows: list[Row] = []
    first_line: dict[str, int] = {}
    with f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in REQUIRED if c not in header]
        unknown = [c for c in header if c not in COLUMNS]
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing column(s) {', '.join(missing)}")
            if unknown:
                problems.append(f"unknown column(s) {', '.join(unknown)}")
            out.fail(EXIT_USAGE, f"{path}: {'; '.join(problems)}; the columns are {', '.join(COLUMNS)}")
        try:
            for rec in reader:
                line = reader.line_num
                if not any((v or "").strip() for v in rec.values() if isinstance(v, str)):
                    continue  # blank line
                row = Row(line=line, meter_id=(rec.get("meter_id") or "").strip())
                if None in rec:
                    row.error = f"{len(header) + len(rec[None])} cells; the header has {len(header)}"  # type: ignore[index]
                else:
                    try:
                        row.meter = parse_meter(rec)
                    except RowError as exc:
                        row.error = str(exc)
                if row.meter is not None:
                    if row.meter_id in first_line:
                        row.meter, row.error = None, f"meter_id repeats line {first_line[row.meter_id]}"
                    else:
                        first_line[row.meter_id] = line
                rows.append(row)
        except (csv.Error, UnicodeDecodeError) as exc:
            out.fail(EXIT_USAGE, f"{path} line {reader.line_num}: not readable as CSV: {exc}")
    return rows


async def register_all(
    out: Out, addr: str, rows: list[Row], *, concurrency: int, timeout: float, retry_for: float
) -> None:
    todo = [r for r in rows if r.meter is not None]
    sem = asyncio.Semaphore(concurrency)
    progress = Progress(
        TextColumn("registering"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out.err,
        disable=out.json or len(todo) < 50,
        transient=True,
    )
    async with clients.channel(addr) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)

        async def one(row: Row, task: Any) -> None:
            async with sem:
                try:
                    async for attempt in retrying(retry_for):
                        with attempt:
                            resp = await stub.RegisterMeter(
                                ingest_pb2.RegisterMeterRequest(meter=row.meter), timeout=timeout
                            )
                    row.created = resp.created
                except grpc.aio.AioRpcError as exc:
                    row.error, row.code = exc.details() or exc.code().name, exc.code().name
                progress.advance(task)

        with progress:
            task = progress.add_task("register", total=len(todo))
            await asyncio.gather(*(one(r, task) for r in todo))


@meters_app.command("import")
def import_meters(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="CSV file of meters, with a header row.", show_default=False),
    ],
    output: OutputOpt = OutputFormat.table,
    ingest: Annotated[str, addr_option("ingest")] = default_addr("ingest"),
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="RegisterMeter calls in flight.")] = 16,
    dry_run: Annotated[bool, typer.Option(help="Check the file only; register nothing.")] = False,
    retry_for: Annotated[
        float, typer.Option(min=0, help="Seconds to keep retrying a row while ingest is UNAVAILABLE.")
    ] = 30.0,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Register (or update) every meter of a CSV file; bad rows are reported by line, never stop the rest.

    Columns (header required; only meter_id and category are mandatory, empty cells take the defaults): meter_id, category (residential|commercial|industrial|agricultural|feeder), tariff_id, sanctioned_load_kw, rated_current_a, nominal_voltage_v (230), interval_seconds (900), time_zone (UTC), labels as k=v;k=v. RegisterMeter is idempotent: importing a file again updates the meters. Rows are sent concurrently (--concurrency); each error names the line (the header is line 1) and the server's message. Exit 1 when any row failed. `--output json` prints one document: counts and the errors.

    Examples:

      metermesh meters import meters.csv

      metermesh meters import meters.csv --dry-run --output json

    A file:

      meter_id,category,tariff_id,sanctioned_load_kw,rated_current_a,time_zone,labels
      GJ-DGVCL-000123,residential,in-gj-rgp-urban,3,60,Asia/Kolkata,feeder=F12;substation=S3
    """
    out = Out(output)
    rows = read_meters_csv(out, file)
    if not dry_run:
        run(
            out,
            register_all(out, ingest, rows, concurrency=concurrency, timeout=timeout, retry_for=retry_for),
        )
    failed = [r for r in rows if r.error]
    sent = [r for r in rows if r.meter is not None]
    if not dry_run and sent and all(r.code == "UNAVAILABLE" for r in sent):
        out.fail(
            EXIT_RPC,
            f"ingest at {ingest}: UNAVAILABLE: {sent[0].error} (is the ingest service running?)",
            service="ingest",
            addr=ingest,
            code="UNAVAILABLE",
        )
    created = sum(1 for r in rows if r.created is True)
    updated = sum(1 for r in rows if r.created is False)
    summary = {
        "file": str(file),
        "rows": len(rows),
        "valid": len(sent),
        "created": created,
        "updated": updated,
        "failed": len(failed),
        "dry_run": dry_run,
        "errors": [
            {"line": r.line, "meter_id": r.meter_id, "error": r.error, **({"code": r.code} if r.code else {})}
            for r in failed
        ],
    }
    if out.json:
        out.doc(summary)
    else:
        if failed:
            t = Table(title=f"{len(failed)} row(s) failed", title_justify="left")
            t.add_column("line", justify="right")
            t.add_column("meter_id")
            t.add_column("error")
            for r in failed:
                t.add_row(
                    str(r.line),
                    escape(r.meter_id or "-"),
                    escape((f"{r.code}: " if r.code else "") + r.error),
                )
            out.table(t)
        if dry_run:
            out.console.print(f"{len(sent)} of {len(rows)} rows valid (dry run: nothing registered)")
        else:
            out.console.print(
                f"registered {created + updated} of {len(rows)} meters ({created} created, {updated} updated); "
                f"{len(failed)} failed"
            )
    raise typer.Exit(EXIT_FAILURES if failed else EXIT_OK)


@meters_app.command("list")
def list_meters(
    output: OutputOpt = OutputFormat.table,
    category: Annotated[str | None, typer.Option(help="Only this category, e.g. residential.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many meters; 0 lists all.")] = 100,
    ingest: Annotated[str, addr_option("ingest")] = default_addr("ingest"),
    timeout: TimeoutOpt = 10.0,
) -> None:
    """List registered meters in meter_id order, with their last reading and last-seen times.

    `--output json` prints one document {"meters": [...]} in the proto3 JSON mapping.

    Examples:

      metermesh meters list --category residential --limit 20

      metermesh meters list --limit 0 --output json | jq -r '.meters[].meter_id'
    """
    out = Out(output)
    cat = (
        parse_enum(out, common_pb2.MeterCategory, _CATEGORY_PREFIX, category, "--category") if category else 0
    )

    async def fetch() -> list[common_pb2.Meter]:
        got: list[common_pb2.Meter] = []
        async with clients.channel(ingest) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            token = ""
            while True:
                size = 1000 if limit == 0 else max(1, min(1000, limit - len(got)))
                req = ingest_pb2.ListMetersRequest(page_size=size, page_token=token, category=cat)  # type: ignore[arg-type]
                resp = await call(
                    out, "ingest", ingest, lambda req=req: stub.ListMeters(req, timeout=timeout)
                )
                got.extend(resp.meters)
                token = resp.next_page_token
                if not token or (limit and len(got) >= limit):
                    return got[:limit] if limit else got

    meters = run(out, fetch())
    if out.json:
        from services.operator.output import to_dict

        out.doc({"count": len(meters), "meters": [to_dict(m) for m in meters]})
        return
    t = Table(title=f"{len(meters)} meter(s)", title_justify="left")
    for col in (
        "meter_id",
        "category",
        "tariff",
        "load kW",
        "interval",
        "time zone",
        "last read",
        "last seen",
    ):
        t.add_column(col)
    for m in meters:
        t.add_row(
            m.meter_id,
            enum_short(common_pb2.MeterCategory, m.category, _CATEGORY_PREFIX),
            m.tariff_id or "-",
            f"{m.sanctioned_load_kw:g}",
            f"{m.interval_seconds} s",
            m.time_zone,
            ts_iso(m.last_read_time) or "-",
            ts_iso(m.last_seen_time) or "-",
        )
    out.table(t)
