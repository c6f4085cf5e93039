"""Loading tariff files into a TariffSet: every version of every tariff, validated against the schema
with errors that name the file, the field path and the value, checked against each other (versions of
one tariff never overlap), and compiled into lookup tables the engine prices from."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pydantic
import yaml

from services.billing.errors import TariffFileError, TariffNotInForce, UnknownTariff
from services.billing.schema import (
    BaselineCredit,
    DatedPerUnit,
    ExportCredit,
    Fixed,
    Minimum,
    Percentage,
    Slabs,
    TariffFile,
    TimeOfUseEnergy,
    UnmeteredPerHp,
    window_hours,
)

DEFAULT_TARIFF_DIR = Path(__file__).resolve().parent / "tariffs"


@dataclass(frozen=True, eq=False)
class ComponentInfo:
    """A component described for people (GetTariff): kind is a LineKind name such as "ENERGY_SLAB"."""

    kind: str
    name: str
    description: str


@dataclass(frozen=True, eq=False)
class TariffVersion:
    """One validated version of a tariff plus the tables the engine looks up per hour and per month."""

    spec: TariffFile
    origin: str  # the file it came from, for messages
    tz: ZoneInfo = field(init=False)
    season_names: tuple[str, ...] = field(init=False)  # ("",) when the tariff has no seasons
    season_of_month: tuple[int, ...] = field(init=False)  # index 1-12 -> season index; [0] unused
    period_names: tuple[str, ...] = field(init=False)  # time-of-use periods; () when none
    # [season, weekday (Mon=0), hour] -> index into period_names; None without time of use.
    period_table: np.ndarray | None = field(init=False)

    def __post_init__(self) -> None:
        spec = self.spec
        set_ = object.__setattr__
        set_(self, "tz", ZoneInfo(spec.time_zone))
        seasons = spec.seasons or []
        set_(self, "season_names", tuple(s.name for s in seasons) or ("",))
        by_month = [0] * 13
        for i, s in enumerate(seasons):
            for m in s.months:
                by_month[m] = i
        set_(self, "season_of_month", tuple(by_month))
        if spec.time_of_use is None:
            set_(self, "period_names", ())
            set_(self, "period_table", None)
            return
        periods = spec.time_of_use.periods
        set_(self, "period_names", tuple(p.name for p in periods))
        default = next(i for i, p in enumerate(periods) if p.default)
        table = np.full((len(self.season_names), 7, 24), default, dtype=np.int16)
        for i, p in enumerate(periods):
            for w in p.windows:
                season_ix = (
                    [self.season_names.index(s) for s in w.seasons]
                    if w.seasons
                    else range(len(self.season_names))
                )
                days = {"all": range(7), "weekdays": range(5), "weekends": range(5, 7)}[w.days]
                hours = window_hours(w.start, w.end)
                for s in season_ix:
                    for d in days:
                        table[s, d, hours] = i
        set_(self, "period_table", table)

    @property
    def tariff_id(self) -> str:
        return self.spec.id

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def currency(self) -> str:
        return self.spec.currency

    @property
    def effective_start(self) -> dt.date:
        return self.spec.effective_start

    @property
    def effective_end(self) -> dt.date | None:
        """Last day in effect (inclusive); None while open-ended."""
        return self.spec.effective_end

    def in_effect_on(self, day: dt.date) -> bool:
        return self.effective_start <= day and (self.effective_end is None or day <= self.effective_end)

    def season_of(self, day: dt.date) -> int:
        return self.season_of_month[day.month]

    def describe(self) -> list[ComponentInfo]:
        """The components in bill order, each with a one-line description of what it charges."""
        return [_describe(c, self.currency) for c in self.spec.components]


class TariffSet:
    """Every loaded version of every tariff, by id; versions of one tariff are in effective-date order
    and never overlap."""

    def __init__(self, versions: Iterable[TariffVersion]) -> None:
        by_id: dict[str, list[TariffVersion]] = {}
        for v in versions:
            by_id.setdefault(v.tariff_id, []).append(v)
        problems: list[str] = []
        for tariff_id, vs in by_id.items():
            vs.sort(key=lambda v: v.effective_start)
            seen: dict[str, str] = {}
            for v in vs:
                if v.version in seen:
                    problems.append(
                        f"{v.origin}: version: {tariff_id} version {v.version!r} is also in {seen[v.version]}"
                    )
                seen[v.version] = v.origin
            for a, b in itertools.pairwise(vs):
                if a.effective_end is None or a.effective_end >= b.effective_start:
                    problems.append(
                        f"{b.origin}: effective_start: {tariff_id} version {b.version!r} starts "
                        f"{b.effective_start}, while version {a.version!r} ({a.origin}) is in effect "
                        f"until {a.effective_end or 'further notice'}; end the earlier version first"
                    )
                for attr in ("currency", "time_zone"):
                    if getattr(a.spec, attr) != getattr(b.spec, attr):
                        problems.append(
                            f"{b.origin}: {attr}: {getattr(b.spec, attr)!r} differs from version "
                            f"{a.version!r} ({getattr(a.spec, attr)!r}); every version of a tariff must agree"
                        )
        if problems:
            raise TariffFileError(problems)
        self._by_id = {k: tuple(v) for k, v in sorted(by_id.items())}

    def tariff_ids(self) -> list[str]:
        return list(self._by_id)

    def all_versions(self) -> list[TariffVersion]:
        """Every version of every tariff, in tariff id then effective date order."""
        return [v for vs in self._by_id.values() for v in vs]

    def versions(self, tariff_id: str) -> tuple[TariffVersion, ...]:
        try:
            return self._by_id[tariff_id]
        except KeyError:
            raise UnknownTariff(
                "tariff_id", f"{tariff_id!r} is not a loaded tariff; ListTariffs shows the ones there are"
            ) from None

    def get(self, tariff_id: str, version: str) -> TariffVersion:
        for v in self.versions(tariff_id):
            if v.version == version:
                return v
        known = ", ".join(v.version for v in self.versions(tariff_id))
        raise UnknownTariff("tariff_version", f"{tariff_id} has no version {version!r} (it has {known})")

    def in_effect(self, tariff_id: str, day: dt.date) -> TariffVersion | None:
        return next((v for v in self.versions(tariff_id) if v.in_effect_on(day)), None)

    def covering(
        self, tariff_id: str, start: dt.date, end: dt.date
    ) -> list[tuple[TariffVersion, dt.date, dt.date]]:
        """The versions in effect over days [start, end), each with the days [from, to) it covers there;
        raises TariffNotInForce when some day has no version."""
        parts: list[tuple[TariffVersion, dt.date, dt.date]] = []
        day = start
        for v in self.versions(tariff_id):
            if day >= end:
                break
            v_end = end if v.effective_end is None else min(end, v.effective_end + dt.timedelta(days=1))
            if v_end <= day:
                continue
            if v.effective_start > day:
                break
            parts.append((v, day, v_end))
            day = v_end
        if day < end:
            raise TariffNotInForce(
                "billing_period",
                f"tariff {tariff_id} has no version in effect on {day} (versions: "
                + ", ".join(
                    f"{v.version} from {v.effective_start} to {v.effective_end or 'open'}"
                    for v in self.versions(tariff_id)
                )
                + ")",
            )
        return parts


def parse_tariff(data: Any, origin: str) -> TariffVersion:
    """Validates one tariff (a parsed YAML mapping); origin names it in errors (usually the file path)."""
    if not isinstance(data, Mapping):
        raise TariffFileError(
            [f"{origin}: the file must hold one mapping (id: ..., version: ...); got {data!r}"]
        )
    try:
        spec = TariffFile.model_validate(data)
    except pydantic.ValidationError as exc:
        raise TariffFileError([f"{origin}: {_describe_error(e)}" for e in exc.errors()]) from None
    return TariffVersion(spec, origin)


def load_tariff_file(path: Path) -> TariffVersion:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TariffFileError([f"{path}: {where}not valid YAML: {problem}"]) from None
    return parse_tariff(data, str(path))


def load_tariffs(directory: Path = DEFAULT_TARIFF_DIR) -> TariffSet:
    """Loads every *.yaml under directory; reports the problems of all files at once."""
    problems: list[str] = []
    versions: list[TariffVersion] = []
    for path in sorted(directory.rglob("*.yaml")):
        try:
            versions.append(load_tariff_file(path))
        except TariffFileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise TariffFileError(problems)
    if not versions:
        raise TariffFileError([f"{directory}: no tariff files (*.yaml) found"])
    return TariffSet(versions)


def _describe_error(e: Any) -> str:
    # loc mixes field names, list indices and, inside the components union, the component type; write
    # it the way a person would point into the file: components[3](percentage).of.
    path = ""
    for part in e["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _COMPONENT_TYPES and path.endswith("]"):
            path += f"({part})"
        else:
            path += f".{part}" if path else str(part)
    msg = e["msg"].removeprefix("Value error, ")
    # Cross-field checks raise from the enclosing model with the rest of the path in the message
    # ("blocks[1].up_to: 40 is not above ..."): join the two into one path.
    head, sep, rest = msg.partition(": ")
    if sep and re.fullmatch(r"[a-z_]+(\[\d+\])?([.][a-z_]+(\[\d+\])?)*", head):
        path = f"{path}.{head}" if path else head
        msg = rest
    value = e.get("input")
    shown = (
        ""
        if isinstance(value, dict | list) or value is None or repr(value) in msg or str(value) in msg
        else f" (value: {value!r})"
    )
    return f"{path or '(top level)'}: {msg}{shown}"


_COMPONENT_TYPES = frozenset(
    {
        "slabs",
        "time_of_use",
        "fixed",
        "dated_per_unit",
        "baseline_credit",
        "percentage",
        "minimum",
        "export_credit",
        "unmetered_per_hp",
    }
)


def _money(d: Decimal) -> str:
    return format(d.normalize(), "f") if d == d.to_integral_value() else format(d, "f")


def _describe(c: Any, currency: str) -> ComponentInfo:
    cur = currency
    if isinstance(c, Slabs):
        parts, low = [], Decimal(0)
        for b in c.blocks:
            if b.up_to is not None:
                span = f"{_money(low)}-{_money(b.up_to)} kWh"
            else:
                span = f"above {_money(low)} kWh" if low else "every kWh"
            parts.append(f"{span}: {b.rate} {cur}/kWh")
            low = b.up_to or low
        kind = (
            "telescopic"
            if c.mode == "telescopic"
            else "non-telescopic: all units at the rate of the slab reached"
        )
        text = "; ".join(parts) + f" ({kind}; widths per month, scaled to the billing period)"
        return ComponentInfo("ENERGY_SLAB", c.name, text)
    if isinstance(c, TimeOfUseEnergy):
        items = []
        for key, value in c.rates.items():
            if isinstance(value, dict):
                items.extend(f"{key} {p}: {r} {cur}/kWh" for p, r in value.items())
            else:
                items.append(f"{key}: {value} {cur}/kWh")
        return ComponentInfo("TIME_OF_USE", c.name, "; ".join(items))
    if isinstance(c, Fixed):
        per = c.per
        if c.basis == "per_installation":
            text = f"{c.amount} {cur} per installation per {per}"
        elif c.basis == "load_band":
            low, parts = Decimal(0), []
            for b in c.bands or []:
                if b.up_to_kw is None:
                    span = f"above {_money(low)} kW" if low else "any load"
                elif low == 0:
                    span = f"up to {_money(b.up_to_kw)} kW"
                else:
                    span = f"above {_money(low)} to {_money(b.up_to_kw)} kW"
                parts.append(f"{span}: {b.amount} {cur}")
                low = b.up_to_kw or low
            text = "; ".join(parts) + f" per installation per {per} (load rounded up to {c.load_step} kW)"
        else:
            unit = "kW" if c.basis == "per_kw" else "HP"
            text = f"{c.rate} {cur} per {unit} per {per} (load rounded up to {c.load_step} {unit})"
        return ComponentInfo("FIXED_CHARGE", c.name, text)
    if isinstance(c, DatedPerUnit):
        text = "; ".join(f"from {r.start}: {r.rate} {cur}/kWh" for r in c.rates) + " (on every billed kWh)"
        return ComponentInfo("FUEL_SURCHARGE", c.name, text)
    if isinstance(c, BaselineCredit):
        allowance = c.daily_allowance_kwh
        shown = (
            ", ".join(f"{k} {v}" for k, v in allowance.items())
            if isinstance(allowance, dict)
            else str(allowance)
        )
        return ComponentInfo(
            "ADJUSTMENT",
            c.name,
            f"credit of {c.rate} {cur}/kWh on usage up to the baseline ({shown} kWh per day)",
        )
    if isinstance(c, Percentage):
        return ComponentInfo(c.line_kind.upper(), c.name, f"{c.percent}% of {' + '.join(c.of)}")
    if isinstance(c, Minimum):
        return ComponentInfo(
            "MINIMUM_CHARGE", c.name, f"at least {c.amount} {cur} per {c.per} in {' + '.join(c.of)}"
        )
    if isinstance(c, ExportCredit):
        how = (
            "export set off against import; surplus credited"
            if c.mode == "netting"
            else "every exported kWh credited"
        )
        return ComponentInfo("EXPORT_CREDIT", c.name, f"{how} at {c.rate} {cur}/kWh")
    if isinstance(c, UnmeteredPerHp):
        return ComponentInfo(
            "UNMETERED", c.name, f"{c.rate} {cur} per HP per month (load rounded up to {c.load_step} HP)"
        )
    raise AssertionError(f"unknown component {c!r}")
