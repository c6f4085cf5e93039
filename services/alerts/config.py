"""Settings of the alert service (env METERMESH_*)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from services.anomaly.model import Severity
from services.common.config import CommonSettings


class AlertsSettings(CommonSettings):
    alerts_addr: str = "127.0.0.1:50055"
    # ANOMALIES messages fetched, and folded in one transaction, at a time. Larger batches amortise the
    # fetch and the commit (about 5,000 events/s at 256 against 3,000 at 64, one alert per event) and
    # fold more events of an alert into one change; a batch holds the write lock for ~25 ms.
    alerts_fetch_batch: int = Field(default=256, ge=1, le=1000)
    # An active alert into which no event has been folded for this long is resolved by "metermesh".
    alerts_auto_resolve_seconds: float = Field(default=3600.0, gt=0)
    # How often the auto-resolve sweep runs (it also prunes the history and stale webhook deliveries).
    alerts_sweep_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    # How long the change history (the WatchAlerts resume window) and the folded event ids are kept.
    # The contract promises at least 7 days; JetStream keeps an event at most 7 days, so no event id
    # older than that can be redelivered.
    alerts_history_retention_days: float = Field(default=8.0, ge=7)
    # Changes queued per watcher before it is switched to catching up from the history table.
    alerts_watch_queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    # The change feed reads the history this often even without a notification (a safety net).
    alerts_watch_poll_seconds: float = Field(default=5.0, gt=0, le=300)
    # Webhooks (see services/alerts/webhooks.py): one URL for every new or escalated alert, and one per
    # severity for alerts of exactly that severity. Empty: none.
    alerts_webhook_url: str = ""
    alerts_webhook_info: str = ""
    alerts_webhook_warning: str = ""
    alerts_webhook_major: str = ""
    alerts_webhook_critical: str = ""
    # One POST may take this long (connect, send, answer).
    alerts_webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # POSTs per delivery round, with exponential backoff from backoff_seconds, capped at max_backoff.
    alerts_webhook_attempts: int = Field(default=5, ge=1, le=20)
    alerts_webhook_backoff_seconds: float = Field(default=0.5, gt=0, le=60)
    alerts_webhook_max_backoff_seconds: float = Field(default=30.0, gt=0, le=600)
    # A notification not delivered within this long is dropped (logged): stale news, and the bound on
    # what a dead webhook leaves behind.
    alerts_webhook_max_age_seconds: float = Field(default=3600.0, gt=0)

    @field_validator(
        "alerts_webhook_url",
        "alerts_webhook_info",
        "alerts_webhook_warning",
        "alerts_webhook_major",
        "alerts_webhook_critical",
    )
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL, or empty")
        return value

    def webhooks_by_severity(self) -> dict[Severity, str]:
        urls = {
            Severity.INFO: self.alerts_webhook_info,
            Severity.WARNING: self.alerts_webhook_warning,
            Severity.MAJOR: self.alerts_webhook_major,
            Severity.CRITICAL: self.alerts_webhook_critical,
        }
        return {s: u for s, u in urls.items() if u}
