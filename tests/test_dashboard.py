"""Issue 6's dashboard in a real browser: the platform (writer, ingest, anomaly, alerts, billing,
forecast when it starts, and the gRPC-web gateway serving the built dashboard) on real NATS and
PostgreSQL, driven by headless Debian chromium through Playwright. Every page must show real data from
the services, an alert must arrive live, a consumer must see only its own meter, and no page may log
a console error. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from metermesh.billing.v1 import billing_pb2, billing_pb2_grpc
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright, expect

from gateway.auth import issue_token
from services.common.embedded import free_port
from tests.support import Platform, register, wait_for

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)

SECRET = "dashboard-test-secret-0123456789-abcdefghijklmnop"
HOME, NEIGHBOUR = "GJ-DASH-0001", "GJ-DASH-0002"
STEP = 900
HISTORY_DAYS = 8  # a week and a day: enough for the forecast's weekly baseline and an analysis
SURGE_HOURS_AGO = 5  # one surge reading in HOME's history, for the chart's anomaly mark
UI_TIMEOUT_MS = 20_000
expect.set_options(timeout=UI_TIMEOUT_MS)


def profile_wh(t: int) -> float:
    """A household day: low at night, a morning bump and an evening peak (Wh per 15 minutes)."""
    hour = (t % 86400) / 3600 + 5.5  # local time in India
    hour %= 24
    evening = 220 * math.exp(-(((hour - 20) / 2.0) ** 2))
    morning = 90 * math.exp(-(((hour - 8) / 1.5) ** 2))
    return round(45 + evening + morning + 10 * math.sin(t / 5000), 1)


def reading(meter_id: str, t: int, *, voltage: float | None = None) -> common_pb2.Reading:
    v = 230.0 + 3 * math.sin(t / 7000) if voltage is None else voltage
    r = common_pb2.Reading(
        meter_id=meter_id, interval_seconds=STEP, import_energy_wh=profile_wh(t), voltage_v=round(v, 1)
    )
    r.read_time.seconds = t
    return r


async def push(platform: Platform, readings: list[common_pb2.Reading]) -> None:
    async with platform.channel() as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        for i in range(0, len(readings), 5000):
            resp = await stub.PushReadings(
                ingest_pb2.PushReadingsRequest(readings=readings[i : i + 5000]), timeout=30
            )
            assert resp.accepted_count == len(readings[i : i + 5000]), resp.rejections[:3]


async def stored(platform: Platform, meter_id: str, since: int) -> int:
    async with platform.channel() as ch:
        resp = await ingest_pb2_grpc.IngestServiceStub(ch).GetReadings(
            ingest_pb2.GetReadingsRequest(meter_id=meter_id, page_size=10_000, start_time={"seconds": since}),
            timeout=10,
        )
    return len(resp.readings)


async def start_gateway(platform: Platform) -> str:
    addr = f"127.0.0.1:{free_port()}"
    proc = platform.process(
        "gateway", "gateway", addr, METERMESH_GATEWAY_ADDR=addr, METERMESH_GATEWAY_JWT_SECRET=SECRET
    )
    proc.start()
    url = f"http://{addr}"
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while True:
            assert proc.running, f"the gateway exited with {proc.proc.returncode if proc.proc else None}"
            try:
                if (await client.get(f"{url}/healthz", timeout=1)).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not answer /healthz within 60 s"
            await asyncio.sleep(0.1)


@dataclass
class Dashboard:
    platform: Platform
    url: str
    browser: Browser
    screenshots: Path
    forecast_up: bool
    last_t: int
    operator_token: str = field(init=False)
    consumer_token: str = field(init=False)

    def __post_init__(self) -> None:
        self.operator_token = issue_token(SECRET, role="operator", subject="op-asha", ttl_seconds=3600)
        self.consumer_token = issue_token(
            SECRET, role="consumer", subject="home-ravi", meters=[HOME], ttl_seconds=3600
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def dashboard(nats_url: str, admin_db_url: str, log_dir: Path) -> AsyncIterator[Dashboard]:
    platform = Platform(nats_url=nats_url, admin_db_url=admin_db_url, log_dir=log_dir)
    await platform.create()
    try:
        await platform.start_writer()
        started = await asyncio.gather(
            platform.start_alerts(),
            platform.start_anomaly(),
            platform.start_billing(),
            platform.start_ingest(),
            platform.start_forecast(),
            start_gateway(platform),
            return_exceptions=True,
        )
        for what, result in zip(["alerts", "anomaly", "billing", "ingest"], started[:4], strict=True):
            assert not isinstance(result, BaseException), f"{what} did not start: {result!r}"
        forecast_up = not isinstance(started[4], BaseException)  # the dashboard must cope without it
        if isinstance(started[5], BaseException):
            raise started[5]
        url = started[5]

        async with platform.channel() as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            fields = dict(
                tariff_id="in-gj-rgp-urban",
                time_zone="Asia/Kolkata",
                sanctioned_load_kw=2.0,
                rated_current_a=40.0,
            )
            await register(stub, HOME, NEIGHBOUR, **fields)
        # Not on an interval boundary: the page's "last 24 hours" ends a minute after it is opened, so
        # ending the day a minute ago keeps exactly 96 readings in view for the next ten minutes.
        last = int(time.time()) - 60
        first = last - HISTORY_DAYS * 86400 + STEP
        surge_at = last - SURGE_HOURS_AGO * 3600
        history = [
            reading(m, t, voltage=262.0 if (m == HOME and t == surge_at) else None)
            for t in range(first, last + 1, STEP)
            for m in (HOME, NEIGHBOUR)
        ]
        await push(platform, history)
        day_ago = last - 86400 + STEP
        for m in (HOME, NEIGHBOUR):
            await wait_for(
                lambda m=m: stored(platform, m, day_ago),
                lambda n: n == 96,
                timeout=60,
                what=f"{m}'s last day stored",
            )
        # One issued bill, so the billing page has a bill to list: the day before yesterday, a whole day.
        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        async with platform.channel_to(platform.billing_addr) as ch:
            period = common_pb2.TimeRange()
            period.start_time.FromDatetime(today - dt.timedelta(days=2))
            period.end_time.FromDatetime(today - dt.timedelta(days=1))
            await wait_for(
                lambda: billing_pb2_grpc.BillingServiceStub(ch).ComputeBill(
                    billing_pb2.ComputeBillRequest(meter_id=HOME, billing_period=period), timeout=10
                ),
                lambda r: r.bill.bill_id != "",
                timeout=30,
                what="a bill for HOME",
            )

        screenshots = log_dir.parent / "screenshots"
        screenshots.mkdir(parents=True, exist_ok=True)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
            )
            try:
                yield Dashboard(platform, url, browser, screenshots, forecast_up, last)
            finally:
                await browser.close()
    finally:
        await platform.destroy()


@dataclass
class Tab:
    """A browser page that records every console error and uncaught page error."""

    page: Page
    errors: list[str]

    def assert_clean(self) -> None:
        assert self.errors == [], "the dashboard logged errors:\n" + "\n".join(self.errors)


@pytest_asyncio.fixture(loop_scope="session")
async def tab(dashboard: Dashboard) -> AsyncIterator[Tab]:
    context = await dashboard.browser.new_context(viewport={"width": 1360, "height": 1000})
    page = await context.new_page()
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")

    def on_page_error(err: Error) -> None:
        errors.append(f"page error: {err}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield Tab(page, errors)
    finally:
        await context.close()


async def sign_in(tab: Tab, dashboard: Dashboard, token: str) -> None:
    page = tab.page
    await page.goto(dashboard.url + "/")
    await page.fill("#token", token)
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#who")).to_be_visible()


async def shot(tab: Tab, dashboard: Dashboard, name: str) -> None:
    await tab.page.screenshot(path=str(dashboard.screenshots / f"{name}.png"), full_page=True)


async def test_operator_signs_in_and_sees_the_fleet(dashboard: Dashboard, tab: Tab) -> None:
    page = tab.page
    await page.goto(dashboard.url + "/")
    await expect(page.locator("#signin-form")).to_be_visible()
    await shot(tab, dashboard, "01-sign-in")
    await sign_in(tab, dashboard, dashboard.operator_token)
    await expect(page.locator("#who")).to_have_attribute("data-role", "operator")
    await expect(page.locator("#who .subject")).to_have_text("op-asha")

    await expect(page.locator("#stat-meters")).to_have_attribute("data-value", "2")
    await expect(page.locator("#stat-reporting")).to_have_attribute("data-value", "2")
    rows = page.locator(".meters-table tbody tr")
    await expect(rows).to_have_count(2)
    await expect(page.locator(f'.meters-table tr[data-meter-id="{HOME}"]')).to_be_visible()
    # Live from WatchAlerts: the surge in HOME's history is an open alert.
    await expect(page.locator("#severity-panel .severity-bars")).not_to_have_attribute("data-total", "0")
    # The rate needs two polls of ListMeters (5 s apart): a first figure, then a reading arrives and
    # the next poll counts it.
    rate = page.locator("#stat-rate")
    await expect(rate).to_have_attribute("data-value", re.compile(r"^\d"))
    await expect(page.locator("#rate-panel .rate-chart canvas")).to_be_visible()
    await push(dashboard.platform, [reading(NEIGHBOUR, dashboard.last_t + 30)])
    await expect(rate).to_have_attribute("data-value", re.compile(r"^(0\.\d*[1-9]|[1-9])"))
    await shot(tab, dashboard, "02-overview")
    tab.assert_clean()


async def test_meter_page_charts_readings_forecast_and_bill_projection(
    dashboard: Dashboard, tab: Tab
) -> None:
    page = tab.page
    await sign_in(tab, dashboard, dashboard.operator_token)
    await page.click(f'.meters-table a:text("{HOME}")')
    await expect(page).to_have_url(f"{dashboard.url}/#/meters/{HOME}")

    chart = page.locator("#readings-panel .readings-chart")
    await expect(chart).to_have_attribute("data-points", "96")  # a day of 15-minute readings
    await expect(chart).to_have_attribute("data-series", "import,voltage")
    await expect(chart.locator("canvas")).to_be_visible()
    # The 262 V reading five hours ago, found by DetectAnomalies and marked on the chart.
    await expect(chart).not_to_have_attribute("data-anomalies", "0")
    await expect(
        page.locator('#readings-panel .anomaly-list li[data-kind="voltage_surge"]').first
    ).to_be_visible()

    for panel in ("forecast-panel", "projection-panel", "efficiency-panel"):
        # Each panel shows its data or, when its service cannot answer, says why: never a spinner.
        await expect(page.locator(f"#{panel}")).to_have_attribute(
            "data-state", re.compile("ready|error|empty")
        )
    if dashboard.forecast_up:
        await expect(page.locator("#forecast-panel")).to_have_attribute("data-state", "ready")
        await expect(page.locator("#forecast-panel .forecast-chart")).to_have_attribute("data-points", "48")
        await expect(page.locator("#projection-panel")).to_have_attribute("data-state", "ready")
        await expect(page.locator("#projection-panel .slab-bar")).to_be_visible()
    await shot(tab, dashboard, "03-meter")

    await page.click('#readings-panel button[data-range="7d"]')
    await expect(chart).to_have_attribute("data-points", str(7 * 96))
    tab.assert_clean()


async def test_a_surge_alert_arrives_live_and_is_acknowledged(dashboard: Dashboard, tab: Tab) -> None:
    page = tab.page
    await sign_in(tab, dashboard, dashboard.operator_token)
    await page.click('nav a[data-nav="alerts"]')
    await expect(page.locator("#feed-status")).to_have_attribute("data-feed", "live")
    row = page.locator(f'tr.alert-row[data-meter-id="{NEIGHBOUR}"][data-kind="voltage_surge"]')
    await expect(row).to_have_count(0)

    # The page is open and watching: a 295 V reading must appear without a reload.
    await push(dashboard.platform, [reading(NEIGHBOUR, int(time.time()) - 30, voltage=295.0)])
    await expect(row).to_have_count(1)
    await expect(row).to_have_attribute("data-state", "open")
    await expect(row).to_have_attribute("data-severity", re.compile("major|critical"))
    await shot(tab, dashboard, "04-alerts-live")

    await row.locator('button[data-action="acknowledge"]').click()
    await expect(row).to_have_attribute("data-state", "acknowledged")
    await expect(row).to_contain_text("op-asha")  # the gateway sets who acknowledged from the token
    await expect(page.locator("#alert-action-error")).to_have_count(0)
    tab.assert_clean()


async def test_billing_page_quotes_a_bill_line_by_line(dashboard: Dashboard, tab: Tab) -> None:
    page = tab.page
    await sign_in(tab, dashboard, dashboard.operator_token)
    await page.click('nav a[data-nav="billing"]')
    tariffs = page.locator("#tariffs-panel .tariffs")
    await expect(tariffs.locator('li[data-tariff-id="in-gj-rgp-urban"]')).to_be_visible()

    await page.select_option("#quote-tariff", "in-gj-rgp-urban")
    await page.fill('#quote-form input[name="import_kwh"]', "320")
    await page.click("#quote-form button[type=submit]")
    bill = page.locator("#quote-result .bill")
    await expect(bill).to_be_visible()
    # Telescopic slabs up to 320 kWh: four energy lines, a fixed charge, FPPPA, duty, rounding.
    await expect(bill.locator('tr[data-kind="energy_slab"]')).to_have_count(4)
    await expect(bill.locator('tr[data-kind="fixed_charge"]')).to_have_count(1)
    await expect(bill.locator('tr[data-kind="duty"]')).to_have_count(1)
    await expect(bill.locator("#bill-total")).to_contain_text("INR")

    # The bill issued for HOME in the fixture, listed by ListBills.
    await page.fill('#bills-panel input[name="meter"]', HOME)
    await page.click("#bills-panel button[type=submit]")
    await expect(page.locator("#bills-panel .bills-table tbody tr[data-bill-id]")).to_have_count(1)
    await shot(tab, dashboard, "05-billing")
    tab.assert_clean()


async def test_a_consumer_sees_only_its_meter_and_is_denied_another(dashboard: Dashboard, tab: Tab) -> None:
    page = tab.page
    await sign_in(tab, dashboard, dashboard.consumer_token)
    await expect(page.locator("#who")).to_have_attribute("data-role", "consumer")
    await expect(page.locator("#who-meters")).to_have_text(HOME)
    await expect(page.locator(".meters-table tbody tr")).to_have_count(1)
    await expect(page.locator(f'.meters-table tr[data-meter-id="{HOME}"]')).to_be_visible()
    await shot(tab, dashboard, "06-consumer-overview")

    await page.click(f'.meters-table a:text("{HOME}")')
    await expect(page.locator("#readings-panel .readings-chart")).to_have_attribute("data-points", "96")

    # Another meter's page: the gateway answers PERMISSION_DENIED and the page says so.
    await page.goto(f"{dashboard.url}/#/meters/{NEIGHBOUR}")
    denied = page.locator('.page-error[data-code="PERMISSION_DENIED"]')
    await expect(denied).to_be_visible()
    await expect(denied).to_contain_text("Permission denied")
    await expect(page.locator("#readings-panel")).to_have_count(0)
    await shot(tab, dashboard, "07-consumer-denied")

    # Its alerts are its own: the neighbour's surge alert is not in its live list.
    await page.click('nav a[data-nav="alerts"]')
    await expect(page.locator("#feed-status")).to_have_attribute("data-feed", "live")
    await expect(page.locator(f'tr.alert-row[data-meter-id="{HOME}"]').first).to_be_visible()
    await expect(page.locator(f'tr.alert-row[data-meter-id="{NEIGHBOUR}"]')).to_have_count(0)
    await expect(page.locator('button[data-action="acknowledge"]')).to_have_count(0)
    tab.assert_clean()


async def test_a_foreign_token_is_refused_and_sign_out_forgets_the_token(
    dashboard: Dashboard, tab: Tab
) -> None:
    page = tab.page
    await page.goto(dashboard.url + "/")
    foreign = issue_token("another-platform-secret-0123456789-abcdefgh", role="operator", subject="mallory")
    await page.fill("#token", foreign)
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#signin-error")).to_contain_text("refused")
    await expect(page.locator("#signin-error")).to_contain_text("signature")
    await expect(page.locator("#who")).to_have_count(0)

    await sign_in(tab, dashboard, dashboard.operator_token)
    await page.click("#sign-out")
    await expect(page.locator("#signin-form")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('metermesh.token')") is None
    await page.reload()
    await expect(page.locator("#signin-form")).to_be_visible()
    tab.assert_clean()


async def test_panels_say_which_service_is_down_and_the_rest_keeps_working(
    dashboard: Dashboard, tab: Tab
) -> None:
    """Runs last: it stops the forecast, anomaly and billing services."""
    for p in dashboard.platform.procs:
        if p.name in ("forecast", "anomaly", "billing") and p.running:
            p.kill()
    page = tab.page
    await sign_in(tab, dashboard, dashboard.operator_token)
    await page.goto(f"{dashboard.url}/#/meters/{HOME}")
    chart = page.locator("#readings-panel .readings-chart")
    await expect(chart).to_have_attribute("data-points", "96")  # ingest still answers
    await expect(page.locator('#readings-panel [data-anomalies="unavailable"]')).to_contain_text(
        "UNAVAILABLE"
    )
    for panel in ("forecast-panel", "projection-panel", "efficiency-panel"):
        await expect(page.locator(f"#{panel}")).to_have_attribute("data-state", "error")
        await expect(page.locator(f"#{panel} .message.error")).to_contain_text(
            "forecast service is unavailable"
        )
    await shot(tab, dashboard, "08-services-down")

    await page.click('nav a[data-nav="billing"]')
    await expect(page.locator("#tariffs-panel")).to_have_attribute("data-state", "error")
    await expect(page.locator("#tariffs-panel .message.error")).to_contain_text(
        "billing service is unavailable"
    )
    await expect(page.locator("#bills-panel")).to_have_attribute("data-state", "ready")  # the meter form
    tab.assert_clean()
