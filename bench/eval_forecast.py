"""eval-forecast: the global LSTM beside the persistence baselines on real meters (BuildingsBench protocol).

    make eval-forecast   # or: .venv/bin/python -m bench.eval_forecast [--data DIR] [--write BENCHMARKS.md] [--quick]

Data root: --data, else $METERMESH_DATA_DIR, else <repo>/../shared/data; when it is missing the
evaluation is skipped (exit 0). The data is read in place, never copied into the repository.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import numpy as np

from services.forecast.calendar import HolidayCalendar
from services.forecast.series import HOUR_US, HourlySeries, to_hourly

ROOT = Path(__file__).resolve().parent.parent
SGSC_IDS = ("10006414", "10006486", "10006704", "10017554", "10017562")
LEAD_IDS = ("118", "697", "1143")


def data_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("METERMESH_DATA_DIR")
    if env:
        return Path(env)
    return ROOT.parent / "shared" / "data"


def _stamps_us(stamps: list[str]) -> np.ndarray:
    """'YYYY-MM-DD HH:MM:SS[.fff]' local clock (treated as UTC) -> unix microseconds."""
    clean = [s.strip()[:19].replace(" ", "T") for s in stamps]
    return np.array(clean, dtype="datetime64[s]").astype(np.int64) * 1_000_000


def load_uci(root: Path) -> list[HourlySeries]:
    """UCI household (Sceaux): hourly sums of minute kW / 60 = kWh. The logger's outage hours (all
    zero, or partly logged: mean voltage below 200 V) are missing, not zero consumption."""
    path = root / "uci-household-hourly" / "household_power_consumption_hourly.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    start = _stamps_us([r["datetime"] for r in rows])
    kwh = np.array([float(r["Global_active_power"]) for r in rows]) / 60.0
    volts = np.array([float(r["Voltage"]) for r in rows]) / 60.0
    kwh[(volts < 200.0) | (kwh <= 0.0)] = np.nan
    return [
        _hourly("uci-sceaux", start + HOUR_US, 3600, kwh * 1000.0, "residential"),
    ]


def load_lcl(root: Path) -> list[HourlySeries]:
    """London LCL MAC000002, half-hourly kWh; the timestamp ends its half hour (the file starts at
    00:30); 'Null' is missing; duplicated timestamps keep the last row."""
    path = root / "london-lcl" / "MAC000002.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    t = _stamps_us([r["DateTime"] for r in rows])
    raw = [r["KWH/hh (per half hour)"].strip() for r in rows]
    kwh = np.array([float(v) if v and v.lower() != "null" else np.nan for v in raw])
    return [_hourly("lcl-MAC000002", t, 1800, kwh * 1000.0, "residential")]


def load_sgsc(root: Path) -> list[HourlySeries]:
    """SGSC households, half-hourly general-supply kWh; the timestamp starts its half hour."""
    out = []
    for cid in SGSC_IDS:
        path = root / "sgsc-households" / f"sgsc_customer_{cid}.csv"
        with path.open() as f:
            rows = list(csv.DictReader(f))
        t = _stamps_us([r["reading_datetime"] for r in rows]) + 1800 * 1_000_000
        kwh = np.array([float(r["general_supply_kwh"]) for r in rows])
        out.append(_hourly(f"sgsc-{cid}", t, 1800, kwh * 1000.0, "residential"))
    return out


def load_lead(root: Path) -> tuple[list[HourlySeries], dict[str, np.ndarray]]:
    """LEAD1.0 commercial buildings, hourly kWh (timestamp = the hour's start), and their human
    anomaly labels per hour (aligned with the series)."""
    out, labels = [], {}
    for bid in LEAD_IDS:
        path = root / "lead1.0-buildings" / f"lead1.0_building_{bid}.csv"
        with path.open() as f:
            rows = list(csv.DictReader(f))
        start = _stamps_us([r["timestamp"] for r in rows])
        kwh = np.array([float(r["meter_reading"]) if r["meter_reading"] else np.nan for r in rows])
        s = _hourly(f"lead-{bid}", start + HOUR_US, 3600, kwh * 1000.0, "commercial")
        lab = np.zeros(len(s), dtype=bool)
        idx = (start - s.start_us) // HOUR_US
        lab[idx] = np.array([r["anomaly"] == "1" for r in rows])
        out.append(s)
        labels[s.meter_id] = lab
    return out, labels


def _hourly(meter_id: str, read_us: np.ndarray, interval: int, wh: np.ndarray, category: str) -> HourlySeries:
    s = to_hourly(meter_id, read_us, np.full(len(read_us), interval), wh)
    return HourlySeries(s.meter_id, s.start_us, s.values_kwh, "UTC", category)


def _easter(year: int) -> dt.date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month = (h + ell - 7 * m + 114) // 31
    day = (h + ell - 7 * m + 114) % 31 + 1
    return dt.date(year, month, day)


def shared_holidays(years: range = range(2006, 2018)) -> HolidayCalendar:
    """The holidays the four countries of the data (France, UK, Australia, and the UK/US sites of
    LEAD1.0) share: New Year's Day, Good Friday, Easter Monday, Christmas and Boxing Day."""
    dates = []
    for y in years:
        easter = _easter(y)
        dates += [
            dt.date(y, 1, 1),
            easter - dt.timedelta(days=2),
            easter + dt.timedelta(days=1),
            dt.date(y, 12, 25),
            dt.date(y, 12, 26),
        ]
    return HolidayCalendar(dates)
