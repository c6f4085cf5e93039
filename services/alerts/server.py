"""Bootstrap of the alert service (metermesh.alerts.v1.AlertService): the gRPC server, the ANOMALIES
consumer, the change feed behind WatchAlerts, the auto-resolve sweep and the webhook senders."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time

import structlog
from metermesh.alerts.v1 import alerts_pb2

from services.alerts.config import AlertsSettings
from services.alerts.feed import ChangeFeed
from services.alerts.intake import AnomalyIntake
from services.alerts.servicer import AlertServicer
from services.alerts.store import AlertStore
from services.alerts.webhooks import WebhookRoutes, WebhookSender
from services.common import jetstream
from services.common.config import load_settings
from services.common.errors import is_transient
from services.common.server import Runtime, add_servicer, run_service

log = structlog.get_logger(__name__)

SERVICE = alerts_pb2.DESCRIPTOR.services_by_name["AlertService"]
SERVICE_NAME = SERVICE.full_name

# Pruning the history is a daily matter; once in this many seconds is plenty.
PRUNE_INTERVAL_SECONDS = 600.0


async def sweep(store: AlertStore, feed: ChangeFeed, settings: AlertsSettings) -> None:
    """Auto-resolves quiet alerts; now and then prunes the history and drops stale deliveries."""
    quiet = dt.timedelta(seconds=settings.alerts_auto_resolve_seconds)
    retention = dt.timedelta(days=settings.alerts_history_retention_days)
    max_age = dt.timedelta(seconds=settings.alerts_webhook_max_age_seconds)
    next_prune = 0.0
    while True:
        try:
            while changes := await store.auto_resolve(quiet):
                feed.wake()
                for c in changes:
                    log.info(
                        "alert resolved automatically",
                        alert_id=c.alert.alert_id,
                        meter_id=c.alert.meter_id,
                        kind=c.alert.kind.name,
                        sequence=c.sequence,
                    )
            if time.monotonic() >= next_prune:
                pruned = await store.prune(retention)
                dropped = await store.drop_stale_deliveries(max_age)
                if pruned or dropped:
                    log.info(
                        "history pruned", changes_deleted=pruned, stale_webhook_deliveries_dropped=dropped
                    )
                if dropped:
                    log.error("webhook notifications not delivered in time were dropped", count=dropped)
                next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("sweep failed; will retry", error=repr(exc))
        await asyncio.sleep(settings.alerts_sweep_interval_seconds)


async def serve(settings: AlertsSettings) -> None:
    servicer: AlertServicer | None = None
    routes = WebhookRoutes(settings.alerts_webhook_url, settings.webhooks_by_severity())

    def register(rt: Runtime) -> None:
        nonlocal servicer
        servicer = AlertServicer(rt, settings)
        add_servicer(rt.server, SERVICE, servicer)

    async def on_ready(rt: Runtime) -> None:
        assert servicer is not None and rt.pool is not None and rt.js is not None
        store = AlertStore(rt.pool, webhook_targets=routes.targets)
        feed = ChangeFeed(
            store,
            settings.database_url,
            queue_size=settings.alerts_watch_queue_size,
            poll_seconds=settings.alerts_watch_poll_seconds,
        )
        await feed.start()
        rt.spawn(feed.run(), "alerts-change-feed")

        sender: WebhookSender | None = None
        if routes.urls:
            sender = WebhookSender(
                store,
                routes,
                timeout_seconds=settings.alerts_webhook_timeout_seconds,
                attempts=settings.alerts_webhook_attempts,
                backoff_seconds=settings.alerts_webhook_backoff_seconds,
                max_backoff_seconds=settings.alerts_webhook_max_backoff_seconds,
            )
            rt.spawn(sender.run(), "alerts-webhooks")
            log.info("webhooks configured", urls=len(routes.urls))

        def committed() -> None:
            feed.wake()
            if sender is not None:
                sender.wake()

        intake = AnomalyIntake(store, on_commit=committed)
        spec = rt.topology.alerts_consumer
        worker = jetstream.PullWorker(
            js=rt.js,
            spec=spec,
            handler=intake.handle,
            dead_letter_subject=rt.topology.dead_letter_subject(spec.stream, spec.durable),
            batch_size=settings.alerts_fetch_batch,
        )
        consumer = rt.spawn(worker.run(), "alerts-consumer")
        rt.spawn(sweep(store, feed, settings), "alerts-sweep")

        async def end_watches_on_stop() -> None:
            # Watches never end by themselves: end them when the stop begins, telling each client
            # where to resume (UNAVAILABLE, retried against another replica or this one restarted),
            # instead of holding the stop for the whole grace period.
            await rt.stopping.wait()
            feed.close()

        rt.spawn(end_watches_on_stop(), "alerts-end-watches")
        servicer.start(store, feed)

        async def finish_batch() -> None:
            # Let the batch in hand commit and be acked, rather than cancel it.
            worker.stop()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(consumer), timeout=settings.shutdown_grace_seconds)

        rt.stop_hooks.append(finish_batch)

    await run_service(
        name="alerts",
        settings=settings,
        listen_addr=settings.alerts_addr,
        service_names=[SERVICE_NAME],
        reflection_names=[SERVICE_NAME],
        register=register,
        on_ready=on_ready,
    )


def main() -> None:
    asyncio.run(serve(load_settings(AlertsSettings)))
