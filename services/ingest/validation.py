"""Validation of incoming readings (the V of VEE): every rule applied to a whole batch at once with
numpy, each rejected reading reported with its index and a reason naming the field and the value."""

from __future__ import annotations

import enum
from collections.abc import Callable, Set
from dataclasses import dataclass

import numpy as np

from services.ingest.columns import FLOAT_COLUMNS, ReadingColumns

MAX_FUTURE_SKEW_MICROS = 5 * 60 * 1_000_000
MAX_INTERVAL_SECONDS = 86_400
MAX_VOLTAGE_V = 500.0


class Reason(enum.Enum):
    MISSING_FIELD = "missing_field"
    UNKNOWN_METER = "unknown_meter"
    NOT_FINITE = "not_finite"
    NEGATIVE_ENERGY = "negative_energy"
    VOLTAGE_OUT_OF_RANGE = "voltage_out_of_range"
    POWER_FACTOR_OUT_OF_RANGE = "power_factor_out_of_range"
    INTERVAL_OUT_OF_RANGE = "interval_out_of_range"
    READ_TIME_IN_FUTURE = "read_time_in_future"
    READ_TIME_TOO_OLD = "read_time_too_old"
    DUPLICATE_IN_BATCH = "duplicate_in_batch"


@dataclass(frozen=True)
class Rejection:
    index: int
    meter_id: str
    reason: Reason
    message: str


@dataclass(frozen=True)
class ValidationResult:
    accepted: ReadingColumns
    accepted_rows: np.ndarray  # indices into the batch, ascending
    rejections: list[Rejection]


def _iso(micros: int) -> str:
    return np.datetime64(int(micros), "us").astype(str) + "Z"


def validate(
    cols: ReadingColumns,
    *,
    has_meter_id: np.ndarray,
    has_read_time: np.ndarray,
    known_meters: Set[str],
    now_unix_micros: int,
    retention_days: int,
) -> ValidationResult:
    """Applies the rules in a fixed order; a reading is reported once, for the first rule it breaks.
    Duplicates are judged among readings that pass every other rule: the first valid occurrence of a
    (meter_id, read_time) is kept and later ones rejected."""
    n = len(cols)
    reason = np.full(n, -1, dtype=np.int16)
    messages: dict[int, str] = {}
    reasons = list(Reason)
    row_ids = cols.per_row_meter_ids()

    def reject(mask: np.ndarray, r: Reason, describe: Callable[[int], str]) -> None:
        hit = np.flatnonzero(mask & (reason < 0))
        if len(hit):
            reason[hit] = reasons.index(r)
            for i in hit.tolist():
                messages[i] = describe(i)

    reject(~has_meter_id, Reason.MISSING_FIELD, lambda i: "meter_id is empty")
    reject(~has_read_time, Reason.MISSING_FIELD, lambda i: "read_time is not set")
    unknown_idx = [k for k, m in enumerate(cols.meter_ids) if m and m not in known_meters]
    if unknown_idx:
        reject(
            np.isin(cols.meter_index, unknown_idx),
            Reason.UNKNOWN_METER,
            lambda i: f"meter_id {row_ids[i]!r} is not registered; RegisterMeter first",
        )
    for name in FLOAT_COLUMNS:
        values = getattr(cols, name)
        # NaN in an optional column means "not measured"; infinities are never valid. The two energy
        # columns are never absent, so NaN there came from the client.
        bad = (
            np.isinf(values) if name not in ("import_energy_wh", "export_energy_wh") else ~np.isfinite(values)
        )
        reject(
            bad,
            Reason.NOT_FINITE,
            lambda i, name=name, v=values: f"{name} is {float(v[i])!r}; must be finite",
        )
    for name in ("import_energy_wh", "export_energy_wh"):
        values = getattr(cols, name)
        reject(
            values < 0,
            Reason.NEGATIVE_ENERGY,
            lambda i, name=name, v=values: f"{name} is {float(v[i])!r}; must be >= 0",
        )
    v = cols.voltage_v
    with np.errstate(invalid="ignore"):
        reject(
            (v < 0) | (v > MAX_VOLTAGE_V),
            Reason.VOLTAGE_OUT_OF_RANGE,
            lambda i: f"voltage_v is {float(v[i])!r}; must be within 0-{MAX_VOLTAGE_V:g} V",
        )
        pf = cols.power_factor
        reject(
            (pf < -1) | (pf > 1),
            Reason.POWER_FACTOR_OUT_OF_RANGE,
            lambda i: f"power_factor is {float(pf[i])!r}; must be within -1..1",
        )
    iv = cols.interval_seconds
    reject(
        (iv < 0) | (iv > MAX_INTERVAL_SECONDS),
        Reason.INTERVAL_OUT_OF_RANGE,
        lambda i: f"interval_seconds is {iv[i]}; must be within 0-{MAX_INTERVAL_SECONDS}",
    )
    t = cols.read_time_unix_micros
    latest = now_unix_micros + MAX_FUTURE_SKEW_MICROS
    reject(
        t > latest,
        Reason.READ_TIME_IN_FUTURE,
        lambda i: (
            f"read_time {_iso(t[i])} is more than 5 minutes ahead of the server clock ({_iso(now_unix_micros)})"
        ),
    )
    oldest = now_unix_micros - retention_days * 86_400 * 1_000_000
    reject(
        t < oldest,
        Reason.READ_TIME_TOO_OLD,
        lambda i: f"read_time {_iso(t[i])} is older than the retention window ({retention_days} days)",
    )

    ok = np.flatnonzero(reason < 0)
    if len(ok) > 1:
        order = ok[np.lexsort((ok, t[ok], cols.meter_index[ok]))]
        same = (np.diff(cols.meter_index[order]) == 0) & (np.diff(t[order]) == 0)
        dup = np.zeros(n, dtype=bool)
        dup[order[1:][same]] = True
        first_of: dict[int, int] = {}
        if dup.any():
            # For the message: the earlier index each duplicate repeats.
            keep = order[np.concatenate(([True], ~same))]
            key_first = {(int(cols.meter_index[k]), int(t[k])): int(k) for k in keep}
            for i in np.flatnonzero(dup).tolist():
                first_of[i] = key_first[(int(cols.meter_index[i]), int(t[i]))]
        reject(
            dup,
            Reason.DUPLICATE_IN_BATCH,
            lambda i: (
                f"meter_id {row_ids[i]!r} read_time {_iso(t[i])} repeats reading {first_of[i]} of this batch"
            ),
        )

    accepted_rows = np.flatnonzero(reason < 0)
    rejected = np.flatnonzero(reason >= 0)
    rejections = [
        Rejection(index=i, meter_id=str(row_ids[i]), reason=reasons[reason[i]], message=messages[i])
        for i in rejected.tolist()
    ]
    accepted = cols if len(rejected) == 0 else cols.take(accepted_rows)
    return ValidationResult(accepted=accepted, accepted_rows=accepted_rows, rejections=rejections)
