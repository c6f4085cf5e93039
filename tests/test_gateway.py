"""The gRPC-web gateway in front of the real ingest and billing services (real NATS and PostgreSQL),
called by a real gRPC-web client (Connect's gRPC-web transport in Node) and, for the text format and
the wire details, by hand-framed HTTP: unary calls, errors, auth, CORS, limits, health, static files."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from metermesh.billing.v1 import billing_pb2
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from gateway.auth import issue_token
from gateway.grpcweb import frame
from tests.grpcweb.harness import (
    CONSUMER,
    OPERATOR,
    GatewayProc,
    NodeClient,
    build_node_client,
    start_gateway,
    token,
    web_call,
)
from tests.support import Platform, register, wait_for

ING = "metermesh.ingest.v1.IngestService"
BIL = "metermesh.billing.v1.BillingService"
ALLOWED_ORIGIN = "http://dashboard.example:5173"
MAX_REQUEST = 64 * 1024


@dataclass
class Stack:
    platform: Platform
    gateway: GatewayProc
    node: NodeClient
    script: Path


@pytest.fixture(scope="module")
async def stack(
    nats_url: str, admin_db_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    p = Platform(nats_url=nats_url, admin_db_url=admin_db_url, log_dir=log_dir)
    await p.create()
    try:
        script = build_node_client(tmp_path_factory.mktemp("grpcweb"))
        await asyncio.gather(p.start_ingest(), p.start_billing())
        gw = await start_gateway(
            p,
            METERMESH_GATEWAY_CORS_ORIGINS=ALLOWED_ORIGIN,
            METERMESH_GATEWAY_MAX_REQUEST_BYTES=str(MAX_REQUEST),
            METERMESH_GATEWAY_RATE_PER_SECOND="1000",
            METERMESH_GATEWAY_RATE_BURST="1000",
        )
        async with p.channel() as ch:
            await register(
                ingest_pb2_grpc.IngestServiceStub(ch),
                "GW-1",
                "GW-2",
                "GW-3",
                tariff_id="in-gj-rgp-urban",
                sanctioned_load_kw=3.0,
            )
        yield Stack(p, gw, NodeClient(script, gw.url), script)
    finally:
        await p.destroy()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=30, trust_env=False) as client:
        yield client


def operator() -> str:
    return token(OPERATOR, "olga")


def consumer(*meters: str) -> str:
    return token(CONSUMER, "bob", meters)


def month(year: int, mon: int) -> dict[str, dict[str, str]]:
    nxt = dt.date(year + mon // 12, mon % 12 + 1, 1)
    return {"startTime": f"{year}-{mon:02d}-01T00:00:00Z", "endTime": f"{nxt.isoformat()}T00:00:00Z"}


# --- unary calls ----------------------------------------------------------------------------------


async def test_unary_calls_go_through_a_connect_grpc_web_client(stack: Stack) -> None:
    node = stack.node
    meter = {"meterId": "GW-NEW", "category": "METER_CATEGORY_COMMERCIAL", "intervalSeconds": 1800}
    created = await node.call(ING, "RegisterMeter", {"meter": meter}, token=operator())
    assert created.response["created"] is True and created.response["meter"]["meterId"] == "GW-NEW"
    assert created.lines[-1]["trailer"] == {"grpc-status": "0"}

    got = await node.call(ING, "GetMeter", {"meterId": "GW-NEW"}, token=operator())
    assert got.response["meter"]["category"] == "METER_CATEGORY_COMMERCIAL"

    listed = await node.call(ING, "ListMeters", {"pageSize": 1000}, token=operator())
    assert {"GW-1", "GW-2", "GW-3", "GW-NEW"} <= {m["meterId"] for m in listed.response["meters"]}

    quote = await node.call(
        BIL,
        "QuoteBill",
        {
            "tariffId": "in-gj-rgp-urban",
            "billingPeriod": month(2024, 6),
            "usage": {"importEnergyKwh": 250, "sanctionedLoadKw": 3},
        },
        token=operator(),
    )
    bill = quote.response["bill"]
    assert bill["status"] == "BILL_STATUS_QUOTE" and bill["total"]["currencyCode"] == "INR"
    assert any(line["kind"] == "BILL_LINE_KIND_ENERGY_SLAB" for line in bill["lines"])


async def test_upstream_errors_pass_through_with_their_code_and_message(stack: Stack) -> None:
    bad = await stack.node.call(ING, "RegisterMeter", {"meter": {"meterId": "GW-BAD"}}, token=operator())
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.message.startswith("meter.category is METER_CATEGORY_UNSPECIFIED")
    missing = await stack.node.call(ING, "GetMeter", {"meterId": "NOPE-1"}, token=operator())
    assert (
        missing.code == grpc.StatusCode.NOT_FOUND and missing.message == "meter_id 'NOPE-1' is not registered"
    )
    quote = await stack.node.call(
        BIL, "QuoteBill", {"tariffId": "no-such-tariff", "billingPeriod": month(2024, 6)}, token=operator()
    )
    assert quote.code == grpc.StatusCode.NOT_FOUND and "no-such-tariff" in quote.message


async def test_server_streaming_billing_cycle_progress(stack: Stack) -> None:
    run = await stack.node.call(
        BIL,
        "RunBillingCycle",
        {"billingPeriod": month(2024, 5), "meterIds": ["GW-1", "GW-2"]},
        token=operator(),
    )
    assert run.ok, run.lines
    assert "summary" in run.messages[-1] and run.messages[-1]["summary"]["totalCount"] == 2
    denied = await stack.node.call(
        BIL,
        "RunBillingCycle",
        {"billingPeriod": month(2024, 5), "meterIds": ["GW-1"]},
        token=consumer("GW-1"),
    )
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED and denied.messages == []


async def test_text_format_unary_calls_are_base64_both_ways(stack: Stack, http: httpx.AsyncClient) -> None:
    req = ingest_pb2.GetMeterRequest(meter_id="GW-2")
    res = await web_call(http, f"{ING}/GetMeter", req, token=operator(), text=True)
    assert res.http_status == 200 and res.headers["content-type"] == "application/grpc-web-text+proto"
    raw = await http.post(
        f"/{ING}/GetMeter",
        content=base64.b64encode(frame(req.SerializeToString())),
        headers={"content-type": "application/grpc-web-text", "authorization": f"Bearer {operator()}"},
    )
    base64.b64decode(raw.content, validate=True)  # the whole unary body is one valid base64 text
    assert res.code == grpc.StatusCode.OK
    (msg,) = res.messages
    assert ingest_pb2.GetMeterResponse.FromString(msg).meter.meter_id == "GW-2"
    err = await web_call(
        http, f"{ING}/GetMeter", ingest_pb2.GetMeterRequest(meter_id="NOPE-2"), token=operator(), text=True
    )
    assert err.code == grpc.StatusCode.NOT_FOUND and err.message == "meter_id 'NOPE-2' is not registered"
    assert err.messages == []
    # The binary format of the same call, with the +proto suffix and without.
    for ct in ("application/grpc-web", "application/grpc-web+proto"):
        r = await http.post(
            f"/{ING}/GetMeter",
            content=frame(req.SerializeToString()),
            headers={"content-type": ct, "authorization": f"Bearer {operator()}"},
        )
        assert r.headers["content-type"] == "application/grpc-web+proto" and r.content.endswith(
            b"grpc-status: 0\r\n"
        )


async def test_unknown_methods_are_unimplemented_and_other_requests_are_refused(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    for path in (
        f"{ING}/NoSuchMethod",
        "metermesh.nothing.v1.NothingService/Do",
        "grpc.health.v1.Health/Check",
    ):
        res = await web_call(http, path, b"", token=operator())
        assert res.http_status == 200 and res.code == grpc.StatusCode.UNIMPLEMENTED, path
        assert "unknown method" in res.message
    stream = await web_call(http, f"{ING}/StreamReadings", b"", token=operator())
    assert stream.code == grpc.StatusCode.UNIMPLEMENTED and "client-streaming" in stream.message
    assert (await http.get(f"/{ING}/GetMeter")).status_code == 405
    wrong = await http.post(f"/{ING}/GetMeter", content=b"{}", headers={"content-type": "application/json"})
    assert wrong.status_code == 415


async def test_grpc_timeout_bounds_the_upstream_call(stack: Stack, http: httpx.AsyncClient) -> None:
    req = ingest_pb2.GetMeterRequest(meter_id="GW-1")
    res = await web_call(http, f"{ING}/GetMeter", req, token=operator(), timeout="1n")
    assert res.code == grpc.StatusCode.DEADLINE_EXCEEDED
    ok = await web_call(http, f"{ING}/GetMeter", req, token=operator(), timeout="10S")
    assert ok.code == grpc.StatusCode.OK
    bad = await web_call(http, f"{ING}/GetMeter", req, token=operator(), timeout="soon")
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT and "grpc-timeout" in bad.message


# --- auth -----------------------------------------------------------------------------------------


async def test_calls_without_a_valid_token_are_unauthenticated(stack: Stack) -> None:
    node = stack.node
    req = {"meterId": "GW-1"}
    none = await node.call(ING, "GetMeter", req)
    assert none.code == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in none.message
    expired = await node.call(ING, "GetMeter", req, token=token(OPERATOR, "olga", ttl=-120))
    assert expired.code == grpc.StatusCode.UNAUTHENTICATED and "expired at" in expired.message
    forged = issue_token("f" * 48, role="operator", subject="mallory")
    bad = await node.call(ING, "GetMeter", req, token=forged)
    assert bad.code == grpc.StatusCode.UNAUTHENTICATED and "signature" in bad.message
    garbage = await node.call(ING, "GetMeter", req, token="not-a-jwt")
    assert garbage.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_consumer_reads_its_own_meters_only(stack: Stack) -> None:
    node, bob = stack.node, consumer("GW-1", "GW-3", "GW-GONE")
    own = await node.call(ING, "GetMeter", {"meterId": "GW-1"}, token=bob)
    assert own.response["meter"]["meterId"] == "GW-1"
    readings = await node.call(ING, "GetReadings", {"meterId": "GW-3"}, token=bob)
    assert readings.ok
    other = await node.call(ING, "GetMeter", {"meterId": "GW-2"}, token=bob)
    assert other.code == grpc.StatusCode.PERMISSION_DENIED
    assert other.message == "consumer 'bob' may not read meter 'GW-2': the token covers only its own meters"
    bills = await node.call(BIL, "ListBills", {"meterId": "GW-2"}, token=bob)
    assert bills.code == grpc.StatusCode.PERMISSION_DENIED
    # ListMeters answers with the token's meters (those registered), not the fleet.
    listed = await node.call(ING, "ListMeters", {}, token=bob)
    assert [m["meterId"] for m in listed.response["meters"]] == ["GW-1", "GW-3"]
    paged = await node.call(ING, "ListMeters", {"pageSize": 1}, token=bob)
    assert [m["meterId"] for m in paged.response["meters"]] == ["GW-1"] and paged.response["nextPageToken"]
    rest = await node.call(
        ING, "ListMeters", {"pageSize": 2, "pageToken": paged.response["nextPageToken"]}, token=bob
    )
    assert [m["meterId"] for m in rest.response["meters"]] == ["GW-3"]
    # Reads that touch no meter's data are open to consumers.
    tariffs = await node.call(BIL, "ListTariffs", {}, token=bob)
    assert tariffs.ok and tariffs.response["tariffs"]


async def test_a_consumer_may_not_write(stack: Stack) -> None:
    bob = consumer("GW-1")
    for service, method, req in (
        (ING, "RegisterMeter", {"meter": {"meterId": "GW-1", "category": "METER_CATEGORY_RESIDENTIAL"}}),
        (ING, "PushReadings", {"readings": [{"meterId": "GW-1", "readTime": "2026-01-01T00:00:00Z"}]}),
        (BIL, "ComputeBill", {"meterId": "GW-1", "billingPeriod": month(2024, 5)}),
    ):
        res = await stack.node.call(service, method, req, token=bob)
        assert res.code == grpc.StatusCode.PERMISSION_DENIED, (method, res.lines)
        assert (
            res.message
            == f"consumer 'bob' may not call {service}/{method}: consumers may only read (operators only)"
        )
    async with stack.platform.channel() as ch:  # and nothing was written
        got = await ingest_pb2_grpc.IngestServiceStub(ch).GetMeter(
            ingest_pb2.GetMeterRequest(meter_id="GW-1")
        )
    assert got.meter.category == common_pb2.METER_CATEGORY_RESIDENTIAL


async def test_a_consumer_cannot_fetch_another_meters_bill_by_id(stack: Stack) -> None:
    conn = await stack.platform.db()  # a month of hourly rollups, as the storage writer would leave them
    try:
        start = dt.datetime(2024, 4, 1, tzinfo=dt.UTC)
        await conn.copy_records_to_table(
            "readings_hourly",
            records=[("GW-2", start + dt.timedelta(hours=h), 400.0, 0.0, 4) for h in range(30 * 24)],
            columns=("meter_id", "hour_start_time", "import_energy_wh", "export_energy_wh", "reading_count"),
        )
    finally:
        await conn.close()
    computed = await stack.node.call(
        BIL, "ComputeBill", {"meterId": "GW-2", "billingPeriod": month(2024, 4)}, token=operator()
    )
    assert computed.ok, computed.lines
    bill_id = computed.response["bill"]["billId"]
    theirs = await stack.node.call(BIL, "GetBill", {"billId": bill_id}, token=consumer("GW-2"))
    assert theirs.response["bill"]["meterId"] == "GW-2"
    other = await stack.node.call(BIL, "GetBill", {"billId": bill_id}, token=consumer("GW-1"))
    assert other.code == grpc.StatusCode.PERMISSION_DENIED and other.messages == []


# --- CORS -----------------------------------------------------------------------------------------


async def test_cors_preflight_allows_listed_origins_with_the_grpc_web_headers(
    http: httpx.AsyncClient,
) -> None:
    asked = "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization"
    pre = await http.options(
        f"/{ING}/GetMeter",
        headers={
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": asked,
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert set(asked.split(",")) <= allowed
    assert int(pre.headers["access-control-max-age"]) > 0

    denied = await http.options(
        f"/{ING}/GetMeter",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert denied.status_code == 400 and "access-control-allow-origin" not in denied.headers

    call = await http.post(
        f"/{ING}/GetMeter",
        content=frame(ingest_pb2.GetMeterRequest(meter_id="GW-1").SerializeToString()),
        headers={
            "origin": ALLOWED_ORIGIN,
            "content-type": "application/grpc-web+proto",
            "authorization": f"Bearer {operator()}",
        },
    )
    assert call.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    exposed = {h.strip() for h in call.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed
    foreign = await http.post(
        f"/{ING}/GetMeter",
        content=frame(b""),
        headers={"origin": "http://evil.example", "content-type": "application/grpc-web+proto"},
    )
    assert "access-control-allow-origin" not in foreign.headers


# --- limits, health, metrics ----------------------------------------------------------------------


async def test_requests_over_the_size_limit_are_resource_exhausted(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    readings = [
        {"meterId": "GW-1", "readTime": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z", "importEnergyWh": i}
        for i in range(3000)
    ]
    res = await stack.node.call(ING, "PushReadings", {"readings": readings}, token=operator())
    assert res.code == grpc.StatusCode.RESOURCE_EXHAUSTED and f"{MAX_REQUEST:,}" in res.message
    big = ingest_pb2.GetMeterRequest(meter_id="x" * (MAX_REQUEST + 10))
    for text in (False, True):
        r = await web_call(http, f"{ING}/GetMeter", big, token=operator(), text=text)
        assert r.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_healthz_reports_each_upstream_and_metrics_count_calls(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    health = await http.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["upstreams"]["ingest"]["status"] == "SERVING"
    assert body["upstreams"]["billing"]["status"] == "SERVING"
    assert body["upstreams"]["alerts"]["status"] == "UNREACHABLE"  # not started in this module
    await stack.node.call(ING, "GetMeter", {"meterId": "GW-1"}, token=operator())
    metrics = (await http.get("/metrics")).text
    assert (
        'metermesh_gateway_requests_total{code="OK",method="metermesh.ingest.v1.IngestService/GetMeter"}'
        in metrics
    )
    assert "metermesh_gateway_request_duration_seconds_bucket" in metrics


async def test_rate_limit_per_token_subject(stack: Stack) -> None:
    gw = await start_gateway(
        stack.platform, METERMESH_GATEWAY_RATE_PER_SECOND="0.5", METERMESH_GATEWAY_RATE_BURST="3"
    )
    async with httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False) as http:
        req = ingest_pb2.GetMeterRequest(meter_id="GW-1")
        first = [await web_call(http, f"{ING}/GetMeter", req, token=operator()) for _ in range(3)]
        assert [r.code for r in first] == [grpc.StatusCode.OK] * 3
        limited = await web_call(http, f"{ING}/GetMeter", req, token=operator())
        assert (
            limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "rate limit exceeded for 'olga'" in limited.message
        )
        other = await web_call(http, f"{ING}/GetMeter", req, token=token(OPERATOR, "oscar"))
        assert other.code == grpc.StatusCode.OK
    node = NodeClient(stack.script, gw.url)
    via_connect = await node.call(ING, "GetMeter", {"meterId": "GW-1"}, token=operator())
    assert via_connect.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    await gw.proc.stop()


async def test_static_dashboard_files_or_a_clear_503(stack: Stack, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    built = tmp_path / "built"
    (built / "assets").mkdir(parents=True)
    (built / "index.html").write_text("<!doctype html><title>metermesh</title>")
    (built / "assets" / "app-1234.js").write_text("console.log('hi')")
    (tmp_path / "secret.txt").write_text("outside")
    for static_dir, expect_built in ((empty, False), (built, True)):
        gw = await start_gateway(stack.platform, METERMESH_GATEWAY_STATIC_DIR=str(static_dir))
        async with httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False) as http:
            index = await http.get("/")
            if not expect_built:
                assert index.status_code == 503 and "dashboard is not built" in index.text
                assert (await http.get("/healthz")).json()["dashboard"] == "not built"
            else:
                assert index.status_code == 200 and "<title>metermesh</title>" in index.text
                js = await http.get("/assets/app-1234.js")
                assert js.status_code == 200 and "javascript" in js.headers["content-type"]
                assert (await http.get("/meters/GW-1")).text == index.text  # client-side route
                assert (await http.get("/assets/missing.js")).status_code == 404
                for sneaky in ("/%2e%2e/secret.txt", "/assets/%2e%2e/%2e%2e/secret.txt"):
                    r = await http.get(sneaky)
                    assert r.status_code == 404 and "outside" not in r.text, sneaky
        await gw.proc.stop()


# --- status details from upstream ----------------------------------------------------------------


class _DetailedBilling:
    """A stand-in BillingService whose QuoteBill fails with rich status details: no metermesh service
    sends grpc-status-details-bin yet, and the gateway must pass it through untouched."""

    STATUS = status_pb2.Status(
        code=grpc.StatusCode.FAILED_PRECONDITION.value[0],
        message="tariff 'x' has no version in effect on 2024-06-01",
        details=[
            any_pb2.Any(
                type_url="type.googleapis.com/google.rpc.PreconditionFailure",
                value=error_details_pb2.PreconditionFailure(
                    violations=[error_details_pb2.PreconditionFailure.Violation(type="TARIFF", subject="x")]
                ).SerializeToString(),
            )
        ],
    )

    async def quote(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            self.STATUS.message,
            trailing_metadata=(("grpc-status-details-bin", self.STATUS.SerializeToString()),),
        )
        raise AssertionError("unreachable")


async def test_status_details_pass_through_to_the_client(stack: Stack) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        BIL, {"QuoteBill": grpc.unary_unary_rpc_method_handler(_DetailedBilling().quote)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        gw = await start_gateway(stack.platform, METERMESH_BILLING_ADDR=f"127.0.0.1:{port}")
        node = NodeClient(stack.script, gw.url)
        res = await node.call(BIL, "QuoteBill", {"tariffId": "x"}, token=operator())
        assert res.code == grpc.StatusCode.FAILED_PRECONDITION
        assert res.message == _DetailedBilling.STATUS.message
        (detail,) = res.details
        assert detail["type"] == "google.rpc.PreconditionFailure"
        assert base64.b64decode(detail["value"]) == _DetailedBilling.STATUS.details[0].value
        async with httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False) as http:
            for text in (False, True):
                raw = await web_call(
                    http, f"{BIL}/QuoteBill", billing_pb2.QuoteBillRequest(), token=operator(), text=text
                )
                got = status_pb2.Status.FromString(base64.b64decode(raw.trailers["grpc-status-details-bin"]))
                assert got == _DetailedBilling.STATUS
        await gw.proc.stop()
    finally:
        await server.stop(None)


async def test_every_call_is_logged_with_its_status_and_subject(stack: Stack) -> None:
    await stack.node.call(ING, "GetMeter", {"meterId": "GW-2"}, token=consumer("GW-1"))
    deadline = time.monotonic() + 5
    log_path = stack.gateway.proc.log_path
    assert log_path is not None
    while time.monotonic() < deadline:
        text = log_path.read_text()
        if "GW-2" in text:
            break
        await asyncio.sleep(0.1)
    line = next(line for line in text.splitlines() if "'GW-2'" in line and "GetMeter" in line)
    assert (
        '"status": "PERMISSION_DENIED"' in line
        and '"subject": "bob"' in line
        and '"role": "consumer"' in line
    )


async def test_a_browsers_traceparent_continues_into_the_service(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    trace_id = secrets.token_hex(16)
    res = await web_call(
        http,
        f"{ING}/GetMeter",
        ingest_pb2.GetMeterRequest(meter_id="GW-3"),
        token=operator(),
        traceparent=f"00-{trace_id}-{secrets.token_hex(8)}-01",
    )
    assert res.code == grpc.StatusCode.OK
    ingest_log = next(p.log_path for p in stack.platform.procs if p.name == "ingest")
    assert ingest_log is not None

    async def logged() -> bool:
        return trace_id in ingest_log.read_text()

    await wait_for(
        logged, bool, timeout=10, what="the ingest service to log the call under the browser's trace"
    )
