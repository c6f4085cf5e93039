"""The forecaster's lifecycle in a running service: which forecaster answers a history (the serving LSTM
version or the best persistence baseline, and why), loading the serving version from the registry and
picking up versions promoted by another replica, and training new versions (data from PostgreSQL,
fitting in a worker thread, progress marshalled back to the caller) with promotion only when the new
version beats both the serving version and the best baseline on the same held-out windows."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import structlog

from services.forecast import store
from services.forecast.backtest import Metrics
from services.forecast.baselines import MIN_HOURS, baseline_quantiles, best_baseline_name
from services.forecast.calendar import HolidayCalendar
from services.forecast.lstm import Forecaster
from services.forecast.series import HOUR_US, GapTooLong, HourlySeries, fill_gaps

log = structlog.get_logger(__name__)

CONTEXT_HOURS = 168
MAX_GAP_HOURS = 6
MIN_HISTORY_HOURS = 24
DEFAULT_SEED = 20261122

NO_MODEL = "no trained model"
SHORT_HISTORY = f"history shorter than {CONTEXT_HOURS} h"


# --- from rollup rows to a forecastable series ----------------------------------------------------


def scaled_hours(rows: store.HourlyRows, interval_seconds: int) -> np.ndarray:
    """kWh per stored hour, as series.to_hourly would make it from the readings: an hour whose
    readings cover part of it is scaled up to the whole hour when they cover at least half of it,
    else it is unknown (NaN). Coverage is reading_count x the meter's interval."""
    covered = rows.reading_count.astype(np.float64) * float(max(1, interval_seconds))
    factor = np.where(covered >= 1800.0, 3600.0 / np.maximum(covered, 1.0), np.nan)
    return rows.import_wh / 1000.0 * factor


def series_from_rows(
    meter: store.MeterRow, rows: store.HourlyRows, start_us: int, end_us: int, *, trim_leading: bool = True
) -> HourlySeries:
    """The meter's hours [start_us, end_us) (UTC, whole hours), NaN where nothing is stored. With
    trim_leading the series starts at its first stored hour instead (never after end_us)."""
    n = max(0, (end_us - start_us) // HOUR_US)
    values = np.full(n, np.nan)
    if len(rows):
        idx = (rows.hour_us - start_us) // HOUR_US
        ok = (idx >= 0) & (idx < n)
        values[idx[ok]] = scaled_hours(rows, meter.interval_seconds)[ok]
    if trim_leading:
        known = np.flatnonzero(np.isfinite(values))
        first = int(known[0]) if len(known) else n
        values = values[first:]
        start_us += first * HOUR_US
    return HourlySeries(meter.meter_id, start_us, values, meter.time_zone, meter.category)


# --- answering a forecast ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    values: np.ndarray  # (horizon, 3) kWh: p10, p50, p90
    start_us: int  # UTC start of the first forecast hour
    model_version: str
    fallback_reason: str


class HistoryGapError(ValueError):
    """An inline history with a gap too long to fill inside the context the answering forecaster
    needs; index is the first missing hour of the gap in the history as given."""

    def __init__(self, index: int, length: int, context: int, forecaster: str) -> None:
        self.index = index
        self.length = length
        super().__init__(
            f"starts a run of {length} missing hours inside the last {context} hours that {forecaster} "
            f"needs; at most {MAX_GAP_HOURS} missing hours in a row can be filled: send the missing hours "
            "or a history ending before the gap"
        )


def _ordered(values: np.ndarray) -> np.ndarray:
    out = np.maximum(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    return np.sort(out, axis=-1)  # p10 <= p50 <= p90 whatever rounding did


def extend_weekly(values: np.ndarray, hours: int) -> np.ndarray:
    """(hours, 3) from a forecast of up to 168 hours: hours beyond it repeat the forecast of the same
    hour of the week (the last forecast week rolled forward); a forecast shorter than a week repeats
    itself whole."""
    n = len(values)
    if hours <= n:
        return values[:hours]
    period = min(n, CONTEXT_HOURS)
    idx = np.arange(hours)
    src = np.where(idx < n, idx, n - period + (idx - n) % period)
    return values[src]


# --- training ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingProgress:
    """A progress report for the stream (stage: loading, features, fitting, backtesting, registering)."""

    stage: str
    fraction: float
    message: str = ""
    epoch: int = 0
    total_epochs: int = 0
    train_loss: float | None = None
    validation_loss: float | None = None


@dataclass(frozen=True)
class TrainingResult:
    model: store.RegisteredModel
    promoted: bool
    reason: str
    previous_version: str
    previous_metrics: Metrics | None


Emit = Callable[[TrainingProgress | TrainingResult], None]


class TrainingBusy(RuntimeError):
    pass


class TrainingCancelled(Exception):
    pass


def metrics_dict(m: Metrics) -> dict[str, float | None]:
    """Metrics as stored (jsonb): NaN (undefined, e.g. MAPE without non-zero hours) as null."""

    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        "nrmse_percent": num(m.nrmse_percent),
        "mae_kwh": num(m.mae_kwh),
        "mape_percent": num(m.mape_percent),
        "coverage_percent": num(m.coverage_percent),
        "meter_count": int(m.meter_count),
        "window_count": int(m.window_count),
    }


def decide(
    metrics: Metrics,
    baselines: dict[str, Metrics],
    previous: tuple[str, Metrics] | None,
) -> tuple[bool, str]:
    """Promotion: the new version must have a lower held-out NRMSE than the serving version (on the
    same windows) and than the best baseline."""
    new = metrics.nrmse_percent
    ok = {k: m.nrmse_percent for k, m in baselines.items() if math.isfinite(m.nrmse_percent)}
    best = min(ok, key=ok.__getitem__) if ok else None
    if not math.isfinite(new):
        return False, "the new version has no held-out NRMSE (no held-out hour with positive consumption)"
    parts_ok, parts_bad = [], []
    if previous is not None:
        name, pm = previous
        if math.isfinite(pm.nrmse_percent) and new >= pm.nrmse_percent:
            parts_bad.append(f"serving {name} ({pm.nrmse_percent:.1f}%)")
        else:
            parts_ok.append(f"serving {name} ({pm.nrmse_percent:.1f}%)")
    if best is not None:
        if new >= ok[best]:
            parts_bad.append(f"the best baseline {best} ({ok[best]:.1f}%)")
        else:
            parts_ok.append(f"the best baseline {best} ({ok[best]:.1f}%)")
    where = "on the same held-out windows"
    if parts_bad:
        return False, f"NRMSE {new:.1f}% does not beat {' and '.join(parts_bad)} {where}"
    if previous is None and best is None:
        return True, f"no version was serving; NRMSE {new:.1f}%"
    prefix = "" if previous is not None else "no version was serving; "
    return True, f"{prefix}NRMSE {new:.1f}% beats {' and '.join(parts_ok)} {where}"


class ForecastEngine:
    """The serving forecaster and the training runs of one service process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        holidays: HolidayCalendar,
        *,
        max_meters: int = 2000,
        max_hours_per_meter: int = 8760,
        default_epochs: int = 0,
        hyperparameters: dict[str, Any] | None = None,
        holdout_days: int = 0,
    ) -> None:
        self.pool = pool
        self.holidays = holidays
        self.max_meters = max_meters
        self.max_hours_per_meter = max_hours_per_meter
        self.default_epochs = default_epochs
        self.hyperparameters = dict(hyperparameters or {})
        self.holdout_days = holdout_days
        # (version, forecaster or None when it failed to load, why it failed); swapped whole.
        self.serving: tuple[str, Forecaster | None, str] | None = None
        self._train_lock = asyncio.Lock()
        self._cancel: threading.Event | None = None

    # --- serving version ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Loads the serving version when it differs from the one in use (at start, then periodically)."""
        version = await store.serving_version(self.pool)
        current = self.serving[0] if self.serving else None
        if version == current:
            return
        if version is None:
            self.serving = None
            log.info("no forecaster version serving; baselines answer")
            return
        found = await store.serving_model(self.pool)
        if found is None:
            return
        version, artifact = found

        def load() -> Forecaster:
            f = Forecaster.from_bytes(artifact)
            f.version = version  # the registry's name wins over the provisional one in the artifact
            f.net()  # built now, not on the first request
            return f

        try:
            forecaster = await asyncio.to_thread(load)
        except Exception as exc:  # a broken artifact must not take the baselines down with it
            log.error(
                "cannot load the serving forecaster; baselines answer", model_version=version, error=repr(exc)
            )
            self.serving = (version, None, f"model {version} failed to load: {exc}")
            return
        self.serving = (version, forecaster, "")
        log.info("forecaster serving", model_version=version)

    async def poll(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("model registry poll failed; will retry", error=repr(exc))

    # --- forecasts ----------------------------------------------------------------------------

    def answer(self, history: HourlySeries, horizon: int, *, strict: bool) -> Answer:
        """p10/p50/p90 for the `horizon` hours after the history (blocking: run it in a thread).

        The serving LSTM answers when there is one and the last 168 hours can be filled (runs of at
        most 6 missing hours); otherwise the best baseline for the history answers, and
        fallback_reason says why. With strict (an inline history), a gap too long to fill inside the
        context of the forecaster that would answer raises HistoryGapError; otherwise (stored
        history) the baseline answers around it."""
        values = history.values_kwh
        n = len(values)
        if n < MIN_HISTORY_HOURS or not np.isfinite(values).any():
            raise ValueError(f"a forecast needs at least {MIN_HISTORY_HOURS} hours of history, got {n}")
        start = history.end_us
        serving = self.serving
        if serving is None:
            reason = NO_MODEL
        elif serving[1] is None:
            reason = serving[2]
        elif n < CONTEXT_HOURS:
            reason = SHORT_HISTORY
        else:
            version, forecaster, _ = serving
            try:
                context = fill_gaps(
                    values[-CONTEXT_HOURS:], max_gap_hours=MAX_GAP_HOURS, context_hours=CONTEXT_HOURS
                )
            except GapTooLong as gap:
                if strict:
                    raise HistoryGapError(
                        n - CONTEXT_HOURS + gap.start_index, gap.length, CONTEXT_HOURS, version
                    ) from None
                reason = f"a run of {gap.length} missing hours in the last {CONTEXT_HOURS} h of history"
            else:
                assert forecaster is not None
                out = forecaster.predict(
                    context[None, :],
                    np.array([start], dtype=np.int64),
                    [history.time_zone or "UTC"],
                    horizon,
                    self.holidays,
                )[0]
                return Answer(_ordered(out), start, version, "")
        name = best_baseline_name(values)
        need = MIN_HOURS[name]
        try:
            filled = fill_gaps(values, max_gap_hours=MAX_GAP_HOURS, context_hours=need)
        except GapTooLong as gap:
            if strict:
                raise HistoryGapError(gap.start_index, gap.length, need, name) from None
            filled = values  # the baseline takes the other persistence source for missing hours
        out = baseline_quantiles(name, filled, horizon)
        return Answer(_ordered(out), start, name, reason)

    async def forecast(self, history: HourlySeries, horizon: int, *, strict: bool) -> Answer:
        return await asyncio.to_thread(self.answer, history, horizon, strict=strict)

    # --- training -----------------------------------------------------------------------------

    @property
    def training(self) -> bool:
        return self._train_lock.locked()

    def stop(self) -> None:
        """Asks a running training to stop at its next progress report (service shutdown)."""
        if self._cancel is not None:
            self._cancel.set()

    async def _load_series(
        self, start: dt.datetime, end: dt.datetime, meter_ids: Sequence[str], min_hours: int, emit: Emit
    ) -> list[HourlySeries]:
        candidates = await store.training_candidates(self.pool, start, end, meter_ids, min_hours)
        chosen = [m for m, _ in candidates[: self.max_meters]]
        emit(
            TrainingProgress(
                "loading",
                0.0,
                f"{len(candidates)} meters have at least {min_hours} stored hours in the range; "
                f"loading {len(chosen)}",
            )
        )
        meters = await store.get_meters(self.pool, chosen) if chosen else {}
        out: list[HourlySeries] = []
        step = 200
        for i in range(0, len(chosen), step):
            part = chosen[i : i + step]
            rows = await store.load_hourly(self.pool, part, start, end)
            for m in part:
                r = rows.get(m)
                if r is None or not len(r):
                    continue
                hi = int(r.hour_us[-1]) + HOUR_US
                lo = max(int(r.hour_us[0]), hi - self.max_hours_per_meter * HOUR_US)
                out.append(series_from_rows(meters[m], r, lo, hi))
            done = min(i + step, len(chosen))
            emit(
                TrainingProgress(
                    "loading", 0.08 * done / max(1, len(chosen)), f"loaded {done} of {len(chosen)} meters"
                )
            )
        return out

    async def train(
        self,
        *,
        start: dt.datetime,
        end: dt.datetime,
        meter_ids: Sequence[str],
        epochs: int,
        seed: int,
        skip_promotion: bool,
        emit: Emit,
    ) -> TrainingResult:
        """One training run; emit receives progress (on the event loop) and, last, the result.
        Raises TrainingBusy while another run is going, ValueError when the data cannot train a
        version (too little history)."""
        from services.forecast import training

        if self._train_lock.locked():
            raise TrainingBusy(
                "a forecaster training run is already in progress; try again when it has finished"
            )
        async with self._train_lock:
            loop = asyncio.get_running_loop()
            cancel = threading.Event()
            self._cancel = cancel
            top = [0.0]

            def send(p: TrainingProgress) -> None:
                top[0] = max(top[0], min(1.0, p.fraction))
                emit(
                    TrainingProgress(
                        p.stage, top[0], p.message, p.epoch, p.total_epochs, p.train_loss, p.validation_loss
                    )
                )

            holdout = self.holdout_days or training.HOLDOUT_DAYS
            series = await self._load_series(start, end, meter_ids, training.min_history_hours(holdout), send)
            if not series:
                raise ValueError(
                    f"no meter has the {training.min_history_hours(holdout)} stored hours training needs "
                    f"({training.MIN_TRAIN_DAYS} days to train on, the last {holdout} days held out) between "
                    f"{start.isoformat()} and {end.isoformat()}"
                    + (f" among meters {', '.join(list(meter_ids)[:5])}" if meter_ids else "")
                )

            def progress(p: Any) -> None:  # called in the worker thread
                if cancel.is_set():
                    raise TrainingCancelled()
                loop.call_soon_threadsafe(
                    send,
                    TrainingProgress(
                        p.stage,
                        0.1 + 0.8 * float(p.fraction),
                        p.message,
                        int(p.epoch or 0),
                        int(p.total_epochs or 0),
                        p.train_loss,
                        p.validation_loss,
                    ),
                )

            s = int(seed) or DEFAULT_SEED
            n_epochs = int(epochs) or self.default_epochs
            hp = dict(self.hyperparameters)
            job = asyncio.ensure_future(
                asyncio.to_thread(
                    training.train_forecaster,
                    series,
                    version="lstm-candidate",
                    seed=s,
                    epochs=n_epochs,
                    holidays=self.holidays,
                    progress=progress,
                    holdout_days=holdout,
                    hyperparameters=hp or None,
                )
            )
            try:
                outcome = await asyncio.shield(job)
            except asyncio.CancelledError:
                # The caller went away: stop the worker at its next report, and hold the lock until it has.
                cancel.set()
                with contextlib.suppress(BaseException):
                    await job
                raise
            finally:
                self._cancel = None

            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await self.refresh()  # compare with what serves now, also if another replica promoted it
            serving = self.serving
            previous: tuple[str, Metrics] | None = None
            if serving is not None and serving[1] is not None:
                send(
                    TrainingProgress(
                        "backtesting", 0.92, f"backtesting serving {serving[0]} on the same held-out windows"
                    )
                )
                pm = await asyncio.to_thread(training.evaluate, serving[1], outcome.heldout)
                previous = (serving[0], pm)
            if skip_promotion:
                promote, reason = False, "promotion skipped"
            else:
                promote, reason = decide(outcome.metrics, outcome.baseline_metrics, previous)
                if promote and serving is not None and previous is None:
                    reason = reason.replace(
                        "no version was serving", f"serving {serving[0]} cannot be loaded"
                    )
            send(TrainingProgress("registering", 0.96, "registering the version"))
            artifact = await asyncio.to_thread(outcome.model.to_bytes)
            registered = await store.register_model(
                self.pool,
                artifact=artifact,
                training_range_us=outcome.training_range_us,
                backtest_range_us=outcome.heldout_range_us,
                meter_count=outcome.meter_count,
                sample_count=outcome.sample_count,
                epochs=int(outcome.hyperparameters.get("epochs", n_epochs)),
                seed=s,
                hyperparameters=_jsonable(outcome.hyperparameters),
                metrics=metrics_dict(outcome.metrics),
                baseline_metrics={k: metrics_dict(v) for k, v in outcome.baseline_metrics.items()},
                promote=promote,
                promotion_reason=reason,
                compared_with=serving[0] if serving else None,
            )
            promote, reason = registered.state == "serving", registered.promotion_reason
            outcome.model.version = registered.model_version
            if promote:
                self.serving = (registered.model_version, outcome.model, "")
                log.info("forecaster promoted", model_version=registered.model_version, reason=reason)
            else:
                log.info(
                    "forecaster registered as candidate",
                    model_version=registered.model_version,
                    reason=reason,
                )
            result = TrainingResult(
                model=registered,
                promoted=promote,
                reason=reason,
                previous_version=previous[0] if previous else (serving[0] if serving else ""),
                previous_metrics=previous[1] if previous else None,
            )
            emit(result)
            return result


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = list(v)
        else:
            out[k] = str(v)
    return out
