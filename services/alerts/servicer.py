"""AlertService: translates protobuf calls into the alert store and the change feed."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator

import grpc
import structlog
from metermesh.alerts.v1 import alerts_pb2, alerts_pb2_grpc

from services.alerts import convert
from services.alerts.config import AlertsSettings
from services.alerts.feed import ChangeFeed, FeedClosed
from services.alerts.folding import AlertFilter, AlertIsResolved
from services.alerts.store import AlertNotFound, AlertStore, HistoryGone
from services.common.server import Runtime

log = structlog.get_logger(__name__)

MAX_NOTE = 1000
MAX_ACTOR = 256
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _page_token(f: AlertFilter, create_time: dt.datetime, alert_id: str) -> str:
    micros = (create_time - _EPOCH) // dt.timedelta(microseconds=1)
    raw = json.dumps({"f": f.fingerprint(), "t": micros, "a": alert_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _page_position(token: str, f: AlertFilter) -> tuple[dt.datetime, str]:
    """Raises convert.BadArgument naming the token."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position = (_EPOCH + dt.timedelta(microseconds=int(raw["t"])), str(raw["a"]))
        fingerprint = raw["f"]
    except Exception:
        raise convert.BadArgument(f"page_token {token!r} is not a token ListAlerts returned") from None
    if fingerprint != f.fingerprint():
        raise convert.BadArgument(
            f"page_token {token!r} was returned for another filter; keep the filter the same while paging"
        )
    return position


class AlertServicer(alerts_pb2_grpc.AlertServiceServicer):
    def __init__(self, rt: Runtime, settings: AlertsSettings) -> None:
        self.rt = rt
        self.settings = settings
        self.store: AlertStore | None = None
        self.feed: ChangeFeed | None = None

    def start(self, store: AlertStore, feed: ChangeFeed) -> None:
        self.store = store
        self.feed = feed

    async def _ready(self, context: grpc.aio.ServicerContext) -> tuple[AlertStore, ChangeFeed]:
        if not self.rt.ready.is_set() or self.store is None or self.feed is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "alerts is starting: waiting for NATS and PostgreSQL"
            )
        assert self.store is not None and self.feed is not None
        return self.store, self.feed

    @staticmethod
    async def _filter(f: alerts_pb2.AlertFilter, context: grpc.aio.ServicerContext) -> AlertFilter:
        try:
            return convert.filter_from_proto(f)
        except convert.BadArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("unreachable")

    @staticmethod
    async def _check_call(
        context: grpc.aio.ServicerContext, alert_id: str, who_field: str, who: str, note: str
    ) -> None:
        if not alert_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "alert_id is empty; give the id of an alert"
            )
        if len(alert_id) > MAX_ACTOR:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"alert_id {alert_id[:40]!r}... is too long to be an alert id",
            )
        if not who.strip():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{who_field} is {who!r}; give the id of the user making the change",
            )
        if len(who) > MAX_ACTOR:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{who_field} is {len(who)} characters long; at most {MAX_ACTOR} are allowed",
            )
        if len(note) > MAX_NOTE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"note is {len(note)} characters long; at most {MAX_NOTE} are allowed",
            )

    async def ListAlerts(
        self, request: alerts_pb2.ListAlertsRequest, context: grpc.aio.ServicerContext
    ) -> alerts_pb2.ListAlertsResponse:
        store, _ = await self._ready(context)
        size = request.page_size or 100
        if not 1 <= size <= 1000:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"page_size is {size}; must be within 1-1000 (0 means 100)"
            )
        f = await self._filter(request.filter, context)
        after = None
        if request.page_token:
            try:
                after = _page_position(request.page_token, f)
            except convert.BadArgument as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        alerts, sequence = await store.list_alerts(f, after=after, limit=size + 1)
        page = alerts[:size]
        token = _page_token(f, page[-1].create_time, page[-1].alert_id) if len(alerts) > size else ""
        return alerts_pb2.ListAlertsResponse(
            alerts=[convert.alert_to_proto(a) for a in page], next_page_token=token, sequence=sequence
        )

    async def GetAlert(
        self, request: alerts_pb2.GetAlertRequest, context: grpc.aio.ServicerContext
    ) -> alerts_pb2.GetAlertResponse:
        store, _ = await self._ready(context)
        if not request.alert_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "alert_id is empty; give the id of an alert"
            )
        alert = await store.get(request.alert_id)
        if alert is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"alert_id {request.alert_id!r} does not exist")
        assert alert is not None
        return alerts_pb2.GetAlertResponse(alert=convert.alert_to_proto(alert))

    async def AcknowledgeAlert(
        self, request: alerts_pb2.AcknowledgeAlertRequest, context: grpc.aio.ServicerContext
    ) -> alerts_pb2.AcknowledgeAlertResponse:
        store, feed = await self._ready(context)
        await self._check_call(
            context, request.alert_id, "acknowledged_by", request.acknowledged_by, request.note
        )
        try:
            alert, change = await store.acknowledge(
                request.alert_id, request.acknowledged_by.strip(), request.note
            )
        except AlertNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except AlertIsResolved as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        if change is not None:
            feed.wake()
            log.info(
                "alert acknowledged",
                alert_id=alert.alert_id,
                meter_id=alert.meter_id,
                by=alert.acknowledged_by,
            )
        return alerts_pb2.AcknowledgeAlertResponse(alert=convert.alert_to_proto(alert))

    async def ResolveAlert(
        self, request: alerts_pb2.ResolveAlertRequest, context: grpc.aio.ServicerContext
    ) -> alerts_pb2.ResolveAlertResponse:
        store, feed = await self._ready(context)
        await self._check_call(context, request.alert_id, "resolved_by", request.resolved_by, request.note)
        try:
            alert, change = await store.resolve(request.alert_id, request.resolved_by.strip(), request.note)
        except AlertNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if change is not None:
            feed.wake()
            log.info("alert resolved", alert_id=alert.alert_id, meter_id=alert.meter_id, by=alert.resolved_by)
        return alerts_pb2.ResolveAlertResponse(alert=convert.alert_to_proto(alert))

    async def WatchAlerts(
        self, request: alerts_pb2.WatchAlertsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[alerts_pb2.WatchAlertsResponse]:
        _, feed = await self._ready(context)
        f = await self._filter(request.filter, context)
        after = request.after_sequence if request.HasField("after_sequence") else None
        if after is not None and after < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"after_sequence is {after}; give the sequence of the last change seen (>= 0), or leave it unset",
            )
        try:
            async for change in feed.watch(f, after):
                yield alerts_pb2.WatchAlertsResponse(update=convert.update_to_proto(change))
        except HistoryGone as exc:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        except FeedClosed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
