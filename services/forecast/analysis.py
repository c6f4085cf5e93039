"""Consumption analysis of one meter: load pattern, efficiency score with its reasons, and recommendations.

API:
- `analyze(series, *, peers=(), past=None, peak_window=(17, 22), night_window=(22, 6), peer_group="",
  holidays=None) -> Analysis`. series: the period to analyse (HourlySeries, NaN = not stored);
  peers: similar meters (same category and tariff) over the same period; past: the meter's earlier
  period (the same period a year before if stored, else the period of equal length just before).
- `Analysis`: the fields of the proto's AnalyzeConsumptionResponse (meter_id, start_us, end_us,
  data_coverage_percent, total_energy_kwh, mean_daily_energy_kwh, base_load_kw, peak_hours,
  night_share_percent, weekday_weekend_ratio, trend_percent_per_month, efficiency_score,
  efficiency_explanation, peer_comparison, past_comparison, recommendations) plus peak_share_percent,
  base_load_share_percent and `reasons` (ScoreReason: what moved the score and by how many points).
- `PeerComparison(peer_group, peer_count, peer_median_daily_energy_kwh, percentile,
  peer_median_base_load_kw)`, `PastComparison(past_start_us, past_end_us, past_daily_energy_kwh,
  change_percent)`, `Recommendation(code, text, estimated_saving_kwh_per_month)`.
- MIN_PEERS (10: fewer peers -> no peer comparison, as the proto says), MIN_HOURS.

Definitions (local time = the series' time zone; hourly kWh = mean kW over the hour):
- base load: the 10th percentile of the hourly kWh, i.e. kW that is drawn around the clock;
  its share = base_load_kw * 24 / mean daily kWh.
- peak hours: the local hours of the day with the highest mean kWh, highest first (up to 3);
  peak share: the share of energy in peak_window [start, end) local hours.
- night share: the share of energy in night_window (22:00-06:00 local).
- weekday/weekend ratio: mean daily energy on Monday-Friday over that on Saturday-Sunday (and
  holidays, when a calendar is given), from days with at least 20 stored hours; 0 without weekend days.
- trend: the Theil-Sen slope (median of pairwise slopes, robust to a few odd days) of daily energy,
  in percent of the mean daily energy per month (30.44 days); 0 with fewer than 14 complete days.
Mean daily energy is the mean stored hour * 24 (missing hours do not count as zero); total energy is
the sum of the stored hours.

Efficiency score: 100 minus penalty points, clipped to 0-100, each penalty a ScoreReason:
- base load share above 25% (homes; 40% for commercial, whose nights are not empty): 1 point per
  1.2 percentage points above, at most 30;
- peak-window share above 1.5x a flat profile's (5 of 24 hours -> 31%): 1 point per percentage
  point above, at most 25;
- peers (at least MIN_PEERS): above the peers' median daily energy, 0.6 points per percentile
  point above 50, at most 30; below the median, a bonus of up to 10;
- own past: more than 10% more per day than the past period: 0.5 points per percent above 10, at most 15.
The explanation names the two largest reasons (or says nothing stood out).

Recommendations (largest estimated saving first; savings per month of 30.44 days):
- reduce_base_load (base share above the threshold, or base load over 1.5x the peers' median):
  saving = bringing the base load down to the threshold share (or the peers' median) around the clock;
- shift_to_off_peak (peak share above 1.5x flat): the kWh/day above a flat share moved out of the
  window; its "saving" is peak-window energy moved (the total stays the same; it is what a
  time-of-use tariff charges more for);
- reduce_consumption (above the 75th percentile of its peers): 10% of its use, at most the excess
  over the peers' median;
- check_increase (more than 15% more per day than its past period): half the increase;
- reduce_off_hours_load (commercial only, weekday/weekend ratio below 1.3): weekend use above half
  the weekday level.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.forecast.calendar import HolidayCalendar, local_hour_starts_us
from services.forecast.series import HOUR_US, HourlySeries

MIN_PEERS = 10
MIN_HOURS = 24
DAYS_PER_MONTH = 30.44
MIN_DAY_HOURS = 20
MIN_TREND_DAYS = 14
BASE_SHARE_LIMIT = {"commercial": 0.40, "industrial": 0.40}
DEFAULT_BASE_SHARE_LIMIT = 0.25
PEAK_FACTOR = 1.5


@dataclass(frozen=True)
class PeerComparison:
    peer_group: str
    peer_count: int
    peer_median_daily_energy_kwh: float
    percentile: float  # 0-100: share of peers using less per day
    peer_median_base_load_kw: float = float("nan")


@dataclass(frozen=True)
class PastComparison:
    past_start_us: int
    past_end_us: int
    past_daily_energy_kwh: float
    change_percent: float  # negative = less now


@dataclass(frozen=True)
class Recommendation:
    code: str
    text: str
    estimated_saving_kwh_per_month: float


@dataclass(frozen=True)
class ScoreReason:
    text: str
    points: float  # subtracted from 100 (negative: a bonus)


@dataclass(frozen=True)
class Analysis:
    meter_id: str
    start_us: int
    end_us: int
    data_coverage_percent: float
    total_energy_kwh: float
    mean_daily_energy_kwh: float
    base_load_kw: float
    peak_hours: tuple[int, ...]
    night_share_percent: float
    weekday_weekend_ratio: float
    trend_percent_per_month: float
    efficiency_score: int
    efficiency_explanation: str
    peer_comparison: PeerComparison | None
    past_comparison: PastComparison | None
    recommendations: tuple[Recommendation, ...]
    peak_share_percent: float = 0.0
    base_load_share_percent: float = 0.0
    reasons: tuple[ScoreReason, ...] = field(default=())


def _daily_mean(s: HourlySeries) -> float:
    v = s.values_kwh
    ok = np.isfinite(v)
    if ok.sum() < max(MIN_HOURS, len(v) // 2):
        return float("nan")
    return float(v[ok].mean() * 24.0)


def _hours_in(hour: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    a, b = window
    return (hour >= a) & (hour < b) if a <= b else (hour >= a) | (hour < b)


def _fmt_window(window: tuple[int, int]) -> str:
    return f"{window[0]:02d}:00-{window[1]:02d}:00"


def theil_sen_slope(y: np.ndarray) -> float:
    """Median of the pairwise slopes of y against its index (NaN entries left out)."""
    x = np.flatnonzero(np.isfinite(y)).astype(np.float64)
    v = np.asarray(y, dtype=np.float64)[np.isfinite(y)]
    if len(v) < 2:
        return 0.0
    i, j = np.triu_indices(len(v), k=1)
    return float(np.median((v[j] - v[i]) / (x[j] - x[i])))


def analyze(
    series: HourlySeries,
    *,
    peers: Sequence[HourlySeries] = (),
    past: HourlySeries | None = None,
    peak_window: tuple[int, int] = (17, 22),
    night_window: tuple[int, int] = (22, 6),
    peer_group: str = "",
    holidays: HolidayCalendar | None = None,
) -> Analysis:
    """The analysis of series' period (see the module docstring)."""
    v = series.values_kwh
    ok = np.isfinite(v) & (v >= 0)
    n_ok = int(ok.sum())
    if n_ok < MIN_HOURS:
        raise ValueError(
            f"meter {series.meter_id!r}: consumption analysis needs at least {MIN_HOURS} stored hours in the "
            f"period, got {n_ok}"
        )
    local = local_hour_starts_us(series.start_us, len(v), series.time_zone)
    local_h = np.floor_divide(local, HOUR_US)
    hour = np.mod(local_h, 24)
    day = np.floor_divide(local_h, 24)
    x = np.where(ok, v, 0.0)
    total = float(x.sum())
    mean_hour = total / n_ok
    mean_daily = mean_hour * 24.0
    coverage = 100.0 * n_ok / len(v)
    base_kw = float(np.percentile(v[ok], 10))
    base_share = base_kw * 24.0 / mean_daily if mean_daily > 0 else 0.0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        by_hour = np.array(
            [v[ok & (hour == h)].mean() if (ok & (hour == h)).any() else np.nan for h in range(24)]
        )
    order = [
        int(h)
        for h in np.argsort(-np.nan_to_num(by_hour, nan=-np.inf), kind="stable")
        if np.isfinite(by_hour[h])
    ]
    peak_hours = tuple(order[:3])
    night_share = 100.0 * float(x[_hours_in(hour, night_window)].sum()) / total if total > 0 else 0.0
    in_peak = _hours_in(hour, peak_window)
    peak_share = float(x[in_peak].sum()) / total if total > 0 else 0.0
    peak_len = (peak_window[1] - peak_window[0]) % 24 or 24
    flat_share = peak_len / 24.0

    # Daily energies over complete-enough local days.
    days = np.unique(day)
    d_idx = np.searchsorted(days, day)
    counts = np.bincount(d_idx, weights=ok.astype(np.float64), minlength=len(days))
    sums = np.bincount(d_idx, weights=x, minlength=len(days))
    good = counts >= MIN_DAY_HOURS
    daily = np.where(good, sums / np.maximum(counts, 1) * 24.0, np.nan)
    day_weekday = np.mod(days + 3, 7)
    weekend = day_weekday >= 5
    if holidays is not None and len(holidays):
        weekend |= np.isin(days + 719163, holidays.ordinals())  # 719163 = date(1970, 1, 1).toordinal()
    wd, we = daily[good & ~weekend], daily[good & weekend]
    ratio = float(wd.mean() / we.mean()) if len(wd) and len(we) and we.mean() > 0 else 0.0
    trend = 0.0
    if good.sum() >= MIN_TREND_DAYS and mean_daily > 0:
        full = np.full(int(days[-1] - days[0]) + 1, np.nan)
        full[(days - days[0])[good]] = daily[good]
        trend = theil_sen_slope(full) * DAYS_PER_MONTH / mean_daily * 100.0

    category = series.category.lower()
    base_limit = BASE_SHARE_LIMIT.get(category, DEFAULT_BASE_SHARE_LIMIT)
    reasons: list[ScoreReason] = []
    recs: list[Recommendation] = []

    # Peers.
    peer_cmp = None
    peer_daily = np.array([_daily_mean(p) for p in peers], dtype=np.float64)
    peer_daily = peer_daily[np.isfinite(peer_daily)]
    if len(peer_daily) >= MIN_PEERS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            peer_base = np.array(
                [np.nanpercentile(p.values_kwh, 10) for p in peers if np.isfinite(p.values_kwh).any()]
            )
        peer_cmp = PeerComparison(
            peer_group=peer_group or (f"{category} meters" if category else "similar meters"),
            peer_count=len(peer_daily),
            peer_median_daily_energy_kwh=float(np.median(peer_daily)),
            percentile=float(100.0 * np.mean(peer_daily < mean_daily)),
            peer_median_base_load_kw=float(np.median(peer_base)) if len(peer_base) else float("nan"),
        )

    # Own past.
    past_cmp = None
    if past is not None:
        past_daily = _daily_mean(past)
        if np.isfinite(past_daily) and past_daily > 0:
            past_cmp = PastComparison(
                past_start_us=past.start_us,
                past_end_us=past.end_us,
                past_daily_energy_kwh=past_daily,
                change_percent=(mean_daily / past_daily - 1.0) * 100.0,
            )

    # Base load.
    peer_base_kw = peer_cmp.peer_median_base_load_kw if peer_cmp else float("nan")
    if base_share > base_limit:
        pts = min(30.0, (base_share - base_limit) * 100.0 / 1.2)
        reasons.append(
            ScoreReason(
                f"a base load of {base_kw:.2f} kW runs around the clock, {base_share:.0%} of the consumption "
                f"(efficient {category or 'meters'}: under {base_limit:.0%})",
                pts,
            )
        )
    target_kw = base_limit * mean_daily / 24.0
    if np.isfinite(peer_base_kw) and base_kw > 1.5 * peer_base_kw:
        target_kw = min(target_kw, peer_base_kw)
    if base_kw > target_kw and (
        base_share > base_limit or (np.isfinite(peer_base_kw) and base_kw > 1.5 * peer_base_kw)
    ):
        saving = (base_kw - target_kw) * 24.0 * DAYS_PER_MONTH
        compare = (
            f", {base_kw / peer_base_kw:.1f}x that of similar meters ({peer_base_kw:.2f} kW)"
            if np.isfinite(peer_base_kw) and peer_base_kw > 0
            else f", {base_share:.0%} of your consumption"
        )
        recs.append(
            Recommendation(
                "reduce_base_load",
                f"Your base load is {base_kw:.2f} kW around the clock ({base_kw * 24:.1f} kWh/day){compare}: check "
                f"always-on appliances (old fridges and freezers, heaters, pumps, devices on standby). Bringing it "
                f"down to {target_kw:.2f} kW saves about {saving:,.0f} kWh a month.",
                saving,
            )
        )

    # Peak window.
    if peak_share > PEAK_FACTOR * flat_share and total > 0:
        pts = min(25.0, (peak_share - PEAK_FACTOR * flat_share) * 100.0)
        reasons.append(
            ScoreReason(
                f"{peak_share:.0%} of the consumption falls in the {_fmt_window(peak_window)} peak window "
                f"({flat_share:.0%} if spread evenly)",
                pts,
            )
        )
        shift_day = (peak_share - flat_share) * mean_daily
        recs.append(
            Recommendation(
                "shift_to_off_peak",
                f"{peak_share:.0%} of your consumption ({peak_share * mean_daily:.1f} kWh/day) falls in "
                f"{_fmt_window(peak_window)}: shift about {shift_day:.1f} kWh/day (washing, dishwasher, water "
                f"heating, charging) to other hours; that moves about {shift_day * DAYS_PER_MONTH:,.0f} kWh a month "
                "out of the peak (cheaper on a time-of-use tariff).",
                shift_day * DAYS_PER_MONTH,
            )
        )

    # Peer position.
    if peer_cmp is not None:
        p = peer_cmp.percentile
        med = peer_cmp.peer_median_daily_energy_kwh
        if p > 50:
            reasons.append(
                ScoreReason(
                    f"it uses {mean_daily:.1f} kWh/day, more than {p:.0f}% of {peer_cmp.peer_count} similar "
                    f"meters do (their median: {med:.1f} kWh/day)",
                    min(30.0, (p - 50.0) * 0.6),
                )
            )
        else:
            reasons.append(
                ScoreReason(
                    f"it uses {mean_daily:.1f} kWh/day, less than {100 - p:.0f}% of {peer_cmp.peer_count} similar "
                    f"meters do (their median: {med:.1f} kWh/day)",
                    -min(10.0, (50.0 - p) * 0.2),
                )
            )
        if p > 75 and mean_daily > med:
            saving = min(0.1 * mean_daily, mean_daily - med) * DAYS_PER_MONTH
            recs.append(
                Recommendation(
                    "reduce_consumption",
                    f"You use {mean_daily:.1f} kWh/day, {mean_daily / med - 1:.0%} more than the median of "
                    f"{peer_cmp.peer_count} similar meters ({med:.1f} kWh/day): cutting 10% saves about "
                    f"{saving:,.0f} kWh a month.",
                    saving,
                )
            )

    # Own past.
    if past_cmp is not None and past_cmp.change_percent > 10.0:
        reasons.append(
            ScoreReason(
                f"it uses {past_cmp.change_percent:.0f}% more per day than in the earlier period "
                f"({past_cmp.past_daily_energy_kwh:.1f} kWh/day)",
                min(15.0, (past_cmp.change_percent - 10.0) * 0.5),
            )
        )
        if past_cmp.change_percent > 15.0:
            increase = mean_daily - past_cmp.past_daily_energy_kwh
            recs.append(
                Recommendation(
                    "check_increase",
                    f"Your consumption rose {past_cmp.change_percent:.0f}% from {past_cmp.past_daily_energy_kwh:.1f} "
                    f"to {mean_daily:.1f} kWh/day compared with the earlier period: check new or faulty appliances "
                    f"(heating, cooling, a pump left on). Undoing half the rise saves about "
                    f"{increase / 2 * DAYS_PER_MONTH:,.0f} kWh a month.",
                    increase / 2 * DAYS_PER_MONTH,
                )
            )

    # Commercial buildings running through the weekend.
    if category in ("commercial", "industrial") and 0 < ratio < 1.3 and len(we):
        we_mean, wd_mean = float(we.mean()), float(wd.mean())
        excess = max(0.0, we_mean - 0.5 * wd_mean)
        if excess > 0:
            saving = excess * DAYS_PER_MONTH * 2.0 / 7.0
            recs.append(
                Recommendation(
                    "reduce_off_hours_load",
                    f"Weekend days use {we_mean:,.0f} kWh/day against {wd_mean:,.0f} kWh/day on weekdays (ratio "
                    f"{ratio:.2f}): check heating, cooling, ventilation and lighting schedules for closed days; "
                    f"bringing weekends to half the weekday level saves about {saving:,.0f} kWh a month.",
                    saving,
                )
            )

    score = round(float(np.clip(100.0 - sum(r.points for r in reasons), 0.0, 100.0)))
    ranked = sorted((r for r in reasons if r.points > 0), key=lambda r: -r.points)
    if ranked:
        explanation = (
            f"Score {score}/100, lowered mainly because " + " and ".join(r.text for r in ranked[:2]) + "."
        )
    else:
        explanation = (
            f"Score {score}/100: base load ({base_share:.0%} of consumption) and peak-window share "
            f"({peak_share:.0%}) are in the efficient range"
        )
        bonus = [r for r in reasons if r.points < 0]
        explanation += f", and {bonus[0].text}." if bonus else "."
    recs.sort(key=lambda r: -r.estimated_saving_kwh_per_month)
    return Analysis(
        meter_id=series.meter_id,
        start_us=series.start_us,
        end_us=series.end_us,
        data_coverage_percent=coverage,
        total_energy_kwh=total,
        mean_daily_energy_kwh=mean_daily,
        base_load_kw=base_kw,
        peak_hours=peak_hours,
        night_share_percent=night_share,
        weekday_weekend_ratio=ratio,
        trend_percent_per_month=float(trend),
        efficiency_score=score,
        efficiency_explanation=explanation,
        peer_comparison=peer_cmp,
        past_comparison=past_cmp,
        recommendations=tuple(recs),
        peak_share_percent=peak_share * 100.0,
        base_load_share_percent=base_share * 100.0,
        reasons=tuple(reasons),
    )
