"""The tariff engine (services/billing/engine.py) against bills worked by hand, and the properties every
bill keeps whatever the usage: it never falls when usage grows, telescopic slabs have no steps at their
edges, the lines add up to the total, and splitting usage between periods that share a rate changes
nothing."""

from __future__ import annotations

import copy
import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.billing.catalog import DEFAULT_TARIFF_DIR, TariffSet, load_tariffs, parse_tariff
from services.billing.engine import Bill, HourlyProfile, LineKind, Usage, quote
from services.billing.errors import InvalidUsage, TariffNotInForce, UnknownTariff
from services.billing.periods import BillingPeriod, months_between

D = Decimal
ZERO = Decimal(0)
TARIFFS = load_tariffs()
UTC = dt.UTC


def period(start: str, end: str) -> BillingPeriod:
    return BillingPeriod(dt.date.fromisoformat(start), dt.date.fromisoformat(end))


def amounts(bill: Bill) -> list[tuple[LineKind, Decimal]]:
    return [(line.kind, line.amount) for line in bill.lines]


def rgp(kwh: str, start: str = "2025-01-01", end: str = "2025-02-01", load: str = "3", **usage: Any) -> Bill:
    return quote(
        TARIFFS,
        "in-gj-rgp-urban",
        Usage(import_kwh=D(kwh), sanctioned_load_kw=D(load), **usage),
        period(start, end),
    )


def shipped_data(tariff_id: str, version: str) -> dict[str, Any]:
    return yaml.safe_load((DEFAULT_TARIFF_DIR / tariff_id / f"{version}.yaml").read_text())


def one_tariff(data: dict[str, Any]) -> TariffSet:
    return TariffSet([parse_tariff(data, "test")])


def hourly(start_day: str, end_day: str, tz: str, per_hour: Any) -> tuple[HourlyProfile, BillingPeriod]:
    """An hourly profile over [start_day, end_day) in tz; per_hour(local datetime) -> kWh."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    p = period(start_day, end_day)
    start = dt.datetime.combine(p.start, dt.time(0), tzinfo=zone).astimezone(UTC)
    end = dt.datetime.combine(p.end, dt.time(0), tzinfo=zone).astimezone(UTC)
    hours = [start + dt.timedelta(hours=h) for h in range(int((end - start) / dt.timedelta(hours=1)))]
    values = np.array([per_hour(t.astimezone(zone)) for t in hours], dtype=np.float64)
    return HourlyProfile(start, values), p


# --- hand-worked bills -----------------------------------------------------------------------------


def test_one_month_rgp_urban_bill_matches_the_hand_worked_bill() -> None:
    bill = rgp("300")
    # Energy, telescopic: 50 x 3.05 = 152.50; 50 x 3.50 = 175.00; 150 x 4.15 = 622.50; 50 x 5.20 = 260.00
    # Fixed: 3 kW is in the "above 2 to 4 kW" band: 25.00 for the month
    # FPPPA (January 2025 carries the Oct-Dec 2024 figure): 300 x 2.45 = 735.00
    # Duty: 15% of (1210.00 + 25.00 + 735.00 = 1970.00) = 295.50
    # Total 2265.50, rounded half-up to the rupee: 2266 (a rounding line of +0.50)
    assert amounts(bill) == [
        (LineKind.ENERGY_SLAB, D("152.50")),
        (LineKind.ENERGY_SLAB, D("175.00")),
        (LineKind.ENERGY_SLAB, D("622.50")),
        (LineKind.ENERGY_SLAB, D("260.00")),
        (LineKind.FIXED_CHARGE, D("25.00")),
        (LineKind.FUEL_SURCHARGE, D("735.00")),
        (LineKind.DUTY, D("295.50")),
        (LineKind.ROUNDING, D("0.50")),
    ]
    assert bill.total == 2266
    assert bill.subtotals == {
        "energy": D("1210.00"),
        "fixed": D("25.00"),
        "fuel_surcharge": D("735.00"),
        "duty": D("295.50"),
        "rounding": D("0.50"),
    }
    assert bill.subtotal == D("1970.00"), "everything but duty, tax and rounding"
    assert (bill.tariff_id, bill.tariff_versions, bill.currency) == ("in-gj-rgp-urban", ("2024-01",), "INR")
    duty = bill.lines[6]
    assert (duty.quantity, duty.rate, duty.rate_percent, duty.applies_to) == (
        D("1970.00"),
        None,
        D(15),
        "energy + fixed + fuel_surcharge",
    )
    slab = bill.lines[2]
    assert (slab.description, slab.quantity, slab.unit, slab.rate) == (
        "Energy charge 100-250 kWh",
        D("150.00"),
        "kWh",
        D("4.15"),
    )


def test_a_two_month_bill_doubles_the_slab_widths_and_the_fixed_charge() -> None:
    bill = rgp("500", "2025-01-01", "2025-03-01")
    # Slabs of 50/50/150 a month become 100/100/300 for two months:
    # 100 x 3.05 = 305.00; 100 x 3.50 = 350.00; 300 x 4.15 = 1245.00 (the 5.20 slab is not reached)
    # Fixed 2 months x 25 = 50.00; FPPPA 500 x 2.45 = 1225.00
    # Duty 15% of 3175.00 = 476.25; total 3651.25 -> 3651 (rounding -0.25)
    assert [line.description for line in bill.lines[:3]] == [
        "Energy charge 0-100 kWh",
        "Energy charge 100-200 kWh",
        "Energy charge 200-500 kWh",
    ]
    assert amounts(bill) == [
        (LineKind.ENERGY_SLAB, D("305.00")),
        (LineKind.ENERGY_SLAB, D("350.00")),
        (LineKind.ENERGY_SLAB, D("1245.00")),
        (LineKind.FIXED_CHARGE, D("50.00")),
        (LineKind.FUEL_SURCHARGE, D("1225.00")),
        (LineKind.DUTY, D("476.25")),
        (LineKind.ROUNDING, D("-0.25")),
    ]
    assert bill.lines[3].quantity == 2 and bill.lines[3].unit == "month"
    assert bill.total == 3651


def test_a_partial_month_scales_slabs_and_fixed_charge_pro_rata_by_days() -> None:
    bill = rgp("100", "2025-01-01", "2025-01-16")
    # 15 days of January = 15/31 = 0.4839 months (rounded to the tariff's 0.0001)
    # Slab edges 50 x 0.4839 = 24.195 -> 24.20 kWh; 100 x 0.4839 = 48.39 kWh
    # 24.20 x 3.05 = 73.81; (48.39 - 24.20) = 24.19 x 3.50 = 84.665 -> 84.67; (100 - 48.39) = 51.61 x 4.15 =
    # 214.1815 -> 214.18. Fixed 0.4839 x 25 = 12.0975 -> 12.10. FPPPA 100 x 2.45 = 245.00
    # Duty 15% of (372.66 + 12.10 + 245.00 = 629.76) = 94.464 -> 94.46; total 724.22 -> 724
    assert amounts(bill) == [
        (LineKind.ENERGY_SLAB, D("73.81")),
        (LineKind.ENERGY_SLAB, D("84.67")),
        (LineKind.ENERGY_SLAB, D("214.18")),
        (LineKind.FIXED_CHARGE, D("12.10")),
        (LineKind.FUEL_SURCHARGE, D("245.00")),
        (LineKind.DUTY, D("94.46")),
        (LineKind.ROUNDING, D("-0.22")),
    ]
    assert bill.lines[3].quantity == D("0.4839")


@pytest.mark.parametrize(
    ("start", "end", "months"),
    [
        ("2025-01-01", "2025-02-01", "1"),
        ("2025-01-15", "2025-03-15", "2"),
        ("2025-01-31", "2025-02-28", "1"),  # 31 January + 1 month is the last day of February
        ("2025-02-01", "2025-03-01", "1"),  # 28 days, still one month
        ("2025-01-01", "2025-01-16", "0.4839"),  # 15/31
        ("2025-01-15", "2025-02-01", "0.5484"),  # 17/31
        ("2024-02-01", "2024-02-15", "0.4828"),  # 14/29 (a leap year's February)
        ("2024-02-10", "2024-03-25", "1.4839"),  # to 10 March, then 15 of the 31 days to 10 April
    ],
)
def test_a_period_counts_whole_calendar_months_and_the_rest_pro_rata_by_days(
    start: str, end: str, months: str
) -> None:
    assert months_between(dt.date.fromisoformat(start), dt.date.fromisoformat(end), D("0.0001")) == D(months)


def test_a_period_straddling_an_fpppa_change_charges_each_side_at_its_rate() -> None:
    bill = rgp("200", "2025-06-16", "2025-07-16")
    # 30 days: 15 in June (FPPPA 2.45, carried from Oct-Dec 2024) and 15 in July (2.30 from 1 July 2025)
    # 200 kWh shared by days: 100 + 100. 100 x 2.45 = 245.00; 100 x 2.30 = 230.00
    # Energy (16 June - 16 July is exactly one month): 152.50 + 175.00 + 100 x 4.15 = 742.50; fixed 25.00
    # Duty 15% of (742.50 + 25.00 + 475.00 = 1242.50) = 186.375 -> 186.38; total 1428.88 -> 1429
    fpppa = [line for line in bill.lines if line.kind is LineKind.FUEL_SURCHARGE]
    assert [(f.description, f.quantity, f.rate, f.amount) for f in fpppa] == [
        ("FPPPA charge 2025-06-16..2025-06-30 (rate from 2024-10-01)", D(100), D("2.45"), D("245.00")),
        ("FPPPA charge 2025-07-01..2025-07-15 (rate from 2025-07-01)", D(100), D("2.30"), D("230.00")),
    ]
    assert bill.subtotals["energy"] == D("742.50") and bill.subtotals["duty"] == D("186.38")
    assert bill.total == 1429


@pytest.mark.parametrize(
    ("load_kw", "billed_kw", "charge"),
    [
        ("2", "2", "15.00"),  # exactly on the edge: "up to 2 kW" includes 2
        ("1.6", "2", "15.00"),  # rounded up to 2.0, still the first band
        ("2.01", "2.5", "25.00"),  # rounded up to 2.5: "above 2 to 4 kW"
        ("4", "4", "25.00"),
        ("4.2", "4.5", "45.00"),
        ("6", "6", "45.00"),
        ("6.01", "6.5", "70.00"),
    ],
)
def test_a_load_exactly_on_a_band_edge_stays_in_the_lower_band(
    load_kw: str, billed_kw: str, charge: str
) -> None:
    (fixed,) = [line for line in rgp("0", load=load_kw).lines if line.kind is LineKind.FIXED_CHARGE]
    assert fixed.amount == D(charge)
    assert f"load {billed_kw} kW" in fixed.description


def test_a_load_given_in_horsepower_is_converted_at_0_746_kw_per_hp() -> None:
    def fixed_for_hp(hp: str) -> Decimal:
        usage = Usage(import_kwh=D(0), connected_load_hp=D(hp))
        bill = quote(TARIFFS, "in-gj-rgp-urban", usage, period("2025-01-01", "2025-02-01"))
        return next(line.amount for line in bill.lines if line.kind is LineKind.FIXED_CHARGE)

    assert fixed_for_hp("2.68") == 15  # 2.68 x 0.746 = 1.99928 kW -> 2.0 kW
    assert fixed_for_hp("2.69") == 25  # 2.00674 kW -> 2.5 kW


def test_non_telescopic_slabs_charge_every_unit_at_the_rate_of_the_slab_reached() -> None:
    data = shipped_data("in-gj-rgp-urban", "2024-01")
    data["components"][0]["mode"] = "non_telescopic"
    volume = one_tariff(data)

    def energy(tariffs: TariffSet, kwh: str) -> list[tuple[str, Decimal]]:
        usage = Usage(import_kwh=D(kwh), sanctioned_load_kw=D(3))
        bill = quote(tariffs, "in-gj-rgp-urban", usage, period("2025-01-01", "2025-02-01"))
        return [(line.description, line.amount) for line in bill.lines if line.kind is LineKind.ENERGY_SLAB]

    # Telescopic 300 kWh: 152.50 + 175.00 + 622.50 + 260.00 = 1210.00
    assert sum(a for _, a in energy(TARIFFS, "300")) == D("1210.00")
    # Non-telescopic 300 kWh: all 300 at the above-250 rate: 300 x 5.20 = 1560.00
    assert energy(volume, "300") == [
        ("Energy charge, all units at the above 250 kWh slab rate (non-telescopic)", D("1560.00"))
    ]
    # On the edge the lower slab's rate applies to all: 250 x 4.15 = 1037.50 (telescopic: 950.00)
    assert energy(volume, "250") == [
        ("Energy charge, all units at the 100-250 kWh slab rate (non-telescopic)", D("1037.50"))
    ]
    assert sum(a for _, a in energy(TARIFFS, "250")) == D("950.00")
    # and one unit more jumps to the next rate for every unit: 250.01 x 5.20 = 1300.052 -> 1300.05
    assert energy(volume, "250.01")[0][1] == D("1300.05")


def test_a_tou_bill_across_a_season_boundary_prices_each_side_in_its_season() -> None:
    usage = Usage(time_of_use_kwh={"peak": D(60), "off_peak": D(240)})
    bill = quote(TARIFFS, "us-ca-pge-e-tou-c", usage, period("2026-09-16", "2026-10-16"))
    # 30 days: 15 of summer (September) and 15 of winter (October); each period's kWh shared by days.
    # summer peak 30 x 0.5224 = 15.672 -> 15.67     summer off-peak 120 x 0.3994 = 47.928 -> 47.93
    # winter peak 30 x 0.39757 = 11.9271 -> 11.93   winter off-peak 120 x 0.36757 = 44.1084 -> 44.11
    # Baseline allowance 15 x 13.5 + 15 x 11 = 367.5 kWh > 300: credit 300 x -0.0814 = -24.42
    # Base Services Charge 30 days x 0.79343 = 23.8029 -> 23.80. Total 119.02 (cents, no rounding line)
    assert [(line.description, line.quantity, line.amount) for line in bill.lines] == [
        ("Energy charge, summer peak", D("30.000"), D("15.67")),
        ("Energy charge, summer off_peak", D("120.000"), D("47.93")),
        ("Energy charge, winter peak", D("30.000"), D("11.93")),
        ("Energy charge, winter off_peak", D("120.000"), D("44.11")),
        ("Baseline credit (baseline 367.5 kWh)", D("300.000"), D("-24.42")),
        ("Base Services Charge", D(30), D("23.80")),
    ]
    assert bill.total == D("119.02")


def test_an_hourly_profile_across_a_season_boundary_prices_each_hour_where_it_falls() -> None:
    profile, p = hourly(
        "2026-09-16",
        "2026-10-16",
        "America/Los_Angeles",
        lambda t: 2.0 if (t.month, t.day) == (9, 16) else 1.0,
    )
    bill = quote(TARIFFS, "us-ca-pge-e-tou-c", Usage(hourly=profile), p)
    # 16 Sep at 2 kWh an hour: peak 5 h x 2 = 10, off-peak 19 h x 2 = 38; 17-30 Sep (14 days) at 1 kWh:
    # peak 70, off-peak 266. Summer: peak 80, off-peak 304. 1-15 Oct (winter) at 1: peak 75, off-peak 285.
    # 80 x 0.5224 = 41.792 -> 41.79; 304 x 0.3994 = 121.4176 -> 121.42
    # 75 x 0.39757 = 29.81775 -> 29.82; 285 x 0.36757 = 104.75745 -> 104.76
    # Usage 744 > allowance 367.5: credit 367.5 x -0.0814 = -29.9145 -> -29.91; BSC 23.80
    # Total 41.79 + 121.42 + 29.82 + 104.76 - 29.91 + 23.80 = 291.68
    assert [(line.quantity, line.amount) for line in bill.lines] == [
        (D(80), D("41.79")),
        (D(304), D("121.42")),
        (D(75), D("29.82")),
        (D(285), D("104.76")),
        (D("367.5"), D("-29.91")),
        (D(30), D("23.80")),
    ]
    assert bill.import_kwh == 744 and bill.total == D("291.68")


def test_hourly_usage_within_one_season_bills_like_its_time_of_use_totals() -> None:
    profile, p = hourly(
        "2026-07-01", "2026-08-01", "America/Los_Angeles", lambda t: 0.25 + (t.hour % 7) * 0.125
    )
    from_hours = quote(TARIFFS, "us-ca-pge-e-tou-c", Usage(hourly=profile), p)
    # July has no daylight-saving change, so hour h of the profile is local hour h % 24.
    values = profile.import_kwh.tolist()
    peak = sum((D(repr(x)) for h, x in enumerate(values) if 16 <= h % 24 < 21), D(0))
    total = sum((D(repr(x)) for x in values), D(0))
    from_totals = quote(
        TARIFFS, "us-ca-pge-e-tou-c", Usage(time_of_use_kwh={"peak": peak, "off_peak": total - peak}), p
    )
    assert amounts(from_hours) == amounts(from_totals)


def test_net_metering_with_export_above_import_credits_the_surplus() -> None:
    bill = rgp("200", export_kwh=D(300))
    # Netting: 200 imported - 300 exported = no net import, so no energy, FPPPA or duty on energy;
    # fixed 25.00 still applies and carries duty 15% = 3.75; surplus 100 kWh x -2.25 = -225.00
    # Total 25.00 + 3.75 - 225.00 = -196.25 -> -196 (a credit); rounding +0.25
    assert amounts(bill) == [
        (LineKind.FIXED_CHARGE, D("25.00")),
        (LineKind.DUTY, D("3.75")),
        (LineKind.EXPORT_CREDIT, D("-225.00")),
        (LineKind.ROUNDING, D("0.25")),
    ]
    assert bill.total == -196
    assert (bill.import_kwh, bill.export_kwh) == (200, 300), "the bill shows what was measured"


def test_net_metering_with_import_above_export_bills_the_net_import() -> None:
    bill = rgp("300", export_kwh=D(200))
    # Net import 100: 50 x 3.05 = 152.50; 50 x 3.50 = 175.00; fixed 25.00; FPPPA 100 x 2.45 = 245.00
    # Duty 15% of 597.50 = 89.625 -> 89.63; no surplus to credit. Total 687.13 -> 687
    assert [line.kind for line in bill.lines].count(LineKind.EXPORT_CREDIT) == 0
    assert bill.subtotals["fuel_surcharge"] == D("245.00") and bill.total == 687


def test_agricultural_unmetered_supply_is_charged_per_hp_per_month() -> None:
    def bill(hp: str, end: str) -> Bill:
        return quote(TARIFFS, "in-gj-ag-unmetered", Usage(connected_load_hp=D(hp)), period("2025-01-01", end))

    one = bill("7.2", "2025-02-01")
    # 7.2 HP rounds up to 7.5 HP; 7.5 HP-months x 200 = 1500.00
    assert [(line.kind, line.quantity, line.unit, line.amount) for line in one.lines] == [
        (LineKind.UNMETERED, D("7.5"), "HP-month", D("1500.00"))
    ]
    assert one.total == 1500
    assert bill("5", "2025-03-01").total == 2000  # 5 HP x 2 months x 200
    with pytest.raises(InvalidUsage) as err:
        quote(TARIFFS, "in-gj-ag-unmetered", Usage(), period("2025-01-01", "2025-02-01"))
    assert err.value.field == "usage.connected_load_hp"


def test_bpl_first_30_units_are_concessional_then_rgp_slabs() -> None:
    bill = quote(TARIFFS, "in-gj-bpl", Usage(import_kwh=D(100)), period("2025-01-01", "2025-02-01"))
    # 30 x 1.50 = 45.00; 20 x 3.05 = 61.00; 50 x 3.50 = 175.00; fixed 5.00; FPPPA 100 x 2.45 = 245.00
    # Duty 15% of 531.00 = 79.65; total 610.65 -> 611
    assert [a for _, a in amounts(bill)] == [
        D("45.00"),
        D("61.00"),
        D("175.00"),
        D("5.00"),
        D("245.00"),
        D("79.65"),
        D("0.35"),
    ]
    assert bill.total == 611


def test_agricultural_metered_supply_pays_a_flat_rate_without_fpppa_or_duty() -> None:
    bill = quote(TARIFFS, "in-gj-ag-metered", Usage(import_kwh=D(1000)), period("2025-01-01", "2025-02-01"))
    assert amounts(bill) == [(LineKind.ENERGY_SLAB, D("600.00"))]  # 1000 x 0.60


def test_a_minimum_delivery_charge_tops_up_a_small_bill() -> None:
    usage = Usage(time_of_use_kwh={"off_peak": D(10)})
    bill = quote(TARIFFS, "us-ca-pge-e-tou-c", usage, period("2025-01-01", "2025-02-01"))
    # Version 2025: 10 kWh winter off-peak x 0.47 = 4.70; baseline credit 10 x -0.09566 = -0.9566 -> -0.96
    # Energy 3.74 is below the minimum 31 days x 0.40317 = 12.49827 -> 12.50: top-up 8.76. Total 12.50
    assert amounts(bill) == [
        (LineKind.TIME_OF_USE, D("4.70")),
        (LineKind.ADJUSTMENT, D("-0.96")),
        (LineKind.MINIMUM_CHARGE, D("8.76")),
    ]
    assert bill.total == D("12.50")
    assert (
        quote(TARIFFS, "us-ca-pge-e-tou-c", Usage(time_of_use_kwh={"off_peak": D(100)}), bill.period)
        .lines[-1]
        .kind
        is LineKind.ADJUSTMENT
    ), "no top-up once the charges pass the minimum"


def test_a_period_straddling_two_versions_is_split_pro_rata_by_days() -> None:
    flat = {
        "id": "test-flat",
        "name": "Flat test tariff",
        "utility": "Test",
        "category": "residential",
        "currency": "INR",
        "time_zone": "Asia/Kolkata",
        "source": {"citation": "made up for a test"},
        "note": "test figures; nothing to check",
        "rounding": {"total": "0.01"},
    }
    v1 = {
        **flat,
        "version": "v1",
        "effective_start": dt.date(2025, 1, 1),
        "effective_end": dt.date(2025, 1, 15),
        "components": [
            {"type": "slabs", "name": "Energy", "mode": "telescopic", "blocks": [{"rate": "1.00"}]},
            {"type": "fixed", "name": "Fixed", "basis": "per_installation", "amount": 31},
        ],
    }
    v2 = copy.deepcopy(v1) | {"version": "v2", "effective_start": dt.date(2025, 1, 16), "effective_end": None}
    v2["components"][0]["blocks"][0]["rate"] = "2.00"
    tariffs = TariffSet([parse_tariff(v1, "v1"), parse_tariff(v2, "v2")])
    bill = quote(tariffs, "test-flat", Usage(import_kwh=D(310)), period("2025-01-01", "2025-02-01"))
    # 31 days: 15 on v1 (1-15 Jan), 16 on v2. 310 kWh: 150 + 160 -> 150 x 1.00 + 160 x 2.00 = 470.00
    # One month of fixed charge shared by days: 0.4839 x 31 = 15.0009 -> 15.00; 0.5161 x 31 = 15.9991 -> 16.00
    assert bill.tariff_versions == ("v1", "v2")
    assert [(line.description, line.quantity, line.amount) for line in bill.lines] == [
        ("[v1] Energy", D(150), D("150.00")),
        ("[v1] Fixed", D("0.4839"), D("15.00")),
        ("[v2] Energy", D(160), D("320.00")),
        ("[v2] Fixed", D("0.5161"), D("16.00")),
    ]
    assert bill.total == D("501.00")
    forced = quote(tariffs, "test-flat", Usage(import_kwh=D(310)), bill.period, version="v2")
    assert forced.tariff_versions == ("v2",) and forced.total == D("651.00")  # 310 x 2.00 + 31.00


def test_economy_7_counts_the_repeated_night_hour_when_the_clocks_go_back() -> None:
    # 26 October 2025: 01:00-02:00 happens twice in London, so October has 745 hours and 31 x 7 + 1 = 218
    # of them in the night window. At 0.5 kWh an hour: night 109 kWh, day (745 - 218) x 0.5 = 263.5 kWh.
    profile, p = hourly("2025-10-01", "2025-11-01", "Europe/London", lambda t: 0.5)
    assert len(profile.import_kwh) == 745
    bill = quote(TARIFFS, "uk-economy-7", Usage(hourly=profile), p)
    # night 109 x 0.11 = 11.99; day 263.5 x 0.28 = 73.78; standing 31 x 0.55 = 17.05; VAT 5% of 102.82 = 5.141
    assert [(line.quantity, line.amount) for line in bill.lines] == [
        (D(109), D("11.99")),
        (D("263.5"), D("73.78")),
        (D(31), D("17.05")),
        (D("102.82"), D("5.14")),
    ]
    assert bill.total == D("107.96")


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tariff_id", "usage", "field", "fragment"),
    [
        ("in-gj-rgp-urban", Usage(import_kwh=D(-1)), "usage.import_kwh", "is -1"),
        ("in-gj-rgp-urban", Usage(import_kwh=D(1), export_kwh=D("-0.5")), "usage.export_kwh", "is -0.5"),
        ("in-gj-rgp-urban", Usage(import_kwh=D("NaN")), "usage.import_kwh", "finite"),
        ("in-gj-rgp-urban", Usage(import_kwh=D(1)), "usage.sanctioned_load_kw", "by load"),
        (
            "in-gj-rgp-urban",
            Usage(import_kwh=D(1), sanctioned_load_kw=D(0)),
            "usage.sanctioned_load_kw",
            "> 0",
        ),
        (
            "in-gj-rgp-urban",
            Usage(time_of_use_kwh={"peak": D(5)}, sanctioned_load_kw=D(2)),
            "usage.time_of_use['peak']",
            "no time-of-use periods",
        ),
        (
            "us-ca-pge-e-tou-c",
            Usage(time_of_use_kwh={"peak": D(5), "shoulder": D(1)}),
            "usage.time_of_use['shoulder']",
            "no time-of-use period 'shoulder'",
        ),
        ("us-ca-pge-e-tou-c", Usage(import_kwh=D(5)), "usage.time_of_use", "give kWh per period"),
        (
            "us-ca-pge-e-tou-c",
            Usage(time_of_use_kwh={"peak": D(-5)}),
            "usage.time_of_use['peak']",
            "is -5",
        ),
        (
            "us-ca-pge-e-tou-c",
            Usage(import_kwh=D(10), time_of_use_kwh={"peak": D(5), "off_peak": D(4)}),
            "usage.time_of_use",
            "add up to 9",
        ),
    ],
)
def test_bad_usage_is_refused_naming_the_field(
    tariff_id: str, usage: Usage, field: str, fragment: str
) -> None:
    with pytest.raises(InvalidUsage) as err:
        quote(TARIFFS, tariff_id, usage, period("2026-07-01", "2026-08-01"))
    assert err.value.field == field
    assert fragment in str(err.value)


def test_a_bad_hourly_profile_is_refused_naming_the_hour() -> None:
    profile, p = hourly("2026-07-01", "2026-08-01", "America/Los_Angeles", lambda t: 1.0)
    values = profile.import_kwh.copy()
    values[17] = -0.5
    with pytest.raises(InvalidUsage) as err:
        quote(TARIFFS, "us-ca-pge-e-tou-c", Usage(hourly=HourlyProfile(profile.start, values)), p)
    assert err.value.field == "usage.hourly.import_kwh[17]" and "-0.5" in str(err.value)
    with pytest.raises(InvalidUsage) as err:
        quote(TARIFFS, "us-ca-pge-e-tou-c", Usage(hourly=HourlyProfile(profile.start, values[:-1])), p)
    assert err.value.field == "usage.hourly.import_kwh" and "743 values" in str(err.value)
    with pytest.raises(InvalidUsage) as err:
        quote(
            TARIFFS,
            "us-ca-pge-e-tou-c",
            Usage(hourly=HourlyProfile(dt.datetime(2026, 7, 1, tzinfo=UTC), profile.import_kwh)),
            p,
        )
    assert err.value.field == "usage.hourly.start" and "2026-07-01T07:00:00+00:00" in str(err.value)
    with pytest.raises(InvalidUsage) as err:
        quote(TARIFFS, "us-ca-pge-e-tou-c", Usage(import_kwh=D(1), hourly=profile), p)
    assert err.value.field == "usage"


@pytest.mark.parametrize(
    ("start", "end", "fragment"),
    [
        ("2025-02-01", "2025-02-01", "not after"),
        ("2025-02-01", "2025-01-01", "not after"),
        ("2025-01-01", "2026-01-03", "367 days"),
    ],
)
def test_an_empty_reversed_or_overlong_period_is_refused(start: str, end: str, fragment: str) -> None:
    with pytest.raises(InvalidUsage) as err:
        period(start, end)
    assert err.value.field == "billing_period" and fragment in str(err.value)


def test_an_unknown_tariff_or_a_period_without_a_version_is_refused() -> None:
    with pytest.raises(UnknownTariff) as unknown:
        quote(TARIFFS, "in-gj-nope", Usage(import_kwh=D(1)), period("2025-01-01", "2025-02-01"))
    assert unknown.value.field == "tariff_id"
    with pytest.raises(UnknownTariff) as version:
        quote(
            TARIFFS,
            "uk-economy-7",
            Usage(import_kwh=D(1)),
            period("2025-10-01", "2025-11-01"),
            version="2019",
        )
    assert version.value.field == "tariff_version"
    with pytest.raises(TariffNotInForce) as early:
        quote(
            TARIFFS, "uk-economy-7", Usage(time_of_use_kwh={"day": D(1)}), period("2025-09-15", "2025-10-15")
        )
    assert early.value.field == "billing_period" and "2025-09-15" in str(early.value)


# --- properties --------------------------------------------------------------------------------------

# (tariff, the first day it has a version in effect, its time-of-use periods or None)
SHIPPED = [
    ("in-gj-rgp-urban", dt.date(2024, 1, 1), None),
    ("in-gj-rgp-rural", dt.date(2024, 1, 1), None),
    ("in-gj-bpl", dt.date(2024, 1, 1), None),
    ("in-gj-ag-metered", dt.date(2024, 1, 1), None),
    ("us-ca-pge-e-tou-c", dt.date(2025, 1, 1), ("peak", "off_peak")),
    ("uk-economy-7", dt.date(2025, 10, 1), ("night", "day")),
]
kwh = st.decimals(min_value=0, max_value=3000, places=2)


@st.composite
def billing_case(draw: st.DrawFn) -> tuple[str, BillingPeriod, tuple[str, ...] | None]:
    tariff_id, first, periods = draw(st.sampled_from(SHIPPED))
    start = first + dt.timedelta(days=draw(st.integers(0, 700)))
    return tariff_id, BillingPeriod(start, start + dt.timedelta(days=draw(st.integers(1, 62)))), periods


def usage_for(periods: tuple[str, ...] | None, kwh_values: list[Decimal], export: Decimal = ZERO) -> Usage:
    """Usage of the kWh values: their sum for a tariff without time of use, else one per period."""
    if periods is None:
        return Usage(import_kwh=sum(kwh_values, ZERO), export_kwh=export, sanctioned_load_kw=D("3.2"))
    return Usage(time_of_use_kwh=dict(zip(periods, kwh_values, strict=True)), export_kwh=export)


@settings(max_examples=150, deadline=None)
@given(
    case=billing_case(),
    base=st.lists(kwh, min_size=2, max_size=2),
    more=kwh,
    which=st.integers(0, 1),
    export=kwh,
)
def test_a_bill_never_decreases_when_usage_grows(
    case: tuple[str, BillingPeriod, tuple[str, ...] | None],
    base: list[Decimal],
    more: Decimal,
    which: int,
    export: Decimal,
) -> None:
    tariff_id, p, periods = case
    grown = list(base)
    grown[which] += more
    before = quote(TARIFFS, tariff_id, usage_for(periods, base, export), p)
    after = quote(TARIFFS, tariff_id, usage_for(periods, grown, export), p)
    assert after.total >= before.total, (before.render(), after.render())


@settings(max_examples=150, deadline=None)
@given(
    months=st.integers(1, 3),
    edge=st.integers(0, 2),
    delta=st.decimals(min_value=D("0.01"), max_value=40, places=2),
    tariff_id=st.sampled_from(["in-gj-rgp-urban", "in-gj-rgp-rural", "in-gj-bpl"]),
)
def test_telescopic_slab_charges_are_continuous_at_slab_edges(
    months: int, edge: int, delta: Decimal, tariff_id: str
) -> None:
    p = BillingPeriod(dt.date(2025, 1, 1), dt.date(2025, 1 + months, 1))
    blocks = TARIFFS.versions(tariff_id)[0].spec.components[0].blocks  # type: ignore[union-attr]
    at = blocks[edge].up_to * months
    # Stay inside the blocks on either side of the edge.
    low = blocks[edge - 1].up_to * months if edge else D(0)
    high = blocks[edge + 1].up_to * months if blocks[edge + 1].up_to else at + delta
    delta = min(delta, at - low, high - at)

    def energy(kwh: Decimal) -> Decimal:
        return quote(TARIFFS, tariff_id, Usage(import_kwh=kwh, sanctioned_load_kw=D(1)), p).subtotals.get(
            "energy", D(0)
        )

    # Each side of the edge moves at its own block's rate; at most two lines change, each rounded to
    # the paisa, so the step can differ from rate x delta by at most 0.01 but never jumps.
    below, above = blocks[edge].rate, blocks[edge + 1].rate
    assert abs(
        (energy(at) - energy(at - min(delta, blocks[edge].up_to))) - below * min(delta, blocks[edge].up_to)
    ) <= D("0.01")
    assert abs((energy(at + delta) - energy(at)) - above * delta) <= D("0.01")


def test_non_telescopic_slabs_do_jump_at_their_edges() -> None:
    # The continuity property above can fail: it does for non-telescopic slabs.
    data = shipped_data("in-gj-rgp-urban", "2024-01")
    data["components"][0]["mode"] = "non_telescopic"
    volume = one_tariff(data)
    p = period("2025-01-01", "2025-02-01")

    def energy(kwh: str) -> Decimal:
        return quote(
            volume, "in-gj-rgp-urban", Usage(import_kwh=D(kwh), sanctioned_load_kw=D(1)), p
        ).subtotals["energy"]

    assert energy("50.01") - energy("50") > 20  # 50.01 x 3.50 - 50 x 3.05 = 22.54


@settings(max_examples=150, deadline=None)
@given(
    case=billing_case(),
    base=st.lists(kwh, min_size=2, max_size=2),
    export=kwh,
    load=st.decimals(min_value=D("0.1"), max_value=20, places=3),
)
def test_the_lines_always_add_up_to_the_total(
    case: tuple[str, BillingPeriod, tuple[str, ...] | None],
    base: list[Decimal],
    export: Decimal,
    load: Decimal,
) -> None:
    tariff_id, p, periods = case
    usage = usage_for(periods, base, export)
    if periods is None:
        usage = Usage(import_kwh=usage.import_kwh, export_kwh=export, sanctioned_load_kw=load)
    bill = quote(TARIFFS, tariff_id, usage, p)
    assert sum((line.amount for line in bill.lines), D(0)) == bill.total
    assert sum(bill.subtotals.values(), D(0)) == bill.total
    rounding = TARIFFS.versions(tariff_id)[0].spec.rounding
    assert bill.total == bill.total.quantize(rounding.total)
    for line in bill.lines:
        if line.kind in (LineKind.DUTY, LineKind.TAX):
            assert line.rate_percent is not None
            expected = line.quantity * line.rate_percent / 100
        else:
            assert line.rate is not None
            expected = line.quantity * line.rate
        if line.kind is not LineKind.ROUNDING:
            assert line.amount == expected.quantize(rounding.line, ROUND_HALF_UP), line


SHARED_RATE = {
    "id": "test-three-rate",
    "version": "1",
    "name": "Three periods, two rates",
    "utility": "Test",
    "category": "residential",
    "currency": "GBP",
    "time_zone": "Europe/London",
    "effective_start": dt.date(2025, 1, 1),
    "source": {"citation": "made up for a test"},
    "note": "test figures; nothing to check",
    "seasons": [
        {"name": "summer", "months": [4, 5, 6, 7, 8, 9]},
        {"name": "winter", "months": [10, 11, 12, 1, 2, 3]},
    ],
    "time_of_use": {
        "periods": [
            {"name": "night", "windows": [{"start": "00:00", "end": "05:00"}]},
            {"name": "shoulder", "windows": [{"start": "05:00", "end": "07:00"}]},
            {"name": "day", "default": True},
        ]
    },
    "components": [
        {
            "type": "time_of_use",
            "name": "Unit charge",
            "rates": {
                "summer": {"night": "0.113", "shoulder": "0.113", "day": "0.287"},
                "winter": {"night": "0.137", "shoulder": "0.137", "day": "0.301"},
            },
        },
        {
            "type": "fixed",
            "name": "Standing charge",
            "basis": "per_installation",
            "per": "day",
            "amount": "0.53",
        },
        {"type": "percentage", "name": "VAT", "line_kind": "tax", "percent": 5, "of": ["energy", "fixed"]},
    ],
}
THREE_RATE = one_tariff(SHARED_RATE)


@settings(max_examples=150, deadline=None)
@given(
    start=st.integers(0, 500),
    days=st.integers(1, 62),
    night=kwh,
    shoulder=kwh,
    day=kwh,
)
# Across the April season change: shared by days separately, the two periods' kWh would round to a
# different summer/winter split than their sum does, and the bill would move by a cent.
@example(start=80, days=40, night=D("2392.38"), shoulder=D("1565.71"), day=D(0))
def test_splitting_usage_across_periods_that_share_a_rate_gives_the_same_bill(
    start: int, days: int, night: Decimal, shoulder: Decimal, day: Decimal
) -> None:
    first = dt.date(2025, 1, 1) + dt.timedelta(days=start)
    p = BillingPeriod(first, first + dt.timedelta(days=days))
    split = quote(
        THREE_RATE,
        "test-three-rate",
        Usage(time_of_use_kwh={"night": night, "shoulder": shoulder, "day": day}),
        p,
    )
    whole = quote(
        THREE_RATE, "test-three-rate", Usage(time_of_use_kwh={"night": night + shoulder, "day": day}), p
    )
    assert split.total == whole.total
    assert amounts(split) == amounts(whole)
