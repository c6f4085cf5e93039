"""CSV formats `metermesh readings replay` reads: the real datasets in ../shared/data (see each folder's
PROVENANCE.txt) and a generic one, each mapped onto Reading fields.

| format  | file                                        | step   | stamp of a row        | energy column                         | also                         |
|---------|---------------------------------------------|--------|-----------------------|---------------------------------------|------------------------------|
| uci     | household_power_consumption_hourly.csv      | 1 h    | start of the hour     | Global_active_power (sum of minute kW; /60 = kWh) | Voltage, Global_intensity (/60 = mean V, A), power factor from the reactive sum |
| lcl     | Low Carbon London, e.g. MAC000002.csv       | 30 min | end of the half hour  | KWH/hh (per half hour)                | 'Null' cells skipped         |
| sgsc    | sgsc_customer_<id>.csv                      | 30 min | start of the half hour (assumed) | general_supply_kwh        |                              |
| lead    | lead1.0_building_<id>.csv                   | 1 h    | start of the hour     | meter_reading (kWh)                   | anomaly labels ignored       |
| generic | read_time + Reading field columns           | --interval | end of the interval (Reading semantics) | import_energy_wh or import_kwh | any other Reading field, meter_id |

A Reading's read_time is the END of its interval, so rows stamped with the interval's start get one
interval added. Naive timestamps are read in the format's time zone (override with --time-zone):
none of the four datasets shows daylight-saving steps (no repeated or missing local hours), so each
is read at a fixed offset: UCI at +01:00 (CET, Sceaux), LCL at UTC (GMT), SGSC at +10:00 (AEST),
LEAD1.0 at UTC (the sites' zones are not published).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

READING_FIELDS = (
    "import_energy_wh",
    "export_energy_wh",
    "voltage_v",
    "current_a",
    "active_power_w",
    "power_factor",
    "frequency_hz",
)


class Skip(Exception):
    """A row that carries no reading (a logging gap, a missing value); the reason is counted."""


class BadRow(ValueError):
    """A row that cannot be read (an unparseable number or time): reported with its line, skipped."""


@dataclass(frozen=True)
class Parsed:
    """One row: its timestamp as written (naive or aware) and the Reading fields it maps to."""

    stamp: dt.datetime
    fields: dict[str, float]
    source_id: str | None = None
    meter_id: str | None = None
    interval_seconds: int | None = None


@dataclass(frozen=True)
class Options:
    keep_incomplete: bool = False


@dataclass(frozen=True)
class Format:
    name: str
    signature: tuple[str, ...]  # header columns that identify the format
    interval_seconds: int
    stamp: str  # "start" or "end" of the interval
    time_zone: str
    parse: Callable[[dict[str, str], Options], Parsed]
    time_column: str
    id_column: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(raw: str) -> dt.datetime:
    text = _FRACTION.sub(r"\1", raw.strip())
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadRow(f"time {raw.strip()!r} is not an ISO 8601 date and time") from None


def number(row: dict[str, str], col: str) -> float:
    raw = (row.get(col) or "").strip()
    if raw == "" or raw.lower() in ("null", "nan", "na"):
        raise Skip(f"missing value ({raw or 'empty'}) in {col}")
    try:
        v = float(raw)
    except ValueError:
        raise BadRow(f"{col} {raw!r} is not a number") from None
    if not math.isfinite(v):
        raise Skip(f"missing value ({raw}) in {col}")
    return v


def parse_zone(name: str) -> dt.tzinfo:
    """UTC, an IANA name (Europe/London) or a fixed offset (+01:00)."""
    if name.upper() in ("UTC", "Z", "GMT"):
        return dt.UTC
    m = re.fullmatch(r"([+-])(\d{1,2}):?(\d{2})", name.strip())
    if m:
        sign = 1 if m.group(1) == "+" else -1
        return dt.timezone(sign * dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not UTC, an IANA time zone or an offset like +01:00") from None


# --- the formats --------------------------------------------------------------------------------

# UCI hourly: each figure is the SUM of the hour's 1-minute rows. A full hour's voltage sum is about
# 60 x 235 V; missing minutes were summed as 0, so all-zero hours are logging gaps and hours whose mean
# voltage (sum / 60) falls below 200 V are incomplete (PROVENANCE: "Detect with Voltage/60 < ~200").
UCI_FULL_HOUR_MIN_MEAN_V = 200.0


def _uci(row: dict[str, str], opts: Options) -> Parsed:
    stamp = parse_time(row["datetime"])
    p_sum = number(row, "Global_active_power")  # sum of minute kW
    q_sum = number(row, "Global_reactive_power")  # sum of minute kvar
    v_sum = number(row, "Voltage")
    i_sum = number(row, "Global_intensity")
    if p_sum == 0 and v_sum == 0:
        raise Skip("logging gap (all-zero hour)")
    fields = {"import_energy_wh": p_sum * 1000.0 / 60.0}  # kW-minutes / 60 = kWh
    mean_v = v_sum / 60.0
    if mean_v < UCI_FULL_HOUR_MIN_MEAN_V:
        if not opts.keep_incomplete:
            raise Skip("incomplete hour (minutes missing)")
        # Energy of the minutes present only; the means over 60 minutes would be wrong, so left out.
        return Parsed(stamp, fields)
    fields["voltage_v"] = mean_v
    fields["current_a"] = i_sum / 60.0
    if p_sum > 0 or q_sum > 0:
        # The hour's average power factor: kWh / kVAh (the minute sums share the factor 1/60).
        fields["power_factor"] = p_sum / math.hypot(p_sum, q_sum)
    return Parsed(stamp, fields)


def _lcl(row: dict[str, str], _: Options) -> Parsed:
    kwh = number(row, "KWH/hh (per half hour)")
    return Parsed(
        parse_time(row["DateTime"]), {"import_energy_wh": kwh * 1000.0}, source_id=row["LCLid"].strip()
    )


def _sgsc(row: dict[str, str], _: Options) -> Parsed:
    kwh = number(row, "general_supply_kwh")
    return Parsed(
        parse_time(row["reading_datetime"]),
        {"import_energy_wh": kwh * 1000.0},
        source_id=row["customer_id"].strip(),
    )


def _lead(row: dict[str, str], _: Options) -> Parsed:
    kwh = number(row, "meter_reading")
    return Parsed(
        parse_time(row["timestamp"]), {"import_energy_wh": kwh * 1000.0}, source_id=row["building_id"].strip()
    )


def _optional(row: dict[str, str], col: str) -> float | None:
    raw = (row.get(col) or "").strip()
    if raw == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise BadRow(f"{col} {raw!r} is not a number") from None
    return v


def _generic(row: dict[str, str], _: Options) -> Parsed:
    fields: dict[str, float] = {}
    for name in READING_FIELDS:
        v = _optional(row, name)
        if v is not None:
            fields[name] = v
    for kwh_col, wh_col in (("import_kwh", "import_energy_wh"), ("export_kwh", "export_energy_wh")):
        v = _optional(row, kwh_col)
        if v is not None:
            fields[wh_col] = v * 1000.0
    interval = _optional(row, "interval_seconds")
    meter = (row.get("meter_id") or "").strip() or None
    return Parsed(
        parse_time(row["read_time"]),
        fields,
        meter_id=meter,
        interval_seconds=int(interval) if interval is not None else None,
    )


GENERIC_COLUMNS = ("read_time", "meter_id", "interval_seconds", "import_kwh", "export_kwh", *READING_FIELDS)

FORMATS: dict[str, Format] = {
    "uci": Format(
        "uci",
        ("datetime", "Global_active_power", "Voltage", "Global_intensity"),
        3600,
        "start",
        "+01:00",
        _uci,
        "datetime",
        notes=(
            "all-zero hours (logging gaps) and hours with minutes missing (mean voltage < 200 V) are skipped "
            "unless --keep-incomplete (then sent with energy only)",
        ),
    ),
    "lcl": Format(
        "lcl", ("LCLid", "DateTime", "KWH/hh (per half hour)"), 1800, "end", "UTC", _lcl, "DateTime", "LCLid"
    ),
    "sgsc": Format(
        "sgsc",
        ("customer_id", "reading_datetime", "general_supply_kwh"),
        1800,
        "start",
        "+10:00",
        _sgsc,
        "reading_datetime",
        "customer_id",
    ),
    "lead": Format(
        "lead",
        ("timestamp", "building_id", "meter_reading"),
        3600,
        "start",
        "UTC",
        _lead,
        "timestamp",
        "building_id",
    ),
    "generic": Format("generic", ("read_time",), 900, "end", "UTC", _generic, "read_time"),
}


def detect(header: list[str]) -> Format | None:
    cols = set(header)
    for f in FORMATS.values():
        if set(f.signature) <= cols:
            return f
    return None


def check_header(fmt: Format, header: list[str]) -> str | None:
    """Why the header does not fit the format, or None."""
    missing = [c for c in fmt.signature if c not in header]
    if missing:
        return (
            f"the {fmt.name} format needs column(s) {', '.join(missing)}; the header has {', '.join(header)}"
        )
    if fmt.name == "generic":
        unknown = [c for c in header if c not in GENERIC_COLUMNS]
        if unknown:
            return f"unknown column(s) {', '.join(unknown)}; the generic format reads {', '.join(GENERIC_COLUMNS)}"
    return None
