"""Synthetic fault injection, shared by training (labelled calibration and held-out sets) and the
offline evaluation. Faults are written into copies of real or simulated readings at random positions
drawn from a seeded numpy Generator, so a run is reproducible.

Reading faults (one run of consecutive readings of one meter each):
    spike     energy (with current and power) several times the meter's usual reading, 1-2 readings
    surge     voltage 11-20% above nominal, 1-3 readings (meters that measure voltage)
    sag       voltage 12-25% below nominal, 1-4 readings (meters that measure voltage)
    outage    supply lost: voltage, current, power and energy 0, 1-4 readings
    phantom   extra load at night (local 00:00-05:00) of 2-4x the meter's night base, 2-5 hours

Day faults (whole local days of a (n, 24) profile matrix, for the autoencoder):
    shift     the profile moved 4-8 hours earlier or later
    flatten   every hour at the day's mean
    level     the whole day at 2.5-4x, or 5-25%, of its usual level
    night     extra load at 00:00-06:00 of 1.5-3x the meter's typical hourly energy
    spike     one hour 6-10x the meter's typical hourly energy above normal
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from services.anomaly.features import energy_rate, hour_of_week
from services.anomaly.model import MeterInfo
from services.ingest.columns import ReadingColumns

READING_FAULTS: tuple[str, ...] = ("spike", "surge", "sag", "outage", "phantom")
VOLTAGE_FAULTS = frozenset({"surge", "sag"})
DAY_FAULTS: tuple[str, ...] = ("shift", "flatten", "level", "night", "spike")


@dataclass(frozen=True)
class InjectedFault:
    kind: str
    meter_id: str
    rows: np.ndarray  # row indices into the returned columns, in time order
    start_us: int  # read_time of the first faulty reading
    end_us: int  # read_time of the last one


def _length(kind: str, interval_s: int, rng: np.random.Generator) -> int:
    if kind == "phantom":
        hours = int(rng.integers(2, 6))
        return max(1, hours * 3600 // max(interval_s, 1))
    hi = {"spike": 2, "surge": 3, "sag": 4, "outage": 4}[kind]
    return int(rng.integers(1, hi + 1))


def inject_reading_faults(
    cols: ReadingColumns,
    meters: Mapping[str, MeterInfo],
    *,
    rng: np.random.Generator,
    count: int,
    eligible: np.ndarray | None = None,
    kinds: Sequence[str] = READING_FAULTS,
) -> tuple[ReadingColumns, np.ndarray, list[InjectedFault]]:
    """A copy of cols with up to `count` faults, the kinds in equal shares, each starting at a random
    eligible row where it applies (voltage faults on meters that measure voltage, phantom loads at
    local night); faults never overlap or touch. Returns (columns, per-row label, faults); rows keep
    their order. Magnitudes are relative to each meter's median reading (over all of cols)."""
    n = len(cols)
    labels = np.zeros(n, dtype=bool)
    if n == 0 or count <= 0:
        return cols, labels, []
    ok = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).copy()
    data = {
        c: getattr(cols, c).copy()
        for c in ("import_energy_wh", "voltage_v", "current_a", "active_power_w", "power_factor")
    }
    order = np.lexsort((cols.read_time_unix_micros, cols.meter_index))
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    m_sorted = cols.meter_index[order]
    local_hour = hour_of_week(cols, meters) % 24
    night = local_hour < 5
    rate = energy_rate(cols)
    n_meters = len(cols.meter_ids)
    med_e = _group_median(cols.meter_index, cols.import_energy_wh, n_meters, 0.0)
    med_night = _group_median(cols.meter_index[night], rate[night], n_meters, np.nan)
    med_night = np.where(np.isnan(med_night), med_e, med_night)
    v_share = np.bincount(
        cols.meter_index, weights=np.isfinite(cols.voltage_v).astype(np.float64), minlength=n_meters
    ) / np.maximum(np.bincount(cols.meter_index, minlength=n_meters), 1)
    has_v = v_share > 0.5
    faults: list[InjectedFault] = []
    # Kinds in equal shares (shuffled), each placed at a random row where it applies.
    plan = [kinds[i % len(kinds)] for i in range(count)]
    order_kinds = [plan[i] for i in rng.permutation(count).tolist()]
    row_has_v = has_v[cols.meter_index]
    where = {
        kind: np.flatnonzero(
            ok & (row_has_v if kind in VOLTAGE_FAULTS else True) & (night if kind == "phantom" else True)
        )
        for kind in sorted(set(order_kinds))
    }
    for kind in order_kinds:
        candidates = where[kind]
        for _ in range(50):
            if not len(candidates):
                break
            start = int(candidates[rng.integers(len(candidates))])
            if not ok[start]:
                continue
            k = int(cols.meter_index[start])
            length = _length(kind, int(cols.interval_seconds[start]), rng)
            p = int(pos[start])
            span = order[p : p + length]
            if len(span) < length or (m_sorted[p : p + length] != k).any() or not ok[span].all():
                continue
            if kind == "phantom" and not night[span].all():
                continue
            meter = cols.meter_ids[k]
            nominal = meters[meter].nominal_voltage_v if meter in meters else 230.0
            _apply(kind, span, data, cols, rng, med_e[k], med_night[k], nominal)
            labels[span] = True
            ok[order[max(0, p - 1) : p + length + 1]] = False  # faults never touch or overlap
            faults.append(
                InjectedFault(
                    kind=kind,
                    meter_id=meter,
                    rows=span,
                    start_us=int(cols.read_time_unix_micros[span[0]]),
                    end_us=int(cols.read_time_unix_micros[span[-1]]),
                )
            )
            break
    return replace(cols, **data), labels, faults


def _group_median(group: np.ndarray, values: np.ndarray, n_groups: int, default: float) -> np.ndarray:
    """Per group the (lower) median of the non-NaN values; `default` for groups without any."""
    out = np.full(n_groups, default, dtype=np.float64)
    keep = ~np.isnan(values)
    g, v = group[keep].astype(np.int64), values[keep]
    if len(v) == 0:
        return out
    order = np.lexsort((v, g))
    cnt = np.bincount(g, minlength=n_groups)
    start = np.concatenate(([0], np.cumsum(cnt)[:-1]))
    has = cnt > 0
    out[has] = v[order][start[has] + (cnt[has] - 1) // 2]
    return out


def _apply(
    kind: str,
    rows: np.ndarray,
    data: dict[str, np.ndarray],
    cols: ReadingColumns,
    rng: np.random.Generator,
    med_energy_wh: float,
    med_night_rate: float,
    nominal_v: float,
) -> None:
    e = data["import_energy_wh"]
    interval_h = cols.interval_seconds[rows].astype(np.float64) / 3600.0
    if kind in ("spike", "phantom"):
        old = e[rows].copy()
        if kind == "spike":
            k = rng.uniform(2.5, 5.0)
            new = np.maximum(old * k, old + k * max(med_energy_wh, 1.0))
        else:
            base = max(med_night_rate, 0.3 * med_energy_wh / max(float(interval_h.mean()), 1e-9), 1.0)
            new = old + rng.uniform(2.0, 4.0) * base * interval_h
        e[rows] = new
        added_w = (new - old) / interval_h
        v = data["voltage_v"][rows]
        data["active_power_w"][rows] = data["active_power_w"][rows] + added_w
        pf = np.where(np.isfinite(data["power_factor"][rows]), data["power_factor"][rows], 0.95)
        with np.errstate(invalid="ignore", divide="ignore"):
            data["current_a"][rows] = data["current_a"][rows] + added_w / (
                np.where(v > 50, v, nominal_v) * pf
            )
    elif kind == "surge":
        data["voltage_v"][rows] = nominal_v * rng.uniform(1.11, 1.20, len(rows))
    elif kind == "sag":
        data["voltage_v"][rows] = nominal_v * rng.uniform(0.75, 0.88, len(rows))
    elif kind == "outage":
        e[rows] = 0.0
        for c in ("voltage_v", "current_a", "active_power_w"):
            col = data[c]
            col[rows] = np.where(np.isnan(col[rows]), np.nan, 0.0)
    else:
        raise ValueError(f"unknown reading fault {kind!r}")


def inject_day_faults(
    energy_wh: np.ndarray,
    scale_wh: np.ndarray,
    *,
    rng: np.random.Generator,
    count: int,
    eligible: np.ndarray | None = None,
    kinds: Sequence[str] = DAY_FAULTS,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A copy of the (n, 24) day profiles with `count` distinct eligible days replaced by a fault;
    returns (profiles, per-day label, per-day fault kind or "")."""
    e = np.array(energy_wh, dtype=np.float64, copy=True).reshape(-1, 24)
    n = e.shape[0]
    labels = np.zeros(n, dtype=bool)
    kind_of = [""] * n
    ok = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    cand = np.flatnonzero(ok & np.isfinite(scale_wh))
    if count <= 0 or len(cand) == 0:
        return e, labels, kind_of
    days = rng.choice(cand, size=min(count, len(cand)), replace=False)
    for d in np.sort(days).tolist():
        kind = kinds[int(rng.integers(len(kinds)))]
        s = float(scale_wh[d])
        row = e[d]
        present = np.isfinite(row)
        if kind == "shift":
            sh = int(rng.integers(4, 9)) * (1 if rng.random() < 0.5 else -1)
            filled = np.where(present, row, np.nanmean(row))
            row = np.roll(filled, sh)
        elif kind == "flatten":
            row = np.full(24, np.nanmean(row))
        elif kind == "level":
            row = row * (rng.uniform(2.5, 4.0) if rng.random() < 0.5 else rng.uniform(0.05, 0.25))
        elif kind == "night":
            row = row.copy()
            row[:6] += rng.uniform(1.5, 3.0) * s
        elif kind == "spike":
            row = row.copy()
            h = int(rng.integers(24))
            row[h] = (row[h] if present[h] else s) + rng.uniform(6.0, 10.0) * s
        else:
            raise ValueError(f"unknown day fault {kind!r}")
        row = np.where(present, row, np.nan)
        e[d] = row
        labels[d] = True
        kind_of[d] = kind
    return e, labels, kind_of
