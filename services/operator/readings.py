"""`metermesh readings replay`: load a CSV of real readings through the ingest API, resumably, at a
chosen speed-up, with retries on backpressure. The formats are in `services.operator.datasets`."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import grpc
import typer
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.common import clients
from services.operator import datasets
from services.operator.output import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    Out,
    OutputFormat,
    OutputOpt,
    TimeoutOpt,
    addr_option,
    default_addr,
    enum_short,
    fmt_seconds,
    retrying,
    run,
    set_ts,
)

readings_app = typer.Typer(
    name="readings",
    help="Load readings into the platform from CSV files.",
    no_args_is_help=True,
    add_completion=False,
)

STATE_VERSION = 1
WEEK = 7 * 86_400
MAX_EXAMPLES = 20
_REJECTION_PREFIX = "REJECTION_REASON_"


@dataclasses.dataclass
class ReplayState:
    """What a replay has done, saved after every acknowledged batch: a re-run seeks to `offset` and
    continues. The settings that decide which readings a row becomes are kept too, so a re-run cannot
    send the rest of the file differently from its beginning."""

    file: str
    fingerprint: str
    format: str
    meter: str | None
    time_zone: str
    stamp: str
    interval_seconds: int
    shift_to_now: bool
    shift_seconds: int
    keep_incomplete: bool
    version: int = STATE_VERSION
    source_id: str | None = None
    offset: int = 0  # byte offset of the next row to read
    line: int = 1  # the last line consumed (the header is line 1)
    rows: int = 0  # data rows consumed: sent or skipped
    sent: int = 0
    accepted: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    first_read_time: str | None = None
    last_read_time: str | None = None
    complete: bool = False
    updated: str = ""

    def save(self, path: Path) -> None:
        self.updated = dt.datetime.now(dt.UTC).isoformat()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        os.replace(tmp, path)  # atomic: a crash leaves the old state or the new one, never half of one

    @classmethod
    def load(cls, path: Path) -> ReplayState:
        data = json.loads(path.read_text())
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"state version {data.get('version')!r}; this metermesh writes {STATE_VERSION}")
        return cls(**data)

    # Settings that must match between the first run and a resumed one.
    KEYS = (
        "fingerprint",
        "format",
        "meter",
        "time_zone",
        "stamp",
        "interval_seconds",
        "shift_to_now",
        "keep_incomplete",
    )


def fingerprint(path: Path) -> str:
    """Hash of the file's first 64 KiB: the same file (even grown at its end) keeps its fingerprint."""
    with path.open("rb") as f:
        return hashlib.sha256(f.read(65536)).hexdigest()[:32]


def default_state_path(file: Path, meter: str | None) -> Path:
    return Path(".metermesh") / "replay" / f"{meter or 'meters'}-{file.stem}.json"


def read_header(f: IO[bytes]) -> tuple[list[str], int]:
    raw = f.readline()
    text = raw.decode("utf-8-sig").rstrip("\r\n")
    return [h.strip() for h in next(csv.reader([text]))], len(raw)


def iter_rows(
    f: IO[bytes], header: list[str], offset: int, line: int
) -> Iterator[tuple[int, int, dict[str, str] | None, str | None]]:
    """(line number, offset after the row, the row or None, a problem) from offset on. Rows are read
    a line at a time in binary so that the offset after each is exact (the state's resume point)."""
    f.seek(offset)
    while True:
        raw = f.readline()
        if not raw:
            return
        line += 1
        offset += len(raw)
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text.strip():
            yield line, offset, None, None
            continue
        cells = next(csv.reader([text]))
        if len(cells) != len(header):
            yield line, offset, None, f"{len(cells)} cells; the header has {len(header)}"
            continue
        yield line, offset, dict(zip(header, cells, strict=True)), None


def last_stamp(path: Path, fmt: datasets.Format, header: list[str]) -> dt.datetime | None:
    """The timestamp of the file's last readable row, from its tail (the file is not read whole)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read().decode("utf-8", errors="replace").splitlines()
    for text in reversed(tail[1:] if size > 65536 else tail):
        cells = next(csv.reader([text]), [])
        if len(cells) != len(header):
            continue
        try:
            return datasets.parse_time(dict(zip(header, cells, strict=True))[fmt.time_column])
        except (datasets.BadRow, KeyError):
            continue
    return None


class Clock:
    """Turns a row's timestamp into the UTC end of its interval. Naive times are read in the zone; a
    local time that repeats when clocks go back is taken as its second occurrence when the first was
    already passed (fold=1), so a day with a fall-back hour keeps all its readings."""

    def __init__(self, zone: dt.tzinfo, stamp: str, shift_seconds: int) -> None:
        self.zone = zone
        self.stamp = stamp
        self.shift = dt.timedelta(seconds=shift_seconds)
        self.last: dt.datetime | None = None

    def end_utc(self, stamp: dt.datetime, interval_seconds: int) -> dt.datetime:
        if stamp.tzinfo is None:
            t = stamp.replace(tzinfo=self.zone).astimezone(dt.UTC)
            if self.last is not None and t <= self.last:
                t1 = stamp.replace(tzinfo=self.zone, fold=1).astimezone(dt.UTC)
                if t1 > self.last:
                    t = t1
        else:
            t = stamp.astimezone(dt.UTC)
        self.last = t
        if self.stamp == "start":
            t += dt.timedelta(seconds=interval_seconds)
        return t + self.shift


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def shift_to_now(last: dt.datetime, clock: Clock, interval_seconds: int) -> int:
    """Whole weeks (weekday and time of day stay as they were) that move the file's last reading to
    within the week before now: every reading then lies in the past, inside the retention window
    when the file spans less than it, and none is more than 5 minutes ahead (which ingest refuses)."""
    end = clock.end_utc(last, interval_seconds)
    clock.last = None
    now = dt.datetime.now(dt.UTC)
    return int((now - end).total_seconds() // WEEK) * WEEK


@dataclasses.dataclass
class RunReport:
    rows: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    rejections: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    bad_rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    retries: int = 0
    interrupted: bool = False


async def replay(
    out: Out,
    *,
    file: Path,
    fmt: datasets.Format,
    header: list[str],
    state: ReplayState,
    state_path: Path,
    ingest: str,
    batch_size: int,
    speed_up: float,
    limit: int,
    timeout: float,
    retry_for: float,
) -> RunReport:
    report = RunReport()
    clock = Clock(datasets.parse_zone(state.time_zone), state.stamp, state.shift_seconds)
    if state.last_read_time:
        clock.last = dt.datetime.fromisoformat(state.last_read_time) - clock.shift
        if state.stamp == "start":
            clock.last -= dt.timedelta(seconds=state.interval_seconds)
    opts = datasets.Options(keep_incomplete=state.keep_incomplete)
    size = file.stat().st_size
    batch: list[tuple[common_pb2.Reading, int]] = []
    batch_times: set[tuple[str, int]] = set()
    last_sent: dict[str, int] = {}
    consumed = (state.offset, state.line)
    pace: tuple[float, dt.datetime] | None = None  # (monotonic start, first read_time) with speed_up

    progress = Progress(
        TextColumn("[bold]replay[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("line {task.fields[line]:,}  accepted {task.fields[accepted]:,}  {task.fields[note]}"),
        TimeElapsedColumn(),
        console=out.err,
        disable=out.json,
        transient=False,
    )

    def on_retry(rs: Any) -> None:
        report.retries += 1
        exc = rs.outcome.exception() if rs.outcome else None
        what = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
        progress.update(task, note=f"[yellow]ingest {what}; retrying[/]")

    async def flush(stub: ingest_pb2_grpc.IngestServiceStub) -> None:
        if batch:
            readings = [r for r, _ in batch]
            try:
                async for attempt in retrying(retry_for, on_retry):
                    with attempt:
                        resp = await stub.PushReadings(
                            ingest_pb2.PushReadingsRequest(readings=readings), timeout=timeout
                        )
            except grpc.aio.AioRpcError as exc:
                progress.stop()
                out.note(
                    f"stopped at line {state.line} (state in {state_path}); run the same command again to continue"
                )
                out.rpc_failed("ingest", ingest, exc)
            progress.update(task, note="")
            report.sent += len(readings)
            report.accepted += resp.accepted_count
            state.sent += len(readings)
            state.accepted += resp.accepted_count
            for rej in resp.rejections:
                reason = enum_short(ingest_pb2.RejectionReason, rej.reason, _REJECTION_PREFIX)
                report.rejected[reason] += 1
                state.rejected[reason] = state.rejected.get(reason, 0) + 1
                if len(report.rejections) < MAX_EXAMPLES:
                    report.rejections.append(
                        {"line": batch[rej.index][1], "reason": reason, "message": rej.message}
                    )
            last = max(r.read_time.ToDatetime(tzinfo=dt.UTC) for r in readings)
            first = min(r.read_time.ToDatetime(tzinfo=dt.UTC) for r in readings)
            if state.first_read_time is None or first < dt.datetime.fromisoformat(state.first_read_time):
                state.first_read_time = _iso(first)
            if state.last_read_time is None or last > dt.datetime.fromisoformat(state.last_read_time):
                state.last_read_time = _iso(last)
            batch.clear()
            batch_times.clear()
        state.offset, state.line = consumed
        state.save(state_path)
        progress.update(task, completed=state.offset, line=state.line, accepted=state.accepted)

    async with clients.channel(ingest) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        if state.meter:
            try:
                await stub.GetMeter(ingest_pb2.GetMeterRequest(meter_id=state.meter), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    out.fail(
                        EXIT_USAGE,
                        f"meter {state.meter!r} is not registered; register it first "
                        "(metermesh meters import FILE)",
                    )
                out.rpc_failed("ingest", ingest, exc)
        try:
            with progress, file.open("rb") as f:
                task = progress.add_task(
                    "replay",
                    total=size,
                    completed=state.offset,
                    line=state.line,
                    accepted=state.accepted,
                    note="",
                )
                for line, offset, row, problem in iter_rows(f, header, state.offset, state.line):
                    if limit and report.rows >= limit:
                        break
                    report.rows += 1
                    before, consumed = consumed, (offset, line)
                    reading: common_pb2.Reading | None = None
                    try:
                        if row is None:
                            if problem is None:
                                state.rows += 1
                                continue  # blank line
                            raise datasets.BadRow(problem)
                        parsed = fmt.parse(row, opts)
                        if fmt.id_column and parsed.source_id is not None:
                            if state.source_id is None:
                                state.source_id = parsed.source_id
                            elif parsed.source_id != state.source_id:
                                raise datasets.Skip(f"another {fmt.id_column} than {state.source_id}")
                        meter = state.meter or parsed.meter_id
                        if not meter:
                            raise datasets.BadRow("meter_id is empty (give --meter or fill the column)")
                        interval = (
                            parsed.interval_seconds
                            if parsed.interval_seconds is not None
                            else state.interval_seconds
                        )
                        end = clock.end_utc(parsed.stamp, interval)
                        micros = int(end.timestamp() * 1_000_000)
                        if (meter, micros) in batch_times or last_sent.get(meter) == micros:
                            raise datasets.Skip("duplicate timestamp")
                        reading = common_pb2.Reading(
                            meter_id=meter, interval_seconds=interval, **parsed.fields
                        )
                        set_ts(reading.read_time, end)
                    except datasets.Skip as skip:
                        report.skipped[str(skip)] += 1
                        state.skipped[str(skip)] = state.skipped.get(str(skip), 0) + 1
                    except datasets.BadRow as bad:
                        key = "unreadable row"
                        report.skipped[key] += 1
                        state.skipped[key] = state.skipped.get(key, 0) + 1
                        if len(report.bad_rows) < MAX_EXAMPLES:
                            report.bad_rows.append({"line": line, "error": str(bad)})
                    if reading is None:
                        state.rows += 1
                        continue
                    if speed_up > 0:
                        if pace is None:
                            pace = (time.monotonic(), end)
                        wait = pace[0] + (end - pace[1]).total_seconds() / speed_up - time.monotonic()
                        if wait > 0:
                            if batch:
                                # Not due yet: send what is gathered, up to (not including) this row.
                                consumed, after = before, consumed
                                await flush(stub)
                                consumed = after
                            await asyncio.sleep(wait)
                    batch.append((reading, line))
                    batch_times.add((meter, micros))
                    last_sent[meter] = micros
                    state.rows += 1
                    if len(batch) >= batch_size:
                        await flush(stub)
                else:
                    state.complete = True
                await flush(stub)
        except asyncio.CancelledError:
            # Ctrl-C or SIGTERM: the state file holds the last acknowledged batch; the batch in flight
            # (if any) is read and sent again by the next run, and deduplicated by ingest.
            report.interrupted = True
    return report


def _summary(
    file: Path,
    state: ReplayState,
    state_path: Path,
    report: RunReport,
    resumed_from: int | None,
    elapsed: float,
) -> dict[str, Any]:
    return {
        "file": str(file),
        "format": state.format,
        "meter": state.meter,
        "state_file": str(state_path),
        "resumed_from_line": resumed_from,
        "last_line": state.line,
        "complete": state.complete,
        "interrupted": report.interrupted,
        "shift_days": state.shift_seconds // 86_400,
        "this_run": {
            "rows": report.rows,
            "sent": report.sent,
            "accepted": report.accepted,
            "rejected": dict(report.rejected),
            "skipped": dict(report.skipped),
            "retries": report.retries,
            "seconds": round(elapsed, 3),
            "readings_per_second": round(report.sent / elapsed, 1) if elapsed > 0 else None,
        },
        "total": {
            "rows": state.rows,
            "sent": state.sent,
            "accepted": state.accepted,
            "rejected": state.rejected,
            "skipped": state.skipped,
            "first_read_time": state.first_read_time,
            "last_read_time": state.last_read_time,
        },
        "rejections": report.rejections,
        "bad_rows": report.bad_rows,
    }


@readings_app.command("replay")
def replay_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="CSV file of readings.", show_default=False)],
    meter: Annotated[
        str | None,
        typer.Option(
            help="Meter the readings belong to (registered). Generic files may name it per row instead."
        ),
    ] = None,
    fmt_name: Annotated[
        str,
        typer.Option("--format", help="uci | lcl | sgsc | lead | generic | auto (from the header)."),
    ] = "auto",
    speed_up: Annotated[
        float,
        typer.Option(
            min=0, help="0: as fast as possible; N: N x real time between readings (3600: an hour a second)."
        ),
    ] = 0.0,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Readings per PushReadings call.")] = 1000,
    state_file: Annotated[
        Path | None,
        typer.Option("--state", help="Resume file; default .metermesh/replay/<meter>-<file>.json."),
    ] = None,
    restart: Annotated[
        bool, typer.Option(help="Ignore the state file and start from the first row.")
    ] = False,
    limit: Annotated[
        int, typer.Option(min=0, help="Stop after this many rows in this run (0: no limit).")
    ] = 0,
    shift: Annotated[
        bool,
        typer.Option(
            "--shift-to-now/--no-shift",
            help="Move every reading by whole weeks so the file's last one lands in the past week.",
        ),
    ] = False,
    time_zone: Annotated[
        str | None,
        typer.Option(help="Zone of naive timestamps: UTC, an IANA name or +01:00 (default: the format's)."),
    ] = None,
    stamp: Annotated[
        str | None,
        typer.Option(
            help="Whether a row's time is the 'start' or the 'end' of its interval (default: the format's)."
        ),
    ] = None,
    interval: Annotated[
        int | None,
        typer.Option(min=0, max=86_400, help="Interval in seconds (default: the format's; generic: 900)."),
    ] = None,
    keep_incomplete: Annotated[
        bool, typer.Option(help="uci: also send hours with minutes missing (energy only).")
    ] = False,
    output: OutputOpt = OutputFormat.table,
    ingest: Annotated[str, addr_option("ingest")] = default_addr("ingest"),
    retry_for: Annotated[
        float, typer.Option(min=0, help="Seconds to keep retrying a batch while ingest is UNAVAILABLE.")
    ] = 300.0,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Replay a CSV of real readings through the ingest API, resumably, with a progress bar.

    Formats (--format, detected from the header by default): uci (UCI household, hourly: energy, mean voltage and current, power factor), lcl (Low Carbon London, half-hourly kWh), sgsc (Smart Grid Smart City, half-hourly kWh), lead (LEAD1.0 buildings, hourly kWh), generic (a read_time column, the end of the interval, plus any Reading field: import_energy_wh or import_kwh, export_energy_wh or export_kwh, voltage_v, current_a, active_power_w, power_factor, frequency_hz, interval_seconds, meter_id). kWh become import_energy_wh; rows without a reading (missing values, logging gaps, repeated timestamps) are skipped and counted.

    Resumable: after every acknowledged batch the state file records the next row's byte offset; running the same command again continues there (a batch re-sent after a crash is deduplicated by ingest). Ctrl-C stops cleanly (exit 130). UNAVAILABLE (backpressure) is retried with exponential backoff for --retry-for seconds.

    Ingest refuses readings older than its retention (3650 days by default) or more than 5 minutes ahead: old datasets need --shift-to-now, which moves every reading by the same whole number of weeks (weekday and time of day kept) so the file's last reading falls within the past week. The shift is fixed at the first run and kept in the state file.

    `--output json` prints one document at the end (no progress bar). Exit 1 when ingest rejected readings or rows were unreadable.

    Examples:

      metermesh readings replay ../shared/data/uci-household-hourly/household_power_consumption_hourly.csv --meter UCI-1 --shift-to-now

      metermesh readings replay ../shared/data/london-lcl/MAC000002.csv --meter LCL-2 --shift-to-now --speed-up 3600

      metermesh readings replay readings.csv --format generic --limit 10000 --output json
    """
    out = Out(output)
    try:
        f = file.open("rb")
    except OSError as exc:
        out.fail(EXIT_USAGE, f"cannot read {file}: {exc.strerror}")
    with f:
        header, header_len = read_header(f)
    if fmt_name == "auto":
        fmt = datasets.detect(header)
        if fmt is None:
            out.fail(
                EXIT_USAGE,
                f"{file}: cannot tell the format from the header ({', '.join(header)}); give --format",
            )
    elif fmt_name in datasets.FORMATS:
        fmt = datasets.FORMATS[fmt_name]
    else:
        out.fail(EXIT_USAGE, f"--format {fmt_name!r}: use one of auto, {', '.join(datasets.FORMATS)}")
    problem = datasets.check_header(fmt, header)
    if problem:
        out.fail(EXIT_USAGE, f"{file}: {problem}")
    if meter is None and not (fmt.name == "generic" and "meter_id" in header):
        out.fail(EXIT_USAGE, "give --meter (only a generic file with a meter_id column may leave it out)")
    zone_name = time_zone or fmt.time_zone
    try:
        datasets.parse_zone(zone_name)
    except ValueError as exc:
        out.fail(EXIT_USAGE, f"--time-zone {exc}")
    stamp_kind = stamp or fmt.stamp
    if stamp_kind not in ("start", "end"):
        out.fail(EXIT_USAGE, f"--stamp {stamp_kind!r}: use start or end")
    interval_s = fmt.interval_seconds if interval is None else interval

    state_path = state_file or default_state_path(file, meter)
    wanted = ReplayState(
        file=str(file.resolve()),
        fingerprint=fingerprint(file),
        format=fmt.name,
        meter=meter,
        time_zone=zone_name,
        stamp=stamp_kind,
        interval_seconds=interval_s,
        shift_to_now=shift,
        shift_seconds=0,
        keep_incomplete=keep_incomplete,
        offset=header_len,
    )
    resumed_from: int | None = None
    if state_path.exists() and not restart:
        try:
            state = ReplayState.load(state_path)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            out.fail(
                EXIT_USAGE, f"state file {state_path} is not usable ({exc}); give --restart to start over"
            )
        differ = [k for k in ReplayState.KEYS if getattr(state, k) != getattr(wanted, k)]
        if differ:
            detail = ", ".join(f"{k}: {getattr(state, k)!r} then, {getattr(wanted, k)!r} now" for k in differ)
            out.fail(
                EXIT_USAGE,
                f"state file {state_path} belongs to another replay ({detail}); "
                "run with the same settings to continue, or give --restart (or another --state)",
            )
        if state.complete:
            if out.json:
                out.doc(_summary(file, state, state_path, RunReport(), state.line, 0.0))
            else:
                out.console.print(
                    f"nothing to do: {file} was replayed completely ({state.accepted:,} readings accepted); "
                    "give --restart to replay it again"
                )
            raise typer.Exit(EXIT_OK)
        resumed_from = state.line
        out.note(f"resuming after line {state.line:,} ({state.accepted:,} readings accepted so far)")
    else:
        state = wanted
        if shift:
            last = last_stamp(file, fmt, header)
            if last is None:
                out.fail(EXIT_USAGE, f"{file}: no readable timestamp at its end to shift from")
            clock = Clock(datasets.parse_zone(zone_name), stamp_kind, 0)
            state.shift_seconds = shift_to_now(last, clock, interval_s)
            out.note(
                f"shifting every reading by {state.shift_seconds // 86_400:,} days ({state.shift_seconds // WEEK:,} weeks)"
            )

    try:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state.save(state_path)
    except OSError as exc:
        out.fail(EXIT_USAGE, f"cannot write the state file {state_path}: {exc.strerror}; give --state PATH")
    t0 = time.monotonic()
    report = run(
        out,
        replay(
            out,
            file=file,
            fmt=fmt,
            header=header,
            state=state,
            state_path=state_path,
            ingest=ingest,
            batch_size=batch,
            speed_up=speed_up,
            limit=limit,
            timeout=timeout,
            retry_for=retry_for,
        ),
    )
    elapsed = time.monotonic() - t0
    if report.interrupted:
        # What the state file says is what happened; counts of rows read after it are not kept.
        state = ReplayState.load(state_path) if state_path.exists() else state
    summary = _summary(file, state, state_path, report, resumed_from, elapsed)
    if out.json:
        out.doc(summary)
    else:
        _render(out, summary, state)
    if report.interrupted:
        out.note(
            f"[yellow]interrupted[/] after line {state.line:,} (state in {state_path}); "
            "run the same command again to continue"
        )
        raise typer.Exit(130)
    if report.rejected.get("read_time_too_old") and not state.shift_seconds:
        out.note(
            "[yellow]hint:[/] readings older than the retention window were refused; replay with --shift-to-now"
        )
    raise typer.Exit(EXIT_FAILURES if report.rejected or report.bad_rows else EXIT_OK)


def _render(out: Out, s: dict[str, Any], state: ReplayState) -> None:
    run_ = s["this_run"]
    t = Table(show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("file", escape(s["file"]))
    t.add_row("format / meter", f"{s['format']} / {s['meter'] or '(per row)'}")
    t.add_row(
        "this run",
        f"{run_['rows']:,} rows, {run_['sent']:,} sent, {run_['accepted']:,} accepted in {fmt_seconds(run_['seconds'])}",
    )
    for reason, n in run_["rejected"].items():
        t.add_row("  rejected", f"[red]{n:,} {reason}[/]")
    for reason, n in run_["skipped"].items():
        t.add_row("  skipped", f"{n:,} {escape(reason)}")
    if run_["retries"]:
        t.add_row("  retries", f"{run_['retries']:,} (ingest UNAVAILABLE)")
    total = s["total"]
    t.add_row("in total", f"{total['rows']:,} rows, {total['accepted']:,} readings accepted")
    t.add_row("read times", f"{total['first_read_time']} .. {total['last_read_time']}")
    if s["shift_days"]:
        t.add_row("shifted by", f"{s['shift_days']:,} days")
    t.add_row("state", f"{s['state_file']} (line {s['last_line']:,}{', complete' if s['complete'] else ''})")
    out.table(t)
    for r in s["rejections"]:
        out.console.print(f"[red]line {r['line']}: {r['reason']}: {escape(r['message'])}[/]")
    for r in s["bad_rows"]:
        out.console.print(f"[red]line {r['line']}: {escape(r['error'])}[/]")
    if not state.complete and not s["interrupted"]:
        out.console.print("not at the end of the file yet: run the same command again to continue")


__all__ = ["readings_app"]
