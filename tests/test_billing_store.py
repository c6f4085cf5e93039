"""The billing service's PostgreSQL access (services/billing/store.py) on a real database: the three
forms of the per-meter usage query and the single-pass scan give the same usage, and writing bills
never stores one twice, supersedes only the bill in force, and keeps every version."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
import yaml

from services.billing import store
from services.billing.biller import Biller
from services.billing.bills import ISSUED, SUPERSEDED
from services.billing.catalog import DEFAULT_TARIFF_DIR, TariffSet, load_tariffs, parse_tariff
from services.billing.metering import make_grid, measure, scan_plan
from services.billing.periods import BillingPeriod
from services.common.db import apply_migrations
from tests.support import Platform

UTC = dt.UTC
MARCH = BillingPeriod(dt.date(2026, 3, 1), dt.date(2026, 4, 1))


def tariffs_with_a_utc_tariff() -> TariffSet:
    """The shipped tariffs plus RGP urban moved to UTC (midnight on the hour, no time of use): the one
    combination no shipped tariff has."""
    data = yaml.safe_load((DEFAULT_TARIFF_DIR / "in-gj-rgp-urban" / "2024-01.yaml").read_text())
    utc = copy.deepcopy(data)
    utc["id"], utc["time_zone"] = "test-rgp-utc", "UTC"
    return TariffSet([*load_tariffs().all_versions(), parse_tariff(utc, "test")])


TARIFFS = tariffs_with_a_utc_tariff()
METERS = {
    "S-UTC": "test-rgp-utc",
    "S-IST": "in-gj-rgp-urban",
    "S-PGE": "us-ca-pge-e-tou-c",
    "S-E7": "uk-economy-7",
}


@pytest.fixture
async def conn(platform: Platform) -> AsyncIterator[asyncpg.Connection]:
    c = await platform.db()
    await apply_migrations(c)
    for i, (meter, tariff) in enumerate(METERS.items()):
        await c.execute(
            "INSERT INTO meters (meter_id, category, tariff_id, sanctioned_load_kw) VALUES ($1, 'residential', $2, 3)",
            meter,
            tariff,
        )
        # Every UTC hour from a day before March to a day after, uneven and with half watt-hours.
        await c.execute(
            """INSERT INTO readings_hourly (meter_id, hour_start_time, import_energy_wh, export_energy_wh,
                                            reading_count)
               SELECT $1, '2026-02-28T00:00Z'::timestamptz + h * interval '1 hour',
                      (h * 37 + $2) % 900 + 0.5, (h % 24 BETWEEN 9 AND 15)::int * ((h * 11) % 300 + 0.5), 4
               FROM generate_series(0, 33 * 24 - 1) h""",
            meter,
            i * 101,
        )
    yield c
    await c.close()


async def test_per_meter_queries_and_the_single_scan_read_the_same_usage(conn: asyncpg.Connection) -> None:
    grids = {m: make_grid(TARIFFS, t, MARCH) for m, t in METERS.items()}
    assert grids["S-UTC"].codes is None  # the plain query
    assert grids["S-IST"].codes is not None and not grids["S-IST"].time_of_use  # the CASE query
    assert grids["S-PGE"].time_of_use  # the array look-up
    by_meter = {}
    for meter, g in grids.items():
        rows = (await store.read_usage(conn, g, [meter]))[meter]
        by_meter[meter] = measure(g, rows)
    distinct = list({id(g): g for g in grids.values()}.values())
    plan = scan_plan(distinct)
    index = {id(g): i for i, g in enumerate(distinct)}
    for only in (None, list(METERS)):
        folded: dict[str, list[tuple[int, float, float, int]]] = {}
        for meter_id, cls, imp, exp, hours in await store.scan_usage(conn, plan, only):
            code = plan.class_codes[cls][index[id(grids[meter_id])]]
            if code is not None:
                folded.setdefault(meter_id, []).append((code, imp, exp, hours))
        for meter, g in grids.items():
            assert measure(g, folded[meter]) == by_meter[meter], meter
    # The whole month, every hour present: 31 days of local hours.
    assert by_meter["S-UTC"].coverage_percent == 100.0 and by_meter["S-UTC"].hours == 744
    assert by_meter["S-PGE"].hours == 743  # 8 March has 23 hours in California


async def test_a_bill_is_stored_once_and_a_revision_only_replaces_the_bill_in_force(
    conn: asyncpg.Connection,
) -> None:
    biller = Biller(TARIFFS)
    g = biller.grid("in-gj-rgp-urban", MARCH)
    meter = store.MeterRow("S-IST", "residential", "in-gj-rgp-urban", 3.0, "Asia/Kolkata")
    now = dt.datetime.now(UTC)
    usage = await store.read_usage(conn, g, ["S-IST"])
    v1 = biller.price(g, [meter], usage, {}, recompute=False, cycle_id=None, now=now).bills[0]
    assert await store.write_bills(conn, [v1]) == {v1.bill_id}
    assert await store.write_bills(conn, [v1]) == set()  # a retried write adds nothing

    # Late readings: version 2 replaces version 1 and shows the difference.
    await conn.execute(
        "UPDATE readings_hourly SET import_energy_wh = import_energy_wh + 1000 "
        "WHERE meter_id = 'S-IST' AND hour_start_time = '2026-03-10T10:00Z'"
    )
    usage = await store.read_usage(conn, g, ["S-IST"])
    issued = {"S-IST": v1.issued_view()}
    v2 = biller.price(g, [meter], usage, issued, recompute=True, cycle_id=None, now=now).bills[0]
    assert v2.version == 2 and v2.previous_bill_id == v1.bill_id
    assert v2.import_energy_kwh - v1.import_energy_kwh == Decimal(1)
    assert v2.total_difference == v2.total - v1.total and v2.lines[-1]["kind"] == "ADJUSTMENT"
    # A competing revision computed from the same (now stale) version 1 must not land as well.
    await conn.execute(
        "UPDATE readings_hourly SET import_energy_wh = import_energy_wh + 5000 "
        "WHERE meter_id = 'S-IST' AND hour_start_time = '2026-03-11T10:00Z'"
    )
    rival = biller.price(
        g, [meter], await store.read_usage(conn, g, ["S-IST"]), issued, recompute=True, cycle_id=None, now=now
    ).bills[0]
    assert rival.bill_id == v2.bill_id and rival.inputs_hash != v2.inputs_hash
    assert await store.write_bills(conn, [v2]) == {v2.bill_id}
    assert await store.write_bills(conn, [rival]) == set()
    rows = await conn.fetch(
        "SELECT bill_id, status, superseded_by_bill_id, inputs_hash FROM bills ORDER BY version"
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (v1.bill_id, SUPERSEDED, v2.bill_id),
        (v2.bill_id, ISSUED, None),
    ]
    assert rows[1][3] == v2.inputs_hash
    # The same inputs again: skipped, nothing to store.
    again = biller.price(
        g,
        [meter],
        usage,
        {"S-IST": v2.issued_view()},
        recompute=True,
        cycle_id=None,
        now=now,
    )
    assert again.skipped == ["S-IST"] and not again.bills
    stored = await store.get_bill(conn, v2.bill_id)
    assert stored is not None and stored.lines == v2.lines and stored.total == v2.total
