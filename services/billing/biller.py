"""Bills meters from their stored hourly rollups: one meter at a time (ComputeBill) or a chunk of meters
on one tariff and period (a billing cycle), with the same rules for both:

- the period is whole days in the meter's tariff's time zone (services.billing.metering);
- the inputs (tariff id, versions and content, period, energy per bucket, hours with data, load) are
  digested; an issued bill with the same digest is the bill, so computing again never makes a second;
- a changed digest (late readings, a new load, an edited tariff) gives the next version, which
  supersedes the issued one and shows the difference; the old version is kept.

Errors are the service's own: NotFound, FailedPrecondition (the meter or its data cannot be billed as
they stand) and the engine's InvalidUsage for a bad request (the billing period)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from services.billing import store
from services.billing.bills import Issued, StoredBill, issue
from services.billing.catalog import TariffSet
from services.billing.engine import quote
from services.billing.errors import BillingError, InvalidUsage, TariffNotInForce, UnknownTariff
from services.billing.metering import (
    Grid,
    billing_period,
    inputs_digest,
    load_of,
    make_grid,
    measure,
    usage_of,
)
from services.billing.periods import BillingPeriod
from services.billing.store import MeterRow, UsageRows
from services.common import metrics

NO_READINGS = "no readings in the billing period"


class NotFound(Exception):
    pass


class FailedPrecondition(Exception):
    pass


class Conflict(Exception):
    """Another computation kept replacing the bill while this one tried to store its own."""


@dataclass
class ChunkResult:
    """What pricing a chunk of meters produced: bills to store, meters skipped (their issued bill has
    the same inputs) and failures (meter, reason)."""

    bills: list[StoredBill] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


class Biller:
    def __init__(self, tariffs: TariffSet) -> None:
        self.tariffs = tariffs
        self._grids: dict[tuple[str, BillingPeriod], Grid | BillingError] = {}

    def period_for(self, tariff_id: str, start: dt.datetime, end: dt.datetime) -> BillingPeriod:
        """The days [start, end) name on tariff_id; raises UnknownTariff or InvalidUsage."""
        tz = self.tariffs.versions(tariff_id)[0].tz  # every version of a tariff has the same zone
        return billing_period(start, end, tz)

    def grid(self, tariff_id: str, period: BillingPeriod) -> Grid:
        """Cached per tariff and period (failures too: a cycle asks once per chunk)."""
        key = (tariff_id, period)
        if key not in self._grids:
            if len(self._grids) > 256:
                self._grids.clear()
            try:
                self._grids[key] = make_grid(self.tariffs, tariff_id, period)
            except BillingError as exc:
                self._grids[key] = exc
        got = self._grids[key]
        if isinstance(got, BillingError):
            raise got
        return got

    # --- one meter -----------------------------------------------------------------------------------

    async def compute(
        self, pool: asyncpg.Pool, meter_id: str, start: dt.datetime, end: dt.datetime, *, recompute: bool
    ) -> tuple[StoredBill, bool]:
        """The meter's issued bill for the period, computed and stored if there is none (or if
        recompute and its inputs changed); returns (bill, created)."""
        meter = await store.get_meter(pool, meter_id)
        if meter is None:
            raise NotFound(f"meter_id {meter_id!r} is not registered; RegisterMeter first")
        if not meter.tariff_id:
            raise FailedPrecondition(
                f"meter {meter_id} has no tariff; register it with a tariff_id (ListTariffs shows them)"
            )
        try:
            period = self.period_for(meter.tariff_id, start, end)
        except UnknownTariff:
            raise FailedPrecondition(
                f"meter {meter_id} is on tariff {meter.tariff_id!r}, which is not loaded; "
                f"re-register it on one ListTariffs shows"
            ) from None
        try:
            grid = self.grid(meter.tariff_id, period)
        except (TariffNotInForce, InvalidUsage) as exc:
            raise FailedPrecondition(f"meter {meter_id}: {exc.message}") from None
        for _ in range(3):
            existing = await store.get_issued(pool, meter_id, period)
            if existing is not None and not recompute:
                return existing, False
            usage = await store.read_usage(pool, grid, [meter_id])
            result = self.price(
                grid,
                [meter],
                usage,
                {} if existing is None else {meter_id: existing.issued_view()},
                recompute=True,
                cycle_id=None,
                now=dt.datetime.now(dt.UTC),
            )
            if result.failures:
                raise FailedPrecondition(f"meter {meter_id}: {result.failures[0][1]}")
            if result.skipped:
                assert existing is not None
                return existing, False
            async with pool.acquire() as conn:
                stored = await store.write_bills(conn, result.bills)
            metrics.count_bills(issued=len(stored))
            if stored:
                return result.bills[0], True
            # Another computation stored a bill for this meter and period in between: look again.
        raise Conflict(
            f"the bill of meter {meter_id} for {period} kept changing while it was computed; retry"
        )

    # --- many meters of one tariff and period (CPU only: run it in a thread) ------------------------

    def price(
        self,
        grid: Grid,
        meters: Sequence[MeterRow],
        usage: UsageRows,
        existing: dict[str, Issued],
        *,
        recompute: bool,
        cycle_id: str | None,
        now: dt.datetime,
    ) -> ChunkResult:
        """Prices meters (all on grid's tariff) from their usage rows. A meter with an issued bill in
        `existing` gets a revision when recompute and its inputs changed, else it is skipped."""
        out = ChunkResult()
        for m in meters:
            rows = usage.get(m.meter_id, [])
            if not rows and grid.needs_readings:
                out.failures.append((m.meter_id, NO_READINGS))
                continue
            metered = measure(grid, rows)
            load = load_of(m.sanctioned_load_kw)
            digest = inputs_digest(grid, metered, load)
            previous = existing.get(m.meter_id)
            if previous is not None and (previous.inputs_hash == digest or not recompute):
                out.skipped.append(m.meter_id)
                continue
            try:
                bill = quote(self.tariffs, grid.tariff_id, usage_of(grid, metered, load), grid.period)
            except BillingError as exc:
                out.failures.append((m.meter_id, _reason(exc, m)))
                continue
            out.bills.append(
                issue(
                    bill,
                    meter_id=m.meter_id,
                    grid=grid,
                    metered=metered,
                    inputs_hash=digest,
                    sanctioned_load_kw=m.sanctioned_load_kw,
                    previous=previous,
                    billing_cycle_id=cycle_id,
                    issue_time=now,
                )
            )
        return out


def _reason(exc: BillingError, meter: MeterRow) -> str:
    # The engine names the usage field it could not price; for a stored meter that is the registry's
    # record (usually a missing sanctioned load), which is what an operator has to fix.
    if exc.field.startswith("usage.sanctioned_load_kw") or exc.field.startswith("usage.connected_load_hp"):
        return (
            f"sanctioned_load_kw is {meter.sanctioned_load_kw:g} (unknown) and tariff {meter.tariff_id} "
            f"charges by load: {exc.message}; re-register the meter with its load"
        )
    return f"{exc.field}: {exc.message}" if exc.field else exc.message
