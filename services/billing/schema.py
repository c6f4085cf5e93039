"""The tariff file format: pydantic models that a tariff YAML file must satisfy, with the cross-field
rules (slabs ascending, seasons covering the year once, time-of-use windows not overlapping, ...)
that keep the engine from ever meeting a tariff it cannot price.

One file is one version of one tariff. Money and energy figures are decimals: write them as strings
("3.05") or plain YAML numbers (read through their shortest repr, so 3.05 stays 3.05)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
TARIFF_ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a decimal number")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        # repr is the shortest string that reads back as the same float: 3.05, not 3.0499999...
        d = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        raise ValueError(f"{value!r} is not a decimal number")
    if not d.is_finite():
        raise ValueError(f"{value!r} is not a finite decimal number")
    return d


def _non_negative(d: Decimal) -> Decimal:
    if d < 0:
        raise ValueError(f"{d} is negative; must be >= 0")
    return d


def _positive(d: Decimal) -> Decimal:
    if d <= 0:
        raise ValueError(f"{d} must be > 0")
    return d


def _quantum(d: Decimal) -> Decimal:
    # A rounding step must be a power of ten (1, 0.1, 0.01, ...): amounts are rounded to places, never
    # to odd steps such as 0.05.
    # normalize() so that "1.0" rounds to whole units, as it reads, not to one place.
    n = d.normalize()
    if d <= 0 or d > 1 or n.as_tuple().digits != (1,):
        raise ValueError(f"{d} is not a power of ten such as 1, 0.1 or 0.01")
    return n


def _time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone such as 'Asia/Kolkata'") from None
    return name


def _hour_of_day(value: Any) -> int:
    # Hourly meter data is the finest the engine prices, so windows start and end on whole hours.
    text = str(value)
    m = re.fullmatch(r"(\d{1,2}):00", text)
    if not m or int(m.group(1)) > 24:
        raise ValueError(f"{text!r} is not a whole hour between '00:00' and '24:00'")
    return int(m.group(1))


Dec = Annotated[Decimal, BeforeValidator(_to_decimal)]
NonNegative = Annotated[Decimal, BeforeValidator(_to_decimal), AfterValidator(_non_negative)]
Positive = Annotated[Decimal, BeforeValidator(_to_decimal), AfterValidator(_positive)]
Quantum = Annotated[Decimal, BeforeValidator(_to_decimal), AfterValidator(_quantum)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=40)]
Hour = Annotated[int, BeforeValidator(_hour_of_day)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Source(_Strict):
    citation: str = Field(min_length=1)
    url: str = Field(default="", pattern=r"^(https?://\S+)?$")


class Rounding(_Strict):
    """Where the tariff rounds: each line amount, the total, kWh quantities the engine derives
    (scaled slab widths, pro-rata shares) and month counts of partial months. Always half-up."""

    line: Quantum = Decimal("0.01")
    total: Quantum = Decimal("0.01")
    kwh: Quantum = Decimal("0.01")
    months: Quantum = Decimal("0.0001")


class Season(_Strict):
    name: Name
    months: list[Annotated[int, Field(ge=1, le=12)]] = Field(min_length=1)


class Window(_Strict):
    """Hours [start, end) on the given days; start > end wraps past midnight (23:00-06:00)."""

    days: Literal["all", "weekdays", "weekends"] = "all"
    start: Hour
    end: Hour
    seasons: list[Name] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Window:
        if self.start % 24 == self.end % 24:
            raise ValueError(f"window {self.start:02d}:00-{self.end:02d}:00 is empty or the whole day")
        return self


class TouPeriod(_Strict):
    name: Name
    default: bool = False
    windows: list[Window] = []


class TimeOfUse(_Strict):
    periods: list[TouPeriod] = Field(min_length=2)


class SlabBlock(_Strict):
    up_to: Positive | None = None
    rate: NonNegative


class _Component(_Strict):
    name: str = Field(min_length=1)
    description: str = ""


class Slabs(_Component):
    """Energy charge in blocks of kWh per month (scaled to the billing period): telescopic bills each
    block at its own rate (Lago's "graduated"), non-telescopic bills every unit at the rate of the block
    the usage reaches (Lago's "volume")."""

    type: Literal["slabs"]
    subtotal: Name = "energy"
    mode: Literal["telescopic", "non_telescopic"]
    blocks: list[SlabBlock] = Field(min_length=1)

    @model_validator(mode="after")
    def _ascending(self) -> Slabs:
        *closed, last = self.blocks
        if last.up_to is not None:
            raise ValueError(f"blocks[{len(self.blocks) - 1}].up_to: the last block must be open (no up_to)")
        previous = Decimal(0)
        for i, b in enumerate(closed):
            if b.up_to is None:
                raise ValueError(f"blocks[{i}].up_to: only the last block may be open")
            if b.up_to <= previous:
                raise ValueError(f"blocks[{i}].up_to: {b.up_to} is not above the previous block's {previous}")
            previous = b.up_to
        return self


class TimeOfUseEnergy(_Component):
    """Energy charge per time-of-use period: rates by period, or by season then period."""

    type: Literal["time_of_use"]
    subtotal: Name = "energy"
    rates: dict[str, NonNegative] | dict[str, dict[str, NonNegative]]


class LoadBand(_Strict):
    up_to_kw: Positive | None = None
    amount: NonNegative


class Fixed(_Component):
    """A fixed or standing charge per month or per day: per installation, by sanctioned-load band, per
    kW or per HP of load (rounded up to load_step first)."""

    type: Literal["fixed"]
    subtotal: Name = "fixed"
    basis: Literal["per_installation", "load_band", "per_kw", "per_hp"]
    per: Literal["month", "day"] = "month"
    amount: NonNegative | None = None
    bands: list[LoadBand] | None = None
    rate: NonNegative | None = None
    load_step: Positive = Decimal("0.5")

    @model_validator(mode="after")
    def _fields_for_basis(self) -> Fixed:
        wanted = {"per_installation": "amount", "load_band": "bands", "per_kw": "rate", "per_hp": "rate"}[
            self.basis
        ]
        for field in ("amount", "bands", "rate"):
            given = getattr(self, field) is not None
            if field == wanted and not given:
                raise ValueError(f"{field}: required when basis is {self.basis}")
            if field != wanted and given:
                raise ValueError(f"{field}: not used when basis is {self.basis}; give {wanted}")
        if self.bands is not None:
            *closed, last = self.bands
            if last.up_to_kw is not None:
                raise ValueError(f"bands[{len(self.bands) - 1}].up_to_kw: the last band must be open")
            previous = Decimal(0)
            for i, b in enumerate(closed):
                if b.up_to_kw is None or b.up_to_kw <= previous:
                    raise ValueError(f"bands[{i}].up_to_kw: {b.up_to_kw} is not above {previous}")
                previous = b.up_to_kw
        return self


class DatedRate(_Strict):
    start: dt.date = Field(alias="from")
    rate: Dec
    note: str = ""


class DatedPerUnit(_Component):
    """A per-kWh adjustment whose rate changes by date (fuel and power purchase cost adjustments); each
    rate applies from its date until the next one."""

    type: Literal["dated_per_unit"]
    subtotal: Name = "fuel_surcharge"
    rates: list[DatedRate] = Field(min_length=1)

    @model_validator(mode="after")
    def _ascending(self) -> DatedPerUnit:
        for i in range(1, len(self.rates)):
            if self.rates[i].start <= self.rates[i - 1].start:
                raise ValueError(
                    f"rates[{i}].from: {self.rates[i].start} is not after {self.rates[i - 1].start}"
                )
        return self


class BaselineCredit(_Component):
    """A credit per kWh on usage up to a daily allowance (by season, if the tariff has seasons)."""

    type: Literal["baseline_credit"]
    subtotal: Name = "energy"
    rate: Positive
    daily_allowance_kwh: NonNegative | dict[str, NonNegative]


class Percentage(_Component):
    """A duty or tax: a percentage of the sum of named subtotals of earlier components."""

    type: Literal["percentage"]
    line_kind: Literal["duty", "tax"]
    subtotal: Name | None = None  # defaults to line_kind
    percent: NonNegative
    of: list[Name] = Field(min_length=1)


class Minimum(_Component):
    """A minimum charge per day or per month: when the named subtotals fall below it, a top-up line
    makes up the difference."""

    type: Literal["minimum"]
    subtotal: Name = "minimum"
    per: Literal["day", "month"]
    amount: NonNegative
    of: list[Name] = Field(min_length=1)


class ExportCredit(_Component):
    """Rooftop solar export. netting: export is set off against import over the billing period, the
    per-kWh charges apply to the net import, and any surplus is credited at rate. net_billing: every
    exported kWh is credited at rate and import is billed in full."""

    type: Literal["export_credit"]
    subtotal: Name = "export"
    mode: Literal["netting", "net_billing"]
    rate: NonNegative


class UnmeteredPerHp(_Component):
    """Unmetered supply (agricultural pumps) charged per HP of connected load per month."""

    type: Literal["unmetered_per_hp"]
    subtotal: Name = "energy"
    rate: NonNegative
    load_step: Positive = Decimal("0.5")


Component = Annotated[
    Slabs
    | TimeOfUseEnergy
    | Fixed
    | DatedPerUnit
    | BaselineCredit
    | Percentage
    | Minimum
    | ExportCredit
    | UnmeteredPerHp,
    Field(discriminator="type"),
]

PER_UNIT_TYPES = ("slabs", "time_of_use", "dated_per_unit", "baseline_credit")


class TariffFile(_Strict):
    id: str = Field(pattern=TARIFF_ID_PATTERN, max_length=64)
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=32)
    name: str = Field(min_length=1)
    utility: str = Field(min_length=1)
    category: Literal["residential", "commercial", "industrial", "agricultural", "feeder"]
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    time_zone: Annotated[str, AfterValidator(_time_zone)]
    effective_start: dt.date
    effective_end: dt.date | None = None  # inclusive; None while open-ended
    source: Source
    note: str = Field(min_length=1)
    description: str = ""
    rounding: Rounding = Rounding()
    seasons: list[Season] | None = None
    time_of_use: TimeOfUse | None = None
    components: list[Component] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> TariffFile:
        if self.effective_end is not None and self.effective_end < self.effective_start:
            raise ValueError(
                f"effective_end: {self.effective_end} is before effective_start {self.effective_start}"
            )
        seasons = self._check_seasons()
        periods = self._check_time_of_use(seasons)
        self._check_components(seasons, periods)
        return self

    def _check_seasons(self) -> list[str]:
        if self.seasons is None:
            return []
        names = [s.name for s in self.seasons]
        if len(set(names)) != len(names):
            raise ValueError(f"seasons: names repeat: {names}")
        months = sorted(m for s in self.seasons for m in s.months)
        if months != list(range(1, 13)):
            raise ValueError(f"seasons: must cover each month 1-12 exactly once; they cover {months}")
        return names

    def _check_time_of_use(self, seasons: list[str]) -> list[str]:
        if self.time_of_use is None:
            return []
        tou = self.time_of_use
        names = [p.name for p in tou.periods]
        if len(set(names)) != len(names):
            raise ValueError(f"time_of_use.periods: names repeat: {names}")
        defaults = [p.name for p in tou.periods if p.default]
        if len(defaults) != 1:
            raise ValueError(
                f"time_of_use.periods: exactly one period must be default (it takes every hour no "
                f"window claims); found {defaults or 'none'}"
            )
        owner: dict[tuple[str, int, int], str] = {}
        for i, p in enumerate(tou.periods):
            if p.default and p.windows:
                raise ValueError(f"time_of_use.periods[{i}].windows: the default period takes no windows")
            if not p.default and not p.windows:
                raise ValueError(f"time_of_use.periods[{i}].windows: at least one window is required")
            for j, w in enumerate(p.windows):
                for s in w.seasons or []:
                    if s not in seasons:
                        raise ValueError(
                            f"time_of_use.periods[{i}].windows[{j}].seasons: {s!r} is not a season of "
                            f"this tariff ({seasons or 'it has none'})"
                        )
                for season in w.seasons or seasons or [""]:
                    for weekday in range(7):
                        if (w.days == "weekdays" and weekday >= 5) or (w.days == "weekends" and weekday < 5):
                            continue
                        for hour in window_hours(w.start, w.end):
                            key = (season, weekday, hour)
                            if key in owner:
                                raise ValueError(
                                    f"time_of_use.periods[{i}].windows[{j}]: hour {hour:02d}:00 on weekday "
                                    f"{weekday}{' in ' + season if season else ''} is already in period "
                                    f"{owner[key]!r}"
                                )
                            owner[key] = p.name
        return names

    def _check_components(self, seasons: list[str], periods: list[str]) -> None:
        subtotals: list[str] = []
        has_tou_energy = False
        for i, c in enumerate(self.components):
            where = f"components[{i}]"
            if isinstance(c, TimeOfUseEnergy):
                has_tou_energy = True
                _check_tou_rates(where, c, seasons, periods)
            elif isinstance(c, BaselineCredit) and isinstance(c.daily_allowance_kwh, dict):
                if sorted(c.daily_allowance_kwh) != sorted(seasons):
                    raise ValueError(
                        f"{where}.daily_allowance_kwh: needs one allowance per season {seasons}; "
                        f"got {sorted(c.daily_allowance_kwh)}"
                    )
            elif isinstance(c, DatedPerUnit) and c.rates[0].start > self.effective_start:
                raise ValueError(
                    f"{where}.rates[0].from: {c.rates[0].start} is after effective_start "
                    f"{self.effective_start}; the first rate must cover the start of the version"
                )
            elif isinstance(c, Percentage | Minimum):
                for name in c.of:
                    if name not in subtotals:
                        raise ValueError(
                            f"{where}.of: {name!r} is not the subtotal of an earlier component "
                            f"(earlier subtotals: {subtotals or 'none'})"
                        )
            elif isinstance(c, ExportCredit) and c.mode == "netting" and self.time_of_use is not None:
                raise ValueError(
                    f"{where}.mode: netting is not supported with time-of-use periods; use net_billing"
                )
            subtotal = subtotal_of(c)
            if subtotal not in subtotals:
                subtotals.append(subtotal)
        if self.time_of_use is not None and not has_tou_energy:
            raise ValueError("components: a tariff with time_of_use periods needs a time_of_use component")
        if has_tou_energy and self.time_of_use is None:
            raise ValueError("time_of_use: a time_of_use component needs the tariff's time_of_use periods")
        exports = [c for c in self.components if isinstance(c, ExportCredit)]
        if len(exports) > 1:
            raise ValueError("components: at most one export_credit component")


def _check_tou_rates(where: str, c: TimeOfUseEnergy, seasons: list[str], periods: list[str]) -> None:
    by_season = all(isinstance(v, dict) for v in c.rates.values())
    if seasons and not by_season:
        raise ValueError(f"{where}.rates: the tariff has seasons {seasons}; give rates by season then period")
    if not seasons and by_season:
        raise ValueError(f"{where}.rates: the tariff has no seasons; give rates by period")
    tables: dict[str, dict[str, Decimal]] = c.rates if by_season else {"": c.rates}  # type: ignore[assignment]
    if by_season and sorted(tables) != sorted(seasons):
        raise ValueError(f"{where}.rates: needs rates for seasons {seasons}; got {sorted(tables)}")
    for season, table in tables.items():
        if sorted(table) != sorted(periods):
            label = f".{season}" if season else ""
            raise ValueError(
                f"{where}.rates{label}: needs a rate for each period {periods}; got {sorted(table)}"
            )


def subtotal_of(c: _Component) -> str:
    """The subtotal a component's lines belong to (a percentage line defaults to its kind: duty, tax)."""
    if isinstance(c, Percentage):
        return c.subtotal or c.line_kind
    return c.subtotal  # type: ignore[attr-defined,no-any-return]


def window_hours(start: int, end: int) -> list[int]:
    """The hours of the day a window [start, end) covers, wrapping past midnight when start > end."""
    start, end = start % 24, end % 24 or 24
    return list(range(start, end)) if start < end else [*range(start, 24), *range(0, end)]
