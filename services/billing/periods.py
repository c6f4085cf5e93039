"""Billing periods as calendar days, and how many months a period counts for when monthly figures
(slab widths, fixed charges) are scaled to it.

The month rule: whole calendar months are counted from the start date (15 Jan - 15 Mar is exactly 2),
and the days left over count pro rata by the length of the month they begin (15 Mar - 30 Mar is 15/31
of a month). Periods that start on the 1st and end on a 1st therefore count whole months, and two
monthly bills and one two-monthly bill over the same days get the same slab widths."""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from services.billing.errors import InvalidUsage

MAX_PERIOD_DAYS = 366


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    """Days [start, end) in the tariff's time zone: end is the first day not billed."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        days = (self.end - self.start).days
        if days <= 0:
            raise InvalidUsage(
                "billing_period",
                f"end {self.end} is not after start {self.start}; the period is [start, end) in days",
            )
        if days > MAX_PERIOD_DAYS:
            raise InvalidUsage("billing_period", f"{days} days long; at most {MAX_PERIOD_DAYS} days")

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    def __str__(self) -> str:
        return f"{self.start}..{self.end}"


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day of the month `months` later, clamped to the month's last day (31 Jan + 1 = 28 Feb)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def months_between(start: dt.date, end: dt.date, quantum: Decimal) -> Decimal:
    """How many months [start, end) counts for (see the module docstring), rounded half-up to quantum."""
    whole = (end.year - start.year) * 12 + end.month - start.month
    while whole > 0 and add_months(start, whole) > end:
        whole -= 1
    rest_start = add_months(start, whole)
    rest_days = (end - rest_start).days
    if rest_days == 0:
        return Decimal(whole)
    month_days = (add_months(start, whole + 1) - rest_start).days
    return (Decimal(whole) + Decimal(rest_days) / Decimal(month_days)).quantize(quantum, ROUND_HALF_UP)
