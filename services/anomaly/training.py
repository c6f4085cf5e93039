"""Training and evaluation of the two learned detectors (domain code: no gRPC, no NATS, no database).

Both train functions split the history by time: the first 70% of the range trains the model, the
next 10% (with synthetic faults injected, services.anomaly.injection) calibrates the threshold (the
one with the best F1), and the last 20% (with other injected faults) is the held-out set the metrics
are measured on. `evaluate(detector, heldout)` scores any version of the same detector on the same
held-out set, so a service can compare a new version with the serving one before promoting it.

Baselines and day scales come from the clean history (history_baseline / history_days are causal:
every row only sees earlier readings), so the injected faults never leak into the training slice.
They are called from a worker thread: no asyncio here. Progress is reported at every step and, while
the autoencoder fits, after every epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from services.anomaly.autoencoder import (
    ACTIVATIONS,
    LAYERS,
    MIN_REFERENCE_DAYS,
    WEEKDAY_LAYERS,
    AutoencoderDetector,
)
from services.anomaly.features import (
    MAX_MISSING_HOURS,
    MIN_ENERGY_COUNT,
    HistoryBaseline,
    history_baseline,
    history_days,
    local_weekday,
    point_features,
    profile_inputs,
    take_baseline,
)
from services.anomaly.iforest import ForestArrays, IsolationForestDetector
from services.anomaly.injection import inject_day_faults, inject_reading_faults
from services.anomaly.model import MeterInfo
from services.ingest.columns import ReadingColumns

Stage = Literal["loading", "features", "fitting", "evaluating"]

TRAIN_SHARE = 0.7
CALIBRATION_SHARE = 0.1  # then the last 20% is held out
MIN_SPAN_DAYS = 14
MIN_TRAIN_READINGS = 500
MIN_EVAL_READINGS = 50
MIN_TRAIN_DAYS = 30
MIN_EVAL_DAYS = 5
MAX_FIT_READINGS = 500_000
DEFAULT_EPOCHS = 60
N_TREES = 100
MAX_SAMPLES = 256
# Faults injected per scoreable reading (calibration and held-out slices), and share of days.
READING_FAULT_RATE = 0.004
DAY_FAULT_SHARE = 0.1
# Floors of the explanation spreads (inputs in INPUT_NAMES order).
_SPREAD_FLOOR = np.array([0.5, 0.1, 0.5, 0.5, 0.5, 0.02])


@dataclass(frozen=True)
class Progress:
    stage: Stage
    fraction: float  # overall, 0-1, monotonic within a run
    epoch: int = 0  # 1-based while fitting an epoch-based model, else 0
    total_epochs: int = 0
    train_loss: float | None = None
    validation_loss: float | None = None
    message: str = ""


@dataclass(frozen=True)
class Metrics:
    precision: float
    recall: float
    f1: float
    roc_auc: float  # NaN when the set has only one class
    evaluated_count: int
    anomalous_count: int


@dataclass(frozen=True)
class HeldoutReadings:
    """Held-out readings of an Isolation Forest run: injected copy, baselines, labels."""

    cols: ReadingColumns
    baseline: HistoryBaseline
    meters: Mapping[str, MeterInfo]
    labels: np.ndarray  # bool per row of cols
    rows: np.ndarray  # the held-out rows (indices into cols)


@dataclass(frozen=True)
class HeldoutDays:
    """Held-out meter-days of an autoencoder run, faults injected, with labels."""

    energy_wh: np.ndarray  # (n, 24)
    scale_wh: np.ndarray
    labels: np.ndarray
    meter_ids: list[str]
    day_start_us: np.ndarray


@dataclass(frozen=True)
class TrainingOutcome:
    detector: Any  # IsolationForestDetector | AutoencoderDetector
    metrics: Metrics  # on the held-out set, at the detector's threshold
    heldout: Any  # HeldoutReadings | HeldoutDays, for evaluate()
    training_sample_count: int  # readings (Isolation Forest) or meter-days (autoencoder)
    meter_count: int
    training_range_us: tuple[int, int]  # read times of the history used (min, max)


ProgressFn = Callable[[Progress], None]


class _Reporter:
    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress = progress
        self.last = 0.0

    def __call__(self, stage: Stage, fraction: float, message: str = "", **kw: Any) -> None:
        self.last = max(self.last, min(1.0, fraction))
        if self.progress is not None:
            self.progress(Progress(stage=stage, fraction=self.last, message=message, **kw))


# --- metrics ---------------------------------------------------------------------------------------


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN scores count as the lowest."""
    y = np.asarray(labels, dtype=bool)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ss = s[order]
    # average ranks of ties
    edges = np.concatenate(([0], np.flatnonzero(np.diff(ss) != 0) + 1, [len(ss)]))
    avg = (edges[:-1] + edges[1:] + 1) / 2.0
    ranks[order] = np.repeat(avg, np.diff(edges))
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def metrics_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Metrics:
    """Item-level metrics: an item is flagged when its score >= threshold (NaN: not flagged)."""
    y = np.asarray(labels, dtype=bool)
    with np.errstate(invalid="ignore"):
        flag = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int((flag & y).sum())
    fp = int((flag & ~y).sum())
    fn = int((~flag & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(precision, recall, f1, roc_auc(scores, y), len(y), int(y.sum()))


def best_threshold(scores: np.ndarray, labels: np.ndarray, fallback: float) -> float:
    """The threshold with the best F1 on (scores, labels), placed halfway to the next lower score so
    it does not sit on a calibration point; `fallback` when there are no positives."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    if not y.any():
        return fallback
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.append(np.flatnonzero(np.diff(s) != 0), len(s) - 1)  # last index of each distinct score
    tp = np.cumsum(y)[last]
    flagged = last + 1
    f1 = 2 * tp / (flagged + y.sum())
    k = int(np.argmax(f1))
    hi = s[last[k]]
    lo = s[last[k + 1]] if k + 1 < len(last) else hi - 1e-3
    return float((hi + lo) / 2)


# --- Isolation Forest ------------------------------------------------------------------------------


def _time_slices(t: np.ndarray) -> tuple[int, int, int, int]:
    lo, hi = int(t.min()), int(t.max())
    span = hi - lo
    return lo, hi, lo + int(span * TRAIN_SHARE), lo + int(span * (TRAIN_SHARE + CALIBRATION_SHARE))


def fit_isolation_forest(
    X: np.ndarray,
    Z: np.ndarray,
    *,
    version: str,
    seed: int,
    threshold: float = 0.6,
    power_factor_fill: float = 1.0,
    n_estimators: int = N_TREES,
    max_samples: int = MAX_SAMPLES,
    info: Mapping[str, Any] | None = None,
) -> IsolationForestDetector:
    """Fits sklearn's IsolationForest on feature rows X (PointFeatures.X) and exports it (the only
    sklearn use); the explanation constants come from the same rows' inputs Z (PointFeatures.Z)."""
    from sklearn.ensemble import IsolationForest

    X = np.asarray(X, dtype=np.float64)
    Z = np.asarray(Z, dtype=np.float64)
    if len(X) > MAX_FIT_READINGS:
        pick = np.random.default_rng(seed).choice(len(X), MAX_FIT_READINGS, replace=False)
        X, Z = X[pick], Z[pick]
    model = IsolationForest(
        n_estimators=n_estimators, max_samples=min(max_samples, len(X)), random_state=seed
    ).fit(X.astype(np.float32))
    centre = np.median(Z, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(Z - centre), axis=0), _SPREAD_FLOOR)
    return IsolationForestDetector(
        ForestArrays.from_sklearn(model),
        version=version,
        threshold=threshold,
        centre=centre,
        spread=spread,
        power_factor_fill=power_factor_fill,
        info=info,
    )


def train_isolation_forest(
    history: ReadingColumns,
    meters: Mapping[str, MeterInfo],
    *,
    version: str,
    seed: int = 0,
    progress: ProgressFn | None = None,
    n_estimators: int = N_TREES,
) -> TrainingOutcome:
    report = _Reporter(progress)
    n = len(history)
    report("loading", 0.0, f"{n:,} readings from {len(history.meter_ids):,} meters")
    if n == 0:
        raise ValueError(
            "Isolation Forest training needs history: no readings in the range "
            f"(at least {MIN_SPAN_DAYS} days and {MIN_TRAIN_READINGS} readings with a baseline)"
        )
    t = history.read_time_unix_micros
    lo, hi, cut1, cut2 = _time_slices(t)
    span_days = (hi - lo) / 86_400e6
    if span_days < MIN_SPAN_DAYS:
        raise ValueError(
            f"Isolation Forest training needs at least {MIN_SPAN_DAYS} days of history, got {span_days:.1f} days"
        )
    report("features", 0.05, "computing per-meter baselines")
    baseline = history_baseline(history, meters)
    pf = history.power_factor[np.isfinite(history.power_factor)]
    pf_fill = float(np.median(pf)) if len(pf) else 1.0
    report("features", 0.2, "building features")
    clean = point_features(history, baseline, meters, power_factor_fill=pf_fill)
    train = clean.scoreable & (t < cut1)
    calib = clean.scoreable & (t >= cut1) & (t < cut2)
    held = (t >= cut2) & np.asarray([m in meters for m in history.meter_ids], dtype=bool)[history.meter_index]
    counts = (int(train.sum()), int(calib.sum()), int((held & clean.scoreable).sum()))
    if counts[0] < MIN_TRAIN_READINGS or counts[1] < MIN_EVAL_READINGS or counts[2] < MIN_EVAL_READINGS:
        raise ValueError(
            "Isolation Forest training needs more history: a reading is usable once its meter has at least "
            f"{MIN_ENERGY_COUNT} earlier readings in the same local hour of the week ({MIN_ENERGY_COUNT} weeks "
            "of hourly readings, 1 week of 15-minute readings), and at least "
            f"{MIN_TRAIN_READINGS} usable readings are needed in the first {TRAIN_SHARE:.0%} of the range and "
            f"{MIN_EVAL_READINGS} in each of the calibration ({CALIBRATION_SHARE:.0%}) and held-out (last "
            f"{1 - TRAIN_SHARE - CALIBRATION_SHARE:.0%}) slices; got {counts[0]}, {counts[1]} and {counts[2]} "
            f"over {span_days:.1f} days"
        )
    rng_cal, rng_held = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    report("features", 0.3, "injecting labelled faults into the calibration and held-out slices")
    injected, lab_cal, _ = inject_reading_faults(
        history, meters, rng=rng_cal, count=max(5, int(calib.sum() * READING_FAULT_RATE)), eligible=calib
    )
    report("features", 0.35, "injecting labelled faults into the held-out slice")
    injected, lab_held, _ = inject_reading_faults(
        injected,
        meters,
        rng=rng_held,
        count=max(5, int((held & clean.scoreable).sum() * READING_FAULT_RATE)),
        eligible=held & clean.scoreable,
    )
    labels = lab_cal | lab_held
    X_train = clean.X[train]
    report(
        "fitting",
        0.4,
        f"fitting {n_estimators} isolation trees ({min(MAX_SAMPLES, len(X_train))} readings each) on a pool of "
        f"{min(len(X_train), MAX_FIT_READINGS):,} of {len(X_train):,} training readings",
    )
    started = time.monotonic()
    det = fit_isolation_forest(
        X_train,
        clean.Z[train],
        version=version,
        seed=seed,
        power_factor_fill=pf_fill,
        n_estimators=n_estimators,
        info={"trained_on_readings": len(X_train), "meters": len(history.meter_ids)},
    )
    report("fitting", 0.7, f"fitted in {time.monotonic() - started:.1f} s")
    report("evaluating", 0.75, "choosing the threshold on the calibration slice")
    cal_rows = np.flatnonzero((t >= cut1) & (t < cut2))
    sub = injected.take(cal_rows)
    cal_scores = det.score_rows(sub, take_baseline(baseline, cal_rows), meters)
    train_scores = det.score(X_train[: min(len(X_train), 50_000)])
    fallback = float(np.quantile(train_scores, 0.995))
    det.threshold = best_threshold(cal_scores, lab_cal[cal_rows], fallback)
    heldout = HeldoutReadings(injected, baseline, meters, labels, np.flatnonzero(held))
    metrics = evaluate(det, heldout)
    report(
        "evaluating",
        1.0,
        f"threshold {det.threshold:.3f}: held-out precision {metrics.precision:.2f}, recall "
        f"{metrics.recall:.2f}, F1 {metrics.f1:.2f}, ROC-AUC {metrics.roc_auc:.3f}",
    )
    return TrainingOutcome(
        detector=det,
        metrics=metrics,
        heldout=heldout,
        training_sample_count=len(X_train),
        meter_count=len(history.meter_ids),
        training_range_us=(lo, hi),
    )


# --- autoencoder -----------------------------------------------------------------------------------


def _torch_autoencoder(nn: Any) -> Any:
    """The network of autoencoder.py (LAYERS, ACTIVATIONS, WEEKDAY_LAYERS) as a torch module."""
    import torch

    class Net(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.linears = nn.ModuleList(
                nn.Linear(LAYERS[i] + (7 if i in WEEKDAY_LAYERS else 0), LAYERS[i + 1])
                for i in range(len(ACTIVATIONS))
            )

        def forward(self, x: Any, weekday: Any) -> Any:
            h = x
            for i, (lin, act) in enumerate(zip(self.linears, ACTIVATIONS, strict=True)):
                if i in WEEKDAY_LAYERS:
                    h = torch.cat([h, weekday], dim=1)
                h = lin(h)
                if act == "relu":
                    h = torch.relu(h)
            return h

    return Net()


def fit_autoencoder(
    x: np.ndarray,
    present: np.ndarray,
    *,
    version: str,
    seed: int,
    epochs: int = DEFAULT_EPOCHS,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    meter_ids: Sequence[str] | None = None,
    weekday: np.ndarray | None = None,
    info: Mapping[str, Any] | None = None,
) -> AutoencoderDetector:
    """Trains the autoencoder on profile inputs x (n, 24) (features.profile_inputs; loss: MSE over
    the present hours) with the days' local weekday (Monday = 0; None: unknown), 10% of the days (at
    least one) held back for the validation loss, then sets the error references (per meter when
    meter_ids of the rows are given). Deterministic given the seed."""
    import torch
    from torch import nn

    n = len(x)
    rng = np.random.default_rng([seed, 3])
    perm = rng.permutation(n)
    n_val = max(1, n // 10) if n >= 10 else 0
    val, tr = perm[:n_val], perm[n_val:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _torch_autoencoder(nn)
            opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
            xt = torch.as_tensor(x, dtype=torch.float32)
            mt = torch.as_tensor(present, dtype=torch.float32)
            if weekday is None:
                wt = torch.full((n, 7), 1.0 / 7.0)
            else:
                wt = torch.as_tensor(np.eye(7, dtype=np.float32)[np.asarray(weekday, dtype=np.int64)])
            gen = torch.Generator().manual_seed(seed)

            def masked(b: torch.Tensor) -> torch.Tensor:
                xb, mb = xt[b], mt[b]
                return (((model(xb, wt[b]) - xb) ** 2) * mb).sum() / mb.sum().clamp_min(1.0)

            tr_t = torch.as_tensor(tr)
            for epoch in range(1, epochs + 1):
                model.train()
                order = tr_t[torch.randperm(len(tr_t), generator=gen)]
                total, weight = 0.0, 0.0
                for s in range(0, len(order), batch_size):
                    b = order[s : s + batch_size]
                    loss = masked(b)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(b)
                    weight += len(b)
                val_loss = None
                if n_val:
                    with torch.no_grad():
                        v = torch.as_tensor(val)
                        val_loss = float(masked(v))
                if on_epoch is not None:
                    on_epoch(epoch, total / max(weight, 1.0), val_loss)
            weights = [
                (m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in model.linears
            ]
    finally:
        torch.set_num_threads(threads)
    det = AutoencoderDetector(
        weights, version=version, threshold=0.5, typical_error=1.0, relative_ref=1.0, info=info
    )
    xh = det.reconstruct(x, weekday).astype(np.float64)
    err = np.where(present, (xh - x) ** 2, 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    det.typical_error = max(float(np.median(err)), 1e-9)
    if meter_ids is not None:
        ids = np.asarray(meter_ids, dtype=object)
        for m in np.unique(ids).tolist():
            e = err[ids == m]
            if len(e) >= MIN_REFERENCE_DAYS:
                det.meter_typical_error[str(m)] = max(float(np.median(e)), 1e-9)
    rel = err / det.typical(meter_ids, len(err))
    det.relative_ref = max(float(np.quantile(rel, 0.99)), 1e-9)
    return det


def train_autoencoder(
    history: ReadingColumns,
    meters: Mapping[str, MeterInfo],
    *,
    version: str,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    progress: ProgressFn | None = None,
) -> TrainingOutcome:
    report = _Reporter(progress)
    epochs = int(epochs) if epochs and epochs > 0 else DEFAULT_EPOCHS
    report("loading", 0.0, f"{len(history):,} readings from {len(history.meter_ids):,} meters")
    report("features", 0.02, "building daily load profiles")
    days = history_days(history, meters) if len(history) else None
    if days is None or len(days) == 0:
        raise ValueError(
            f"autoencoder training needs complete local days of hourly or finer readings: none found "
            f"(at least {MIN_TRAIN_DAYS} training meter-days are needed)"
        )
    x, present, ok = profile_inputs(days.energy_wh, days.scale_wh)
    registered = np.asarray([m in meters for m in days.meter_ids], dtype=bool)
    ok &= registered
    start = days.day_start_us
    _, _, cut1, cut2 = _time_slices(start)
    train = ok & (start < cut1)
    calib = ok & (start >= cut1) & (start < cut2)
    held = ok & (start >= cut2)
    counts = (int(train.sum()), int(calib.sum()), int(held.sum()))
    if counts[0] < MIN_TRAIN_DAYS or counts[1] < MIN_EVAL_DAYS or counts[2] < MIN_EVAL_DAYS:
        raise ValueError(
            "autoencoder training needs more history: a meter-day is usable once the meter has read past "
            f"its end with at most {MAX_MISSING_HOURS} of its 24 hours missing; at least "
            f"{MIN_TRAIN_DAYS} usable meter-days are needed in the first {TRAIN_SHARE:.0%} of the range and "
            f"{MIN_EVAL_DAYS} in each of the calibration and held-out slices (e.g. 5 weeks of one meter, "
            f"or 2 weeks of 4 meters); got {counts[0]}, {counts[1]} and {counts[2]} from {len(days)} days"
        )
    rng_cal, rng_held = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    e_cal, lab_cal, _ = inject_day_faults(
        days.energy_wh[calib],
        days.scale_wh[calib],
        rng=rng_cal,
        count=max(2, int(calib.sum() * DAY_FAULT_SHARE + 0.5)),
    )
    held_idx = np.flatnonzero(held)
    e_held, lab_held, _ = inject_day_faults(
        days.energy_wh[held_idx],
        days.scale_wh[held_idx],
        rng=rng_held,
        count=max(2, int(len(held_idx) * DAY_FAULT_SHARE + 0.5)),
    )
    report("features", 0.1, f"{counts[0]:,} training meter-days, {counts[2]:,} held out")

    def on_epoch(epoch: int, train_loss: float, val_loss: float | None) -> None:
        report(
            "fitting",
            0.1 + 0.8 * epoch / epochs,
            f"epoch {epoch}/{epochs}: loss {train_loss:.5f}",
            epoch=epoch,
            total_epochs=epochs,
            train_loss=train_loss,
            validation_loss=val_loss,
        )

    report("fitting", 0.1, f"training the autoencoder for {epochs} epochs", epoch=0, total_epochs=epochs)
    det = fit_autoencoder(
        x[train],
        present[train],
        version=version,
        seed=seed,
        epochs=epochs,
        on_epoch=on_epoch,
        meter_ids=[days.meter_ids[i] for i in np.flatnonzero(train).tolist()],
        weekday=local_weekday(days.day_start_us[train]),
        info={"trained_on_days": counts[0], "meters": len(set(days.meter_ids))},
    )
    report("evaluating", 0.92, "choosing the threshold on the calibration slice")
    cal_ids = [days.meter_ids[i] for i in np.flatnonzero(calib).tolist()]
    cal_scores = det.score(e_cal, days.scale_wh[calib], cal_ids, days.day_start_us[calib])
    # Without labelled calibration days: 0.5, a day as unusual as the worst 1% of the training days.
    det.threshold = best_threshold(cal_scores, lab_cal, 0.5)
    heldout = HeldoutDays(
        energy_wh=e_held,
        scale_wh=days.scale_wh[held_idx],
        labels=lab_held,
        meter_ids=[days.meter_ids[i] for i in held_idx.tolist()],
        day_start_us=days.day_start_us[held_idx],
    )
    metrics = evaluate(det, heldout)
    report(
        "evaluating",
        1.0,
        f"threshold {det.threshold:.3f}: held-out precision {metrics.precision:.2f}, recall "
        f"{metrics.recall:.2f}, F1 {metrics.f1:.2f}, ROC-AUC {metrics.roc_auc:.3f}",
    )
    return TrainingOutcome(
        detector=det,
        metrics=metrics,
        heldout=heldout,
        training_sample_count=counts[0],
        meter_count=len(set(days.meter_ids)),
        training_range_us=(
            int(history.read_time_unix_micros.min()),
            int(history.read_time_unix_micros.max()),
        ),
    )


# --- evaluation ------------------------------------------------------------------------------------


def evaluate(detector: Any, heldout: Any) -> Metrics:
    """Metrics of `detector` (any version of the detector the held-out set was built for) at its own
    threshold: per held-out reading for the Isolation Forest (readings it does not score count as not
    flagged, score 0), per held-out meter-day for the autoencoder."""
    if isinstance(heldout, HeldoutReadings):
        if not isinstance(detector, IsolationForestDetector):
            raise TypeError(
                f"a held-out reading set evaluates an Isolation Forest, not {type(detector).__name__}"
            )
        rows = heldout.rows
        sub = heldout.cols.take(rows)
        scores = detector.score_rows(sub, take_baseline(heldout.baseline, rows), heldout.meters)
        return metrics_at(np.nan_to_num(scores, nan=0.0), heldout.labels[rows], detector.threshold)
    if isinstance(heldout, HeldoutDays):
        if not isinstance(detector, AutoencoderDetector):
            raise TypeError(f"a held-out day set evaluates an autoencoder, not {type(detector).__name__}")
        scores = detector.score(heldout.energy_wh, heldout.scale_wh, heldout.meter_ids, heldout.day_start_us)
        return metrics_at(np.nan_to_num(scores, nan=0.0), heldout.labels, detector.threshold)
    raise TypeError(f"unknown held-out set {type(heldout).__name__}")
