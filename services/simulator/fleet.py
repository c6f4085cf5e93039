"""Simulated smart-meter fleet: realistic, reproducible readings for `metermesh up --simulate` and benchmarks.

Everything a reading depends on is a pure function of (seed, meter index, read_time), so a restarted
load generator regenerates byte-identical readings, and a fleet of n meters is a prefix of a fleet of
m > n meters with the same seed and mix (growing a simulated fleet never re-labels registered meters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

CATEGORIES: Final[tuple[str, ...]] = ("residential", "commercial", "industrial", "agricultural")
# Every value is a shipped tariff (services/billing/tariffs). Gujarat's commercial (Non-RGP) and
# industrial (LTP) schedules are not shipped yet (no citable figures at hand), so simulated shops and
# workshops are billed on RGP urban as a stand-in until those tariff files exist.
TARIFF_BY_CATEGORY: Final[dict[str, str]] = {
    "residential": "in-gj-rgp-urban",
    "commercial": "in-gj-rgp-urban",
    "industrial": "in-gj-rgp-urban",
    "agricultural": "in-gj-ag-metered",
}
FAULT_KINDS: Final[tuple[str, ...]] = (
    "voltage_surge",
    "voltage_sag",
    "outage",
    "overcurrent",
    "phantom_load",
)
DEFAULT_MIX: Final[dict[str, float]] = {
    "residential": 0.78,
    "commercial": 0.12,
    "industrial": 0.04,
    "agricultural": 0.06,
}

TIME_ZONE: Final[str] = "Asia/Kolkata"
NOMINAL_VOLTAGE_V: Final[float] = 230.0
SOLAR_SHARE_OF_RESIDENTIAL: Final[float] = 0.20
METERS_PER_FEEDER: Final[int] = 40

_RES, _COM, _IND, _AGR = 0, 1, 2, 3
_ID_PREFIX: Final[tuple[str, ...]] = ("SIM-RES", "SIM-COM", "SIM-IND", "SIM-AGR")
_TZ: Final[ZoneInfo] = ZoneInfo(TIME_ZONE)
_EPOCH: Final[datetime] = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICRO: Final[timedelta] = timedelta(microseconds=1)
# 1970-01-01 was a Thursday; adding 3 makes day-number % 7 follow datetime.weekday() (Monday = 0).
_EPOCH_WEEKDAY: Final[int] = 3

# Distinct tags keep the random streams independent, so adding a draw to one never shifts another.
_TAG_METERS: Final[int] = 0x4D455452
_TAG_FEEDERS: Final[int] = 0x46454544
_TAG_INTERVAL_U: Final[int] = 0x49564C55
_TAG_INTERVAL_Z: Final[int] = 0x49564C5A
_TAG_DAY: Final[int] = 0x44415953

# Width of the per-meter attribute matrix. Fixed (with spare columns) because random((n, k)) is
# row-major: changing k would silently change every simulated meter of every existing deployment.
_METER_COLUMNS: Final[int] = 16
_FEEDER_COLUMNS: Final[int] = 8

# Sanctioned loads in kW and how common each is; agricultural connections are sold in horsepower.
_HP_KW: Final[float] = 0.746
_SANCTIONED_KW: Final[tuple[tuple[float, ...], ...]] = (
    (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0),
    (3.0, 5.0, 8.0, 10.0, 15.0, 20.0, 30.0, 40.0),
    (15.0, 22.0, 30.0, 45.0, 60.0, 75.0, 90.0),
    tuple(round(hp * _HP_KW, 2) for hp in (3.0, 5.0, 7.5, 10.0, 15.0, 20.0)),
)
_SANCTIONED_WEIGHTS: Final[tuple[tuple[float, ...], ...]] = (
    (0.08, 0.20, 0.22, 0.18, 0.14, 0.08, 0.06, 0.04),
    (0.15, 0.20, 0.15, 0.15, 0.12, 0.10, 0.08, 0.05),
    (0.20, 0.20, 0.18, 0.15, 0.12, 0.10, 0.05),
    (0.15, 0.30, 0.25, 0.15, 0.10, 0.05),
)
# Real meter ratings (Imax). The margin below keeps a healthy meter under its rating even at full
# sanctioned load during a deep sag, so only the injected "overcurrent" fault ever exceeds it.
_RATED_CURRENTS_A: Final[FloatArray] = np.array(
    [30, 60, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000, 3000], dtype=np.float64
)
_RATED_MARGIN: Final[float] = 1.5
_MIN_PF: Final[float] = 0.85
_MAX_PF: Final[float] = 0.99

# Peak demand as a share of sanctioned load (lo, hi), interval noise sd, standby floor in W.
_UTILISATION: Final[FloatArray] = np.array([[0.30, 0.60], [0.45, 0.75], [0.55, 0.80], [0.85, 0.98]])
_NOISE_SD: Final[FloatArray] = np.array([0.15, 0.08, 0.05, 0.03])
_STANDBY_W: Final[FloatArray] = np.array([30.0, 80.0, 400.0, 5.0])
_PF_RANGE: Final[FloatArray] = np.array([[0.92, 0.98], [0.88, 0.96], [0.85, 0.93], [0.85, 0.90]])
# Summer cooling dominates homes and shops in Gujarat; factories barely notice the season.
_SEASON_AMPLITUDE: Final[FloatArray] = np.array([0.45, 0.30, 0.05, 0.0])

# Hourly load shapes (value at hh:00, linearly interpolated) for weekday, Saturday and Sunday.
# Saturday is a working day for much of India, so it sits between the other two.
# fmt: off
_RES_WEEKDAY = (0.30, 0.26, 0.24, 0.23, 0.24, 0.30, 0.50, 0.72, 0.70, 0.55, 0.45, 0.42,
                0.40, 0.40, 0.40, 0.40, 0.44, 0.55, 0.75, 0.92, 1.00, 0.92, 0.70, 0.45)
_RES_SUNDAY = (0.32, 0.27, 0.24, 0.23, 0.24, 0.28, 0.40, 0.58, 0.68, 0.68, 0.64, 0.62,
               0.62, 0.62, 0.60, 0.58, 0.60, 0.66, 0.80, 0.95, 1.00, 0.94, 0.74, 0.50)
_COM_WEEKDAY = (0.15, 0.14, 0.14, 0.14, 0.14, 0.15, 0.18, 0.25, 0.50, 0.85, 0.93, 0.95,
                0.95, 0.93, 0.95, 0.95, 0.94, 0.92, 0.90, 0.85, 0.55, 0.35, 0.22, 0.17)
_COM_SATURDAY = (0.15, 0.14, 0.14, 0.14, 0.14, 0.15, 0.17, 0.23, 0.45, 0.75, 0.82, 0.84,
                 0.84, 0.82, 0.84, 0.84, 0.82, 0.80, 0.78, 0.72, 0.48, 0.30, 0.20, 0.16)
_COM_SUNDAY = (0.15, 0.14, 0.14, 0.14, 0.14, 0.15, 0.16, 0.18, 0.22, 0.26, 0.28, 0.30,
               0.30, 0.30, 0.30, 0.30, 0.28, 0.27, 0.26, 0.25, 0.22, 0.19, 0.17, 0.16)
# Three shifts (06-14, 14-22, 22-06) with dips at change-over and lunch and a lighter night shift.
_IND_WEEKDAY = (0.70, 0.70, 0.70, 0.70, 0.70, 0.66, 0.58, 0.80, 0.88, 0.90, 0.90, 0.88,
                0.82, 0.88, 0.70, 0.86, 0.90, 0.90, 0.88, 0.86, 0.84, 0.80, 0.60, 0.68)
_IND_SATURDAY = tuple(round(0.95 * v, 3) for v in _IND_WEEKDAY)
# Continuous-process plants keep running on Sundays; the rest drop to maintenance load.
_IND_SUNDAY = (0.45,) * 24
# fmt: on
_SHAPES: Final[FloatArray] = np.array(
    [
        [
            _RES_WEEKDAY,
            tuple((a + b) / 2 for a, b in zip(_RES_WEEKDAY, _RES_SUNDAY, strict=True)),
            _RES_SUNDAY,
        ],
        [_COM_WEEKDAY, _COM_SATURDAY, _COM_SUNDAY],
        [_IND_WEEKDAY, _IND_SATURDAY, _IND_SUNDAY],
        # Agricultural load follows the supply blocks instead (see _AG_BLOCK_STARTS); the row only
        # keeps the table rectangular.
        [(0.0,) * 24] * 3,
    ],
    dtype=np.float64,
)
_SHAPES_FLAT: Final[FloatArray] = _SHAPES.ravel()

# Gujarat supplies farm feeders three-phase power for 8 h a day in blocks rotated weekly between
# groups of feeders, so that no group always gets the night block.
_AG_BLOCK_STARTS: Final[IntArray] = np.array([6, 14, 22], dtype=np.int64)
_AG_BLOCK_HOURS: Final[int] = 8

# Fault kinds are drawn with these weights. A phantom load only shows against a quiet house, so it
# is injected only at night; by day the other kinds share its weight.
_FAULT_WEIGHTS: Final[FloatArray] = np.array([0.15, 0.25, 0.25, 0.15, 0.20])
_SURGE, _SAG, _OUTAGE, _OVERCURRENT, _PHANTOM = range(len(FAULT_KINDS))
_NIGHT_START_H: Final[float] = 22.0
_NIGHT_END_H: Final[float] = 6.0

# Healthy voltage never leaves this band (well inside 230 V +-10 %), so a detector never sees a
# "surge" or "sag" that was not injected.
_V_HEALTHY_LO: Final[float] = 212.0
_V_HEALTHY_HI: Final[float] = 248.0

# Western India is about 10 degrees west of the IST meridian, so the sun peaks ~12:45 local time.
_SOLAR_NOON_H: Final[float] = 12.75


@dataclass(frozen=True)
class MeterSpec:
    """What RegisterMeter needs to know about a simulated meter."""

    meter_id: str  # "SIM-RES-0001", "SIM-COM-0002", "SIM-IND-0001", "SIM-AGR-0001": numbered per category
    category: str  # one of CATEGORIES
    tariff_id: str  # TARIFF_BY_CATEGORY[category]
    sanctioned_load_kw: float
    rated_current_a: float  # Imax; only an injected "overcurrent" fault exceeds it
    nominal_voltage_v: float
    interval_seconds: int
    time_zone: str
    has_solar: bool  # rooftop PV behind the meter (residential only)


@dataclass(frozen=True)
class IntervalReadings:
    """All meters' readings for the interval ending at read_time; arrays are in `meter_ids` order."""

    meter_ids: list[str]
    read_time: datetime
    interval_seconds: int
    import_energy_wh: FloatArray
    export_energy_wh: FloatArray
    voltage_v: FloatArray
    current_a: FloatArray
    active_power_w: FloatArray
    power_factor: FloatArray
    frequency_hz: FloatArray
    faults: list[tuple[str, str]]


def _seed_word(value: int) -> int:
    # SeedSequence takes only non-negative integers; zig-zag keeps pre-1970 instants distinct.
    return 2 * value if value >= 0 else -2 * value - 1


def _generator(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([_seed_word(w) for w in words])))


def _allocate_categories(n: int, weights: FloatArray) -> IntArray:
    # Largest-deficit apportionment instead of random draws: the mix is exact at every prefix, every
    # category shows up early even in a small test fleet, and meter i's category never depends on n.
    w = [float(x) for x in weights]
    counts = [0] * len(w)
    out = [0] * n
    for i in range(n):
        # First maximum on ties, so the order of CATEGORIES breaks them.
        c = max(range(len(w)), key=lambda k: w[k] * (i + 1) - counts[k])
        out[i] = c
        counts[c] += 1
    return np.asarray(out, dtype=np.int64)


def _pick(u: FloatArray, values: tuple[float, ...], weights: tuple[float, ...]) -> FloatArray:
    cum = np.cumsum(weights) / sum(weights)
    idx = np.minimum(np.searchsorted(cum, u, side="right"), len(values) - 1)
    return np.asarray(values, dtype=np.float64)[idx]


class Fleet:
    """A fixed set of simulated meters; `readings_at` is stateless, so any interval can be
    (re)generated in any order, by any number of processes."""

    def __init__(
        self,
        n_meters: int,
        *,
        seed: int = 0,
        interval_seconds: int = 900,
        fault_rate: float = 0.002,
        mix: dict[str, float] | None = None,
    ) -> None:
        if n_meters < 0:
            raise ValueError(f"n_meters is {n_meters}; must be >= 0")
        if not 0 < interval_seconds <= 86_400:
            raise ValueError(f"interval_seconds is {interval_seconds}; must be within 1-86400")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate is {fault_rate}; must be within 0-1")
        mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = set(mix) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"mix has unknown categories {sorted(unknown)}; expected some of {CATEGORIES}")
        weights = np.array([float(mix.get(c, 0.0)) for c in CATEGORIES])
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"mix is {mix}; weights must be finite, >= 0 and not all zero")

        self._seed = seed
        self._interval_seconds = interval_seconds
        self._fault_rate = fault_rate
        n = n_meters
        cat = _allocate_categories(n, weights / weights.sum())
        u = _generator(seed, _TAG_METERS).random((n, _METER_COLUMNS))

        sanctioned_kw = np.zeros(n)
        for c in range(len(CATEGORIES)):
            sel = cat == c
            sanctioned_kw[sel] = _pick(u[sel, 0], _SANCTIONED_KW[c], _SANCTIONED_WEIGHTS[c])
        sanctioned_w = sanctioned_kw * 1000.0
        need_a = _RATED_MARGIN * sanctioned_w / (NOMINAL_VOLTAGE_V * _MIN_PF)
        rated_a = _RATED_CURRENTS_A[
            np.minimum(np.searchsorted(_RATED_CURRENTS_A, need_a), len(_RATED_CURRENTS_A) - 1)
        ]

        util = _UTILISATION[cat]
        self._cat = cat
        self._sanctioned_w = sanctioned_w
        self._rated_a = rated_a
        self._peak_w = sanctioned_w * (util[:, 0] + (util[:, 1] - util[:, 0]) * u[:, 1])
        # Households and shops keep their own hours; the utility, not the farmer, times the pumps.
        self._phase_h = np.where(cat == _AGR, 0.0, (u[:, 2] - 0.5) * 2.0)
        # Steeper or flatter than the category shape: some homes are empty all day, some never are.
        self._gamma = 0.8 + 0.5 * u[:, 3]
        pf = _PF_RANGE[cat]
        self._base_pf = pf[:, 0] + (pf[:, 1] - pf[:, 0]) * u[:, 4]
        self._noise_sd = _NOISE_SD[cat]
        self._standby_w = _STANDBY_W[cat]
        self._season_amp = _SEASON_AMPLITUDE[cat]
        self._has_solar = (cat == _RES) & (u[:, 5] < SOLAR_SHARE_OF_RESIDENTIAL)
        # Net-metering rules cap rooftop capacity at the sanctioned load.
        self._solar_w = np.where(self._has_solar, sanctioned_w * (0.6 + 0.4 * u[:, 6]), 0.0)
        self._solar_perf = 0.72 + 0.13 * u[:, 7]
        # Meters at the far end of a feeder see a lower voltage.
        self._v_offset = -3.0 + 4.5 * u[:, 8]
        self._ag_group = np.minimum((u[:, 9] * 3).astype(np.int64), 2)

        self._feeder = np.arange(n, dtype=np.int64) // METERS_PER_FEEDER
        n_feeders = int(self._feeder[-1]) + 1 if n else 0
        f = _generator(seed, _TAG_FEEDERS).random((n_feeders, _FEEDER_COLUMNS))
        # Feeder voltage wanders with the load on its transformer: a few-hour and a daily-ish wave.
        self._drift_amp1 = 0.5 + 1.5 * f[:, 0]
        self._drift_period1_h = 3.0 + 6.0 * f[:, 1]
        self._drift_phase1 = 2 * math.pi * f[:, 2]
        self._drift_amp2 = 0.5 + 1.0 * f[:, 3]
        self._drift_period2_h = 18.0 + 18.0 * f[:, 4]
        self._drift_phase2 = 2 * math.pi * f[:, 5]

        numbers = [0] * len(CATEGORIES)
        ids: list[str] = []
        specs: list[MeterSpec] = []
        for i in range(n):
            c = int(cat[i])
            numbers[c] += 1
            meter_id = f"{_ID_PREFIX[c]}-{numbers[c]:04d}"
            ids.append(meter_id)
            specs.append(
                MeterSpec(
                    meter_id=meter_id,
                    category=CATEGORIES[c],
                    tariff_id=TARIFF_BY_CATEGORY[CATEGORIES[c]],
                    sanctioned_load_kw=float(sanctioned_kw[i]),
                    rated_current_a=float(rated_a[i]),
                    nominal_voltage_v=NOMINAL_VOLTAGE_V,
                    interval_seconds=interval_seconds,
                    time_zone=TIME_ZONE,
                    has_solar=bool(self._has_solar[i]),
                )
            )
        self._ids = ids
        self._specs = specs

    @property
    def meters(self) -> list[MeterSpec]:
        return list(self._specs)

    def readings_at(self, read_time: datetime) -> IntervalReadings:
        """Readings of every meter for the interval ending at read_time (any tz-aware instant; the
        load generator normally passes interval boundaries)."""
        if read_time.tzinfo is None or read_time.utcoffset() is None:
            raise ValueError(f"read_time {read_time.isoformat()} is naive; pass a tz-aware datetime")
        end = read_time.astimezone(UTC)
        n = len(self._ids)
        dt_s = self._interval_seconds
        # Energy is the integral over the interval, so the interval's midpoint stands for it.
        mid = end - timedelta(seconds=dt_s / 2)
        local = mid.astimezone(_TZ)
        offset = local.utcoffset()
        assert offset is not None
        mid_s = (mid - _EPOCH) / timedelta(seconds=1)
        local_h = (mid_s + offset.total_seconds()) / 3600.0
        day = math.floor(local_h / 24.0)
        hour = local_h - 24.0 * day
        doy = local.timetuple().tm_yday + hour / 24.0
        night = hour >= _NIGHT_START_H or hour < _NIGHT_END_H

        end_us = (end - _EPOCH) // _ONE_MICRO
        u = _generator(self._seed, _TAG_INTERVAL_U, end_us).random((n, 5))
        zg = _generator(self._seed, _TAG_INTERVAL_Z, end_us)
        # Grid frequency is one value for the whole synchronous grid; draw it before the per-meter
        # matrix so that the matrix rows stay the same whatever n is.
        grid_z = float(zg.standard_normal())
        z = zg.standard_normal((n, 4))
        dg = _generator(self._seed, _TAG_DAY, day)
        clear_u = float(dg.random())
        idle_u = dg.random(n)

        cat = self._cat
        season = 0.5 + 0.5 * math.cos(2 * math.pi * (doy - 140.0) / 365.0)
        monsoon = math.exp(-(((doy - 215.0) / 40.0) ** 2))

        # Each meter runs the category shape on its own clock, including which day type it is.
        mh = local_h + self._phase_h
        mday = np.floor(mh / 24.0)
        mhour = mh - 24.0 * mday
        weekday = (mday.astype(np.int64) + _EPOCH_WEEKDAY) % 7
        day_type = np.where(weekday == 6, 2, np.where(weekday == 5, 1, 0))
        h0 = mhour.astype(np.int64)
        frac = mhour - h0
        row = (cat * 3 + day_type) * 24
        shape = _SHAPES_FLAT[row + h0] * (1.0 - frac) + _SHAPES_FLAT[row + (h0 + 1) % 24] * frac
        sd = self._noise_sd
        noise = np.exp(sd * z[:, 0] - 0.5 * sd * sd)
        load = self._peak_w * shape**self._gamma * (1.0 + self._season_amp * season) * noise

        # Pumps: full load inside the group's supply block unless the farmer does not irrigate that
        # day (often, in the monsoon).
        week = (day + _EPOCH_WEEKDAY) // 7
        block_start = _AG_BLOCK_STARTS[(self._ag_group + week) % 3]
        in_block = ((hour - block_start) % 24.0) < _AG_BLOCK_HOURS
        irrigating = idle_u >= 0.10 + 0.50 * monsoon
        pump = np.where(in_block & irrigating, self._peak_w * noise, 0.0)
        load = np.where(cat == _AGR, pump, load)
        load = np.clip(load, self._standby_w, 0.95 * self._sanctioned_w)

        is_fault = u[:, 0] < self._fault_rate
        weights = _FAULT_WEIGHTS.copy()
        if not night:
            weights[_PHANTOM] = 0.0
        cum = np.cumsum(weights) / weights.sum()
        kind = np.where(
            is_fault, np.minimum(np.searchsorted(cum, u[:, 1], side="right"), len(FAULT_KINDS) - 1), -1
        )
        mag = u[:, 2]
        phantom = kind == _PHANTOM
        # No noise on top: a flat, unexplained draw is what gives away a stuck heater or a tapped line.
        load = np.where(phantom, load + self._sanctioned_w * (0.15 + 0.25 * mag), load)

        day_len_h = 12.1 + 1.3 * math.sin(2 * math.pi * (doy - 80.0) / 365.0)
        x = (hour - _SOLAR_NOON_H) / (day_len_h / 2.0)
        bell = math.cos(0.5 * math.pi * x) ** 1.3 if abs(x) < 1.0 else 0.0
        # Regional cloud cover is shared by the whole fleet for the day; passing clouds are per roof.
        clear = (0.85 + 0.15 * clear_u) * (1.0 - monsoon) + (0.30 + 0.65 * clear_u) * monsoon
        passing = np.where(u[:, 3] < 0.06 + 0.30 * monsoon, 0.25 + 0.55 * u[:, 4], 1.0)
        gen = self._solar_w * self._solar_perf * (bell * clear) * passing

        outage = kind == _OUTAGE
        overcurrent = kind == _OVERCURRENT
        net = np.where(outage, 0.0, load - gen)

        evening = math.exp(-(((hour - 20.0) / 1.5) ** 2))
        t_h = mid_s / 3600.0
        fi = self._feeder
        wave1 = np.sin(2 * math.pi * t_h / self._drift_period1_h[fi] + self._drift_phase1[fi])
        wave2 = np.sin(2 * math.pi * t_h / self._drift_period2_h[fi] + self._drift_phase2[fi])
        drift = self._drift_amp1[fi] * wave1 + self._drift_amp2[fi] * wave2
        voltage = NOMINAL_VOLTAGE_V + self._v_offset + drift + 2.0 * z[:, 1] - 3.5 * evening
        voltage = np.clip(voltage, _V_HEALTHY_LO, _V_HEALTHY_HI)
        voltage = np.where(kind == _SURGE, 255.0 + 25.0 * mag, voltage)
        voltage = np.where(kind == _SAG, 180.0 + 25.0 * mag, voltage)
        voltage = np.where(outage, 0.0, voltage)

        pf_import = np.clip(self._base_pf + 0.01 * z[:, 2], _MIN_PF, _MAX_PF)
        # Signed power factor (sign of active power, as meters report it): while exporting the
        # inverter sets it, and current = P / (V * pf) stays positive.
        pf_export = np.clip(0.98 + 0.008 * z[:, 2], 0.95, 0.995)

        overcurrent_a = self._rated_a * (1.2 + 0.6 * mag)
        net = np.where(overcurrent, voltage * overcurrent_a * pf_import, net)
        pf = np.where(net < 0, -pf_export, pf_import)
        current = np.where(outage, 0.0, net / np.where(outage, 1.0, voltage * pf))

        freq_grid = 50.0 + max(-0.12, min(0.12, 0.03 * grid_z)) - 0.01 * evening
        # A dead meter cannot measure frequency.
        frequency = np.where(outage, 0.0, freq_grid + 0.002 * z[:, 3])

        to_wh = dt_s / 3600.0
        # "+ 0.0" turns -0.0 into 0.0 so that no consumer ever sees a negative-signed zero energy.
        import_wh = np.maximum(net, 0.0) * to_wh + 0.0
        export_wh = np.maximum(-net, 0.0) * to_wh + 0.0

        faults = [(self._ids[i], FAULT_KINDS[kind[i]]) for i in np.flatnonzero(is_fault).tolist()]
        return IntervalReadings(
            meter_ids=list(self._ids),
            read_time=end,
            interval_seconds=dt_s,
            import_energy_wh=import_wh,
            export_energy_wh=export_wh,
            voltage_v=voltage,
            current_a=current,
            active_power_w=net + 0.0,
            power_factor=pf,
            frequency_hz=frequency,
            faults=faults,
        )
