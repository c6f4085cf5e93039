"""The tariff engine: prices usage over a billing period on the tariff versions in effect and returns
an itemised bill in exact decimals, every line saying what it charges, on what quantity, at what rate.

How a bill is put together:
- The period is cut into segments wherever the tariff version, the season or a dated rate (FPPPA)
  changes. Usage given as totals (or per time-of-use period) is shared among the segments pro rata by
  days, each share rounded to the tariff's kWh step so that the shares add up to the usage exactly.
  With an hourly profile, a time-of-use tariff prices every hour in the segment, season and period
  it falls in; a tariff without time of use takes the profile's total and shares it by days like any
  other total, so the same kWh give the same bill whatever form they come in.
- Monthly figures (slab widths, fixed charges) are scaled by the months the period counts for (see
  services.billing.periods); when two versions share a period, its months are shared by days too.
- Each version prices its own segments with its components in file order; a percentage (duty, tax)
  or minimum charge sees the subtotals of the components before it. With more than one version on a
  bill, each line says which version it comes from.
- Every line amount is rounded half-up to the tariff's line step; the total is rounded to the tariff's
  total step by a ROUNDING line, so the lines always add up to the total exactly.
- Hourly values are read to the watt-hour (0.001 kWh): finer than any meter register bills.

Everything the engine needs per tariff, period and version (segments, month shares, scaled slab
edges, the hour -> time-of-use bucket map) is computed once and cached, so that a billing cycle
pricing many meters over one period pays for it once."""

from __future__ import annotations

import datetime as dt
import enum
import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

import numpy as np

from services.billing.catalog import TariffSet, TariffVersion
from services.billing.errors import InvalidUsage
from services.billing.periods import BillingPeriod, months_between
from services.billing.schema import (
    BaselineCredit,
    DatedPerUnit,
    ExportCredit,
    Fixed,
    Minimum,
    Percentage,
    Slabs,
    TimeOfUseEnergy,
    UnmeteredPerHp,
    subtotal_of,
)

KW_PER_HP = Decimal("0.746")
HOURLY_RESOLUTION_KWH = Decimal("0.001")
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)
_ONE_HOUR = dt.timedelta(hours=1)


class LineKind(enum.Enum):
    """What a bill line charges; the names match metermesh.billing.v1.BillLineKind without its prefix."""

    ENERGY_SLAB = "energy_slab"
    FIXED_CHARGE = "fixed_charge"
    FUEL_SURCHARGE = "fuel_surcharge"
    DUTY = "duty"
    TAX = "tax"
    TIME_OF_USE = "time_of_use"
    MINIMUM_CHARGE = "minimum_charge"
    EXPORT_CREDIT = "export_credit"
    UNMETERED = "unmetered"
    ADJUSTMENT = "adjustment"
    ROUNDING = "rounding"


NOT_IN_SUBTOTAL = frozenset({LineKind.DUTY, LineKind.TAX, LineKind.ROUNDING})


@dataclass(frozen=True, slots=True)
class BillLine:
    """amount = quantity * rate rounded to the tariff's line step; for a percentage line (duty, tax)
    rate is None, quantity is the amount of the subtotals it applies to and amount = quantity *
    rate_percent / 100. MINIMUM_CHARGE and ROUNDING lines have quantity 1 and rate = amount."""

    kind: LineKind
    description: str
    quantity: Decimal
    unit: str
    rate: Decimal | None
    amount: Decimal
    subtotal: str
    rate_percent: Decimal | None = None
    applies_to: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class HourlyProfile:
    """kWh per hour from `start` (the local midnight that begins the billing period), one value per
    hour of the period: 744 for 31 days, 743 or 745 across a daylight-saving change."""

    start: dt.datetime
    import_kwh: np.ndarray
    export_kwh: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """What to price. Give import_kwh, or time_of_use_kwh (with or without import_kwh, which must then
    equal their sum within 0.001 kWh), or an hourly profile; a time-of-use tariff needs one of the last
    two. Loads are needed only by tariffs that charge by load."""

    import_kwh: Decimal | None = None
    export_kwh: Decimal | None = None
    time_of_use_kwh: Mapping[str, Decimal] | None = None
    hourly: HourlyProfile | None = None
    sanctioned_load_kw: Decimal | None = None
    connected_load_hp: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Bill:
    tariff_id: str
    tariff_versions: tuple[str, ...]  # in time order
    currency: str
    period: BillingPeriod
    import_kwh: Decimal  # as measured (before any netting)
    export_kwh: Decimal
    lines: tuple[BillLine, ...]
    subtotals: Mapping[str, Decimal]  # per subtotal name, in bill order; they add up to total
    total: Decimal

    @property
    def subtotal(self) -> Decimal:
        """The sum of all lines except duty, tax and rounding (the proto's Bill.subtotal)."""
        return sum((line.amount for line in self.lines if line.kind not in NOT_IN_SUBTOTAL), _ZERO)

    def render(self) -> str:
        """The bill as a plain-text table, for people and logs."""
        rows = [
            f"{self.tariff_id} {'+'.join(self.tariff_versions)}  {self.period}  "
            f"import {self.import_kwh} kWh  export {self.export_kwh} kWh"
        ]
        for line in self.lines:
            rate = f"{line.rate_percent}%" if line.rate_percent is not None else f"{line.rate}"
            rows.append(
                f"  {line.description:<58} {line.quantity!s:>12} {line.unit:<9} x {rate:>10} "
                f"= {line.amount!s:>12}  [{line.subtotal}]"
            )
        rows.extend(f"  subtotal {name:<49} {amount!s:>49}" for name, amount in self.subtotals.items())
        rows.append(f"  TOTAL {self.currency:<52} {self.total!s:>49}")
        return "\n".join(rows)


def quote(
    tariffs: TariffSet,
    tariff_id: str,
    usage: Usage,
    period: BillingPeriod,
    *,
    version: str | None = None,
) -> Bill:
    """Prices usage over period on tariff_id: on the versions in effect (split by days where a revision
    falls inside the period), or on one forced version for the whole period."""
    plan = _plan(tariffs, tariff_id, period, version)
    measured = _measure(plan, usage)
    lines: list[BillLine] = []
    subtotals: dict[str, Decimal] = {}
    for part in plan.parts:
        _price_part(plan, part, measured, usage, lines, subtotals)
    total = sum((line.amount for line in lines), _ZERO)
    rounding = plan.parts[-1].version.spec.rounding.total
    rounded = total.quantize(rounding, ROUND_HALF_UP)
    if rounded != total:
        diff = rounded - total
        lines.append(
            BillLine(
                LineKind.ROUNDING,
                f"Rounding of the total to {rounding} {plan.currency}",
                Decimal(1),
                "bill",
                diff,
                diff,
                "rounding",
            )
        )
        subtotals["rounding"] = diff
    return Bill(
        tariff_id=tariff_id,
        tariff_versions=tuple(p.version.version for p in plan.parts),
        currency=plan.currency,
        period=period,
        import_kwh=measured.import_kwh,
        export_kwh=measured.export_kwh,
        lines=tuple(lines),
        subtotals=MappingProxyType(subtotals),
        total=rounded,
    )


@dataclass(frozen=True, eq=False, slots=True)
class HourMap:
    """How the engine reads an hourly profile over a period on a tariff: the profile's first hour, its
    length, and (for a time-of-use tariff) the bucket (segment x time-of-use period group) every hour is
    summed into and the segment it falls in. A tariff without time of use takes only the total.

    It lets a caller that holds usage already summed per bucket (e.g. aggregated in SQL) price it
    without building the full profile: compact_profile() puts each bucket's energy on one hour of that
    bucket, which the engine measures exactly as it measures the full profile, since it never looks at
    an hour except through its bucket and segment."""

    start: dt.datetime  # UTC instant of the local midnight that begins the period
    n_hours: int
    bucket: np.ndarray | None  # hour -> bucket; None without time of use
    segment: np.ndarray | None  # hour -> segment; None without time of use
    n_buckets: int  # 1 without time of use
    bucket_segment: tuple[int, ...]  # bucket -> its segment ((0,) without time of use)
    _first_hour_of_bucket: tuple[int, ...]
    _first_hour_of_segment: tuple[int, ...]

    def compact_profile(self, import_wh: np.ndarray, export_wh: np.ndarray | None) -> HourlyProfile:
        """A profile with import_wh[b] (whole watt-hours) on the first hour of bucket b, and export per
        segment on the segment's first hour; priced exactly like the full profile it summarises."""
        imp = np.zeros(self.n_hours)
        np.add.at(imp, np.array(self._first_hour_of_bucket), np.asarray(import_wh, dtype=np.float64) / 1000.0)
        exp = None
        if export_wh is not None:
            exp = np.zeros(self.n_hours)
            np.add.at(
                exp, np.array(self._first_hour_of_segment), np.asarray(export_wh, dtype=np.float64) / 1000.0
            )
        return HourlyProfile(self.start, imp, exp)


@functools.lru_cache(maxsize=256)
def hour_map(
    tariffs: TariffSet, tariff_id: str, period: BillingPeriod, *, version: str | None = None
) -> HourMap:
    """The HourMap of period on tariff_id (on the versions in effect, or the one forced)."""
    plan = _plan(tariffs, tariff_id, period, version)
    if plan.hour_bucket is None or plan.hour_segment is None:
        return HourMap(plan.start_instant, plan.n_hours, None, None, 1, (0,), (0,), (0,))
    n_buckets = len(plan.segments) * len(plan.period_names)
    first_of_bucket = [-1] * n_buckets
    bucket_segment = [0] * n_buckets
    first_of_segment = [-1] * len(plan.segments)
    for h, (b, s) in enumerate(zip(plan.hour_bucket.tolist(), plan.hour_segment.tolist(), strict=True)):
        if first_of_bucket[b] < 0:
            first_of_bucket[b] = h
            bucket_segment[b] = s
        if first_of_segment[s] < 0:
            first_of_segment[s] = h
    # Buckets no hour falls in (periods merged into their group, hours a season lacks) hold no energy;
    # pointing them at hour 0 adds nothing there (compact_profile adds, never overwrites).
    return HourMap(
        plan.start_instant,
        plan.n_hours,
        plan.hour_bucket,
        plan.hour_segment,
        n_buckets,
        tuple(bucket_segment),
        tuple(max(h, 0) for h in first_of_bucket),
        tuple(max(h, 0) for h in first_of_segment),
    )


# --- the plan: everything that depends on tariff, period and version only ---------------------------


@dataclass(frozen=True, eq=False, slots=True)
class _Segment:
    start: dt.date
    end: dt.date
    days: int
    part: int
    season: int
    dated: Mapping[int, int]  # component index -> index of the dated rate in force


@dataclass(frozen=True, eq=False, slots=True)
class _Part:
    """The days of the period one version prices."""

    version: TariffVersion
    start: dt.date
    end: dt.date
    days: int
    months: Decimal
    segments: range
    # Slab component index -> per block: (upper kWh edge scaled to this part or None, rate,
    # telescopic line label, non-telescopic line label); precomputed because a cycle prices many
    # meters on one part.
    slabs: Mapping[int, tuple[tuple[Decimal | None, Decimal, str, str], ...]]
    period_map: tuple[int, ...]  # the version's period index -> the plan's
    subtotal_names: tuple[str, ...]  # per component
    export: ExportCredit | None
    prefix: str  # "[version] " on bills that span versions, else ""
    # Time-of-use component index -> (segment, plan period group, rate, line label) for every group
    # the component prices in this part; filled in once the groups are known.
    time_of_use: dict[int, tuple[tuple[int, int, Decimal, str], ...]]


@dataclass(frozen=True, eq=False, slots=True)
class _Plan:
    tariff_id: str
    currency: str
    period: BillingPeriod
    parts: tuple[_Part, ...]
    segments: tuple[_Segment, ...]
    kwh_quantum: Decimal
    period_names: tuple[str, ...]  # union of the versions' time-of-use periods; () without
    # Period -> the first period with the same rates in every segment. Usage is measured per group,
    # so moving kWh between periods that share a rate can never change a bill, not even by the
    # rounding of a pro-rata share.
    period_group: tuple[int, ...]
    start_instant: dt.datetime
    n_hours: int
    hour_bucket: np.ndarray | None  # hour -> segment * len(period_names) + its period's group
    hour_segment: np.ndarray | None  # hour -> segment


@functools.lru_cache(maxsize=512)
def _plan(tariffs: TariffSet, tariff_id: str, period: BillingPeriod, version: str | None) -> _Plan:
    if version:
        forced = tariffs.get(tariff_id, version)
        covering = [(forced, period.start, period.end)]
    else:
        covering = tariffs.covering(tariff_id, period.start, period.end)
    first = covering[0][0]
    kwh_quantum = min(v.spec.rounding.kwh for v, _, _ in covering)
    months_total = months_between(period.start, period.end, first.spec.rounding.months)
    month_shares = _apportion(
        months_total, [(e - s).days for _, s, e in covering], first.spec.rounding.months
    )
    period_names: list[str] = []
    for v, _, _ in covering:
        period_names.extend(p for p in v.period_names if p not in period_names)

    parts: list[_Part] = []
    segments: list[_Segment] = []
    for ix, ((v, start, end), months) in enumerate(zip(covering, month_shares, strict=True)):
        cuts = {start, end}
        if v.spec.seasons:
            day = dt.date(start.year, start.month, 1)
            while day < end:
                nxt = dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)
                if start < nxt < end and v.season_of(nxt) != v.season_of(day):
                    cuts.add(nxt)
                day = nxt
        dated_components = [(ci, c) for ci, c in enumerate(v.spec.components) if isinstance(c, DatedPerUnit)]
        for _, c in dated_components:
            cuts.update(r.start for r in c.rates if start < r.start < end)
        bounds = sorted(cuts)
        first_segment = len(segments)
        for s, e in itertools.pairwise(bounds):
            dated: dict[int, int] = {}
            for ci, c in dated_components:
                in_force = [i for i, r in enumerate(c.rates) if r.start <= s]
                if not in_force:
                    raise InvalidUsage(
                        "tariff_version",
                        f"{v.tariff_id} {v.version}: {c.name} has no rate before {c.rates[0].start}, "
                        f"needed from {s}",
                    )
                dated[ci] = in_force[-1]
            segments.append(_Segment(s, e, (e - s).days, ix, v.season_of(s), dated))
        slabs = {}
        for ci, c in enumerate(v.spec.components):
            if isinstance(c, Slabs):
                blocks, low = [], _ZERO
                for b in c.blocks:
                    high = (
                        None
                        if b.up_to is None
                        else (b.up_to * months).quantize(v.spec.rounding.kwh, ROUND_HALF_UP)
                    )
                    if high is not None:
                        span = f" {_plain(low)}-{_plain(high)} kWh"
                    else:
                        span = f" above {_plain(low)} kWh" if low else ""
                    blocks.append(
                        (
                            high,
                            b.rate,
                            f"{c.name}{span}",
                            f"{c.name}, all units at the{span or ' single'} slab rate (non-telescopic)",
                        )
                    )
                    low = high if high is not None else low
                slabs[ci] = tuple(blocks)
        parts.append(
            _Part(
                v,
                start,
                end,
                (end - start).days,
                months,
                range(first_segment, len(segments)),
                slabs,
                tuple(period_names.index(p) for p in v.period_names),
                tuple(subtotal_of(c) for c in v.spec.components),
                next((c for c in v.spec.components if isinstance(c, ExportCredit)), None),
                f"[{v.version}] " if len(covering) > 1 else "",
                {},
            )
        )

    tz = first.tz
    start_instant = dt.datetime.combine(period.start, dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    end_instant = dt.datetime.combine(period.end, dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    n_hours = int((end_instant - start_instant) / _ONE_HOUR)
    groups = _period_groups(parts, segments, period_names)
    for part in parts:
        _time_of_use_entries(part, segments, groups)
    hour_bucket = hour_segment = None
    if period_names:
        hour_bucket, hour_segment = _hour_maps(parts, segments, groups, start_instant, n_hours, tz)
    return _Plan(
        tariff_id,
        first.currency,
        period,
        tuple(parts),
        tuple(segments),
        kwh_quantum,
        tuple(period_names),
        groups,
        start_instant,
        n_hours,
        hour_bucket,
        hour_segment,
    )


def _period_groups(parts: list[_Part], segments: list[_Segment], period_names: list[str]) -> tuple[int, ...]:
    keys: list[tuple[object, ...]] = []
    for name in period_names:
        key: list[object] = []
        for s in segments:
            v = parts[s.part].version
            season = v.season_names[s.season]
            key.append(
                tuple(
                    (c.rates[season] if season else c.rates)[name]  # type: ignore[index]
                    for c in v.spec.components
                    if isinstance(c, TimeOfUseEnergy)
                )
                if name in v.period_names
                else None
            )
        keys.append(tuple(key))
    return tuple(keys.index(k) for k in keys)


def _time_of_use_entries(part: _Part, segments: list[_Segment], groups: tuple[int, ...]) -> None:
    v = part.version
    for ci, c in enumerate(v.spec.components):
        if not isinstance(c, TimeOfUseEnergy):
            continue
        entries = []
        for i in part.segments:
            season = v.season_names[segments[i].season]
            rates = c.rates[season] if season else c.rates
            for local, plan_p in enumerate(part.period_map):
                if groups[plan_p] != plan_p:
                    continue  # measured with the first period of its group
                members = " + ".join(
                    v.period_names[m] for m, q in enumerate(part.period_map) if groups[q] == plan_p
                )
                rate = rates[v.period_names[local]]  # type: ignore[index]
                entries.append((i, plan_p, rate, f"{season} {members}" if season else members))
        part.time_of_use[ci] = tuple(entries)


def _hour_maps(
    parts: list[_Part],
    segments: list[_Segment],
    groups: tuple[int, ...],
    start_instant: dt.datetime,
    n_hours: int,
    tz: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """For each hour of the period: its segment, and its bucket (segment x time-of-use period), from
    the local time of the hour's start (so daylight-saving days have 23 or 25 hours)."""
    seg_starts = [s.start for s in segments]
    bucket = np.empty(n_hours, dtype=np.intp)
    seg_of_hour = np.empty(n_hours, dtype=np.intp)
    seg = 0
    for h in range(n_hours):
        local = (start_instant + h * _ONE_HOUR).astimezone(tz)
        day = local.date()
        while seg + 1 < len(segments) and seg_starts[seg + 1] <= day:
            seg += 1
        s = segments[seg]
        part = parts[s.part]
        table = part.version.period_table
        local_period = 0 if table is None else int(table[s.season, local.weekday(), local.hour])
        bucket[h] = seg * len(groups) + groups[part.period_map[local_period]]
        seg_of_hour[h] = seg
    return bucket, seg_of_hour


# --- measuring the usage into segments ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Measured:
    import_kwh: Decimal
    export_kwh: Decimal
    seg_import: list[Decimal]
    seg_export: list[Decimal]
    seg_tou: list[list[Decimal]] | None  # [segment][plan period]


def _measure(plan: _Plan, usage: Usage) -> _Measured:
    seg_days = [s.days for s in plan.segments]
    n_seg = len(seg_days)
    tou = bool(plan.period_names)
    if usage.hourly is not None:
        if usage.import_kwh is not None or usage.time_of_use_kwh is not None:
            raise InvalidUsage("usage", "give either totals (import_kwh, time_of_use) or hourly, not both")
        return _measure_hourly(plan, usage.hourly, seg_days)

    import_total = _kwh(usage.import_kwh, "usage.import_kwh")
    export_total = _kwh(usage.export_kwh, "usage.export_kwh")
    seg_export = _apportion(export_total, seg_days, plan.kwh_quantum)
    if not tou:
        if usage.time_of_use_kwh:
            name = next(iter(usage.time_of_use_kwh))
            raise InvalidUsage(
                f"usage.time_of_use[{name!r}]",
                f"tariff {plan.tariff_id} has no time-of-use periods; give import_kwh instead",
            )
        seg_import = _apportion(import_total, seg_days, plan.kwh_quantum)
        return _Measured(import_total, export_total, seg_import, seg_export, None)

    if usage.time_of_use_kwh is None:
        raise InvalidUsage(
            "usage.time_of_use",
            f"tariff {plan.tariff_id} prices by time of use (periods: {', '.join(plan.period_names)}); "
            f"give kWh per period or an hourly profile",
        )
    per_period = [_ZERO] * len(plan.period_names)
    for name, value in usage.time_of_use_kwh.items():
        field = f"usage.time_of_use[{name!r}]"
        if name not in plan.period_names:
            raise InvalidUsage(
                field,
                f"tariff {plan.tariff_id} has no time-of-use period {name!r} "
                f"(it has {', '.join(plan.period_names)})",
            )
        per_period[plan.period_names.index(name)] = _kwh(value, field)
    tou_total = sum(per_period, _ZERO)
    if usage.import_kwh is not None and abs(tou_total - import_total) > HOURLY_RESOLUTION_KWH:
        raise InvalidUsage(
            "usage.time_of_use",
            f"the periods add up to {tou_total} kWh but import_kwh is {import_total}; they must agree",
        )
    grouped = [_ZERO] * len(per_period)
    for p, kwh in enumerate(per_period):
        if kwh == 0:
            continue
        for part in plan.parts:
            if p not in part.period_map:
                raise InvalidUsage(
                    f"usage.time_of_use[{plan.period_names[p]!r}]",
                    f"version {part.version.version} of {plan.tariff_id} has no period "
                    f"{plan.period_names[p]!r}; give an hourly profile",
                )
        grouped[plan.period_group[p]] += kwh
    seg_tou = [[_ZERO] * len(per_period) for _ in range(n_seg)]
    for p, kwh in enumerate(grouped):
        if kwh:
            for s, share in enumerate(_apportion(kwh, seg_days, plan.kwh_quantum)):
                seg_tou[s][p] = share
    seg_import = [sum(row, _ZERO) for row in seg_tou]
    return _Measured(tou_total, export_total, seg_import, seg_export, seg_tou)


def _measure_hourly(plan: _Plan, hourly: HourlyProfile, seg_days: list[int]) -> _Measured:
    if hourly.start.tzinfo is None or hourly.start != plan.start_instant:
        raise InvalidUsage(
            "usage.hourly.start",
            f"{hourly.start.isoformat()} is not the start of the billing period "
            f"({plan.period.start} 00:00 in {plan.parts[0].version.spec.time_zone} = "
            f"{plan.start_instant.isoformat()})",
        )
    wh_import = _watt_hours(hourly.import_kwh, "usage.hourly.import_kwh", plan.n_hours)
    wh_export = (
        None
        if hourly.export_kwh is None
        else _watt_hours(hourly.export_kwh, "usage.hourly.export_kwh", plan.n_hours)
    )
    import_total = _from_wh(wh_import.sum())
    export_total = _ZERO if wh_export is None else _from_wh(wh_export.sum())
    n_seg = len(seg_days)
    if plan.hour_bucket is None or plan.hour_segment is None:
        return _Measured(
            import_total,
            export_total,
            _apportion(import_total, seg_days, plan.kwh_quantum),
            _apportion(export_total, seg_days, plan.kwh_quantum),
            None,
        )
    n_p = len(plan.period_names)
    sums = np.bincount(plan.hour_bucket, weights=wh_import, minlength=n_seg * n_p)
    seg_tou = [[_from_wh(sums[s * n_p + p]) for p in range(n_p)] for s in range(n_seg)]
    if wh_export is None:
        seg_export = [_ZERO] * n_seg
    else:
        seg_export = [_from_wh(x) for x in np.bincount(plan.hour_segment, weights=wh_export, minlength=n_seg)]
    return _Measured(import_total, export_total, [sum(row, _ZERO) for row in seg_tou], seg_export, seg_tou)


def _watt_hours(values: Any, field: str, n_hours: int) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or len(a) != n_hours:
        raise InvalidUsage(
            field, f"has {a.size} values; the billing period has {n_hours} hours, one value per hour"
        )
    # Two reductions tell a good profile (the common case) apart: a NaN makes min() NaN, an infinity
    # makes sum() infinite. Only a bad one pays for finding the first bad hour.
    if not (a.min() >= 0 and np.isfinite(a.sum())):
        i = int(np.flatnonzero(~np.isfinite(a) | (a < 0))[0])
        raise InvalidUsage(f"{field}[{i}]", f"is {float(a[i])!r}; must be a finite kWh >= 0")
    # Whole watt-hours summed as float64 stay exact integers up to 2**53 Wh, far past any meter.
    return np.rint(a * 1000.0)


def _from_wh(wh: float) -> Decimal:
    return Decimal(int(wh)).scaleb(-3)


def _kwh(value: Any, field: str) -> Decimal:
    if value is None:
        return _ZERO
    d = _decimal(value, field)
    if d < 0:
        raise InvalidUsage(field, f"is {d}; energy is never negative")
    return d


def _decimal(value: Any, field: str) -> Decimal:
    try:
        if isinstance(value, Decimal):
            d = value
        elif isinstance(value, float):
            d = Decimal(repr(value))
        elif isinstance(value, int | str) and not isinstance(value, bool):
            d = Decimal(value)
        else:
            raise InvalidOperation
    except InvalidOperation:
        raise InvalidUsage(field, f"{value!r} is not a number") from None
    if not d.is_finite():
        raise InvalidUsage(field, f"is {value!r}; must be finite")
    return d


def _apportion(total: Decimal, weights: list[int], quantum: Decimal) -> list[Decimal]:
    """Shares of total in proportion to weights, rounded on the cumulative sum so that they add up to
    total exactly and no share is negative."""
    if len(weights) == 1:
        return [total]
    if total == 0:
        return [_ZERO] * len(weights)
    whole = sum(weights)
    shares: list[Decimal] = []
    running = 0
    before = _ZERO
    for w in weights[:-1]:
        running += w
        upto = min(total, (total * running / whole).quantize(quantum, ROUND_HALF_UP))
        shares.append(upto - before)
        before = upto
    shares.append(total - before)
    return shares


# --- pricing one version's part of the period ---------------------------------------------------------


def _price_part(
    plan: _Plan,
    part: _Part,
    measured: _Measured,
    usage: Usage,
    lines: list[BillLine],
    bill_subtotals: dict[str, Decimal],
) -> None:
    v = part.version
    spec = v.spec
    line_q = spec.rounding.line
    currency = spec.currency
    prefix = part.prefix
    tag = v.version
    segs = [plan.segments[i] for i in part.segments]
    seg_ix = part.segments

    imported = [measured.seg_import[i] for i in seg_ix]
    credit_kwh = _ZERO
    export = part.export
    if export is not None:
        exported = [measured.seg_export[i] for i in seg_ix]
        if export.mode == "netting":
            gross_in, gross_out = sum(imported, _ZERO), sum(exported, _ZERO)
            net = max(gross_in - gross_out, _ZERO)
            credit_kwh = max(gross_out - gross_in, _ZERO)
            imported = _apportion(net, [s.days for s in segs], plan.kwh_quantum)
        else:
            credit_kwh = sum(exported, _ZERO)
    billed = sum(imported, _ZERO)

    sub: dict[str, Decimal] = {}

    def add(kind: LineKind, desc: str, qty: Decimal, unit: str, rate: Decimal, name: str) -> None:
        amount = (qty * rate).quantize(line_q, ROUND_HALF_UP)
        lines.append(
            BillLine(kind, prefix + desc if prefix else desc, qty, unit, rate, amount, name, version=tag)
        )
        sub[name] = sub.get(name, _ZERO) + amount

    for ci, c in enumerate(spec.components):
        name = part.subtotal_names[ci]
        if isinstance(c, Slabs):
            blocks = part.slabs[ci]
            if c.mode == "telescopic":
                low = _ZERO
                for high, rate, label, _ in blocks:
                    if billed <= low:
                        break
                    top = billed if high is None or billed < high else high
                    if top > low:  # a block scaled down to no width is skipped, not the end
                        add(LineKind.ENERGY_SLAB, label, top - low, "kWh", rate, name)
                    if high is None:
                        break
                    low = high
            elif billed > 0:
                for high, rate, _, label in blocks:
                    if high is None or billed <= high:
                        add(LineKind.ENERGY_SLAB, label, billed, "kWh", rate, name)
                        break
        elif isinstance(c, TimeOfUseEnergy):
            _price_time_of_use(part, ci, c, measured, add, name)
        elif isinstance(c, Fixed):
            per_qty = part.months if c.per == "month" else Decimal(part.days)
            if c.basis == "per_installation":
                add(LineKind.FIXED_CHARGE, c.name, per_qty, c.per, c.amount or _ZERO, name)
            elif c.basis == "load_band":
                kw = _load_kw(usage, c.load_step, plan.tariff_id, c.name)
                low = _ZERO
                for band in c.bands or []:
                    if band.up_to_kw is None or kw <= band.up_to_kw:
                        span = (
                            f"above {low} kW"
                            if band.up_to_kw is None
                            else (
                                f"up to {band.up_to_kw} kW"
                                if low == 0
                                else f"above {low} to {band.up_to_kw} kW"
                            )
                        )
                        add(
                            LineKind.FIXED_CHARGE,
                            f"{c.name}, load {kw} kW ({span})",
                            per_qty,
                            c.per,
                            band.amount,
                            name,
                        )
                        break
                    low = band.up_to_kw
            elif c.basis == "per_kw":
                kw = _load_kw(usage, c.load_step, plan.tariff_id, c.name)
                add(
                    LineKind.FIXED_CHARGE,
                    f"{c.name}, load {kw} kW",
                    kw * per_qty,
                    f"kW-{c.per}",
                    c.rate or _ZERO,
                    name,
                )
            else:
                hp = _load_hp(usage, c.load_step, plan.tariff_id, c.name)
                add(
                    LineKind.FIXED_CHARGE,
                    f"{c.name}, load {hp} HP",
                    hp * per_qty,
                    f"HP-{c.per}",
                    c.rate or _ZERO,
                    name,
                )
        elif isinstance(c, DatedPerUnit):
            # One line per run of segments on the same dated rate, so a change of rate inside the
            # period shows as separate lines with their dates.
            runs: list[tuple[dt.date, dt.date, Decimal, int]] = []
            for s, kwh in zip(segs, imported, strict=True):
                if runs and runs[-1][3] == s.dated[ci]:
                    start, _, total, rate_ix = runs[-1]
                    runs[-1] = (start, s.end, total + kwh, rate_ix)
                else:
                    runs.append((s.start, s.end, kwh, s.dated[ci]))
            for start, end, kwh, rate_ix in runs:
                if kwh == 0:
                    continue
                rate = c.rates[rate_ix]
                when = f" {start}..{end - dt.timedelta(days=1)}" if len(runs) > 1 else ""
                add(
                    LineKind.FUEL_SURCHARGE,
                    f"{c.name}{when} (rate from {rate.start})",
                    kwh,
                    "kWh",
                    rate.rate,
                    name,
                )
        elif isinstance(c, BaselineCredit):
            allowance_per_day = c.daily_allowance_kwh
            allowance = sum(
                (
                    Decimal(s.days)
                    * (
                        allowance_per_day[v.season_names[s.season]]
                        if isinstance(allowance_per_day, dict)
                        else allowance_per_day
                    )
                    for s in segs
                ),
                _ZERO,
            )
            qty = min(billed, allowance)
            if qty > 0:
                add(LineKind.ADJUSTMENT, f"{c.name} (baseline {allowance} kWh)", qty, "kWh", -c.rate, name)
        elif isinstance(c, Percentage):
            base = sum((sub.get(n, _ZERO) for n in c.of), _ZERO)
            if base != 0:
                amount = (base * c.percent / _HUNDRED).quantize(line_q, ROUND_HALF_UP)
                kind = LineKind.DUTY if c.line_kind == "duty" else LineKind.TAX
                lines.append(
                    BillLine(
                        kind,
                        prefix + f"{c.name} {c.percent}%",
                        base,
                        currency,
                        None,
                        amount,
                        name,
                        rate_percent=c.percent,
                        applies_to=" + ".join(c.of),
                        version=tag,
                    )
                )
                sub[name] = sub.get(name, _ZERO) + amount
        elif isinstance(c, Minimum):
            per_qty = part.months if c.per == "month" else Decimal(part.days)
            floor = (c.amount * per_qty).quantize(line_q, ROUND_HALF_UP)
            charged = sum((sub.get(n, _ZERO) for n in c.of), _ZERO)
            if charged < floor:
                top_up = floor - charged
                add(
                    LineKind.MINIMUM_CHARGE,
                    f"{c.name}: top-up to {floor} ({per_qty} {c.per} x {c.amount}); "
                    f"{' + '.join(c.of)} came to {charged}",
                    Decimal(1),
                    "bill",
                    top_up,
                    name,
                )
        elif isinstance(c, ExportCredit):
            if credit_kwh > 0:
                what = "surplus export after netting" if c.mode == "netting" else "export"
                add(LineKind.EXPORT_CREDIT, f"{c.name} ({what})", credit_kwh, "kWh", -c.rate, name)
        elif isinstance(c, UnmeteredPerHp):
            hp = _load_hp(usage, c.load_step, plan.tariff_id, c.name)
            add(LineKind.UNMETERED, f"{c.name}, {hp} HP", hp * part.months, "HP-month", c.rate, name)
    for key, amount in sub.items():
        bill_subtotals[key] = bill_subtotals.get(key, _ZERO) + amount


def _price_time_of_use(
    part: _Part, ci: int, c: TimeOfUseEnergy, measured: _Measured, add: Any, name: str
) -> None:
    # One line per distinct rate: periods (and seasons) that share a rate are charged together, so
    # how usage is split between them can never change the bill by a rounding cent.
    assert measured.seg_tou is not None
    by_rate: dict[Decimal, tuple[Decimal, list[str]]] = {}
    for i, plan_p, rate, label in part.time_of_use[ci]:
        kwh = measured.seg_tou[i][plan_p]
        if kwh:
            qty, labels = by_rate.get(rate, (_ZERO, []))
            if label not in labels:
                labels.append(label)
            by_rate[rate] = (qty + kwh, labels)
    for rate, (qty, labels) in by_rate.items():
        add(LineKind.TIME_OF_USE, f"{c.name}, {' + '.join(labels)}", qty, "kWh", rate, name)


def _load_kw(usage: Usage, step: Decimal, tariff_id: str, component: str) -> Decimal:
    if usage.sanctioned_load_kw is not None:
        kw = _decimal(usage.sanctioned_load_kw, "usage.sanctioned_load_kw")
        field = "usage.sanctioned_load_kw"
    elif usage.connected_load_hp is not None:
        kw = _decimal(usage.connected_load_hp, "usage.connected_load_hp") * KW_PER_HP
        field = "usage.connected_load_hp"
    else:
        raise InvalidUsage(
            "usage.sanctioned_load_kw",
            f"tariff {tariff_id} charges {component!r} by load; give the sanctioned load in kW",
        )
    if kw <= 0:
        raise InvalidUsage(field, f"is {kw} kW; a load must be > 0")
    return _round_up(kw, step)


def _load_hp(usage: Usage, step: Decimal, tariff_id: str, component: str) -> Decimal:
    if usage.connected_load_hp is not None:
        hp = _decimal(usage.connected_load_hp, "usage.connected_load_hp")
        field = "usage.connected_load_hp"
    elif usage.sanctioned_load_kw is not None:
        hp = _decimal(usage.sanctioned_load_kw, "usage.sanctioned_load_kw") / KW_PER_HP
        field = "usage.sanctioned_load_kw"
    else:
        raise InvalidUsage(
            "usage.connected_load_hp",
            f"tariff {tariff_id} charges {component!r} per HP; give the connected load in HP",
        )
    if hp <= 0:
        raise InvalidUsage(field, f"is {hp}; a load must be > 0")
    return _round_up(hp, step)


@functools.lru_cache(maxsize=4096)
def _round_up(load: Decimal, step: Decimal) -> Decimal:
    """The load rounded up to the next multiple of step (2.1 kW -> 2.5 kW; 2.0 stays 2.0)."""
    return _plain((load / step).to_integral_value(ROUND_CEILING) * step)


def _plain(d: Decimal) -> Decimal:
    """d without trailing zeros, never in exponent form (normalize() alone writes 20 as 2E+1)."""
    n = d.normalize()
    return n.quantize(Decimal(1)) if n.as_tuple().exponent > 0 else n  # type: ignore[operator]
