"""A stored bill: the engine's itemised bill plus what storing it adds (id, version, status, the
digest of its inputs, coverage, the cycle that produced it, and for a revision the bill it replaces and
the difference), and the row form it is kept in. No SQL and no gRPC here."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.billing.engine import Bill
from services.billing.metering import Grid, Metered
from services.billing.periods import BillingPeriod

ISSUED = "issued"
SUPERSEDED = "superseded"


def bill_id_of(meter_id: str, period: BillingPeriod, version: int) -> str:
    """Derived from what the bill is for, so a repeated write (a retry, a cycle resumed after a crash)
    names the same bill. Unambiguous: meter ids hold no ':' followed by this fixed-width tail."""
    return f"{meter_id}:{period.start:%Y%m%d}-{period.end:%Y%m%d}:v{version}"


def money(d: Decimal) -> str:
    return format(d, "f")


@dataclass(frozen=True, slots=True)
class Issued:
    """What a computation needs to know about the bill already in force for a meter and period."""

    bill_id: str
    version: int
    inputs_hash: str
    total: Decimal
    currency_code: str
    billing_cycle_id: str | None


@dataclass(frozen=True, slots=True)
class StoredBill:
    bill_id: str
    meter_id: str
    period: BillingPeriod
    version: int
    status: str
    start_time: dt.datetime
    end_time: dt.datetime
    tariff_id: str
    tariff_versions: tuple[str, ...]
    currency_code: str
    import_energy_kwh: Decimal
    export_energy_kwh: Decimal
    subtotal: Decimal
    total: Decimal
    lines: tuple[dict[str, Any], ...]
    inputs_hash: str
    sanctioned_load_kw: float
    data_coverage_percent: float
    billing_cycle_id: str | None
    issue_time: dt.datetime
    superseded_by_bill_id: str | None = None
    previous_bill_id: str | None = None
    previous_total: Decimal | None = None
    total_difference: Decimal | None = None

    def record(self) -> tuple[Any, ...]:
        """The row, in COLUMNS order."""
        return (
            self.bill_id,
            self.meter_id,
            self.period.start,
            self.period.end,
            self.version,
            self.status,
            self.start_time,
            self.end_time,
            self.tariff_id,
            list(self.tariff_versions),
            self.currency_code,
            self.import_energy_kwh,
            self.export_energy_kwh,
            self.subtotal,
            self.total,
            json.dumps(self.lines, separators=(",", ":")),
            self.inputs_hash,
            self.sanctioned_load_kw,
            self.data_coverage_percent,
            self.billing_cycle_id,
            self.issue_time,
            self.superseded_by_bill_id,
            self.previous_bill_id,
            self.previous_total,
            self.total_difference,
        )

    @classmethod
    def from_row(cls, row: Any) -> StoredBill:
        lines = row["lines"]
        if isinstance(lines, str):
            lines = json.loads(lines)
        return cls(
            bill_id=row["bill_id"],
            meter_id=row["meter_id"],
            period=BillingPeriod(row["period_start_date"], row["period_end_date"]),
            version=row["version"],
            status=row["status"],
            start_time=row["start_time"],
            end_time=row["end_time"],
            tariff_id=row["tariff_id"],
            tariff_versions=tuple(row["tariff_versions"]),
            currency_code=row["currency_code"],
            import_energy_kwh=row["import_energy_kwh"],
            export_energy_kwh=row["export_energy_kwh"],
            subtotal=row["subtotal"],
            total=row["total"],
            lines=tuple(lines),
            inputs_hash=row["inputs_hash"],
            sanctioned_load_kw=row["sanctioned_load_kw"],
            data_coverage_percent=row["data_coverage_percent"],
            billing_cycle_id=row["billing_cycle_id"],
            issue_time=row["issue_time"],
            superseded_by_bill_id=row["superseded_by_bill_id"],
            previous_bill_id=row["previous_bill_id"],
            previous_total=row["previous_total"],
            total_difference=row["total_difference"],
        )

    def issued_view(self) -> Issued:
        return Issued(
            self.bill_id,
            self.version,
            self.inputs_hash,
            self.total,
            self.currency_code,
            self.billing_cycle_id,
        )


COLUMNS = (
    "bill_id",
    "meter_id",
    "period_start_date",
    "period_end_date",
    "version",
    "status",
    "start_time",
    "end_time",
    "tariff_id",
    "tariff_versions",
    "currency_code",
    "import_energy_kwh",
    "export_energy_kwh",
    "subtotal",
    "total",
    "lines",
    "inputs_hash",
    "sanctioned_load_kw",
    "data_coverage_percent",
    "billing_cycle_id",
    "issue_time",
    "superseded_by_bill_id",
    "previous_bill_id",
    "previous_total",
    "total_difference",
)


def _line(line: Any) -> dict[str, Any]:
    return {
        "kind": line.kind.name,
        "description": line.description,
        "quantity": money(line.quantity),
        "unit": line.unit,
        "rate": None if line.rate is None else money(line.rate),
        "rate_percent": None if line.rate_percent is None else money(line.rate_percent),
        "applies_to": line.applies_to,
        "amount": money(line.amount),
        "subtotal": line.subtotal,
        "version": line.version,
    }


def lines_of(bill: Bill) -> list[dict[str, Any]]:
    return [_line(line) for line in bill.lines]


def issue(
    bill: Bill,
    *,
    meter_id: str,
    grid: Grid,
    metered: Metered,
    inputs_hash: str,
    sanctioned_load_kw: float,
    previous: Issued | None,
    billing_cycle_id: str | None,
    issue_time: dt.datetime,
) -> StoredBill:
    """The bill to store: version 1, or the next version after `previous` with a closing line that
    shows the difference (its amount is 0, so the lines still add up to this bill's full total)."""
    lines = lines_of(bill)
    version = 1 if previous is None else previous.version + 1
    previous_total = difference = None
    if previous is not None:
        previous_total = previous.total
        difference = bill.total - previous.total
        cur = bill.currency
        lines.append(
            {
                "kind": "ADJUSTMENT",
                "description": (
                    f"Revised bill (version {version}): replaces bill {previous.bill_id} of "
                    f"{money(previous.total)} {cur}; difference {difference:+f} {cur} (informational: this "
                    f"bill's total is the full amount for the period)"
                ),
                "quantity": money(difference),
                "unit": cur,
                "rate": "0",
                "rate_percent": None,
                "applies_to": "",
                "amount": "0",
                "subtotal": "revision",
                "version": "",
            }
        )
    return StoredBill(
        bill_id=bill_id_of(meter_id, grid.period, version),
        meter_id=meter_id,
        period=grid.period,
        version=version,
        status=ISSUED,
        start_time=grid.start,
        end_time=grid.end,
        tariff_id=bill.tariff_id,
        tariff_versions=bill.tariff_versions,
        currency_code=bill.currency,
        import_energy_kwh=bill.import_kwh,
        export_energy_kwh=bill.export_kwh,
        subtotal=bill.subtotal,
        total=bill.total,
        lines=tuple(lines),
        inputs_hash=inputs_hash,
        sanctioned_load_kw=sanctioned_load_kw,
        data_coverage_percent=metered.coverage_percent,
        billing_cycle_id=billing_cycle_id,
        issue_time=issue_time,
        previous_bill_id=None if previous is None else previous.bill_id,
        previous_total=previous_total,
        total_difference=difference,
    )
