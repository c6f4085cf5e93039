"""The rule layer of the anomaly detector: physics and power-quality rules (surge, sag, outage,
overcurrent, phantom load, reverse energy, tamper, flat-line, communication gap) evaluated over a whole
batch of readings with numpy, each event explained with the limit it broke.

Events. The per-reading rules (surge, sag, outage, overcurrent, phantom load, reverse energy, tamper)
raise one event per anomalous reading, start = end = its read_time, so its event_id is its own and the
alert service's event count is the number of anomalous readings. The episode of consecutive anomalous
readings is kept in the meter's state across batches: it drives sustained severities (a sag is MAJOR from
its 4th reading) and the "N consecutive readings" wording, and a redelivered batch repeats the same ids.
A flat-line event spans its run (start = first flat reading) and a gap spans the silence (start = the
reading before it), so an episode found again keeps its id. NaN (unmeasured) values never trigger a rule.

Severities and scores (score 0.5 at the limit, rising monotonically towards 1 with the distance beyond
it; all limits relative to the meter's nominal voltage and rated current):
- VOLTAGE_SURGE above nominal +10%: WARNING up to +15%, MAJOR up to +25%, CRITICAL beyond.
- VOLTAGE_SAG below nominal -10% (not an outage): WARNING; MAJOR below -15% or for 4+ readings.
- OUTAGE below 20% of nominal while the meter still reports: CRITICAL.
- OVERCURRENT above the rated current (when known): MAJOR; CRITICAL beyond 1.25x.
- PHANTOM_LOAD at local night (00:00-05:00) above max(3x, +4 sd, +100 Wh/h) the meter's night baseline,
  once that has 16 observations: WARNING; MAJOR for 4+ readings. Not on agricultural meters (pumps run
  on night supply blocks) nor on a reading that is an overcurrent (the better explanation).
- REVERSE_ENERGY, export where none is expected: MAJOR on a meter registered without solar
  (labels["solar"] == "false"), WARNING on one whose registration does not say, once it has a day of
  history without export (a meter that exports in its first day is taken to have solar); never on a
  meter registered with solar (labels["solar"] == "true") or one that has exported before.
- TAMPER, load drawn (power > 50 W, or current > 0.5 A while not exporting) with zero import energy: MAJOR.
- FLATLINE, 8+ consecutive flat readings (see Batch.flat_runs: a repeated non-zero import energy that
  the measured power does not account for, zero energy under load, or a fully repeated reading):
  WARNING; MAJOR from 32. Zero energy with no current or power (an empty house) is never flat.
- COMMUNICATION_GAP, more than 4 intervals without a reading: MAJOR; CRITICAL from 24 h.

Readings not newer than the meter's last one (late or redelivered) are still checked by the per-reading
rules, never by flat-line or gap, and a late reading inside the meter's open episode joins it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from services.anomaly.model import DetectorKind, Event, Feature, Kind, MeterInfo, Severity
from services.anomaly.state import (
    EPISODE_COLUMNS,
    HOUR_US,
    NO_TIME,
    Batch,
    CompletedDays,
    RowBaseline,
    StateTable,
)
from services.ingest.columns import ReadingColumns

VERSION = "rules-1"

# Which column of the state's open-episode arrays each per-reading rule uses. Never reorder: the
# columns are persisted (append new kinds, and grow EPISODE_COLUMNS with a new state format).
EPISODE_KINDS: tuple[Kind, ...] = (
    Kind.VOLTAGE_SURGE,
    Kind.VOLTAGE_SAG,
    Kind.OUTAGE,
    Kind.OVERCURRENT,
    Kind.PHANTOM_LOAD,
    Kind.REVERSE_ENERGY,
    Kind.TAMPER,
)
assert len(EPISODE_KINDS) <= EPISODE_COLUMNS


@dataclass(frozen=True)
class RuleConfig:
    """Thresholds of the rules. Fractions are of the meter's nominal voltage; intervals are the
    reading's interval_seconds (the meter's registered interval for the gap sweep)."""

    surge_fraction: float = 0.10  # surge above nominal * (1 + 0.10): 253 V at 230 V
    surge_major_fraction: float = 0.15  # MAJOR beyond +15%
    surge_critical_fraction: float = 0.25  # CRITICAL beyond +25%
    sag_fraction: float = 0.10  # sag below nominal * (1 - 0.10): 207 V at 230 V
    sag_major_fraction: float = 0.15  # MAJOR below -15% ...
    sag_sustained_intervals: int = 4  # ... or for this many consecutive readings
    outage_fraction: float = 0.20  # outage below 0.2 * nominal: 46 V at 230 V
    overcurrent_critical_ratio: float = 1.25  # CRITICAL beyond 1.25 x rated current
    night_start_hour: int = 0  # local night [start, end), may wrap past midnight
    night_end_hour: int = 5
    phantom_ratio: float = 3.0  # night rate above 3 x the night baseline mean ...
    phantom_sigmas: float = 4.0  # ... and above mean + 4 standard deviations ...
    phantom_min_excess_wh_per_h: float = 100.0  # ... and at least this far above the mean
    phantom_min_observations: int = 16  # night readings needed before the baseline is trusted
    phantom_sustained_intervals: int = 4  # MAJOR from this many consecutive readings
    # Farm pumps run at night whenever the feeder's supply block is at night (blocks rotate weekly).
    phantom_exempt_categories: tuple[str, ...] = ("agricultural",)
    reverse_min_power_w: float = 10.0  # active power below -10 W counts as reverse flow
    # A meter whose registration does not say whether it has solar is assumed to have it if it exports
    # within its first day: before that, export teaches "solar" instead of raising an event.
    reverse_min_history_hours: float = 24.0
    tamper_min_current_a: float = 0.5  # "clearly > 0": load drawn above 0.5 A ...
    tamper_min_power_w: float = 50.0  # ... or above 50 W of active power
    flatline_intervals: int = 8  # flat-line from 8 consecutive flat readings
    flatline_major_intervals: int = 32  # MAJOR from 32
    gap_intervals: int = 4  # gap when more than 4 intervals pass without a reading
    gap_critical_hours: float = 24.0  # CRITICAL from 24 h of silence

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (tuple, list, set, frozenset)):
                continue
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"RuleConfig.{f.name} is {v}; must be a finite number >= 0")
        for name in ("night_start_hour", "night_end_hour"):
            if getattr(self, name) > 24:
                raise ValueError(f"RuleConfig.{name} is {getattr(self, name)}; must be within 0-24")
        for name in ("flatline_intervals", "gap_intervals", "phantom_min_observations"):
            if getattr(self, name) < 1:
                raise ValueError(f"RuleConfig.{name} is {getattr(self, name)}; must be at least 1")
        if not self.surge_fraction <= self.surge_major_fraction <= self.surge_critical_fraction:
            raise ValueError(
                f"RuleConfig surge fractions are {self.surge_fraction}, {self.surge_major_fraction}, "
                f"{self.surge_critical_fraction}; they must not decrease"
            )
        if not self.outage_fraction < 1 - self.sag_fraction:
            raise ValueError(
                f"RuleConfig.outage_fraction is {self.outage_fraction}; must be below the sag limit "
                f"1 - sag_fraction = {1 - self.sag_fraction}"
            )


@dataclass(frozen=True)
class RuleResult:
    events: list[Event]
    baseline: RowBaseline  # taken before the batch was folded into the state
    completed_days: CompletedDays


# ---------------------------------------------------------------------------------------------------
# Formatting and scoring helpers


def _fmt(x: float, digits: int = 1) -> str:
    s = f"{x:.{digits}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def _streak(n: int, what: str) -> str:
    """How long the episode has lasted up to this reading, for an event of one reading: nothing for
    the first (an isolated reading reads simply), else "; 3 consecutive readings above the limit"."""
    return "" if n <= 1 else f"; {n} consecutive readings {what}"


def _score(x: float) -> float:
    """0.5 at a rule's limit, rising monotonically towards 1 with the normalised excess x >= 0."""
    if not math.isfinite(x):
        x = 0.0 if x != math.inf else 50.0
    return 0.5 + 0.5 * (1.0 - math.exp(-max(x, 0.0)))


def _pct(fraction: float) -> str:
    return _fmt(100.0 * fraction)


def _features(*items: tuple[str, float, float | None, str, float]) -> tuple[Feature, ...]:
    # Limits such as 230 * 1.1 are rounded to the micro-unit, so an operator reads 253, not 253.00000000000003.
    feats = [
        Feature(n, float(v), None if e is None else round(float(e), 6), u, float(c))
        for n, v, e, u, c in items
    ]
    return tuple(sorted(feats, key=lambda f: -f.contribution))


@dataclass(frozen=True)
class _Run:
    """The anomalous readings of one event: sorted-row indices within the batch, and the episode."""

    rows: np.ndarray
    start_us: int
    count: int


# ---------------------------------------------------------------------------------------------------


class RuleEngine:
    """Evaluates the rules over batches of readings against a StateTable and folds them into it."""

    version = VERSION

    def __init__(self, config: RuleConfig | None = None) -> None:
        self.config = config if config is not None else RuleConfig()

    # -- batch scoring -----------------------------------------------------------------------------

    def score(self, cols: ReadingColumns, meters: Mapping[str, MeterInfo], state: StateTable) -> RuleResult:
        """Scores a batch: the per-row baseline (before the batch), the rule events, then folds the batch
        into `state` and returns the local days it completed. Meters missing from `meters` are scored
        with MeterInfo defaults."""
        cfg = self.config
        b = state.batch(cols, meters)
        baseline = state.row_baseline(cols, meters, batch=b)
        if b.n == 0:
            return RuleResult([], baseline, CompletedDays.empty())

        v = b.values
        volt, cur, pw = v["voltage_v"], v["current_a"], v["active_power_w"]
        imp, exp = v["import_energy_wh"], v["export_energy_wh"]
        nom = b.nominal_v
        live = ~b.dup  # of two readings with the same read_time, the first speaks for both

        outage = live & (volt < nom * cfg.outage_fraction)
        surge = live & (volt > nom * (1 + cfg.surge_fraction))
        sag = live & (volt < nom * (1 - cfg.sag_fraction)) & ~outage
        over = live & (b.rated_a > 0) & (cur > b.rated_a)

        night = b.night_mask(cfg.night_start_hour, cfg.night_end_hour)
        n_mean = baseline.night_mean_wh_per_h[b.order]
        n_std = np.nan_to_num(baseline.night_std_wh_per_h[b.order], nan=0.0)
        n_count = baseline.night_count[b.order]
        phantom_limit = np.maximum.reduce(
            [
                n_mean * cfg.phantom_ratio,
                n_mean + cfg.phantom_sigmas * n_std,
                n_mean + cfg.phantom_min_excess_wh_per_h,
            ]
        )
        # An overcurrent at night explains the energy better than a phantom load does.
        phantom = live & night & ~over & (n_count >= cfg.phantom_min_observations) & (b.rate > phantom_limit)
        if cfg.phantom_exempt_categories:
            phantom &= ~b.category_in(cfg.phantom_exempt_categories)

        loaded = b.loaded(cfg.tamper_min_current_a, cfg.tamper_min_power_w)
        tamper = live & (imp == 0) & loaded

        reverse = live & self._reverse(b) & ((exp > 0) | (pw < -cfg.reverse_min_power_w))

        flagged = {
            Kind.VOLTAGE_SURGE: surge,
            Kind.VOLTAGE_SAG: sag,
            Kind.OUTAGE: outage,
            Kind.OVERCURRENT: over,
            Kind.PHANTOM_LOAD: phantom,
            Kind.REVERSE_ENERGY: reverse,
            Kind.TAMPER: tamper,
        }
        any_flag = np.logical_or.reduce(list(flagged.values()))

        flat_len, flat_start = b.flat_runs(loaded)
        b.night = night
        b.learn = ~any_flag  # anomalous readings do not teach the meter's profiles
        b.flat = (flat_len, flat_start)

        ctx = _Context(b, phantom_limit, n_mean, n_std)
        ep_start, ep_count = state.episodes(b.slot)
        events: list[Event] = []
        episode_updates = []
        for column, kind in enumerate(EPISODE_KINDS):
            runs, update = self._runs(b, flagged[kind], ep_start[:, column], ep_count[:, column])
            episode_updates.append((column, *update))
            build = self._builders[kind]
            # One event per anomalous reading (its own id, so the alert counts readings), each with
            # the episode so far: a sustained sag escalates reading by reading.
            for r in runs:
                before = r.count - len(r.rows)
                for i, row in enumerate(r.rows.tolist()):
                    events.append(build(self, ctx, _Run(r.rows[i : i + 1], int(b.time[row]), before + i + 1)))
        events.extend(self._flatline_events(ctx, flat_len, flat_start))
        events.extend(self._gap_events_in_batch(b))

        completed = state.update(cols, meters, batch=b)
        for column, slots, start, count in episode_updates:
            if len(slots):
                state.set_episodes(column, slots, start, count)
        return RuleResult(_unique(events), baseline, completed)

    def _reverse(self, b: Batch) -> np.ndarray:
        """Rows at which export is not expected: the meter is registered without solar, or its
        registration does not say and it has a day of history without ever exporting."""
        cfg = self.config
        n = b.n
        idx = np.arange(n)
        group_start = np.maximum.accumulate(np.where(b.first, idx, 0))
        exported = b.values["export_energy_wh"] > 0
        last_exp = np.maximum.accumulate(np.where(exported, idx, -1))
        before = np.empty(n, dtype=np.int64)
        before[0] = -1
        before[1:] = last_exp[:-1]
        ever = b.ever_exported_before | (before >= group_start)
        first_read = np.where(b.first_read_before == NO_TIME, b.time[group_start], b.first_read_before)
        history_ok = (b.time - first_read) >= cfg.reverse_min_history_hours * HOUR_US
        return (b.solar < 0) | ((b.solar == 0) & ~ever & history_ok)

    @staticmethod
    def _runs(
        b: Batch, mask: np.ndarray, ep_start: np.ndarray, ep_count: np.ndarray
    ) -> tuple[list[_Run], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Groups flagged rows into runs of consecutive readings of one meter, continuing the meter's
        open episode; returns the runs and the new open episode of every meter with in-order rows."""
        runs: list[_Run] = []
        io = b.io
        io_slot = b.slot[io]
        last_io = np.flatnonzero(b.io_last)
        f = mask[io]
        new_start = np.full(len(last_io), NO_TIME, dtype=np.int64)
        new_count = np.zeros(len(last_io), dtype=np.int64)
        if f.any():
            prev_f = np.zeros(len(io), dtype=bool)
            prev_f[1:] = f[:-1]
            prev_f &= ~b.io_first
            next_f = np.zeros(len(io), dtype=bool)
            next_f[:-1] = f[1:] & ~b.io_first[1:]
            starts = np.flatnonzero(f & ~prev_f)
            ends = np.flatnonzero(f & ~next_f)
            first_rows = io[starts]
            carried = b.io_first[starts] & (ep_count[first_rows] > 0)
            run_start = np.where(carried, ep_start[first_rows], b.time[first_rows])
            run_count = np.where(carried, ep_count[first_rows], 0) + (ends - starts + 1)
            for s, e, t0, c in zip(
                starts.tolist(), ends.tolist(), run_start.tolist(), run_count.tolist(), strict=True
            ):
                runs.append(_Run(io[s : e + 1], t0, c))
            open_ = f[last_io]
            run_of = np.cumsum(f & ~prev_f) - 1
            r = run_of[last_io[open_]]
            new_start[open_] = run_start[r]
            new_count[open_] = run_count[r]
        # Late readings (older than the meter's newest): their own runs, joined to the open episode
        # when they fall inside it (a redelivered batch then repeats the same events).
        late = np.flatnonzero(mask & ~b.in_order)
        if late.size:
            brk = np.ones(late.size, dtype=bool)
            brk[1:] = (np.diff(late) != 1) | (b.slot[late[1:]] != b.slot[late[:-1]])
            bounds = np.append(np.flatnonzero(brk), late.size)
            for a, z in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                rows = late[a:z]
                r0 = int(rows[0])
                t = int(b.time[r0])
                es, ec = int(ep_start[r0]), int(ep_count[r0])
                if ec > 0 and es <= t <= int(b.last_read_before[r0]):
                    runs.append(_Run(rows, es, max(ec, len(rows))))
                else:
                    runs.append(_Run(rows, t, len(rows)))
        return runs, (io_slot[last_io], new_start, new_count)

    # -- event builders ------------------------------------------------------------------------------

    def _event(
        self,
        ctx: _Context,
        run: _Run,
        kind: Kind,
        severity: Severity,
        score: float,
        features: tuple[Feature, ...],
        explanation: str,
    ) -> Event:
        b = ctx.b
        r0 = int(run.rows[0])
        return Event(
            meter_id=b.cols.meter_ids[int(b.mi[r0])],
            kind=kind,
            severity=severity,
            score=score,
            detector=DetectorKind.RULES,
            model_version=self.version,
            start_time_us=int(run.start_us),
            end_time_us=int(b.time[run.rows].max()),
            features=features,
            explanation=explanation,
        )

    @staticmethod
    def _worst(values: np.ndarray, rows: np.ndarray, largest: bool) -> int:
        x = values[rows]
        return int(rows[int(np.nanargmax(x) if largest else np.nanargmin(x))])

    def _surge(self, ctx: _Context, run: _Run) -> Event:
        cfg, b = self.config, ctx.b
        w = self._worst(b.values["voltage_v"], run.rows, True)
        v, nom = float(b.values["voltage_v"][w]), float(b.nominal_v[w])
        limit = nom * (1 + cfg.surge_fraction)
        excess = v / nom - 1
        severity = (
            Severity.WARNING
            if excess <= cfg.surge_major_fraction
            else Severity.MAJOR
            if excess <= cfg.surge_critical_fraction
            else Severity.CRITICAL
        )
        return self._event(
            ctx,
            run,
            Kind.VOLTAGE_SURGE,
            severity,
            _score((v - limit) / (0.05 * nom)),
            _features(("voltage_v", v, limit, "V", 1.0)),
            f"Voltage {_fmt(v)} V, above the {_fmt(limit)} V surge limit (nominal {_fmt(nom)} V + "
            f"{_pct(cfg.surge_fraction)}%){_streak(run.count, 'above it')}.",
        )

    def _sag(self, ctx: _Context, run: _Run) -> Event:
        cfg, b = self.config, ctx.b
        w = self._worst(b.values["voltage_v"], run.rows, False)
        v, nom = float(b.values["voltage_v"][w]), float(b.nominal_v[w])
        limit = nom * (1 - cfg.sag_fraction)
        deep = 1 - v / nom > cfg.sag_major_fraction
        sustained = run.count >= cfg.sag_sustained_intervals
        return self._event(
            ctx,
            run,
            Kind.VOLTAGE_SAG,
            Severity.MAJOR if deep or sustained else Severity.WARNING,
            _score((limit - v) / (0.05 * nom)),
            _features(("voltage_v", v, limit, "V", 1.0)),
            f"Voltage {_fmt(v)} V, below the {_fmt(limit)} V sag limit (nominal {_fmt(nom)} V - "
            f"{_pct(cfg.sag_fraction)}%){_streak(run.count, 'below it')}.",
        )

    def _outage(self, ctx: _Context, run: _Run) -> Event:
        cfg, b = self.config, ctx.b
        w = self._worst(b.values["voltage_v"], run.rows, False)
        v, nom = float(b.values["voltage_v"][w]), float(b.nominal_v[w])
        limit = nom * cfg.outage_fraction
        return self._event(
            ctx,
            run,
            Kind.OUTAGE,
            Severity.CRITICAL,
            _score(2.0 + 2.0 * (limit - v) / max(limit, 1e-9)),
            _features(("voltage_v", v, limit, "V", 1.0)),
            f"Supply lost: voltage {_fmt(v)} V while the meter kept reporting (outage below "
            f"{_fmt(limit)} V, {_pct(cfg.outage_fraction)}% of nominal {_fmt(nom)} V)"
            f"{_streak(run.count, 'without supply')}.",
        )

    def _overcurrent(self, ctx: _Context, run: _Run) -> Event:
        cfg, b = self.config, ctx.b
        ratio = b.values["current_a"] / np.where(b.rated_a > 0, b.rated_a, np.nan)
        w = self._worst(ratio, run.rows, True)
        i, rated, r = float(b.values["current_a"][w]), float(b.rated_a[w]), float(ratio[w])
        return self._event(
            ctx,
            run,
            Kind.OVERCURRENT,
            Severity.CRITICAL if r > cfg.overcurrent_critical_ratio else Severity.MAJOR,
            _score((r - 1.0) / 0.25),
            _features(("current_a", i, rated, "A", 1.0)),
            f"Current {_fmt(i)} A, {r:.2f}x the meter's rated current of {_fmt(rated)} A"
            f"{_streak(run.count, 'above it')}.",
        )

    def _phantom(self, ctx: _Context, run: _Run) -> Event:
        cfg, b = self.config, ctx.b
        excess = b.rate / ctx.phantom_limit
        w = self._worst(excess, run.rows, True)
        rate, limit = float(b.rate[w]), float(ctx.phantom_limit[w])
        mean, std = float(ctx.night_mean[w]), float(ctx.night_std[w])
        hour = int(b.local_hour[w])
        feats: list[tuple[str, float, float | None, str, float]] = []
        if std > 0:
            z = (rate - mean) / std
            feats = [
                ("night_import_energy_wh_per_h", rate, limit, "Wh/h", 0.8),
                ("night_import_z", z, cfg.phantom_sigmas, "", 0.2),
            ]
        else:
            feats = [("night_import_energy_wh_per_h", rate, limit, "Wh/h", 1.0)]
        sustained = run.count >= cfg.phantom_sustained_intervals
        return self._event(
            ctx,
            run,
            Kind.PHANTOM_LOAD,
            Severity.MAJOR if sustained else Severity.WARNING,
            _score(2.0 * (rate / max(limit, 1e-9) - 1.0)),
            _features(*feats),
            f"Night consumption {_fmt(rate)} Wh/h (local {hour:02d}:00), above the {_fmt(limit)} Wh/h "
            f"limit set by this meter's night baseline of {_fmt(mean)} ± {_fmt(std)} Wh/h"
            f"{_streak(run.count, 'above the limit')}.",
        )

    def _reverse_event(self, ctx: _Context, run: _Run) -> Event:
        b = ctx.b
        exp = b.values["export_energy_wh"]
        pw = b.values["active_power_w"]
        export_rate = np.where(b.interval_s > 0, exp * 3600.0 / np.maximum(b.interval_s, 1), 0.0)
        magnitude = np.fmax(np.nan_to_num(export_rate, nan=0.0), np.nan_to_num(-pw, nan=0.0))
        w = self._worst(magnitude, run.rows, True)
        e, p = float(exp[w]), float(pw[w])
        registered_without = int(b.solar[w]) < 0
        items: list[tuple[str, float, float | None, str, float]] = []
        if e > 0:
            items.append(("export_energy_wh", e, 0.0, "Wh", 0.7 if p < 0 else 1.0))
        if p < 0:
            items.append(("active_power_w", p, 0.0, "W", 0.3 if e > 0 else 1.0))
        what = f"{_fmt(e)} Wh exported in one interval" if e > 0 else f"active power {_fmt(p)} W"
        if e > 0 and p < 0:
            what += f" (active power {_fmt(p)} W)"
        why = "registered without solar" if registered_without else "with no export history"
        return self._event(
            ctx,
            run,
            Kind.REVERSE_ENERGY,
            Severity.MAJOR if registered_without else Severity.WARNING,
            _score(float(magnitude[w]) / 200.0),
            _features(*items),
            f"Energy flowing to the grid ({what}) at a meter {why}: undeclared solar, a reversed "
            f"connection or tampering{_streak(run.count, 'exporting')}.",
        )

    def _tamper(self, ctx: _Context, run: _Run) -> Event:
        cfg, b = self.config, ctx.b
        pw, cur = b.values["active_power_w"], b.values["current_a"]
        load = np.fmax(np.nan_to_num(pw / 500.0, nan=0.0), np.nan_to_num(cur / 2.0, nan=0.0))
        w = self._worst(load, run.rows, True)
        p, i = float(pw[w]), float(cur[w])
        expected_wh = p * float(b.interval_s[w]) / 3600.0 if p > 0 else None
        items: list[tuple[str, float, float | None, str, float]] = [
            ("import_energy_wh", 0.0, expected_wh, "Wh", 0.5)
        ]
        load_items = []
        if math.isfinite(p):
            load_items.append(("active_power_w", p, cfg.tamper_min_power_w, "W"))
        if math.isfinite(i):
            load_items.append(("current_a", i, cfg.tamper_min_current_a, "A"))
        for name, val, lim, unit in load_items:
            items.append((name, val, lim, unit, 0.5 / len(load_items)))
        drawn = " and ".join(
            f"{_fmt(val)} {unit}" for _, val, _, unit in load_items if val > 0 and math.isfinite(val)
        )
        return self._event(
            ctx,
            run,
            Kind.TAMPER,
            Severity.MAJOR,
            _score(float(load[w])),
            _features(*items),
            f"Load drawn ({drawn}) while the import register did not advance (0 Wh): possible bypass "
            f"or tampering{_streak(run.count, 'like this')}.",
        )

    _builders: Mapping[Kind, Callable[[RuleEngine, _Context, _Run], Event]] = {
        Kind.VOLTAGE_SURGE: _surge,
        Kind.VOLTAGE_SAG: _sag,
        Kind.OUTAGE: _outage,
        Kind.OVERCURRENT: _overcurrent,
        Kind.PHANTOM_LOAD: _phantom,
        Kind.REVERSE_ENERGY: _reverse_event,
        Kind.TAMPER: _tamper,
    }

    def _flatline_events(self, ctx: _Context, flat_len: np.ndarray, flat_start: np.ndarray) -> list[Event]:
        cfg, b = self.config, ctx.b
        k = cfg.flatline_intervals
        f = flat_len >= k
        if not f.any():
            return []
        io = b.io
        prev_f = np.zeros(len(io), dtype=bool)
        prev_f[1:] = f[:-1]
        prev_f &= ~b.io_first
        next_f = np.zeros(len(io), dtype=bool)
        next_f[:-1] = f[1:] & ~b.io_first[1:]
        events = []
        imp = b.values["import_energy_wh"]
        for s, e in zip(
            np.flatnonzero(f & ~prev_f).tolist(), np.flatnonzero(f & ~next_f).tolist(), strict=True
        ):
            run = _Run(io[s : e + 1], int(flat_start[e]), int(flat_len[e]))
            last = int(io[e])
            value = float(imp[last])
            if value > 0:
                how = f"The import register repeated {_fmt(value, 3)} Wh"
            elif value == 0:
                how = "The import register recorded 0 Wh while a load was drawn"
            else:
                how = "The meter repeated an identical reading"
            events.append(
                self._event(
                    ctx,
                    run,
                    Kind.FLATLINE,
                    Severity.MAJOR if run.count >= cfg.flatline_major_intervals else Severity.WARNING,
                    _score((run.count - k + 1) / k),
                    _features(
                        ("flat_readings", float(run.count), float(k), "", 0.7),
                        ("import_energy_wh", value, None, "Wh", 0.3),
                    ),
                    f"{how} for {run.count} consecutive readings (limit {k}): a stuck register or "
                    f"a frozen meter.",
                )
            )
        return events

    def _gap_events_in_batch(self, b: Batch) -> list[Event]:
        cfg = self.config
        io = b.io
        if not len(io):
            return []
        t = b.time[io]
        interval = b.interval_s[io]
        known = b.prev_time != NO_TIME
        since = t - np.where(known, b.prev_time, t)  # no int64 wrap-around on NO_TIME
        gap = known & (interval > 0) & (since > cfg.gap_intervals * interval * 1_000_000)
        events = []
        for j in np.flatnonzero(gap).tolist():
            r = int(io[j])
            events.append(
                self._gap_event(
                    b.cols.meter_ids[int(b.mi[r])],
                    int(b.prev_time[j]),
                    int(t[j]),
                    int(interval[j]),
                    ended=True,
                )
            )
        return events

    def _gap_event(self, meter_id: str, start_us: int, end_us: int, interval_s: int, *, ended: bool) -> Event:
        cfg = self.config
        gap_h = (end_us - start_us) / HOUR_US
        allowed_h = cfg.gap_intervals * interval_s / 3600.0
        critical = gap_h >= cfg.gap_critical_hours
        if ended:
            text = f"No readings for {_fmt(gap_h)} h before this one"
        else:
            text = f"No reading for {_fmt(gap_h)} h since the last one"
        return Event(
            meter_id=meter_id,
            kind=Kind.COMMUNICATION_GAP,
            severity=Severity.CRITICAL if critical else Severity.MAJOR,
            score=_score((gap_h / allowed_h - 1.0) / 4.0),
            detector=DetectorKind.RULES,
            model_version=self.version,
            start_time_us=start_us,
            end_time_us=end_us,
            features=_features(("gap_hours", gap_h, allowed_h, "h", 1.0)),
            explanation=f"{text} (allowed: {cfg.gap_intervals} intervals of {_fmt(interval_s / 60)} min, "
            f"{_fmt(allowed_h, 2)} h).",
        )

    # -- the gap sweep -------------------------------------------------------------------------------

    def gap_events(self, meters: Sequence[MeterInfo], last_read_us: np.ndarray, now_us: int) -> list[Event]:
        """One COMMUNICATION_GAP event per meter silent for more than gap_intervals of its registered
        interval (meters whose last read time is unknown, NO_TIME, are skipped). Start is the last read
        time and end is now, so the same ongoing gap always has the same event_id."""
        n = len(meters)
        last = np.asarray(last_read_us, dtype=np.int64)
        if last.shape != (n,):
            raise ValueError(f"last_read_us has shape {last.shape}; expected ({n},), one per meter")
        interval = np.fromiter((m.interval_seconds for m in meters), np.int64, n)
        known = last != NO_TIME
        since = now_us - np.where(known, last, now_us)
        silent = known & (interval > 0) & (since > self.config.gap_intervals * interval * 1_000_000)
        return [
            self._gap_event(meters[i].meter_id, int(last[i]), int(now_us), int(interval[i]), ended=False)
            for i in np.flatnonzero(silent).tolist()
        ]


def _unique(events: list[Event]) -> list[Event]:
    """One event per event_id (a late run and an in-order run of one batch can both continue the same
    open episode), keeping the one that reaches furthest; sorted by start time, meter, kind."""
    best: dict[str, Event] = {}
    for e in events:
        seen = best.get(e.event_id)
        if seen is None or (e.end_time_us, e.score) > (seen.end_time_us, seen.score):
            best[e.event_id] = e
    return sorted(best.values(), key=lambda e: (e.start_time_us, e.meter_id, int(e.kind), e.end_time_us))


@dataclass
class _Context:
    """What the event builders need beyond the batch: the phantom limit and night baseline per row."""

    b: Batch
    phantom_limit: np.ndarray
    night_mean: np.ndarray
    night_std: np.ndarray
