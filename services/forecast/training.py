"""Training and backtesting of the global LSTM forecaster (domain code: no gRPC, no NATS, no database).

API:
- `train_forecaster(series, *, version, seed=0, epochs=0, holidays=None, progress=None,
  holdout_days=HOLDOUT_DAYS, hyperparameters=None) -> TrainingOutcome`.
- `TrainingOutcome(model, metrics, baseline_metrics, heldout, training_range_us, heldout_range_us,
  meter_count, sample_count, hyperparameters)`: metrics of the new model and of each baseline
  (keyed by baseline name) on the held-out windows; `best_baseline` (name) property.
- `evaluate(model, heldout) -> Metrics`: any Forecaster (e.g. the serving version) on the same
  held-out windows; `evaluate_baseline(name, heldout) -> Metrics`.
- `Heldout(series, start_us, end_us, holidays, windows)`: the held-out set (per meter: the last
  holdout_days days, with the 168 h of history before them).
- `Progress(stage, fraction, epoch=0, total_epochs=0, train_loss=None, validation_loss=None,
  message="")`, stage in "loading", "features", "fitting", "backtesting"; fraction is overall and
  monotonic. Reported at every step, after every epoch and at least every PROGRESS_SECONDS within one.
- `model_predict_fn(model, holidays) -> PredictFn` (services.forecast.backtest) for backtests.
- `training_windows(...)`, `MIN_TRAIN_DAYS`, `HOLDOUT_DAYS`, `min_history_hours(holdout_days)`.

Split by time, per meter: the last holdout_days days of each meter's series (up to its last hour with
data) are held out; training windows (168 h context, up to 168 h target) lie entirely before them, so
the backtest (BuildingsBench protocol, services.forecast.backtest) never sees a trained-on hour as a
target. The train loss reported per epoch is the training objective (with its squared-error term);
the validation loss is the pinball loss alone on the held-out windows' first day; it is not
used to pick an epoch (that would tune on the backtest): the model after the last epoch is kept.
A meter takes part when it has at least MIN_TRAIN_DAYS days before its held-out part and at least one
complete held-out window; shorter series are left out (the message names how many).
Fitting (hyper-parameters in services.forecast.lstm.DEFAULT_HYPERPARAMETERS): every hourly origin
with a complete 168 h context is a training window (targets up to 168 h, the first day weighted
day_ahead_weight times); each epoch samples samples_per_epoch of them evenly over the meters (a year
of one building counts as much as four years of one home), Adam with a one-cycle learning rate,
gradient clipping at 1; loss = pinball at 0.1/0.5/0.9 + center_mse_weight x squared error of p50,
on scaled kWh capped at target_cap; outage_augment of the windows get one context day zeroed.
Deterministic given the seed (torch seeded in a forked RNG, numpy Generators for sampling, at most 2
threads). Called from a worker thread: no asyncio here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from services.forecast.backtest import (
    Metrics,
    PredictFn,
    Windows,
    baseline_predict_fn,
    forecast,
    score,
    windows,
)
from services.forecast.baselines import BASELINES
from services.forecast.calendar import HolidayCalendar, calendar_features
from services.forecast.lstm import (
    CONTEXT_HOURS,
    DEFAULT_HYPERPARAMETERS,
    Forecaster,
    _thread_limit,
    make_inputs,
    make_net,
    pinball_loss,
)
from services.forecast.series import HOUR_US, HourlySeries, fill_gaps

Stage = Literal["loading", "features", "fitting", "backtesting"]

HOLDOUT_DAYS = 21
MIN_TRAIN_DAYS = 14
MIN_TRAIN_WINDOWS = 48
PROGRESS_SECONDS = 2.0
VALIDATION_WINDOWS = 2048
DAY_HOURS = 24


@dataclass(frozen=True)
class Progress:
    stage: Stage
    fraction: float  # overall, 0-1, monotonic within a run
    epoch: int = 0  # 1-based while fitting, else 0
    total_epochs: int = 0
    train_loss: float | None = None
    validation_loss: float | None = None
    message: str = ""


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class Heldout:
    """The held-out backtest set of a training run: per meter [start_us, end_us) with its history."""

    series: list[HourlySeries]  # each from 168 h before its held-out start to its end
    start_us: np.ndarray  # (meters,) first hour held out
    end_us: np.ndarray  # (meters,) end of the held-out part
    holidays: HolidayCalendar
    windows: Windows  # the 24-hour backtest windows (computed once)


@dataclass(frozen=True)
class TrainingOutcome:
    model: Forecaster
    metrics: Metrics  # the new model on the held-out windows
    baseline_metrics: dict[str, Metrics]  # each baseline on the same windows
    heldout: Heldout
    training_range_us: tuple[int, int]
    heldout_range_us: tuple[int, int]
    meter_count: int
    sample_count: int  # training windows available (each epoch samples up to samples_per_epoch)
    hyperparameters: dict[str, Any]

    @property
    def best_baseline(self) -> str:
        """The baseline with the lowest held-out NRMSE."""
        ok = {k: m.nrmse_percent for k, m in self.baseline_metrics.items() if math.isfinite(m.nrmse_percent)}
        return min(ok, key=ok.__getitem__) if ok else BASELINES[-1]


class _Reporter:
    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress = progress
        self.last = 0.0

    def __call__(self, stage: Stage, fraction: float, message: str = "", **kw: Any) -> None:
        self.last = max(self.last, min(1.0, fraction))
        if self.progress is not None:
            self.progress(Progress(stage=stage, fraction=self.last, message=message, **kw))


def min_history_hours(holdout_days: int = HOLDOUT_DAYS) -> int:
    """Hours of history a meter needs to take part in training."""
    return (MIN_TRAIN_DAYS + holdout_days) * DAY_HOURS


def model_predict_fn(model: Forecaster, holidays: HolidayCalendar | None, horizon: int = 24) -> PredictFn:
    """A backtest PredictFn for a forecaster."""

    def predict(contexts: np.ndarray, start_us: np.ndarray, time_zones: list[str]) -> np.ndarray:
        return model.predict(contexts, start_us, time_zones, horizon, holidays)

    return predict


def evaluate(model: Forecaster, heldout: Heldout) -> Metrics:
    """Backtest metrics of a forecaster (any version) on the held-out windows of a training run."""
    return score(heldout.windows, forecast(model_predict_fn(model, heldout.holidays), heldout.windows))


def evaluate_baseline(name: str, heldout: Heldout) -> Metrics:
    """Backtest metrics of a baseline on the held-out windows of a training run."""
    return score(heldout.windows, forecast(baseline_predict_fn(name), heldout.windows))


# --- windows -----------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Training windows over the concatenated training parts of all meters (NaN-padded between them)."""

    values: np.ndarray  # (N,) float32 kWh, short gaps filled, NaN = missing or padding
    calendar: np.ndarray  # (N, F) float32 calendar features of each hour
    origins: np.ndarray  # (W,) int64 index of each window's first forecast hour in values
    meter_of_origin: np.ndarray  # (W,) int32 meter index


def _last_data_end(s: HourlySeries) -> int:
    ok = np.flatnonzero(np.isfinite(s.values_kwh))
    return s.start_us + (int(ok[-1]) + 1) * HOUR_US if len(ok) else s.start_us


def training_windows(
    parts: Sequence[HourlySeries], holidays: HolidayCalendar | None, horizon: int
) -> TrainingData:
    """Every hourly origin of the training parts whose 168 h context is complete (after filling short
    gaps) and whose first target day is at least half present; targets past a part's end are NaN."""
    vals: list[np.ndarray] = []
    cals: list[np.ndarray] = []
    origins: list[np.ndarray] = []
    meters: list[np.ndarray] = []
    offset = 0
    for m, s in enumerate(parts):
        v = fill_gaps(s.values_kwh, context_hours=0)
        n = len(v)
        cal = calendar_features(s.start_us, n, s.time_zone, holidays)
        pad = horizon
        vals.append(np.concatenate([v, np.full(pad, np.nan)]).astype(np.float32))
        cals.append(np.concatenate([cal, np.zeros((pad, cal.shape[1]), np.float32)]))
        if n >= CONTEXT_HOURS + DAY_HOURS:
            miss = np.concatenate([[0], np.cumsum(~np.isfinite(v))])
            i = np.arange(CONTEXT_HOURS, n - DAY_HOURS + 1)
            ctx_missing = miss[i] - miss[i - CONTEXT_HOURS]
            day_missing = miss[i + DAY_HOURS] - miss[i]
            ok = (ctx_missing == 0) & (day_missing <= DAY_HOURS // 2)
            origins.append(offset + i[ok])
            meters.append(np.full(int(ok.sum()), m, dtype=np.int32))
        offset += n + pad
    return TrainingData(
        values=np.concatenate(vals) if vals else np.zeros(0, np.float32),
        calendar=np.concatenate(cals) if cals else np.zeros((0, 7), np.float32),
        origins=np.concatenate(origins).astype(np.int64) if origins else np.zeros(0, np.int64),
        meter_of_origin=np.concatenate(meters) if meters else np.zeros(0, np.int32),
    )


def _split(
    series: Sequence[HourlySeries], holdout_days: int
) -> tuple[list[HourlySeries], list[HourlySeries], list[int], list[int], list[str]]:
    """(training parts, held-out series with their context, held-out starts, ends, reasons for skips)."""
    train: list[HourlySeries] = []
    held: list[HourlySeries] = []
    starts: list[int] = []
    ends: list[int] = []
    skipped: list[str] = []
    need = min_history_hours(holdout_days)
    for s in series:
        end = _last_data_end(s)
        first = np.flatnonzero(np.isfinite(s.values_kwh))
        begin = s.start_us + int(first[0]) * HOUR_US if len(first) else end
        hours = (end - begin) // HOUR_US
        if hours < need:
            skipped.append(f"{s.meter_id} ({hours} h)")
            continue
        cut = end - holdout_days * DAY_HOURS * HOUR_US
        train.append(s.slice_us(begin, cut))
        held.append(s.slice_us(cut - CONTEXT_HOURS * HOUR_US, end))
        starts.append(cut)
        ends.append(end)
    return train, held, starts, ends, skipped


# --- fitting -----------------------------------------------------------------------------------------


def _fit(
    data: TrainingData,
    valid: Windows,
    valid_calendar: np.ndarray,
    hp: Mapping[str, Any],
    *,
    seed: int,
    epochs: int,
    on_step: Callable[[int, int, float | None, float | None, bool], None],
) -> Any:
    """Trains the network; on_step(epoch, batches done in the epoch, train loss, val loss, epoch_end)."""
    import torch

    horizon = int(hp["train_horizon"])
    batch = int(hp["batch_size"])
    per_epoch = min(len(data.origins), int(hp["samples_per_epoch"]))
    steps_per_epoch = max(1, math.ceil(per_epoch / batch))
    weights = torch.ones(horizon)
    weights[:DAY_HOURS] = float(hp["day_ahead_weight"])
    values = torch.from_numpy(data.values)
    cal = torch.from_numpy(data.calendar)
    offsets = torch.arange(-CONTEXT_HOURS, horizon)

    v_ctx = torch.from_numpy(valid.contexts[:VALIDATION_WINDOWS].astype(np.float32))
    v_act = torch.from_numpy(valid.actuals[:VALIDATION_WINDOWS].astype(np.float32))
    v_cal = torch.from_numpy(valid_calendar[:VALIDATION_WINDOWS])
    v_w = torch.ones(v_act.shape)

    balanced = None
    if hp.get("balance_meters"):
        count = np.bincount(data.meter_of_origin)
        keep = count > 0
        first = np.concatenate([[0], np.cumsum(count)[:-1]])
        balanced = (first[keep], count[keep])
    mse_w = float(hp.get("center_mse_weight", 0.0))
    target_cap = float(hp.get("target_cap", 1e9))
    outage_p = float(hp.get("outage_augment", 0.0))
    threads = torch.get_num_threads()
    torch.set_num_threads(_thread_limit())
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = make_net(hp)
            opt = torch.optim.Adam(
                net.parameters(), lr=float(hp["learning_rate"]), weight_decay=float(hp["weight_decay"])
            )
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt,
                max_lr=float(hp["learning_rate"]),
                total_steps=epochs * steps_per_epoch,
                pct_start=0.15,
            )
            for epoch in range(1, epochs + 1):
                net.train()
                rng = np.random.default_rng([seed, epoch])
                if balanced is None:
                    pick = rng.choice(len(data.origins), per_epoch, replace=False)
                else:  # every meter equally often (with replacement within a meter)
                    first, count = balanced
                    m = rng.integers(len(count), size=per_epoch)
                    pick = first[m] + (rng.random(per_epoch) * count[m]).astype(np.int64)
                total, count = 0.0, 0
                for k in range(steps_per_epoch):
                    sel = torch.from_numpy(data.origins[pick[k * batch : (k + 1) * batch]])
                    if len(sel) == 0:
                        break
                    idx = sel[:, None] + offsets[None, :]
                    v = values[idx]
                    c = cal[idx]
                    if outage_p > 0:
                        v = _simulate_outages(v, rng, outage_p)
                    x_enc, x_dec, base, scale = make_inputs(
                        v[:, :CONTEXT_HOURS], c[:, :CONTEXT_HOURS], c[:, CONTEXT_HOURS:]
                    )
                    # A window whose context is near zero (an outage) has huge scaled targets; capping
                    # them keeps a few such windows from dominating the gradients.
                    target = (v[:, CONTEXT_HOURS:] / scale).clamp(max=target_cap)
                    pred = net(x_enc, x_dec, base)
                    loss = pinball_loss(pred, target, weights.expand(len(sel), -1))
                    if mse_w:
                        ok = torch.isfinite(target)
                        d = torch.where(ok, pred[..., 1] - target, torch.zeros_like(target))
                        loss = loss + mse_w * (d**2 * weights).sum() / (ok * weights).sum().clamp_min(1.0)
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(sel)
                    count += len(sel)
                    on_step(epoch, k + 1, total / max(count, 1), None, False)
                val_loss = None
                if len(v_ctx):
                    net.eval()
                    with torch.no_grad():
                        x_enc, x_dec, base, scale = make_inputs(
                            v_ctx, v_cal[:, :CONTEXT_HOURS], v_cal[:, CONTEXT_HOURS:]
                        )
                        val_loss = float(pinball_loss(net(x_enc, x_dec, base), v_act / scale, v_w))
                on_step(epoch, steps_per_epoch, total / max(count, 1), val_loss, True)
    finally:
        torch.set_num_threads(threads)
    net.eval()
    return net


def _simulate_outages(v: Any, rng: np.random.Generator, p: float) -> Any:
    """A copy of the batch (B, 168 + H) where, with probability p per window, one random context day
    reads (nearly) zero, as a meter or logger outage does: teaches the network that one dead day in
    the history says little about the next ones. Targets are untouched."""
    import torch

    hit = np.flatnonzero(rng.random(len(v)) < p)
    if not len(hit):
        return v
    v = v.clone()
    day = rng.integers(0, CONTEXT_HOURS // DAY_HOURS, size=len(hit))
    level = torch.from_numpy(rng.uniform(0.0, 0.05, size=len(hit)).astype(np.float32))
    for k, (row, d) in enumerate(zip(hit.tolist(), day.tolist(), strict=True)):
        v[row, d * DAY_HOURS : (d + 1) * DAY_HOURS] *= level[k]
    return v


def _window_calendar(w: Windows, holidays: HolidayCalendar | None) -> np.ndarray:
    from services.forecast.calendar import calendar_features_batch

    horizon = w.actuals.shape[1]
    return calendar_features_batch(
        w.start_us - CONTEXT_HOURS * HOUR_US, CONTEXT_HOURS + horizon, w.time_zones, holidays
    )


def train_forecaster(
    series: Sequence[HourlySeries],
    *,
    version: str,
    seed: int = 0,
    epochs: int = 0,
    holidays: HolidayCalendar | None = None,
    progress: ProgressFn | None = None,
    holdout_days: int = HOLDOUT_DAYS,
    hyperparameters: Mapping[str, Any] | None = None,
) -> TrainingOutcome:
    """Trains a new LSTM version on the series (all but each meter's last holdout_days days) and
    backtests it and the three baselines on the held-out days."""
    report = _Reporter(progress)
    hp: dict[str, Any] = {**DEFAULT_HYPERPARAMETERS, **dict(hyperparameters or {})}
    epochs = int(epochs) if epochs and epochs > 0 else int(hp["epochs"])
    hp.update(epochs=epochs, seed=int(seed), holdout_days=int(holdout_days))
    cal = holidays if holidays is not None else HolidayCalendar()
    total_hours = sum(int(np.isfinite(s.values_kwh).sum()) for s in series)
    report("loading", 0.0, f"{total_hours:,} hours from {len(series):,} meters")

    report("features", 0.02, f"splitting off the last {holdout_days} days of each meter for the backtest")
    train, held, h_start, h_end, skipped = _split(series, holdout_days)
    need_days = MIN_TRAIN_DAYS + holdout_days
    if not train:
        raise ValueError(
            f"forecaster training needs at least {need_days} days ({min_history_hours(holdout_days)} h) of hourly "
            f"history for at least one meter ({MIN_TRAIN_DAYS} days to train on, the last {holdout_days} days "
            f"held out for the backtest); got {len(series)} meter(s)"
            + (f" with too little: {', '.join(skipped[:5])}" if skipped else "")
        )
    data = training_windows(train, cal, int(hp["train_horizon"]))
    heldout_windows = windows(held, np.array(h_start), np.array(h_end))
    if len(data.origins) < MIN_TRAIN_WINDOWS or len(heldout_windows) == 0:
        raise ValueError(
            f"forecaster training needs at least {MIN_TRAIN_WINDOWS} training windows (168 h of complete "
            f"history followed by a day) and one complete held-out day: got {len(data.origins)} and "
            f"{len(heldout_windows)} from {len(train)} meter(s); at least {need_days} days of hourly history "
            "per meter without gaps longer than 6 hours are needed"
        )
    heldout = Heldout(held, np.array(h_start, np.int64), np.array(h_end, np.int64), cal, heldout_windows)
    valid_cal = _window_calendar(heldout_windows, cal)
    per_epoch = min(len(data.origins), int(hp["samples_per_epoch"]))
    msg = (
        f"{len(data.origins):,} training windows from {len(train):,} meters, "
        f"{len(heldout_windows):,} held-out days"
    )
    if skipped:
        msg += f"; {len(skipped)} meter(s) with less than {need_days} days left out"
    report("features", 0.08, msg)

    started = time.monotonic()
    last_report = [started]
    report(
        "fitting",
        0.1,
        f"training the LSTM for {epochs} epochs of {per_epoch:,} windows",
        epoch=0,
        total_epochs=epochs,
    )

    def on_step(epoch: int, done: int, train_loss: float | None, val_loss: float | None, end: bool) -> None:
        now = time.monotonic()
        if not end and now - last_report[0] < PROGRESS_SECONDS:
            return
        last_report[0] = now
        steps = max(1, math.ceil(per_epoch / int(hp["batch_size"])))
        frac = 0.1 + 0.8 * ((epoch - 1) + min(done, steps) / steps) / epochs
        text = (
            f"epoch {epoch}/{epochs}: {per_epoch:,} windows from {len(train):,} meters, loss {train_loss:.4f}"
        )
        if val_loss is not None:
            text += f", validation {val_loss:.4f}"
        report(
            "fitting",
            frac,
            text,
            epoch=epoch,
            total_epochs=epochs,
            train_loss=train_loss,
            validation_loss=val_loss if end else None,
        )

    net = _fit(data, heldout_windows, valid_cal, hp, seed=seed, epochs=epochs, on_step=on_step)
    fit_seconds = time.monotonic() - started
    info = {
        "meters": len(train),
        "training_windows": len(data.origins),
        "fit_seconds": round(fit_seconds, 1),
        "holdout_days": holdout_days,
        "holidays": len(cal),
    }
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    model = Forecaster(state, version=version, hyperparameters=hp, info=info)

    report("backtesting", 0.9, f"backtesting {version} on {len(heldout_windows):,} held-out days")
    metrics = evaluate(model, heldout)
    baseline_metrics = {}
    for i, name in enumerate(BASELINES):
        report("backtesting", 0.92 + 0.02 * i, f"backtesting {name}")
        baseline_metrics[name] = evaluate_baseline(name, heldout)
    best = min(baseline_metrics.values(), key=lambda m: m.nrmse_percent)
    report(
        "backtesting",
        1.0,
        f"{version}: NRMSE {metrics.nrmse_percent:.1f}% (best baseline {best.nrmse_percent:.1f}%), "
        f"p10-p90 coverage {metrics.coverage_percent:.0f}%",
    )
    train_lo = min(s.start_us for s in train)
    train_hi = max(s.end_us for s in train)
    return TrainingOutcome(
        model=model,
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        heldout=heldout,
        training_range_us=(train_lo, train_hi),
        heldout_range_us=(int(min(h_start)), int(max(h_end))),
        meter_count=len(train),
        sample_count=len(data.origins),
        hyperparameters=hp,
    )
