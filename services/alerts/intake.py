"""The ANOMALIES consumer's handler: decodes a batch of anomaly events and folds them into alerts in one
transaction. PullWorker acks the batch only after this returns, i.e. after the commit; a redelivered
batch finds its event ids recorded and changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog
from google.protobuf.message import DecodeError
from metermesh.anomaly.v1 import anomaly_pb2
from nats.aio.msg import Msg

from services.alerts.convert import BadEvent, event_from_proto
from services.alerts.folding import ChangeKind, EventFacts
from services.alerts.store import AlertStore
from services.common.jetstream import Poison

log = structlog.get_logger(__name__)


class AnomalyIntake:
    def __init__(self, store: AlertStore, on_commit: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.on_commit = on_commit

    async def handle(self, msgs: Sequence[Msg]) -> None:
        events: list[EventFacts] = []
        poison: dict[int, str] = {}
        for i, msg in enumerate(msgs):
            try:
                events.append(event_from_proto(anomaly_pb2.AnomalyEvent.FromString(msg.data), msg.data))
            except DecodeError as exc:
                poison[i] = f"not a metermesh.anomaly.v1.AnomalyEvent: {exc}"
            except BadEvent as exc:
                poison[i] = str(exc)
        if poison:
            raise Poison(poison)
        changes = await self.store.fold_events(events)
        if changes:
            self.on_commit()
        for c in changes:
            if c.kind in (ChangeKind.CREATED, ChangeKind.ESCALATED):
                log.info(
                    "alert " + c.kind.name.lower(),
                    alert_id=c.alert.alert_id,
                    meter_id=c.alert.meter_id,
                    kind=c.alert.kind.name,
                    severity=c.alert.severity.name,
                    event_count=c.alert.event_count,
                    sequence=c.sequence,
                )
        if len(changes) or len(events):
            log.debug("anomaly events folded", events=len(events), changes=len(changes))
