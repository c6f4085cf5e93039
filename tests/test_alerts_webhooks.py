"""Webhook routing and posting (services/alerts/webhooks.py) without a network, and the alert
service's settings: who is notified of what, retries with backoff on failures worth retrying, none
on a refusal, and a bad webhook URL stopping the service at start with the variable's name."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import httpx
import pytest
from metermesh.anomaly.v1 import anomaly_pb2

from services.alerts import folding
from services.alerts.config import AlertsSettings
from services.alerts.folding import EventFacts
from services.alerts.webhooks import Rejected, WebhookRoutes, body_of, post
from services.anomaly.model import Kind, Severity
from services.common.config import load_settings

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def event(n: int, severity: Severity) -> EventFacts:
    return EventFacts(f"e{n}", "M-1", Kind.OUTAGE, severity, T0, T0, "0 V", b"")


def test_new_and_escalated_alerts_go_to_the_generic_url_and_to_their_severity_url() -> None:
    routes = WebhookRoutes("https://all.example/hook", {Severity.CRITICAL: "https://pager.example/hook"})
    created = folding.fold(None, [event(1, Severity.WARNING)], now=T0, new_alert_id=lambda: "a1")
    assert created is not None and routes.targets(created) == ["https://all.example/hook"]
    escalated = folding.fold(created.alert, [event(2, Severity.CRITICAL)], now=T0, new_alert_id=lambda: "a2")
    assert escalated is not None
    assert routes.targets(escalated) == ["https://pager.example/hook", "https://all.example/hook"]
    updated = folding.fold(escalated.alert, [event(3, Severity.INFO)], now=T0, new_alert_id=lambda: "a3")
    acked = folding.acknowledge(escalated.alert, "op", "", T0)
    assert updated is not None and acked is not None
    assert routes.targets(updated) == [] and routes.targets(acked) == []
    # One URL configured twice gets one post.
    same = WebhookRoutes("https://x.example/", {Severity.WARNING: "https://x.example/"})
    assert same.targets(created) == ["https://x.example/"] and same.urls == ["https://x.example/"]


def test_the_body_is_the_json_mapping_of_the_alert_update() -> None:
    payload = anomaly_pb2.AnomalyEvent(event_id="e1", meter_id="M-1").SerializeToString()
    change = folding.fold(
        None,
        [EventFacts("e1", "M-1", Kind.OUTAGE, Severity.CRITICAL, T0, T0, "0 V", payload)],
        now=T0,
        new_alert_id=lambda: "a1",
    )
    assert change is not None
    body = json.loads(body_of(change.numbered(42)))
    assert body["sequence"] == "42" and body["change_kind"] == "ALERT_CHANGE_KIND_CREATED"
    assert body["alert"]["alert_id"] == "a1" and body["alert"]["severity"] == "SEVERITY_CRITICAL"
    assert (
        body["alert"]["summary"] == "Outage on M-1 (0 V)" and body["alert"]["last_event"]["event_id"] == "e1"
    )


def client_answering(*statuses: int | Exception) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = statuses[min(len(seen), len(statuses)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle)), seen


async def post_with(client: httpx.AsyncClient, attempts: int = 4) -> None:
    await post(
        client,
        "https://hook.example/",
        b"{}",
        sequence=7,
        attempts=attempts,
        backoff_seconds=0.001,
        max_backoff_seconds=0.01,
    )


async def test_failures_worth_retrying_are_retried_with_backoff_until_delivered() -> None:
    client, seen = client_answering(500, httpx.ConnectError("refused"), 429, 204)
    await post_with(client)
    assert len(seen) == 4
    assert seen[0].headers["Idempotency-Key"] == "alert-change-7"
    assert seen[0].headers["Content-Type"] == "application/json"


async def test_a_post_that_hangs_is_cut_at_its_deadline_and_retried() -> None:
    calls = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        started = time.monotonic()
        await post(
            client,
            "https://hook.example/",
            b"{}",
            sequence=1,
            attempts=2,
            backoff_seconds=0.001,
            max_backoff_seconds=0.01,
            timeout_seconds=0.1,
        )
    assert calls == 2 and time.monotonic() - started < 2


async def test_retries_end_after_the_configured_attempts() -> None:
    client, seen = client_answering(503)
    with pytest.raises(Exception, match="503"):
        await post_with(client, attempts=3)
    assert len(seen) == 3


async def test_a_refusal_is_not_retried() -> None:
    client, seen = client_answering(404)
    with pytest.raises(Rejected, match="404"):
        await post_with(client)
    assert len(seen) == 1


def test_settings_defaults_and_a_bad_webhook_url_named_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/x")
    s = load_settings(AlertsSettings)
    assert s.alerts_addr == "127.0.0.1:50055" and s.alerts_auto_resolve_seconds == 3600
    assert s.webhooks_by_severity() == {}
    monkeypatch.setenv("METERMESH_ALERTS_WEBHOOK_CRITICAL", "https://pager.example/hook")
    assert load_settings(AlertsSettings).webhooks_by_severity() == {
        Severity.CRITICAL: "https://pager.example/hook"
    }
    monkeypatch.setenv("METERMESH_ALERTS_WEBHOOK_MAJOR", "ftp://nope")
    monkeypatch.setenv("METERMESH_ALERTS_HISTORY_RETENTION_DAYS", "2")
    with pytest.raises(SystemExit) as info:
        load_settings(AlertsSettings)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "METERMESH_ALERTS_WEBHOOK_MAJOR" in err and "ftp://nope" in err
    assert "METERMESH_ALERTS_HISTORY_RETENTION_DAYS" in err
