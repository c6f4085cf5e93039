"""bench-forecast: training time of the LSTM on the shared household set, and batched inference latency.

    make bench-forecast   # or: .venv/bin/python -m bench.forecast [--data DIR] [--meters 10000] [--write BENCHMARKS.md]

1. Training: services.forecast.training.train_forecaster with the default hyper-parameters and epochs
   on the real households in ../shared/data (UCI Sceaux, London LCL MAC000002, the 5 SGSC homes;
   the last 21 days of each held out, as the service does), timed end to end (windows, fitting,
   backtest of the model and the three baselines). Without the data, 7 synthetic households of the
   same length stand in (and the section says so).
2. Inference: Forecaster.predict for 10,000 meters x 24 hours (one call, batched across meters:
   calendar features per time zone, one forward pass per chunk of 8,192 meters), beside the
   persistence ensemble with its empirical quantiles (baselines.baseline_quantiles) on the same
   10,000 contexts in the same run. Contexts are 168-hour windows cut from the household series,
   each scaled by a random factor, spread over five time zones. Best of 3 runs after a warm-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from bench.eval_forecast import data_root, load_lcl, load_sgsc, load_uci, shared_holidays
from bench.report import machine, write_section
from services.forecast.baselines import ENSEMBLE, baseline_quantiles
from services.forecast.lstm import DEFAULT_HYPERPARAMETERS
from services.forecast.series import HOUR_US, HourlySeries
from services.forecast.training import HOLDOUT_DAYS, train_forecaster

ROOT = Path(__file__).resolve().parent.parent
ZONES = ("Asia/Kolkata", "Europe/London", "America/Los_Angeles", "Australia/Sydney", "UTC")
TARGET_S = 5.0
console = Console(stderr=True)


def households(root: Path) -> tuple[list[HourlySeries], str]:
    if (root / "uci-household-hourly").is_dir():
        return load_uci(root) + load_lcl(root) + load_sgsc(root), "the real households in `../shared/data`"
    rng = np.random.default_rng(0)
    out = []
    for i in range(7):
        t = np.arange(15_000)
        v = (0.3 + 0.5 * np.sin(np.pi * (t % 24) / 24) ** 4) * (1 + 0.3 * rng.standard_normal(len(t)))
        out.append(HourlySeries(f"synthetic-{i}", 1_600_000_000 * 1_000_000 // HOUR_US * HOUR_US, np.abs(v)))
    return out, "7 synthetic households (no shared data found)"


def contexts(series: list[HourlySeries], n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    out = np.empty((n, 168))
    starts = np.empty(n, dtype=np.int64)
    k = 0
    while k < n:
        s = series[int(rng.integers(len(series)))]
        i = int(rng.integers(168, len(s) - 24))
        c = s.values_kwh[i - 168 : i]
        if not np.isfinite(c).all():
            continue
        out[k] = c * rng.uniform(0.5, 2.0)
        starts[k] = s.start_us + i * HOUR_US
        k += 1
    zones = [ZONES[i % len(ZONES)] for i in range(n)]
    return out, starts, zones


def best_of(fn, runs: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="data root (default: $METERMESH_DATA_DIR or ../shared/data)")
    ap.add_argument("--meters", type=int, default=10_000)
    ap.add_argument("--horizon", type=int, default=24)
    ap.add_argument("--write", metavar="BENCHMARKS.md", help="write the bench-forecast section there")
    args = ap.parse_args()
    torch.set_num_threads(2)

    load = os.getloadavg()[0]
    series, source = households(data_root(args.data))
    hours = sum(int(np.isfinite(s.values_kwh).sum()) for s in series)
    console.print(f"training on {source}: {len(series)} meters, {hours:,} hours")
    last = [time.monotonic()]

    def progress(p) -> None:
        if time.monotonic() - last[0] > 10 or p.stage != "fitting":
            last[0] = time.monotonic()
            console.print(f"  {p.fraction:4.0%} {p.stage}: {p.message}")

    t = time.perf_counter()
    outcome = train_forecaster(series, version="bench", seed=0, holidays=shared_holidays(), progress=progress)
    train_s = time.perf_counter() - t
    fit_s = float(outcome.model.info.get("fit_seconds", float("nan")))
    model = outcome.model
    console.print(f"trained in {train_s:.1f} s (fitting {fit_s:.1f} s)")

    ctx, starts, zones = contexts(series, args.meters)
    holidays = shared_holidays()
    lstm_s = best_of(lambda: model.predict(ctx, starts, zones, args.horizon, holidays))
    base_s = best_of(lambda: baseline_quantiles(ENSEMBLE, ctx, args.horizon))
    q = model.predict(ctx, starts, zones, args.horizon, holidays)
    assert q.shape == (args.meters, args.horizon, 3) and (np.diff(q, axis=-1) >= 0).all()
    console.print(f"predict {args.meters:,} x {args.horizon} h: LSTM {lstm_s:.2f} s, ensemble {base_s:.2f} s")

    hp = DEFAULT_HYPERPARAMETERS
    m = outcome.metrics
    b = outcome.baseline_metrics[outcome.best_baseline]
    body = f"""### bench-forecast: LSTM training time and batched inference

Command: `python -m bench.forecast --write BENCHMARKS.md` (`make bench-forecast`)

Measured {dt.date.today().isoformat()} on {machine()}; torch {torch.__version__} (CPU), 2 threads. The machine is
shared with other work (load average {load:.1f} at the start), so times vary between runs: training took up to four
times as long while other jobs ran.

Training: `train_forecaster` with the default hyper-parameters ({hp["epochs"]} epochs of
{hp["samples_per_epoch"]:,} windows sampled evenly over the meters from all hourly origins, batch {hp["batch_size"]}, LSTM
{hp["lstm_hidden"]} hidden units, {model.parameter_count:,} parameters) on {source}: {len(series)}
meters, {hours:,} hours, {outcome.sample_count:,} training windows, the last {HOLDOUT_DAYS} days of each
meter held out.

| measure | value |
|---|---|
| **training, end to end** (windows, fitting, backtests) | **{train_s:.0f} s** |
| of which fitting | {fit_s:.0f} s ({fit_s / hp["epochs"]:.1f} s per epoch) |
| held-out NRMSE (median over meters) | LSTM {m.nrmse_percent:.1f}%, best baseline ({outcome.best_baseline}) {b.nrmse_percent:.1f}% |
| held-out p10-p90 coverage | {m.coverage_percent:.0f}% |

Inference: {args.meters:,} meters x {args.horizon} hours, p10/p50/p90, one call (contexts of 168 h cut from
the same households, random scale factors, five time zones); best of 3 after a warm-up.

| measure | value |
|---|---|
| **`Forecaster.predict`, {args.meters:,} meters x {args.horizon} h** | **{lstm_s:.2f} s** (target < {TARGET_S:.0f} s) = {args.meters / lstm_s:,.0f} meters/s |
| persistence ensemble with empirical quantiles, same contexts | {base_s:.2f} s |
| LSTM / ensemble | {lstm_s / base_s:.1f}x |
"""
    print(body)
    if args.write:
        write_section(
            ROOT / args.write if not Path(args.write).is_absolute() else Path(args.write),
            "bench-forecast",
            body,
        )
        console.print(f"wrote the bench-forecast section of {args.write}")


if __name__ == "__main__":
    main()
