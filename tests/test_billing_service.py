"""BillingService against real PostgreSQL, run as a process beside the real ingest service and storage
writer: quotes on the shipped tariffs, bills computed from readings ingested through the API, stored
once whatever is retried, revised into a new version when late readings change them, billing cycles
that never double a bill (also when killed mid-way and run again), and every refusal with its status
code and the field at fault."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from collections.abc import Iterable
from decimal import Decimal
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from metermesh.billing.v1 import billing_pb2, billing_pb2_grpc
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from tests.support import Platform, reading, wait_for

UTC = dt.UTC
D = Decimal


def ts(t: dt.datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(t)
    return out


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def period(start: str, end: str) -> common_pb2.TimeRange:
    return common_pb2.TimeRange(start_time=ts(utc(start)), end_time=ts(utc(end)))


JANUARY = period("2025-01-01T00:00:00", "2025-02-01T00:00:00")


async def register(
    stub: ingest_pb2_grpc.IngestServiceStub,
    meter_id: str,
    tariff_id: str,
    *,
    load_kw: float = 3.0,
    time_zone: str = "Asia/Kolkata",
    category: int = common_pb2.METER_CATEGORY_RESIDENTIAL,
) -> None:
    await stub.RegisterMeter(
        ingest_pb2.RegisterMeterRequest(
            meter=common_pb2.Meter(
                meter_id=meter_id,
                category=category,
                tariff_id=tariff_id,
                sanctioned_load_kw=load_kw,
                interval_seconds=900,
                time_zone=time_zone,
            )
        )
    )


def quarter_hours(
    meter_id: str, start: dt.datetime, end: dt.datetime, wh: float, skip: Iterable[dt.datetime] = ()
) -> list[common_pb2.Reading]:
    """15-minute readings for every interval starting in [start, end), except those in skip."""
    skipped = set(skip)
    out = []
    t = start
    while t < end:
        if t not in skipped:
            out.append(reading(meter_id, int((t + dt.timedelta(minutes=15)).timestamp()), wh=wh))
        t += dt.timedelta(minutes=15)
    return out


async def push(stub: ingest_pb2_grpc.IngestServiceStub, readings: list[common_pb2.Reading]) -> None:
    for i in range(0, len(readings), 10_000):
        part = readings[i : i + 10_000]
        resp = await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=part))
        assert resp.accepted_count == len(part), resp.rejections[:3]


async def stored_readings(p: Platform, meter_ids: list[str]) -> int:
    conn = await p.db()
    try:
        return int(
            await conn.fetchval(
                "SELECT coalesce(sum(reading_count), 0) FROM readings_hourly WHERE meter_id = ANY($1)",
                meter_ids,
            )
        )
    finally:
        await conn.close()


async def wait_rolled_up(p: Platform, meter_ids: list[str], count: int) -> None:
    await wait_for(
        lambda: stored_readings(p, meter_ids), lambda n: n >= count, timeout=60, what="readings rolled up"
    )


async def quote_total(
    stub: billing_pb2_grpc.BillingServiceStub, tariff_id: str, tr: common_pb2.TimeRange, **usage: float
) -> billing_pb2.Bill:
    resp = await stub.QuoteBill(
        billing_pb2.QuoteBillRequest(tariff_id=tariff_id, billing_period=tr, usage=billing_pb2.Usage(**usage))
    )
    return resp.bill


async def expect_error(call: object, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    for f in fragments:
        assert f in (err.value.details() or ""), err.value.details()
    return err.value.details() or ""


async def run_cycle(
    stub: billing_pb2_grpc.BillingServiceStub, **request: object
) -> tuple[list[billing_pb2.BillingCycleProgress], billing_pb2.BillingCycleSummary]:
    progress, summary = [], None
    async for msg in stub.RunBillingCycle(billing_pb2.RunBillingCycleRequest(**request)):  # type: ignore[arg-type]
        if msg.HasField("summary"):
            summary = msg.summary
        else:
            progress.append(msg.progress)
    assert summary is not None
    return progress, summary


async def bill_rows(p: Platform) -> list[tuple[str, int, str]]:
    conn = await p.db()
    try:
        rows = await conn.fetch("SELECT meter_id, version, status FROM bills ORDER BY meter_id, version")
        return [(r[0], r[1], r[2]) for r in rows]
    finally:
        await conn.close()


@pytest.fixture
async def billing(platform: Platform) -> Platform:
    await platform.start_writer()
    await platform.start_ingest()
    await platform.start_billing()
    return platform


# --- quotes and tariffs -------------------------------------------------------------------------------


async def test_quote_of_a_gujarat_rgp_bill_matches_the_hand_worked_figure(billing: Platform) -> None:
    async with billing.channel_to(billing.billing_addr) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        bill = await quote_total(
            stub, "in-gj-rgp-urban", JANUARY, import_energy_kwh=300, sanctioned_load_kw=3
        )
    # By hand: 50 x 3.05 + 50 x 3.50 + 150 x 4.15 + 50 x 5.20 = 1210.00 energy; fixed charge for 3 kW
    # (above 2 to 4 kW) 25; FPPPA 300 x 2.45 = 735.00; duty 15% of 1970.00 = 295.50; 2265.50 -> 2266.
    assert bill.status == billing_pb2.BILL_STATUS_QUOTE and not bill.bill_id
    assert list(bill.tariff_versions) == ["2024-01"]
    got = [
        (billing_pb2.BillLineKind.Name(x.kind), x.quantity, x.rate.amount, x.amount.amount)
        for x in bill.lines
    ]
    assert got == [
        ("BILL_LINE_KIND_ENERGY_SLAB", "50.00", "3.05", "152.50"),
        ("BILL_LINE_KIND_ENERGY_SLAB", "50.00", "3.50", "175.00"),
        ("BILL_LINE_KIND_ENERGY_SLAB", "150.00", "4.15", "622.50"),
        ("BILL_LINE_KIND_ENERGY_SLAB", "50.00", "5.20", "260.00"),
        ("BILL_LINE_KIND_FIXED_CHARGE", "1", "25", "25.00"),
        ("BILL_LINE_KIND_FUEL_SURCHARGE", "300.0", "2.45", "735.00"),  # the double 300 as printed
        ("BILL_LINE_KIND_DUTY", "1970.00", "", "295.50"),
        ("BILL_LINE_KIND_ROUNDING", "1", "0.50", "0.50"),
    ]
    duty = bill.lines[6]
    assert duty.rate_percent == "15" and duty.applies_to == "energy + fixed + fuel_surcharge"
    assert not duty.HasField("rate")
    assert (bill.total.currency_code, bill.total.amount) == ("INR", "2266")
    assert bill.subtotal.amount == "1970.00"
    # The period was named by UTC midnights; the bill shows the Indian midnights it covers.
    assert bill.billing_period.start_time.ToDatetime(UTC) == utc("2024-12-31T18:30:00")
    assert bill.billing_period.end_time.ToDatetime(UTC) == utc("2025-01-31T18:30:00")


async def test_quote_prices_time_of_use_totals_and_hourly_profiles_alike(billing: Platform) -> None:
    march = period("2025-03-01T08:00:00", "2025-04-01T07:00:00")  # Pacific midnights, 743 hours
    async with billing.channel_to(billing.billing_addr) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        tariff = (await stub.GetTariff(billing_pb2.GetTariffRequest(tariff_id="us-ca-pge-e-tou-c"))).tariff
        assert set(tariff.time_of_use_periods) == {"peak", "off_peak"}
        start = utc("2025-03-01T08:00:00")
        pacific = ZoneInfo("America/Los_Angeles")
        local_hours = [(start + dt.timedelta(hours=h)).astimezone(pacific).hour for h in range(743)]
        hours = [1.25 if 16 <= hour < 21 else 0.5 for hour in local_hours]  # peak is 16:00-21:00
        hourly = await stub.QuoteBill(
            billing_pb2.QuoteBillRequest(
                tariff_id="us-ca-pge-e-tou-c",
                billing_period=march,
                usage=billing_pb2.Usage(
                    hourly=billing_pb2.HourlyUsage(start_time=march.start_time, import_energy_kwh=hours)
                ),
            )
        )
        peak = sum(x for x in hours if x == 1.25)
        totals = await stub.QuoteBill(
            billing_pb2.QuoteBillRequest(
                tariff_id="us-ca-pge-e-tou-c",
                billing_period=march,
                usage=billing_pb2.Usage(
                    time_of_use=[
                        billing_pb2.TimeOfUseUsage(period="peak", import_energy_kwh=peak),
                        billing_pb2.TimeOfUseUsage(period="off_peak", import_energy_kwh=sum(hours) - peak),
                    ]
                ),
            )
        )
    assert D(hourly.bill.import_energy_kwh) == D(repr(sum(hours)))

    # One season and one version over March: the hours priced one by one or summed per period agree.
    def priced(bill: billing_pb2.Bill) -> list[tuple[int, Decimal, str]]:
        return [(x.kind, D(x.quantity), x.amount.amount) for x in bill.lines]

    assert hourly.bill.total == totals.bill.total and priced(hourly.bill) == priced(totals.bill)
    assert any(x.kind == billing_pb2.BILL_LINE_KIND_TIME_OF_USE for x in totals.bill.lines)
    assert any(x.kind == billing_pb2.BILL_LINE_KIND_TIME_OF_USE for x in hourly.bill.lines)


async def test_tariffs_are_listed_in_pages_and_fetched_by_version_or_date(billing: Platform) -> None:
    async with billing.channel_to(billing.billing_addr) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        seen, token = [], ""
        while True:
            page = await stub.ListTariffs(
                billing_pb2.ListTariffsRequest(all_versions=True, page_size=3, page_token=token)
            )
            seen.extend((t.tariff_id, t.version) for t in page.tariffs)
            token = page.next_page_token
            if not token:
                break
        assert ("us-ca-pge-e-tou-c", "2025") in seen and ("us-ca-pge-e-tou-c", "2026-06") in seen
        assert seen == sorted(seen) and len(seen) == len(set(seen))
        farm = await stub.ListTariffs(
            billing_pb2.ListTariffsRequest(category=common_pb2.METER_CATEGORY_AGRICULTURAL)
        )
        assert {t.tariff_id for t in farm.tariffs} == {"in-gj-ag-metered", "in-gj-ag-unmetered"}
        old = await stub.GetTariff(
            billing_pb2.GetTariffRequest(tariff_id="us-ca-pge-e-tou-c", effective_date="2025-12-01")
        )
        assert old.tariff.version == "2025" and old.tariff.source_url
        rgp = await stub.GetTariff(
            billing_pb2.GetTariffRequest(tariff_id="in-gj-rgp-urban", version="2024-01")
        )
        assert rgp.tariff.currency_code == "INR" and rgp.tariff.time_zone == "Asia/Kolkata"
        assert [c.kind for c in rgp.tariff.components][:2] == [
            billing_pb2.BILL_LINE_KIND_ENERGY_SLAB,
            billing_pb2.BILL_LINE_KIND_FIXED_CHARGE,
        ]
        await expect_error(
            stub.GetTariff(billing_pb2.GetTariffRequest(tariff_id="xx-nowhere")),
            grpc.StatusCode.NOT_FOUND,
            "xx-nowhere",
        )
        await expect_error(
            stub.GetTariff(billing_pb2.GetTariffRequest(tariff_id="in-gj-rgp-urban", version="1999")),
            grpc.StatusCode.NOT_FOUND,
            "tariff_version",
            "1999",
        )
        await expect_error(
            stub.GetTariff(
                billing_pb2.GetTariffRequest(tariff_id="uk-economy-7", effective_date="2020-01-01")
            ),
            grpc.StatusCode.NOT_FOUND,
            "2020-01-01",
        )


async def test_bad_quotes_are_refused_naming_the_field_and_the_value(billing: Platform) -> None:
    async with billing.channel_to(billing.billing_addr) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)

        def q(
            tariff_id: str = "in-gj-rgp-urban", tr: common_pb2.TimeRange = JANUARY, **usage: object
        ) -> object:
            return stub.QuoteBill(
                billing_pb2.QuoteBillRequest(
                    tariff_id=tariff_id,
                    billing_period=tr,
                    usage=billing_pb2.Usage(**usage),  # type: ignore[arg-type]
                )
            )

        invalid = grpc.StatusCode.INVALID_ARGUMENT
        await expect_error(
            q("xx-nowhere", import_energy_kwh=10), grpc.StatusCode.NOT_FOUND, "tariff_id", "xx-nowhere"
        )
        await expect_error(
            q(import_energy_kwh=-5, sanctioned_load_kw=3), invalid, "usage.import_energy_kwh", "-5"
        )
        await expect_error(
            q(export_energy_kwh=-1.5, sanctioned_load_kw=3), invalid, "usage.export_energy_kwh", "-1.5"
        )
        await expect_error(
            q(import_energy_kwh=5, sanctioned_load_kw=-2), invalid, "usage.sanctioned_load_kw", "-2"
        )
        await expect_error(
            q(tr=period("2025-02-01T00:00:00", "2025-01-01T00:00:00"), import_energy_kwh=5),
            invalid,
            "billing_period.end_time",
        )
        await expect_error(
            q(tr=period("2025-01-01T00:00:00", "2025-01-01T00:00:00"), import_energy_kwh=5),
            invalid,
            "billing_period.end_time",
        )
        await expect_error(
            q(tr=period("2025-01-01T07:00:00", "2025-02-01T00:00:00"), import_energy_kwh=5),
            invalid,
            "billing_period.start_time",
            "2025-01-01T07:00:00Z",
        )
        await expect_error(
            q(tr=common_pb2.TimeRange(), import_energy_kwh=5), invalid, "billing_period.start_time"
        )
        await expect_error(
            q(import_energy_kwh=5),
            invalid,
            "usage.sanctioned_load_kw",  # the tariff charges by load and none was given
        )
        tou = "us-ca-pge-e-tou-c"
        await expect_error(
            q(
                tou,
                time_of_use=[
                    billing_pb2.TimeOfUseUsage(period="peak", import_energy_kwh=10),
                    billing_pb2.TimeOfUseUsage(period="shoulder", import_energy_kwh=4),
                ],
            ),
            invalid,
            "usage.time_of_use['shoulder']",
            "shoulder",
        )
        await expect_error(
            q(tou, time_of_use=[billing_pb2.TimeOfUseUsage(period="peak", import_energy_kwh=-3)]),
            invalid,
            "usage.time_of_use['peak']",
            "-3",
        )
        await expect_error(q(tou, import_energy_kwh=100), invalid, "usage.time_of_use", "peak")
        await expect_error(
            q(
                tou,
                hourly=billing_pb2.HourlyUsage(start_time=JANUARY.start_time, import_energy_kwh=[1.0] * 10),
            ),
            invalid,
            "usage.hourly.import_energy_kwh",
            "10 values",
        )
        await expect_error(
            q("uk-economy-7", import_energy_kwh=100, time_of_use=[]),  # no version before 2025-10
            invalid,
            "billing_period",
        )


# --- bills from stored readings -------------------------------------------------------------------


async def test_compute_bill_from_ingested_readings_is_stored_once_and_revised_by_late_readings(
    billing: Platform,
) -> None:
    meter = "GJ-RGP-0001"
    late = utc("2025-01-15T10:00:00")
    # Every 15-minute interval from a day before to a day after January (IST), 100 Wh each, one missing.
    readings = quarter_hours(
        meter, utc("2024-12-31T00:00:00"), utc("2025-02-02T00:00:00"), 100.0, skip=[late]
    )
    async with billing.channel() as ich, billing.channel_to(billing.billing_addr) as bch:
        ingest = ingest_pb2_grpc.IngestServiceStub(ich)
        stub = billing_pb2_grpc.BillingServiceStub(bch)
        await register(ingest, meter, "in-gj-rgp-urban", load_kw=3)
        await push(ingest, readings)
        await wait_rolled_up(billing, [meter], len(readings))

        first = await stub.ComputeBill(billing_pb2.ComputeBillRequest(meter_id=meter, billing_period=JANUARY))
        b1 = first.bill
        assert first.created and b1.status == billing_pb2.BILL_STATUS_ISSUED
        assert b1.bill_id == f"{meter}:20250101-20250201:v1" and b1.meter_id == meter
        # 744 local hours x 400 Wh, less the missing 100 Wh: the IST days take half of the UTC hours
        # at both ends (local midnight is 18:30 UTC).
        assert b1.import_energy_kwh == "297.500"
        assert b1.data_coverage_percent == 100.0 and b1.issue_time.seconds > 0
        expected = await quote_total(
            stub, "in-gj-rgp-urban", JANUARY, import_energy_kwh=297.5, sanctioned_load_kw=3
        )
        assert [x.amount.amount for x in b1.lines] == [x.amount.amount for x in expected.lines]
        assert b1.total == expected.total

        # Asked again, with or without recompute: the same bill, nothing new stored.
        again = await stub.ComputeBill(billing_pb2.ComputeBillRequest(meter_id=meter, billing_period=JANUARY))
        same = await stub.ComputeBill(
            billing_pb2.ComputeBillRequest(meter_id=meter, billing_period=JANUARY, recompute=True)
        )
        local_midnights = common_pb2.TimeRange(
            start_time=ts(utc("2024-12-31T18:30:00")), end_time=ts(utc("2025-01-31T18:30:00"))
        )
        named_locally = await stub.ComputeBill(
            billing_pb2.ComputeBillRequest(meter_id=meter, billing_period=local_midnights)
        )
        for r in (again, same, named_locally):
            assert not r.created and r.bill == b1
        assert await bill_rows(billing) == [(meter, 1, "issued")]

        # The late reading arrives; recomputing issues version 2 with the difference, keeping version 1.
        await push(ingest, quarter_hours(meter, late, late + dt.timedelta(minutes=15), 100.0))
        await wait_rolled_up(billing, [meter], len(readings) + 1)
        unchanged = await stub.ComputeBill(
            billing_pb2.ComputeBillRequest(meter_id=meter, billing_period=JANUARY)
        )
        assert not unchanged.created and unchanged.bill == b1  # without recompute the issued bill stands
        second = await stub.ComputeBill(
            billing_pb2.ComputeBillRequest(meter_id=meter, billing_period=JANUARY, recompute=True)
        )
        b2 = second.bill
        assert second.created and b2.bill_id == f"{meter}:20250101-20250201:v2"
        assert b2.import_energy_kwh == "297.600" and b2.status == billing_pb2.BILL_STATUS_ISSUED
        full = await quote_total(
            stub, "in-gj-rgp-urban", JANUARY, import_energy_kwh=297.6, sanctioned_load_kw=3
        )
        assert b2.total == full.total
        revision = b2.lines[-1]
        difference = D(b2.total.amount) - D(b1.total.amount)
        assert revision.kind == billing_pb2.BILL_LINE_KIND_ADJUSTMENT and revision.amount.amount == "0"
        assert D(revision.quantity) == difference and b1.bill_id in revision.description
        assert f"{difference:+f}" in revision.description
        assert sum(D(x.amount.amount) for x in b2.lines) == D(b2.total.amount)

        old = (await stub.GetBill(billing_pb2.GetBillRequest(bill_id=b1.bill_id))).bill
        assert old.status == billing_pb2.BILL_STATUS_SUPERSEDED and old.superseded_by_bill_id == b2.bill_id
        assert old.total == b1.total and list(old.lines) == list(b1.lines)
        issued = await stub.ListBills(billing_pb2.ListBillsRequest(meter_id=meter))
        assert [b.bill_id for b in issued.bills] == [b2.bill_id]
        both = await stub.ListBills(billing_pb2.ListBillsRequest(meter_id=meter, include_superseded=True))
        assert [b.bill_id for b in both.bills] == [b2.bill_id, b1.bill_id]
        assert await bill_rows(billing) == [(meter, 1, "superseded"), (meter, 2, "issued")]


async def test_bills_are_listed_newest_period_first_in_pages(billing: Platform) -> None:
    meter = "GJ-PAGE-1"
    readings = quarter_hours(meter, utc("2025-01-01T00:00:00"), utc("2025-01-09T00:00:00"), 50.0)
    async with billing.channel() as ich, billing.channel_to(billing.billing_addr) as bch:
        ingest = ingest_pb2_grpc.IngestServiceStub(ich)
        stub = billing_pb2_grpc.BillingServiceStub(bch)
        await register(ingest, meter, "in-gj-rgp-rural")
        await push(ingest, readings)
        await wait_rolled_up(billing, [meter], len(readings))
        for day in range(2, 8):
            tr = period(f"2025-01-0{day}T00:00:00", f"2025-01-0{day + 1}T00:00:00")
            await stub.ComputeBill(billing_pb2.ComputeBillRequest(meter_id=meter, billing_period=tr))
        seen, token = [], ""
        while True:
            page = await stub.ListBills(
                billing_pb2.ListBillsRequest(meter_id=meter, page_size=4, page_token=token)
            )
            seen.extend(b.bill_id for b in page.bills)
            token = page.next_page_token
            if not token:
                break
        assert seen == [f"{meter}:202501{d:02d}-202501{d + 1:02d}:v1" for d in range(7, 1, -1)]
        window = await stub.ListBills(
            billing_pb2.ListBillsRequest(
                meter_id=meter, time_range=period("2025-01-04T00:00:00", "2025-01-05T00:00:00")
            )
        )
        # The UTC day 4 January overlaps the Indian days 4 January (from 3 Jan 18:30 UTC) and 5 January.
        assert [b.bill_id for b in window.bills] == [
            f"{meter}:20250105-20250106:v1",
            f"{meter}:20250104-20250105:v1",
        ]


async def test_compute_bill_refusals_name_the_problem(billing: Platform) -> None:
    async with billing.channel() as ich, billing.channel_to(billing.billing_addr) as bch:
        ingest = ingest_pb2_grpc.IngestServiceStub(ich)
        stub = billing_pb2_grpc.BillingServiceStub(bch)
        await register(ingest, "NO-TARIFF", "")
        await register(ingest, "NO-LOAD", "in-gj-rgp-urban", load_kw=0)
        await register(ingest, "ODD-TARIFF", "xx-retired-tariff")
        await register(ingest, "NO-READINGS", "in-gj-bpl")
        readings = quarter_hours("NO-LOAD", utc("2025-01-01T00:00:00"), utc("2025-01-03T00:00:00"), 10.0)
        await push(ingest, readings)
        await wait_rolled_up(billing, ["NO-LOAD"], len(readings))

        def compute(meter_id: str, tr: common_pb2.TimeRange = JANUARY) -> object:
            return stub.ComputeBill(billing_pb2.ComputeBillRequest(meter_id=meter_id, billing_period=tr))

        precondition = grpc.StatusCode.FAILED_PRECONDITION
        await expect_error(compute("NOBODY"), grpc.StatusCode.NOT_FOUND, "NOBODY", "not registered")
        await expect_error(compute("NO-TARIFF"), precondition, "no tariff")
        await expect_error(compute("ODD-TARIFF"), precondition, "xx-retired-tariff", "not loaded")
        await expect_error(compute("NO-LOAD"), precondition, "sanctioned_load_kw")
        await expect_error(compute("NO-READINGS"), precondition, "no readings")
        await expect_error(compute(""), grpc.StatusCode.INVALID_ARGUMENT, "meter_id")
        await expect_error(
            compute("NO-LOAD", period("2025-01-01T05:00:00", "2025-02-01T00:00:00")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "billing_period.start_time",
            "2025-01-01T05:00:00Z",
        )
        await expect_error(
            compute("NO-LOAD", period("2025-02-01T00:00:00", "2025-01-01T00:00:00")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "billing_period.end_time",
        )
        await expect_error(
            stub.GetBill(billing_pb2.GetBillRequest(bill_id="NOBODY:20250101-20250201:v1")),
            grpc.StatusCode.NOT_FOUND,
            "NOBODY",
        )
        await expect_error(
            stub.ListBills(billing_pb2.ListBillsRequest(meter_id="NOBODY")),
            grpc.StatusCode.NOT_FOUND,
            "NOBODY",
        )
        await expect_error(
            stub.ListBills(billing_pb2.ListBillsRequest(meter_id="NO-LOAD", page_size=5000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_size",
            "5000",
        )
        await expect_error(
            run_cycle(stub, billing_period=JANUARY, tariff_id="xx-nowhere"),
            grpc.StatusCode.NOT_FOUND,
            "xx-nowhere",
        )
        await expect_error(
            run_cycle(stub, billing_period=period("2025-01-01T05:00:00", "2025-02-01T00:00:00")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "billing_period.start_time",
        )


# --- billing cycles ---------------------------------------------------------------------------------

WEEK = period("2025-10-27T00:00:00", "2025-11-03T00:00:00")  # 2 November: daylight saving ends in the US
FLEET = {
    # meter: (tariff, load kW, time zone, Wh per quarter hour; None = no readings)
    "CY-RGP-1": ("in-gj-rgp-urban", 3.0, "Asia/Kolkata", 120.0),
    "CY-RGP-2": ("in-gj-rgp-urban", 6.5, "Asia/Kolkata", 310.0),
    "CY-RUR-1": ("in-gj-rgp-rural", 2.0, "Asia/Kolkata", 80.0),
    "CY-AGU-1": ("in-gj-ag-unmetered", 7.5, "Asia/Kolkata", None),  # billed per HP, no meter
    "CY-PGE-1": ("us-ca-pge-e-tou-c", 5.0, "America/Los_Angeles", 210.0),
    "CY-E7-1": ("uk-economy-7", 4.0, "Europe/London", 150.0),
    "CY-SILENT": ("in-gj-bpl", 1.0, "Asia/Kolkata", None),  # metered, but nothing arrived
    "CY-NOBILL": ("", 2.0, "Asia/Kolkata", 100.0),  # no tariff: not in a cycle
}


async def setup_fleet(p: Platform) -> None:
    async with p.channel() as ich:
        ingest = ingest_pb2_grpc.IngestServiceStub(ich)
        readings: list[common_pb2.Reading] = []
        for meter, (tariff, load, zone, wh) in FLEET.items():
            await register(ingest, meter, tariff, load_kw=load, time_zone=zone)
            if wh is not None:
                # Uneven through the day, so that time of use matters.
                for r in quarter_hours(meter, utc("2025-10-26T00:00:00"), utc("2025-11-04T00:00:00"), wh):
                    hour = (r.read_time.seconds // 3600) % 24
                    r.import_energy_wh = wh * (1 + (hour % 5)) + 0.3
                    readings.append(r)
        await push(ingest, readings)
        await wait_rolled_up(p, [m for m, v in FLEET.items() if v[3] is not None], len(readings))


@pytest.mark.parametrize("read_path", ["scan", "per-meter"])
async def test_a_billing_cycle_bills_each_meter_once_and_a_rerun_adds_nothing(
    platform: Platform, read_path: str
) -> None:
    await platform.start_writer()
    await platform.start_ingest()
    # The scan reads the whole period in one pass; per-meter reads go through the primary key.
    await platform.start_billing(METERMESH_CYCLE_SCAN_MIN_PERCENT="0" if read_path == "scan" else "1000")
    await setup_fleet(platform)
    async with platform.channel_to(platform.billing_addr) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        progress, summary = await run_cycle(stub, billing_period=WEEK)
        assert progress and progress[-1].done_count == summary.total_count == 7
        assert (summary.billed_count, summary.skipped_count, summary.failed_count) == (6, 0, 1)
        assert [(f.meter_id, f.reason) for f in summary.failures] == [
            ("CY-SILENT", "no readings in the billing period")
        ]
        assert {m.currency_code for m in summary.billed_totals} == {"INR", "USD", "GBP"}
        rows = await bill_rows(platform)
        assert sorted(m for m, _, _ in rows) == sorted(
            m for m in FLEET if m not in ("CY-SILENT", "CY-NOBILL")
        )
        assert all(v == 1 and s == "issued" for _, v, s in rows)

        # What a cycle issues is what ComputeBill computes: recomputing finds nothing changed.
        for meter in ("CY-RGP-1", "CY-PGE-1", "CY-E7-1", "CY-AGU-1"):
            again = await stub.ComputeBill(
                billing_pb2.ComputeBillRequest(meter_id=meter, billing_period=WEEK, recompute=True)
            )
            assert not again.created and again.bill.billing_cycle_id == summary.cycle_id
        pge = (await stub.ListBills(billing_pb2.ListBillsRequest(meter_id="CY-PGE-1"))).bills[0]
        assert pge.billing_period.start_time.ToDatetime(UTC) == utc("2025-10-27T07:00:00")  # PDT
        assert pge.billing_period.end_time.ToDatetime(UTC) == utc("2025-11-03T08:00:00")  # PST
        assert any(x.kind == billing_pb2.BILL_LINE_KIND_TIME_OF_USE for x in pge.lines)
        # ... and what QuoteBill prices from the same hours (the hourly rollups as a profile).
        conn = await platform.db()
        try:
            wh = await conn.fetch(
                """SELECT import_energy_wh FROM readings_hourly WHERE meter_id = 'CY-PGE-1'
                   AND hour_start_time >= $1 AND hour_start_time < $2 ORDER BY hour_start_time""",
                utc("2025-10-27T07:00:00"),
                utc("2025-11-03T08:00:00"),
            )
        finally:
            await conn.close()
        quoted = await stub.QuoteBill(
            billing_pb2.QuoteBillRequest(
                tariff_id="us-ca-pge-e-tou-c",
                billing_period=WEEK,
                usage=billing_pb2.Usage(
                    hourly=billing_pb2.HourlyUsage(
                        start_time=WEEK.start_time, import_energy_kwh=[r[0] / 1000 for r in wh]
                    ),
                    sanctioned_load_kw=5.0,
                ),
            )
        )
        assert (
            len(wh) == 7 * 24 + 1
            and quoted.bill.total == pge.total
            and list(quoted.bill.lines) == list(pge.lines)
        )

        _, rerun = await run_cycle(stub, billing_period=WEEK)
        assert (rerun.billed_count, rerun.skipped_count, rerun.failed_count) == (0, 6, 1)
        assert rerun.cycle_id != summary.cycle_id and not rerun.billed_totals
        recompute = (await run_cycle(stub, billing_period=WEEK, recompute=True))[1]
        assert (recompute.billed_count, recompute.skipped_count) == (0, 6)  # inputs unchanged
        only = (await run_cycle(stub, billing_period=WEEK, meter_ids=["CY-RGP-1", "GHOST"]))[1]
        assert (only.total_count, only.skipped_count, only.failed_count) == (2, 1, 1)
        assert only.failures[0].meter_id == "GHOST" and "not registered" in only.failures[0].reason
        assert await bill_rows(platform) == rows


async def _seed_rollups(p: Platform, meters: int, start: dt.datetime, hours: int) -> None:
    """Many meters at once, straight into the registry and the rollup table (as the writer leaves it)."""
    conn = await p.db()
    try:
        await conn.execute(
            """INSERT INTO meters (meter_id, category, tariff_id, sanctioned_load_kw, time_zone)
               SELECT 'BULK-' || lpad(i::text, 5, '0'), 'residential', 'in-gj-rgp-urban', 1 + i % 7,
                      'Asia/Kolkata'
               FROM generate_series(0, $1 - 1) i""",
            meters,
        )
        await conn.execute(
            """INSERT INTO readings_hourly (meter_id, hour_start_time, import_energy_wh, export_energy_wh,
                                            reading_count)
               SELECT 'BULK-' || lpad(i::text, 5, '0'), $2::timestamptz + h * interval '1 hour',
                      100 + (i * 13 + h * 7) % 400, 0, 4
               FROM generate_series(0, $3 - 1) h, generate_series(0, $1 - 1) i""",
            meters,
            start,
            hours,
        )
    finally:
        await conn.close()


@pytest.mark.slow
async def test_a_cycle_killed_mid_way_resumes_and_ends_with_exactly_one_bill_per_meter(
    platform: Platform,
) -> None:
    meters = 3000
    week = period("2025-03-01T00:00:00", "2025-03-08T00:00:00")
    # Small chunks commit often, so the kill lands between many committed chunks.
    env = {
        "METERMESH_CYCLE_CHUNK_METERS": "25",
        "METERMESH_CYCLE_PROGRESS_SECONDS": "0.05",
        "METERMESH_SHUTDOWN_GRACE_SECONDS": "0",
    }
    first = await platform.start_billing(**env)  # applies the migrations
    await _seed_rollups(platform, meters, utc("2025-02-28T00:00:00"), 24 * 10)
    async with platform.channel_to(platform.billing_addr) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        stream = stub.RunBillingCycle(billing_pb2.RunBillingCycleRequest(billing_period=week))
        cycle_id = ""
        async for msg in stream:
            assert msg.HasField("progress"), "the cycle finished before it could be killed"
            cycle_id = msg.progress.cycle_id
            if msg.progress.done_count > 0:
                # Another cycle for an overlapping period is refused while this one runs.
                await expect_error(
                    run_cycle(stub, billing_period=period("2025-03-05T00:00:00", "2025-03-06T00:00:00")),
                    grpc.StatusCode.ABORTED,
                    cycle_id,
                )
                first.signal(signal.SIGKILL)
                break
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in stream:
                pass
    first.kill()
    done_before = len(await bill_rows(platform))
    assert 0 < done_before < meters, done_before

    await platform.start_billing(**env)
    async with platform.channel_to(platform.billing_addr) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)

        async def resume() -> billing_pb2.BillingCycleSummary | None:
            try:
                return (await run_cycle(stub, billing_period=week))[1]
            except grpc.aio.AioRpcError as exc:
                # The killed process's PostgreSQL session may hold the cycle's lock a moment longer.
                if exc.code() == grpc.StatusCode.ABORTED:
                    await asyncio.sleep(0.2)
                    return None
                raise

        summary = await wait_for(resume, lambda s: s is not None, timeout=60, what="the resumed cycle")
        assert summary is not None
    assert summary.cycle_id == cycle_id  # the same cycle, continued
    assert (summary.total_count, summary.billed_count, summary.failed_count) == (meters, meters, 0)
    rows = await bill_rows(platform)
    assert len(rows) == meters and len({m for m, _, _ in rows}) == meters
    assert all(v == 1 and s == "issued" for _, v, s in rows)
    conn = await platform.db()
    try:
        state = await conn.fetchrow(
            "SELECT state, run_count FROM billing_cycles WHERE cycle_id = $1", cycle_id
        )
        by_cycle = await conn.fetchval("SELECT count(*) FROM bills WHERE billing_cycle_id = $1", cycle_id)
    finally:
        await conn.close()
    assert (state["state"], state["run_count"], by_cycle) == ("finished", 2, meters)
