"""`metermesh train anomaly|forecast`: start a training run on the service, follow its streamed
progress, and show the new version, its metrics and whether (and why) it was promoted."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import grpc
import typer
from google.protobuf.message import Message
from metermesh.anomaly.v1 import anomaly_pb2, anomaly_pb2_grpc
from metermesh.common.v1 import common_pb2
from metermesh.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.common import clients
from services.operator.output import (
    EXIT_OK,
    EXIT_RPC,
    EXIT_USAGE,
    Out,
    OutputFormat,
    OutputOpt,
    addr_option,
    default_addr,
    enum_short,
    fmt_seconds,
    run,
    set_ts,
    to_dict,
)

train_app = typer.Typer(
    name="train",
    help="Train a new anomaly-detector or forecaster version and see whether it was promoted.",
    no_args_is_help=True,
    add_completion=False,
)

DETECTORS = {
    "iforest": anomaly_pb2.DETECTOR_ISOLATION_FOREST,
    "autoencoder": anomaly_pb2.DETECTOR_AUTOENCODER,
}

IdleOpt = Annotated[
    float,
    typer.Option(
        min=1, help="Give up when the service sends nothing for this long (it reports at least every 5 s)."
    ),
]
DeadlineOpt = Annotated[float, typer.Option(min=1, help="Deadline of the whole training run, in seconds.")]


def _range(days: float | None) -> common_pb2.TimeRange | None:
    if days is None:
        return None
    now = dt.datetime.now(dt.UTC)
    tr = common_pb2.TimeRange()
    set_ts(tr.start_time, now - dt.timedelta(days=days))
    set_ts(tr.end_time, now)
    return tr


async def follow(
    out: Out,
    service: str,
    addr: str,
    start: Callable[[grpc.aio.Channel], Any],
    *,
    idle_timeout: float,
    describe: Callable[[Message], dict[str, Any]],
) -> tuple[Message, int]:
    """Reads a training stream: progress messages drive the bar; the result (last) is returned."""
    progress = Progress(
        TextColumn("[bold]{task.fields[stage]:<18}[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=out.err,
        disable=out.json,
    )
    n = 0
    async with clients.channel(addr) as ch:
        call = start(ch)
        stream: AsyncIterator[Any] = call.__aiter__()
        with progress:
            task = progress.add_task("train", total=1000, stage="starting", detail="")
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
                        f"{service} at {addr}: no progress for {idle_timeout:g} s; gave up (the run may go on)",
                        service=service,
                        addr=addr,
                        code="DEADLINE_EXCEEDED",
                    )
                except grpc.aio.AioRpcError as exc:
                    progress.stop()
                    out.rpc_failed(service, addr, exc)
                n += 1
                if resp.HasField("result"):
                    progress.update(task, completed=1000, stage="done", detail="")
                    return resp.result, n
                p = describe(resp.progress)
                progress.update(
                    task, completed=int(p["fraction_done"] * 1000), stage=p["stage"], detail=p["detail"]
                )
    out.fail(EXIT_RPC, f"{service} at {addr}: the training stream ended without a result", service=service)


def _progress_fields(p: Any, stage_enum: Any) -> dict[str, Any]:
    parts = []
    if p.total_epochs:
        parts.append(f"epoch {p.epoch}/{p.total_epochs}")
    if p.HasField("train_loss"):
        parts.append(f"loss {p.train_loss:.4g}")
    if p.HasField("validation_loss"):
        parts.append(f"val {p.validation_loss:.4g}")
    if p.message:
        parts.append(p.message)
    return {
        "stage": enum_short(stage_enum, p.stage, "TRAINING_STAGE_"),
        "fraction_done": p.fraction_done,
        "detail": "  ".join(parts),
    }


def _metrics_table(title: str, rows: list[tuple[str, dict[str, Any]]], columns: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("version")
    for c in columns:
        t.add_column(c, justify="right")
    for name, m in rows:
        cells = []
        for c in columns:
            v = m.get(c)
            cells.append("-" if v is None else (f"{v:.4g}" if isinstance(v, float) else f"{v:,}"))
        t.add_row(name, *cells)
    return t


def _finish(out: Out, doc: dict[str, Any], tables: list[Table]) -> None:
    if out.json:
        out.doc(doc)
        return
    for t in tables:
        out.table(t)
    verdict = (
        "[green]promoted to serving[/]"
        if doc["promoted"]
        else "[yellow]not promoted[/] (kept as a candidate)"
    )
    out.console.print(f"{doc['model_version']}: {verdict}: {escape(doc['promotion_reason'])}")
    out.console.print(f"took {fmt_seconds(doc['seconds'])}")


@train_app.command("anomaly")
def train_anomaly(
    detector: Annotated[
        str, typer.Option(help="iforest (point anomalies) or autoencoder (daily patterns).")
    ] = "iforest",
    epochs: Annotated[
        int, typer.Option(min=0, max=1000, help="Autoencoder epochs; 0: the service's default.")
    ] = 0,
    skip_promotion: Annotated[
        bool, typer.Option(help="Register as a candidate only, whatever its metrics.")
    ] = False,
    days: Annotated[
        float | None, typer.Option(min=1, help="Train on the last N days (default: the service's, 90).")
    ] = None,
    meter: Annotated[
        list[str] | None, typer.Option(help="Only this meter (repeatable); default all.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; 0: the service's fixed default.")] = 0,
    output: OutputOpt = OutputFormat.table,
    anomaly: Annotated[str, addr_option("anomaly")] = default_addr("anomaly"),
    idle_timeout: IdleOpt = 120.0,
    deadline: DeadlineOpt = 6 * 3600.0,
) -> None:
    """Train a new anomaly-detector version (TrainDetector), following its progress.

    The service evaluates the new version and the serving one on the same held-out data and promotes the new one only when it is better (F1, then ROC-AUC); the result says why. Too little stored history is refused with FAILED_PRECONDITION naming what is missing (exit 3). `--output json` prints one document with the result.

    Examples:

      metermesh train anomaly --detector iforest

      metermesh train anomaly --detector autoencoder --epochs 30 --days 60 --skip-promotion

      metermesh train anomaly --detector autoencoder --meter UCI-1 --output json | jq .promoted
    """
    out = Out(output)
    if detector not in DETECTORS:
        out.fail(EXIT_USAGE, f"--detector {detector!r}: use {' or '.join(DETECTORS)}")
    req = anomaly_pb2.TrainDetectorRequest(
        detector=DETECTORS[detector],  # type: ignore[arg-type]
        meter_ids=meter or [],
        epochs=epochs,
        seed=seed,
        skip_promotion=skip_promotion,
    )
    tr = _range(days)
    if tr is not None:
        req.training_range.CopyFrom(tr)
    t0 = time.monotonic()
    result, n = run(
        out,
        follow(
            out,
            "anomaly",
            anomaly,
            lambda ch: anomaly_pb2_grpc.AnomalyServiceStub(ch).TrainDetector(req, timeout=deadline),
            idle_timeout=idle_timeout,
            describe=lambda p: _progress_fields(p, anomaly_pb2.TrainingStage),
        ),
    )
    assert isinstance(result, anomaly_pb2.TrainDetectorResult)
    m = result.model
    doc = {
        "detector": detector,
        "model_version": m.model_version,
        "state": enum_short(anomaly_pb2.ModelState, m.state, "MODEL_STATE_"),
        "promoted": result.promoted,
        "promotion_reason": result.promotion_reason,
        "previous_model_version": result.previous_model_version or None,
        "metrics": to_dict(m.metrics),
        "previous_metrics": to_dict(result.previous_metrics) if result.HasField("previous_metrics") else None,
        "meter_count": m.meter_count,
        "training_sample_count": m.training_sample_count,
        "progress_messages": n - 1,
        "seconds": round(time.monotonic() - t0, 3),
        "result": to_dict(result),
    }
    cols = ["precision", "recall", "f1", "roc_auc", "evaluated_count", "anomalous_count"]
    rows = [(f"{m.model_version} (new)", to_dict(m.metrics))]
    if result.HasField("previous_metrics"):
        rows.append((f"{result.previous_model_version} (serving before)", to_dict(result.previous_metrics)))
    title = f"{detector}: {m.meter_count:,} meters, {m.training_sample_count:,} training samples; held-out metrics"
    _finish(out, doc, [_metrics_table(title, rows, cols)])
    raise typer.Exit(EXIT_OK)


@train_app.command("forecast")
def train_forecast(
    epochs: Annotated[
        int, typer.Option(min=0, max=1000, help="Training epochs; 0: the service's default.")
    ] = 0,
    skip_promotion: Annotated[
        bool, typer.Option(help="Register as a candidate only, whatever its metrics.")
    ] = False,
    days: Annotated[
        float | None, typer.Option(min=1, help="Train on the last N days (default: the service's, 365).")
    ] = None,
    meter: Annotated[
        list[str] | None, typer.Option(help="Only this meter (repeatable); default all.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; 0: the service's fixed default.")] = 0,
    output: OutputOpt = OutputFormat.table,
    forecast: Annotated[str, addr_option("forecast")] = default_addr("forecast"),
    idle_timeout: IdleOpt = 120.0,
    deadline: DeadlineOpt = 6 * 3600.0,
) -> None:
    """Train a new LSTM forecaster version (TrainForecaster), following its progress.

    The new version is backtested beside the serving one and the persistence baselines and promoted only when it is better; the result shows the backtest metrics (NRMSE, MAE, MAPE, p10-p90 coverage) of each and why it was or was not promoted. `--output json` prints one document.

    Examples:

      metermesh train forecast --epochs 20

      metermesh train forecast --days 180 --skip-promotion --output json
    """
    out = Out(output)
    req = forecast_pb2.TrainForecasterRequest(
        meter_ids=meter or [], epochs=epochs, seed=seed, skip_promotion=skip_promotion
    )
    tr = _range(days)
    if tr is not None:
        req.training_range.CopyFrom(tr)
    t0 = time.monotonic()
    result, n = run(
        out,
        follow(
            out,
            "forecast",
            forecast,
            lambda ch: forecast_pb2_grpc.ForecastServiceStub(ch).TrainForecaster(req, timeout=deadline),
            idle_timeout=idle_timeout,
            describe=lambda p: _progress_fields(p, forecast_pb2.TrainingStage),
        ),
    )
    assert isinstance(result, forecast_pb2.TrainForecasterResult)
    m = result.model
    doc = {
        "model_version": m.model_version,
        "state": enum_short(forecast_pb2.ModelState, m.state, "MODEL_STATE_"),
        "promoted": result.promoted,
        "promotion_reason": result.promotion_reason,
        "previous_model_version": result.previous_model_version or None,
        "metrics": to_dict(m.metrics),
        "baseline_metrics": {b.baseline: to_dict(b.metrics) for b in m.baseline_metrics},
        "previous_metrics": to_dict(result.previous_metrics) if result.HasField("previous_metrics") else None,
        "meter_count": m.meter_count,
        "epochs": m.epochs,
        "progress_messages": n - 1,
        "seconds": round(time.monotonic() - t0, 3),
        "result": to_dict(result),
    }
    cols = [
        "nrmse_percent",
        "mae_kwh",
        "mape_percent",
        "p10_p90_coverage_percent",
        "meter_count",
        "window_count",
    ]
    rows = [(f"{m.model_version} (new)", to_dict(m.metrics))]
    if result.HasField("previous_metrics"):
        rows.append((f"{result.previous_model_version} (serving before)", to_dict(result.previous_metrics)))
    rows.extend((b.baseline, to_dict(b.metrics)) for b in m.baseline_metrics)
    title = f"LSTM: {m.meter_count:,} meters, {m.epochs} epochs; backtest metrics (median across meters)"
    _finish(out, doc, [_metrics_table(title, rows, cols)])
    raise typer.Exit(EXIT_OK)
