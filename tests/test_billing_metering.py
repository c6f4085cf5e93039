"""From hourly rollups to engine usage (services/billing/metering.py): billing periods as whole local
days, the UTC hours a period reads and how they fold into local hours and time-of-use buckets, the
compact profile that prices exactly like the full one, consecutive bills sharing a straddling hour
exactly, the single-pass scan plan, and the digest that makes stored bills idempotent."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from services.billing.catalog import load_tariffs
from services.billing.engine import HourlyProfile, Usage, quote
from services.billing.errors import InvalidUsage
from services.billing.metering import (
    HEAD,
    TAIL,
    billing_period,
    inputs_digest,
    load_of,
    local_day,
    make_grid,
    measure,
    scan_plan,
    usage_of,
)
from services.billing.periods import BillingPeriod

TARIFFS = load_tariffs()
UTC = dt.UTC
IST = ZoneInfo("Asia/Kolkata")
LA = ZoneInfo("America/Los_Angeles")


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_period_is_named_by_utc_midnights_or_by_local_midnights() -> None:
    # 1 January for an Indian tariff: either way of writing it names the same local day.
    assert local_day(utc("2025-01-01T00:00:00"), IST, "f") == dt.date(2025, 1, 1)
    assert local_day(utc("2024-12-31T18:30:00"), IST, "f") == dt.date(2025, 1, 1)
    assert local_day(utc("2025-03-09T08:00:00"), LA, "f") == dt.date(2025, 3, 9)
    with pytest.raises(InvalidUsage) as err:
        local_day(utc("2025-01-01T10:00:00"), IST, "billing_period.start_time")
    assert err.value.field == "billing_period.start_time"
    assert "2025-01-01T10:00:00Z" in err.value.message and "Asia/Kolkata" in err.value.message


def test_an_empty_or_reversed_period_is_refused_naming_end_time() -> None:
    for end in ("2025-01-01T00:00:00", "2024-12-01T00:00:00"):
        with pytest.raises(InvalidUsage) as err:
            billing_period(utc("2025-01-01T00:00:00"), utc(end), IST)
        assert err.value.field == "billing_period.end_time"


def test_local_midnight_on_a_utc_hour_reads_exactly_the_local_hours() -> None:
    g = make_grid(TARIFFS, "us-ca-pge-e-tou-c", BillingPeriod(dt.date(2025, 3, 1), dt.date(2025, 4, 1)))
    assert g.first_hour == utc("2025-03-01T08:00:00") and g.tail_fraction == 0
    assert g.n_utc_hours == g.hours.n_hours == 31 * 24 - 1  # the spring-forward day has 23 hours
    assert g.codes is not None and (g.codes == g.hours.bucket).all()


def test_an_indian_period_reads_one_more_utc_hour_shared_at_both_ends() -> None:
    g = make_grid(TARIFFS, "in-gj-rgp-urban", BillingPeriod(dt.date(2025, 1, 1), dt.date(2025, 2, 1)))
    assert g.first_hour == utc("2024-12-31T18:00:00") and g.start == utc("2024-12-31T18:30:00")
    assert g.n_utc_hours == 745 and g.tail_fraction == 0.5
    assert g.codes is not None and g.codes[0] == HEAD and g.codes[-1] == TAIL
    # 400 Wh in every UTC hour: 744 local hours of 400 Wh, half of each end hour.
    m = measure(g, [(HEAD, 400.0, 0.0, 1), (0, 743 * 400.0, 0.0, 743), (TAIL, 400.0, 0.0, 1)])
    assert m.total_import_wh == 744 * 400 and m.coverage_percent == 100.0


def test_consecutive_bills_share_a_straddling_hour_exactly() -> None:
    jan = make_grid(TARIFFS, "in-gj-rgp-urban", BillingPeriod(dt.date(2025, 1, 1), dt.date(2025, 2, 1)))
    feb = make_grid(TARIFFS, "in-gj-rgp-urban", BillingPeriod(dt.date(2025, 2, 1), dt.date(2025, 3, 1)))
    assert jan.first_hour + dt.timedelta(hours=jan.n_utc_hours - 1) == feb.first_hour
    for odd in (1.0, 333.0, 1001.0, 7.0):  # watt-hours an even split cannot halve
        a = measure(jan, [(TAIL, odd, odd, 1)])
        b = measure(feb, [(HEAD, odd, odd, 1)])
        assert a.total_import_wh + b.total_import_wh == int(odd)
        assert a.total_export_wh + b.total_export_wh == int(odd)


@pytest.mark.parametrize(
    ("tariff_id", "start", "end"),
    [
        ("us-ca-pge-e-tou-c", dt.date(2026, 5, 20), dt.date(2026, 6, 20)),  # new version and summer
        ("us-ca-pge-e-tou-c", dt.date(2025, 10, 20), dt.date(2025, 11, 20)),  # DST ends
        ("uk-economy-7", dt.date(2026, 3, 15), dt.date(2026, 4, 15)),  # DST starts
    ],
)
def test_rollups_summed_per_bucket_price_exactly_as_the_full_hourly_profile(
    tariff_id: str, start: dt.date, end: dt.date
) -> None:
    period = BillingPeriod(start, end)
    g = make_grid(TARIFFS, tariff_id, period)
    assert g.codes is not None and not g.straddles
    rng = np.random.default_rng(4)
    wh = np.round(rng.uniform(0, 2500, g.n_utc_hours), 1)  # rollups keep fractions of a watt-hour
    ewh = np.where(rng.uniform(0, 1, g.n_utc_hours) < 0.3, np.round(rng.uniform(0, 900, g.n_utc_hours), 1), 0)
    # What the store returns: per bucket code, sums of whole watt-hours (round half to even).
    rows: dict[int, list[float]] = {}
    for code, i, e in zip(g.codes.tolist(), np.rint(wh), np.rint(ewh), strict=True):
        acc = rows.setdefault(code, [0.0, 0.0, 0])
        acc[0] += i
        acc[1] += e
        acc[2] += 1
    m = measure(g, [(c, a[0], a[1], int(a[2])) for c, a in rows.items()])
    load = load_of(4.2)
    compact = quote(TARIFFS, tariff_id, usage_of(g, m, load), period)
    full = quote(
        TARIFFS,
        tariff_id,
        Usage(hourly=HourlyProfile(g.start, wh / 1000, ewh / 1000), sanctioned_load_kw=load),
        period,
    )
    assert compact == full


def test_a_tariff_without_time_of_use_is_priced_from_the_total() -> None:
    period = BillingPeriod(dt.date(2025, 1, 1), dt.date(2025, 2, 1))
    g = make_grid(TARIFFS, "in-gj-rgp-urban", period)
    m = measure(g, [(HEAD, 400.0, 0.0, 1), (0, 299_600.0, 0.0, 743), (TAIL, 400.0, 0.0, 1)])
    u = usage_of(g, m, Decimal(3))
    assert u.import_kwh == Decimal("300.000") and u.hourly is None
    assert quote(TARIFFS, "in-gj-rgp-urban", u, period).total == Decimal(2266)  # the README's bill


def test_unmetered_supply_needs_no_readings() -> None:
    period = BillingPeriod(dt.date(2025, 1, 1), dt.date(2025, 2, 1))
    assert not make_grid(TARIFFS, "in-gj-ag-unmetered", period).needs_readings
    assert make_grid(TARIFFS, "in-gj-ag-metered", period).needs_readings


def test_the_scan_plan_labels_each_hour_with_what_it_is_on_every_grid() -> None:
    period = BillingPeriod(dt.date(2026, 3, 1), dt.date(2026, 4, 1))
    grids = [make_grid(TARIFFS, t, period) for t in ("in-gj-rgp-urban", "us-ca-pge-e-tou-c", "uk-economy-7")]
    plan = scan_plan(grids)
    assert plan.first_hour == min(g.first_hour for g in grids)
    for gi, g in enumerate(grids):
        offset = int((g.first_hour - plan.first_hour) / dt.timedelta(hours=1))
        own = g.codes.tolist() if g.codes is not None else [0] * g.n_utc_hours
        for k in range(plan.n_hours):
            cls = plan.classes[k]
            got = None if cls is None else plan.class_codes[cls][gi]
            expected = own[k - offset] if 0 <= k - offset < g.n_utc_hours else None
            assert got == expected, (g.tariff_id, k)
    assert len(plan.class_codes) < 20  # few classes: few rows per meter come back


def test_the_digest_changes_with_any_input_and_only_then() -> None:
    period = BillingPeriod(dt.date(2025, 1, 1), dt.date(2025, 2, 1))
    g = make_grid(TARIFFS, "in-gj-rgp-urban", period)
    rows = [(HEAD, 400.0, 0.0, 1), (0, 297_200.0, 0.0, 743), (TAIL, 400.0, 0.0, 1)]
    base = inputs_digest(g, measure(g, rows), Decimal(3))
    assert base == inputs_digest(g, measure(g, list(rows)), Decimal("3"))
    assert base != inputs_digest(g, measure(g, rows), Decimal("3.5"))
    late = [(HEAD, 400.0, 0.0, 1), (0, 297_300.0, 0.0, 743), (TAIL, 400.0, 0.0, 1)]
    assert base != inputs_digest(g, measure(g, late), Decimal(3))
    other = make_grid(TARIFFS, "in-gj-rgp-rural", period)
    assert base != inputs_digest(other, measure(other, rows), Decimal(3))


def test_every_simulated_meter_category_is_billed_on_a_shipped_tariff() -> None:
    from services.simulator.fleet import TARIFF_BY_CATEGORY

    for category, tariff_id in TARIFF_BY_CATEGORY.items():
        assert TARIFFS.versions(tariff_id), category
