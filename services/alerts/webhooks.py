"""Webhook notifications of new and escalated alerts.

Routing: METERMESH_ALERTS_WEBHOOK_URL receives every CREATED and ESCALATED change; the per-severity
URLs (METERMESH_ALERTS_WEBHOOK_INFO, _WARNING, _MAJOR, _CRITICAL) receive those whose alert has exactly
that severity after the change (so an escalation to CRITICAL reaches the critical URL). A change is
posted once to each distinct URL it routes to.

Delivery: the store writes one outbox row per (change, URL) in the transaction that commits the change,
so a notification survives a crash. One sender task per URL leases the oldest due row, POSTs the
change as JSON (the protobuf JSON mapping of AlertUpdate) with a timeout and retries with exponential
backoff (tenacity), and deletes the row once delivered. A row whose retries are spent is tried again
after a pause of that URL's sender; one the receiver rejects (4xx other than 408/429) is dropped; rows
older than the maximum age are dropped by the sweep. Alerting never waits for any of it, a dead URL
holds back only its own rows, and the rows live in PostgreSQL, not in memory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field

import httpx
import structlog
import tenacity
from google.protobuf import json_format

from services.alerts import convert
from services.alerts.folding import Change, ChangeKind
from services.alerts.store import AlertStore, Delivery
from services.anomaly.model import Severity
from services.common.errors import is_transient

log = structlog.get_logger(__name__)

NOTIFIED = (ChangeKind.CREATED, ChangeKind.ESCALATED)


@dataclass(frozen=True)
class WebhookRoutes:
    all_url: str = ""
    by_severity: Mapping[Severity, str] = field(default_factory=dict)

    def targets(self, change: Change) -> list[str]:
        if change.kind not in NOTIFIED:
            return []
        urls = [self.by_severity.get(change.alert.severity, ""), self.all_url]
        return list(dict.fromkeys(u for u in urls if u))

    @property
    def urls(self) -> list[str]:
        return list(dict.fromkeys(u for u in (self.all_url, *self.by_severity.values()) if u))


def body_of(change: Change) -> bytes:
    update = convert.update_to_proto(change)
    return json.dumps(json_format.MessageToDict(update, preserving_proto_field_name=True)).encode()


class Rejected(Exception):
    """The receiver refused the notification for good (a 4xx): retrying cannot help."""


class Failed(Exception):
    """A failure worth retrying: 5xx, 408, 429."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (Failed, httpx.TransportError, TimeoutError))


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    *,
    sequence: int,
    attempts: int,
    backoff_seconds: float,
    max_backoff_seconds: float,
    timeout_seconds: float = 5.0,
) -> None:
    """POSTs with retries and exponential backoff, each POST within timeout_seconds overall (httpx's
    own timeout applies per phase: connect, write, read). Raises Rejected, or the last error."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "metermesh-alerts",
        # Delivery is at least once: a receiver can drop repeats by this key.
        "Idempotency-Key": f"alert-change-{sequence}",
    }
    async for attempt in tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=backoff_seconds, max=max_backoff_seconds),
        retry=tenacity.retry_if_exception(_retryable),
        reraise=True,
    ):
        with attempt:
            async with asyncio.timeout(timeout_seconds):
                resp = await client.post(url, content=body, headers=headers)
            if resp.status_code >= 500 or resp.status_code in (408, 429):
                raise Failed(f"{url} answered {resp.status_code}")
            if resp.status_code >= 400:
                raise Rejected(f"{url} answered {resp.status_code}: {resp.text[:200]}")


@dataclass
class WebhookSender:
    store: AlertStore
    routes: WebhookRoutes
    timeout_seconds: float = 5.0
    attempts: int = 5
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    poll_seconds: float = 5.0
    _wake: dict[str, asyncio.Event] = field(default_factory=dict)

    @property
    def lease(self) -> dt.timedelta:
        """Longer than one delivery round can take (every POST at its deadline, every wait at its
        cap), so no two senders post one row at once; also how long a killed sender's row waits."""
        per_try = self.timeout_seconds + self.max_backoff_seconds
        return dt.timedelta(seconds=self.attempts * per_try + 5)

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    async def run(self) -> None:
        # httpx logs every request at INFO; the sender logs each delivery with its alert instead.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:
            async with asyncio.TaskGroup() as tg:
                for url in self.routes.urls:
                    self._wake[url] = asyncio.Event()
                    tg.create_task(self._run_url(client, url))

    async def _run_url(self, client: httpx.AsyncClient, url: str) -> None:
        wake = self._wake[url]
        while True:
            wake.clear()
            try:
                delivery = await self.store.claim_delivery(url, self.lease)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("webhook outbox unreachable; retrying", error=repr(exc))
                delivery = None
            if delivery is None:
                try:
                    await asyncio.wait_for(wake.wait(), self.poll_seconds)
                except TimeoutError:
                    pass
                continue
            if not await self._deliver(client, delivery):
                # The receiver is down: give it a rest before its next row rather than spend a full
                # round of retries on every row in turn.
                await asyncio.sleep(self.max_backoff_seconds)

    async def _deliver(self, client: httpx.AsyncClient, d: Delivery) -> bool:
        """Posts one delivery; False when the receiver could not be reached (it is tried again later)."""
        fields = {
            "url": d.url,
            "sequence": d.change.sequence,
            "alert_id": d.change.alert.alert_id,
            "meter_id": d.change.alert.meter_id,
            "change_kind": d.change.kind.name,
        }
        try:
            await post(
                client,
                d.url,
                body_of(d.change),
                sequence=d.change.sequence,
                attempts=self.attempts,
                backoff_seconds=self.backoff_seconds,
                max_backoff_seconds=self.max_backoff_seconds,
                timeout_seconds=self.timeout_seconds,
            )
        except Rejected as exc:
            log.error("webhook rejected the notification; dropped", error=str(exc), **fields)
            await self._settle(self.store.finish_delivery(d.delivery_id))
        except (Failed, httpx.HTTPError, TimeoutError) as exc:
            # Spent its retries: leave the row for a later round (oldest first, after a pause), so a
            # receiver that comes back within the maximum age still gets everything, in order.
            log.warning(
                "webhook unreachable; will try again later", error=repr(exc), rounds=d.attempts, **fields
            )
            await self._settle(
                self.store.postpone_delivery(d.delivery_id, dt.timedelta(seconds=self.max_backoff_seconds))
            )
            return False
        else:
            log.info("webhook delivered", **fields)
            await self._settle(self.store.finish_delivery(d.delivery_id))
        return True

    @staticmethod
    async def _settle(op: Awaitable[None]) -> None:
        """Records the outcome; if PostgreSQL is away the lease runs out and the row is tried again
        (at least once, the Idempotency-Key lets receivers drop repeats)."""
        try:
            await op
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("could not record the webhook outcome", error=repr(exc))
