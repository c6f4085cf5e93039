"""The gateway's parts on their own: gRPC-web framing, grpc-timeout, tokens, the rate limiter, the
settings, and the per-method policy table against the contracts."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time

import grpc
import jwt
import pytest
from metermesh.alerts.v1 import alerts_pb2
from metermesh.anomaly.v1 import anomaly_pb2
from metermesh.billing.v1 import billing_pb2
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2
from pydantic import ValidationError

from gateway.auth import Authenticator, Principal, Role, issue_token
from gateway.config import GatewaySettings
from gateway.grpcweb import (
    GrpcError,
    decode_text,
    frame,
    parse_request,
    parse_timeout,
    parse_trailers,
    percent_decode,
    percent_encode,
    trailer_block,
    wire_format,
)
from gateway.limits import RateLimiter, upstream_timeout
from gateway.policy import POLICY, Access, Unnamed, authorize, check_response
from gateway.upstream import load_methods

SECRET = "s" * 48


def settings(**kw: object) -> GatewaySettings:
    return GatewaySettings(jwt_secret=SECRET, **kw)  # type: ignore[arg-type]


# --- framing --------------------------------------------------------------------------------------


def test_content_types_of_the_spec_are_recognised_and_others_refused() -> None:
    assert wire_format("application/grpc-web") == wire_format("application/grpc-web+proto")
    assert not wire_format("application/grpc-web+proto").text_request  # type: ignore[union-attr]
    text = wire_format("application/grpc-web-text; charset=utf-8")
    assert text is not None and text.text_request and text.text_response
    assert text.response_content_type == "application/grpc-web-text+proto"
    asked = wire_format("application/grpc-web", accept="application/grpc-web-text")
    assert asked is not None and not asked.text_request and asked.text_response
    assert wire_format("application/grpc-web+json") is None
    assert wire_format("application/json") is None


def test_text_bodies_may_carry_padded_chunks_back_to_back() -> None:
    a, b = frame(b"xy"), frame(b"hello")
    chunked = base64.b64encode(a) + b"\r\n" + base64.b64encode(b)
    assert b"=" in base64.b64encode(a)  # the first chunk really is padded
    assert decode_text(chunked) == a + b
    assert decode_text(base64.b64encode(a + b)) == a + b


def test_a_request_is_exactly_one_uncompressed_message_within_the_size_limit() -> None:
    msg = ingest_pb2.GetMeterRequest(meter_id="M-1").SerializeToString()
    assert parse_request(frame(msg), text=False, max_message_bytes=100) == msg
    assert parse_request(base64.b64encode(frame(msg)), text=True, max_message_bytes=100) == msg
    assert parse_request(b"", text=False, max_message_bytes=100) == b""

    def code(body: bytes, text: bool = False, limit: int = 100) -> grpc.StatusCode:
        with pytest.raises(GrpcError) as err:
            parse_request(body, text=text, max_message_bytes=limit)
        return err.value.code

    assert code(frame(msg) + frame(msg)) == grpc.StatusCode.UNIMPLEMENTED
    assert code(frame(msg, flags=1)) == grpc.StatusCode.UNIMPLEMENTED
    assert code(frame(msg)[:-1]) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(b"\x00\x00") == grpc.StatusCode.INVALID_ARGUMENT
    assert code(b"not base64!", text=True) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(frame(b"x" * 101)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_trailers_are_an_http1_block_with_percent_encoded_message_and_base64_binary_values() -> None:
    block = trailer_block(
        grpc.StatusCode.INVALID_ARGUMENT,
        "50% of 'M-1' readings: ünits\r\nbad",
        details_bin=b"\x00\r\n\xff",
        metadata=[("x-custom", "v"), ("x-trace-bin", b"\x01\x02"), ("grpc-status", "0")],
    )
    assert block.endswith(b"\r\n") and b"\r\n\r\n" not in block
    t = parse_trailers(block)
    assert t["grpc-status"] == "3"
    assert percent_decode(t["grpc-message"]) == "50% of 'M-1' readings: ünits\r\nbad"
    assert base64.b64decode(t["grpc-status-details-bin"]) == b"\x00\r\n\xff"
    assert t["x-custom"] == "v" and base64.b64decode(t["x-trace-bin"]) == b"\x01\x02"
    assert percent_encode("plain ASCII stays") == "plain ASCII stays"
    assert parse_trailers(trailer_block(grpc.StatusCode.OK)) == {"grpc-status": "0"}


def test_grpc_timeout_units_and_caps() -> None:
    assert parse_timeout("100m") == pytest.approx(0.1)
    assert parse_timeout("5S") == 5 and parse_timeout("2M") == 120 and parse_timeout("1H") == 3600
    assert parse_timeout("250u") == pytest.approx(250e-6) and parse_timeout("7n") == pytest.approx(7e-9)
    for bad in ("", "1", "123456789S", "1.5S", "-1S", "10x"):
        with pytest.raises(GrpcError):
            parse_timeout(bad)
    kw = {"default": 30.0, "cap": 300.0, "stream_cap": 3600.0}
    assert upstream_timeout(None, streaming=False, **kw) == 30
    assert upstream_timeout("10S", streaming=False, **kw) == 10
    assert upstream_timeout("1H", streaming=False, **kw) == 300  # capped
    assert upstream_timeout(None, streaming=True, **kw) == 3600
    assert upstream_timeout("2H", streaming=True, **kw) == 3600


# --- tokens ---------------------------------------------------------------------------------------


def test_tokens_verify_into_principals_and_bad_ones_say_why() -> None:
    auth = Authenticator(SECRET, leeway_seconds=0)
    t = issue_token(SECRET, role="consumer", subject="bob", meters=["M-2", "M-1"])
    p = auth.authenticate(f"Bearer {t}")
    assert p == Principal("bob", Role.CONSUMER, frozenset({"M-1", "M-2"}), p.expires)
    assert auth.authenticate(f"bearer  {t}") is p  # cached

    def why(header: str | None) -> str:
        with pytest.raises(GrpcError) as err:
            auth.authenticate(header)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        return err.value.message

    assert "missing bearer token" in why(None)
    assert "'Bearer <JWT>'" in why(f"Basic {t}")
    assert "expired at" in why("Bearer " + issue_token(SECRET, role="operator", subject="a", ttl_seconds=-60))
    assert "not issued for this gateway" in why(
        "Bearer " + issue_token("o" * 48, role="operator", subject="a")
    )
    assert "not a valid JWT" in why("Bearer abc.def")
    no_role = jwt.encode({"sub": "a", "exp": time.time() + 60}, SECRET, algorithm="HS256")
    assert "'role'" in why(f"Bearer {no_role}")
    bad_role = jwt.encode({"sub": "a", "role": "admin", "exp": time.time() + 60}, SECRET, algorithm="HS256")
    assert "neither 'operator' nor 'consumer'" in why(f"Bearer {bad_role}")
    none_alg = jwt.encode({"sub": "a", "role": "operator", "exp": time.time() + 60}, None, algorithm="none")
    assert "HS256" in why(f"Bearer {none_alg}") or "not issued" in why(f"Bearer {none_alg}")
    bad_meters = jwt.encode(
        {"sub": "a", "role": "consumer", "meters": "M-1", "exp": time.time() + 60}, SECRET, algorithm="HS256"
    )
    assert "'meters'" in why(f"Bearer {bad_meters}")


def test_a_cached_token_still_expires() -> None:
    auth = Authenticator(SECRET, leeway_seconds=0)
    t = issue_token(SECRET, role="operator", subject="a", ttl_seconds=1)
    auth.authenticate(f"Bearer {t}")
    time.sleep(2.1)
    with pytest.raises(GrpcError, match="expired"):
        auth.authenticate(f"Bearer {t}")


def test_metermesh_token_prints_a_token_signed_with_the_env_secret(tmp_path: object) -> None:
    env = {**os.environ, "METERMESH_GATEWAY_JWT_SECRET": SECRET}
    cmd = [sys.executable, "-m", "services", "token", "--role", "consumer", "--subject", "bob"]
    out = subprocess.run(
        [*cmd, "--meter", "M-1", "--meter", "M-2", "--hours", "2"], env=env, capture_output=True
    )
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.decode().strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bob" and claims["role"] == "consumer" and claims["meters"] == ["M-1", "M-2"]
    assert 2 * 3600 - 60 < claims["exp"] - time.time() <= 2 * 3600
    refused = subprocess.run(cmd, env=env, capture_output=True)  # a consumer without meters
    assert refused.returncode == 2 and b"--meter" in refused.stderr
    env.pop("METERMESH_GATEWAY_JWT_SECRET")
    none = subprocess.run(
        [*cmd, "--meter", "M-1", "--data-dir", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert none.returncode == 2 and "METERMESH_GATEWAY_JWT_SECRET" in none.stderr


# --- limits and settings --------------------------------------------------------------------------


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    rl = RateLimiter(rate_per_second=10, burst=3)
    assert [rl.take("a", now=100.0) for _ in range(3)] == [0, 0, 0]
    assert rl.take("a", now=100.0) == pytest.approx(0.1)
    assert rl.take("b", now=100.0) == 0  # per key
    assert rl.take("a", now=100.15) == 0  # refilled one token
    assert rl.take("a", now=100.15) > 0
    with pytest.raises(GrpcError) as err:
        rl.check("a")
        for _ in range(5):
            rl.check("a")
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "10 calls/s" in err.value.message
    assert RateLimiter(0, 1).take("x") == 0  # off


def test_settings_refuse_a_short_secret_and_bad_origins() -> None:
    assert settings(cors_origins="http://a.example, https://b.example:8443").cors_origins == [
        "http://a.example",
        "https://b.example:8443",
    ]
    with pytest.raises(ValidationError):
        GatewaySettings(jwt_secret="short")  # type: ignore[arg-type]
    for bad in ("*", "a.example", "https://a.example/"):
        with pytest.raises(ValidationError):
            settings(cors_origins=bad)


def test_the_gateway_refuses_to_start_without_a_secret_and_does_not_echo_it() -> None:
    env = {k: v for k, v in os.environ.items() if k != "METERMESH_GATEWAY_JWT_SECRET"}
    out = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and "METERMESH_GATEWAY_JWT_SECRET is unset" in out.stderr
    env["METERMESH_GATEWAY_JWT_SECRET"] = "tooshort-but-secret"
    out = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and "at least 32" in out.stderr and "tooshort-but-secret" not in out.stderr


# --- the policy table -----------------------------------------------------------------------------


def test_every_method_of_the_contracts_has_an_explicit_policy() -> None:
    methods = load_methods(settings())
    names = {m.name for m in methods.values()}
    assert set(POLICY) == names, "add new RPCs to gateway/policy.py POLICY (read or write)"
    for m in methods.values():
        rule = m.rule
        assert rule is not None
        for path in rule.meters:  # every path names real fields
            msg = m.input()
            for part in path.split(".")[:-1]:
                field = msg.DESCRIPTOR.fields_by_name[part]
                msg = field.message_type._concrete_class()
            assert path.split(".")[-1] in msg.DESCRIPTOR.fields_by_name
        if rule.subject_field:
            assert rule.subject_field in m.input.DESCRIPTOR.fields_by_name
    writes = {n.split("/")[1] for n, r in POLICY.items() if r.access is Access.WRITE}
    assert writes == {
        "PushReadings",
        "StreamReadings",
        "RegisterMeter",
        "TrainDetector",
        "TrainForecaster",
        "ComputeBill",
        "RunBillingCycle",
        "AcknowledgeAlert",
        "ResolveAlert",
    }


OP = Principal("olga", Role.OPERATOR, frozenset(), time.time() + 60)
BOB = Principal("bob", Role.CONSUMER, frozenset({"M-1", "M-2"}), time.time() + 60)
NOBODY = Principal("nobody", Role.CONSUMER, frozenset(), time.time() + 60)


def decide(method: str, principal: Principal, msg: object) -> object:
    m = load_methods(settings())["/" + method]
    return authorize(m.name, m.rule, m.input, principal, msg.SerializeToString())  # type: ignore[attr-defined]


def denied(method: str, principal: Principal, msg: object) -> str:
    with pytest.raises(GrpcError) as err:
        decide(method, principal, msg)
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    return err.value.message


ING = "metermesh.ingest.v1.IngestService"
ALR = "metermesh.alerts.v1.AlertService"


def test_operators_pass_untouched_except_who_acknowledges() -> None:
    req = ingest_pb2.PushReadingsRequest(readings=[common_pb2.Reading(meter_id="X")])
    assert decide(f"{ING}/PushReadings", OP, req).request == req.SerializeToString()  # type: ignore[attr-defined]
    ack = decide(
        f"{ALR}/AcknowledgeAlert", OP, alerts_pb2.AcknowledgeAlertRequest(alert_id="a", acknowledged_by="x")
    )
    assert alerts_pb2.AcknowledgeAlertRequest.FromString(ack.request).acknowledged_by == "olga"  # type: ignore[attr-defined]


def test_consumers_read_only_their_meters_and_never_write() -> None:
    assert decide(f"{ING}/GetMeter", BOB, ingest_pb2.GetMeterRequest(meter_id="M-1"))
    assert "'M-3'" in denied(f"{ING}/GetMeter", BOB, ingest_pb2.GetMeterRequest(meter_id="M-3"))
    assert "must name one of its meters" in denied(f"{ING}/GetReadings", BOB, ingest_pb2.GetReadingsRequest())
    assert "only read" in denied(f"{ING}/RegisterMeter", BOB, ingest_pb2.RegisterMeterRequest())
    assert "only read" in denied(f"{ALR}/AcknowledgeAlert", BOB, alerts_pb2.AcknowledgeAlertRequest())
    assert "fleet-wide" in denied(
        "metermesh.anomaly.v1.AnomalyService/ListDetectorModels", BOB, anomaly_pb2.ListDetectorModelsRequest()
    )
    inline = anomaly_pb2.DetectAnomaliesRequest(
        inline_readings=anomaly_pb2.InlineReadings(
            readings=[common_pb2.Reading(meter_id="M-1"), common_pb2.Reading(meter_id="M-9")]
        )
    )
    assert "'M-9'" in denied("metermesh.anomaly.v1.AnomalyService/DetectAnomalies", BOB, inline)
    assert decide("metermesh.billing.v1.BillingService/QuoteBill", BOB, billing_pb2.QuoteBillRequest())


def test_a_consumers_alert_filter_is_narrowed_to_its_meters_or_checked() -> None:
    d = decide(f"{ALR}/WatchAlerts", BOB, alerts_pb2.WatchAlertsRequest())
    narrowed = alerts_pb2.WatchAlertsRequest.FromString(d.request)  # type: ignore[attr-defined]
    assert list(narrowed.filter.meter_ids) == ["M-1", "M-2"]
    f = alerts_pb2.AlertFilter(meter_ids=["M-2"], kinds=[anomaly_pb2.ANOMALY_KIND_VOLTAGE_SURGE])
    d = decide(f"{ALR}/ListAlerts", BOB, alerts_pb2.ListAlertsRequest(filter=f))
    assert alerts_pb2.ListAlertsRequest.FromString(d.request).filter == f  # type: ignore[attr-defined]
    assert "'M-3'" in denied(
        f"{ALR}/ListAlerts",
        BOB,
        alerts_pb2.ListAlertsRequest(filter=alerts_pb2.AlertFilter(meter_ids=["M-3"])),
    )
    assert "no meters" in denied(f"{ALR}/WatchAlerts", NOBODY, alerts_pb2.WatchAlertsRequest())


def test_answers_about_other_meters_are_dropped_or_refused() -> None:
    listing = alerts_pb2.ListAlertsResponse(
        alerts=[alerts_pb2.Alert(alert_id=str(i), meter_id=m) for i, m in enumerate(["M-1", "M-3", "M-2"])]
    )
    kept = alerts_pb2.ListAlertsResponse.FromString(
        check_response(  # type: ignore[arg-type]
            alerts_pb2.ListAlertsResponse, listing.SerializeToString(), "alerts.meter_id", BOB, stream=False
        )
    )
    assert [a.meter_id for a in kept.alerts] == ["M-1", "M-2"]
    foreign = billing_pb2.GetBillResponse(bill=billing_pb2.Bill(meter_id="M-3")).SerializeToString()
    with pytest.raises(GrpcError) as err:
        check_response(billing_pb2.GetBillResponse, foreign, "bill.meter_id", BOB, stream=False)
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    update = alerts_pb2.WatchAlertsResponse(
        update=alerts_pb2.AlertUpdate(alert=alerts_pb2.Alert(meter_id="M-3"))
    )
    path = "update.alert.meter_id"
    assert (
        check_response(alerts_pb2.WatchAlertsResponse, update.SerializeToString(), path, BOB, stream=True)
        is None
    )
    own = billing_pb2.GetBillResponse(bill=billing_pb2.Bill(meter_id="M-1")).SerializeToString()
    assert check_response(billing_pb2.GetBillResponse, own, "bill.meter_id", BOB, stream=False) == own


def test_unnamed_modes_are_consistent() -> None:
    for name, rule in POLICY.items():
        if rule.unnamed is Unnamed.NARROW:
            assert rule.narrow in rule.meters, name
        if rule.access is Access.WRITE:
            assert not rule.meters, name
