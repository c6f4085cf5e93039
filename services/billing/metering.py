"""From stored hourly rollups to engine usage: which UTC hours a billing period covers on a tariff, how
they fold into the local hours (and time-of-use buckets) the engine prices, and the digest of a bill's
inputs that makes storing bills idempotent. No SQL and no gRPC here: services.billing.store runs the
query this module describes, and the cycle and the servicer price what it returns.

Rollups are kept per UTC clock hour (readings_hourly). A tariff bills whole local days, so:
- where local midnight falls on a UTC hour (whole-hour offsets: UTC, Europe/London, America/*),
  UTC hour k of the period is local hour k, exactly, across daylight-saving changes too;
- where it does not (Asia/Kolkata is UTC+05:30: local midnight is 18:30 UTC), the UTC hours at the two
  ends of the period straddle midnight. Their energy is shared by time: the period takes the part of
  the first hour after its start and of the last hour before its end, in whole watt-hours, and the
  first hour's share is the complement of what the previous period's last hour takes, so consecutive
  bills share a straddling hour exactly (nothing counted twice or lost). Inside the period each UTC
  hour counts in the local hour holding most of it (only time-of-use tariffs care; none of the shipped
  ones is in such a zone).
Each hour's energy is read to the whole watt-hour (half to even), as the engine reads hourly
profiles, so a bill computed here equals QuoteBill of the same hourly profile."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np

from services.billing.catalog import TariffSet
from services.billing.engine import HourMap, Usage, hour_map
from services.billing.errors import InvalidUsage
from services.billing.periods import BillingPeriod
from services.billing.schema import PER_UNIT_TYPES

HOUR = dt.timedelta(hours=1)
HEAD = -1  # bucket code of the UTC hour that straddles the period's start
TAIL = -2  # ... and its end


def _utc_midnight(t: dt.datetime) -> bool:
    return t.astimezone(dt.UTC).time() == dt.time(0)


def local_day(t: dt.datetime, tz: ZoneInfo, field: str) -> dt.date:
    """The calendar day an instant names: midnight in tz names that local day, and midnight UTC names
    the same calendar day (so 2025-01-01T00:00:00Z..2025-02-01T00:00:00Z is January for every meter, in
    its tariff's time zone). Any other instant is refused: the engine bills whole days."""
    local = t.astimezone(tz)
    if local.time() == dt.time(0):
        return local.date()
    if _utc_midnight(t):
        return t.astimezone(dt.UTC).date()
    raise InvalidUsage(
        field,
        f"{t.astimezone(dt.UTC).isoformat().replace('+00:00', 'Z')} is neither midnight UTC nor midnight "
        f"in {tz.key}; billing periods are whole days (give e.g. 2025-01-01T00:00:00Z for 1 January)",
    )


def billing_period(start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> BillingPeriod:
    """Days [start, end) in tz from two instants (see local_day); refuses empty and reversed periods."""
    first = local_day(start, tz, "billing_period.start_time")
    last = local_day(end, tz, "billing_period.end_time")
    if last <= first:
        raise InvalidUsage(
            "billing_period.end_time",
            f"{end.astimezone(dt.UTC).isoformat().replace('+00:00', 'Z')} (day {last}) is not after "
            f"start_time (day {first}); the period is [start_time, end_time) and at least one day",
        )
    return BillingPeriod(first, last)


@dataclass(frozen=True, eq=False)
class Grid:
    """The UTC hours of one tariff's billing period and how each counts (built once per tariff and
    period, shared by every meter billed on it)."""

    tariff_id: str
    period: BillingPeriod
    versions: tuple[str, ...]
    tariff_digest: str  # of the versions' content: an edited tariff file changes every bill's inputs
    start: dt.datetime  # local midnight beginning the period (UTC)
    end: dt.datetime  # local midnight ending it (UTC)
    first_hour: dt.datetime  # first UTC hour read
    n_utc_hours: int  # UTC hours read: [first_hour, first_hour + n_utc_hours)
    tail_fraction: float  # share of the last UTC hour inside the period (0 when midnight is on the hour)
    codes: np.ndarray | None  # UTC hour -> engine bucket, HEAD or TAIL; None when nothing needs buckets
    hours: HourMap
    head_bucket: int  # bucket the straddling first hour's share goes to
    tail_bucket: int
    # False for a tariff that charges nothing per kWh (unmetered supply): billed without readings.
    needs_readings: bool = True

    @property
    def time_of_use(self) -> bool:
        return self.hours.bucket is not None

    @property
    def straddles(self) -> bool:
        return self.tail_fraction > 0


def make_grid(tariffs: TariffSet, tariff_id: str, period: BillingPeriod) -> Grid:
    """Raises UnknownTariff / TariffNotInForce / InvalidUsage as the engine would for this period."""
    covering = tariffs.covering(tariff_id, period.start, period.end)
    hm = hour_map(tariffs, tariff_id, period)
    tz = covering[0][0].tz
    start = dt.datetime.combine(period.start, dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    end = dt.datetime.combine(period.end, dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    first_hour = start.replace(minute=0, second=0, microsecond=0)
    f = (start - first_hour) / HOUR  # how far into its UTC hour local midnight falls
    n = hm.n_hours
    digest = hashlib.sha256()
    for v, _, _ in covering:
        digest.update(v.spec.model_dump_json().encode())
    head_bucket = tail_bucket = 0
    codes: np.ndarray | None = None
    if f == 0:
        n_utc = n
        tail_fraction = 0.0
        if hm.bucket is not None:
            codes = hm.bucket.astype(np.int16)
    else:
        n_utc = n + 1
        tail_fraction = float(f)
        local = hm.bucket if hm.bucket is not None else np.zeros(n, dtype=np.intp)
        # UTC hour k (1..n-1) overlaps local hour k-1 for a share f of it and local hour k for 1-f: it
        # counts where the larger share is (the later on a tie).
        inner = np.arange(1, n)
        owner = inner if f <= 0.5 else inner - 1
        codes = np.empty(n_utc, dtype=np.int16)
        codes[1:n] = local[owner]
        codes[0], codes[n] = HEAD, TAIL
        head_bucket, tail_bucket = int(local[0]), int(local[n - 1])
    return Grid(
        tariff_id,
        period,
        tuple(v.version for v, _, _ in covering),
        digest.hexdigest()[:16],
        start,
        end,
        first_hour,
        n_utc,
        tail_fraction,
        codes,
        hm,
        head_bucket,
        tail_bucket,
        any(c.type in (*PER_UNIT_TYPES, "export_credit") for v, _, _ in covering for c in v.spec.components),
    )


@dataclass(frozen=True, slots=True)
class Metered:
    """A meter's usage over a grid, in whole watt-hours, ready to price."""

    import_wh: tuple[int, ...]  # per bucket (one entry without time of use)
    export_wh: tuple[int, ...]  # per segment (one entry without time of use)
    hours: int  # UTC hours of the period with a stored rollup
    coverage_percent: float

    @property
    def total_import_wh(self) -> int:
        return sum(self.import_wh)

    @property
    def total_export_wh(self) -> int:
        return sum(self.export_wh)


def measure(grid: Grid, rows: Iterable[tuple[int, float, float, int]]) -> Metered:
    """Folds one meter's rows (bucket code, import Wh, export Wh, hours) as the store returns them, each
    already a sum of whole watt-hours per hour, into Metered."""
    hm = grid.hours
    n_seg = max(hm.bucket_segment) + 1
    imp = [0] * hm.n_buckets
    exp = [0] * n_seg
    hours = 0
    for code, i_wh, e_wh, n in rows:
        i, e = int(i_wh), int(e_wh)
        hours += n
        if code == HEAD:
            # The complement of the previous period's TAIL share of the same hour.
            i -= int(np.rint(i * grid.tail_fraction))
            e -= int(np.rint(e * grid.tail_fraction))
            code = grid.head_bucket
        elif code == TAIL:
            i, e = int(np.rint(i * grid.tail_fraction)), int(np.rint(e * grid.tail_fraction))
            code = grid.tail_bucket
        imp[code] += i
        exp[hm.bucket_segment[code]] += e
    return Metered(tuple(imp), tuple(exp), hours, round(100.0 * hours / grid.n_utc_hours, 3))


def usage_of(grid: Grid, m: Metered, sanctioned_load_kw: Decimal | None) -> Usage:
    """The engine Usage of a measured meter: totals for a tariff without time of use (the engine takes
    only the total of a profile there), the compact profile of its buckets otherwise."""
    if grid.time_of_use:
        profile = grid.hours.compact_profile(np.array(m.import_wh), np.array(m.export_wh))
        return Usage(hourly=profile, sanctioned_load_kw=sanctioned_load_kw)
    return Usage(
        import_kwh=Decimal(m.total_import_wh).scaleb(-3),
        export_kwh=Decimal(m.total_export_wh).scaleb(-3),
        sanctioned_load_kw=sanctioned_load_kw,
    )


def load_of(sanctioned_load_kw: float) -> Decimal | None:
    """The meter registry's load (a double; 0 means unknown) as the engine takes it."""
    return Decimal(repr(sanctioned_load_kw)) if sanctioned_load_kw > 0 else None


def inputs_digest(grid: Grid, m: Metered, load: Decimal | None) -> str:
    """What makes two computations of a meter's bill the same: the tariff (id, versions and their
    content), the period, the energy per bucket, the hours with data and the load."""
    text = (
        f"{grid.tariff_id}|{'+'.join(grid.versions)}|{grid.tariff_digest}|{grid.period}|"
        f"{','.join(map(str, m.import_wh))}|{','.join(map(str, m.export_wh))}|{m.hours}|{load}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, eq=False)
class ScanPlan:
    """One pass over the rollups of every meter of a cycle, whatever their tariffs: the UTC hours of the
    union of the grids' windows, each labelled with a class, the tuple of what the hour is on every grid
    (its bucket code there, or None outside that grid's window). PostgreSQL sums per meter and class
    (one array look-up per row, no join); a meter's rows then fold into its own grid's buckets. Tariffs
    in one zone without time of use share one code vector, so the classes stay few (a dozen for the
    shipped tariffs in three zones)."""

    grids: tuple[Grid, ...]
    first_hour: dt.datetime
    n_hours: int
    classes: tuple[int | None, ...]  # per hour of the scan: its class; None when no grid reads it
    class_codes: tuple[tuple[int | None, ...], ...]  # class -> per grid: bucket code or None


def scan_plan(grids: Iterable[Grid]) -> ScanPlan:
    gs = tuple(grids)
    lo = min(g.first_hour for g in gs)
    hi = max(g.first_hour + g.n_utc_hours * HOUR for g in gs)
    n = int((hi - lo) / HOUR)
    columns: list[list[int | None]] = []
    for g in gs:
        offset = int((g.first_hour - lo) / HOUR)
        col: list[int | None] = [None] * n
        own = g.codes.tolist() if g.codes is not None else [0] * g.n_utc_hours
        col[offset : offset + g.n_utc_hours] = own
        columns.append(col)
    ids: dict[tuple[int | None, ...], int] = {}
    classes: list[int | None] = []
    for k in range(n):
        key = tuple(col[k] for col in columns)
        if all(c is None for c in key):
            classes.append(None)
            continue
        classes.append(ids.setdefault(key, len(ids)))
    return ScanPlan(gs, lo, n, tuple(classes), tuple(ids))
