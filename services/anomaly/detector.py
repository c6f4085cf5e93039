"""The streaming detector: a durable consumer of READINGS that scores every batch with the detector
stack and publishes the anomaly events to ANOMALIES (Nats-Msg-Id = event_id), then saves the
per-meter state, then acks. A crash at any point redelivers the batch: the events it finds again
have the same ids, so JetStream and the alert service drop the repeats."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

import asyncpg
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import propagate, trace

from services.anomaly import store
from services.anomaly.convert import event_to_proto, kind_subject
from services.anomaly.model import Event
from services.anomaly.pipeline import DetectorStack
from services.anomaly.state import StateTable
from services.common import jetstream, metrics
from services.ingest.codec import BadBatch, from_batch
from services.ingest.columns import ReadingColumns

log = structlog.get_logger(__name__)


def trace_id_of(msg: Msg) -> str:
    ctx = trace.get_current_span(propagate.extract(msg.headers or {})).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class EventPublisher:
    def __init__(self, js: JetStreamContext, topology: jetstream.Topology, timeout: float = 10.0) -> None:
        self.js = js
        self.topology = topology
        self.timeout = timeout
        self.published = 0

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        now_us = time.time_ns() // 1000
        stream = self.topology.anomalies_stream

        async def one(e: Event) -> None:
            ack = await jetstream.publish(
                self.js,
                self.topology.anomalies_subject(kind_subject(e.kind)),
                event_to_proto(e, now_us).SerializeToString(),
                msg_id=e.event_id,
                stream=stream,
                timeout=self.timeout,
            )
            if not ack.duplicate:
                metrics.count_anomaly_events([e])

        # Pipelined: every publish is in flight at once, each awaiting its own ack.
        for i in range(0, len(events), 2000):
            await asyncio.gather(*(one(e) for e in events[i : i + 2000]))
        self.published += len(events)


class StreamingDetector:
    def __init__(
        self,
        pool: asyncpg.Pool,
        meters: store.MeterInfoCache,
        stack: DetectorStack,
        publisher: EventPublisher,
    ) -> None:
        self.pool = pool
        self.meters = meters
        self.stack = stack
        self.publisher = publisher
        self.state = StateTable()
        self._loaded: set[str] = set()
        self.scored = 0
        self.lock = asyncio.Lock()  # the state is shared with on-demand scoring (which copies it)

    async def ensure_loaded(self, meter_ids: Sequence[str]) -> None:
        """Loads the saved state of meters this process has not seen since it started."""
        missing = [m for m in meter_ids if m not in self._loaded]
        if not missing:
            return
        for part in store.chunks(missing, 10_000):
            self.state.load(await store.load_states(self.pool, part))
        self._loaded.update(missing)

    async def handle(self, msgs: Sequence[Msg]) -> None:
        parts: list[ReadingColumns] = []
        poison: dict[int, str] = {}
        trace_of: dict[str, str] = {}
        for i, msg in enumerate(msgs):
            try:
                part = from_batch(msg.data)
            except BadBatch as exc:
                poison[i] = str(exc)
                continue
            parts.append(part)
            tid = trace_id_of(msg)
            if tid:
                for m in part.meter_ids:
                    trace_of[m] = tid
        if poison:
            raise jetstream.Poison(poison)
        cols = ReadingColumns.concat(parts)
        meters = await self.meters.get(cols.meter_ids)
        async with self.lock:
            await self.ensure_loaded(cols.meter_ids)
            result = self.stack.score(cols, meters, self.state)
            events = [
                dataclasses.replace(e, trace_id=trace_of.get(e.meter_id, "")) if not e.trace_id else e
                for e in result.events
            ]
            await self.publisher.publish(events)
            # After the events are stored and before the ack: a crash in between re-scores the batch
            # from the saved state, which finds the same events again (same ids).
            dirty = self.state.dirty()
            await store.save_states(self.pool, dirty)
            self.state.clear_dirty()
        self.scored += len(cols)
        metrics.count_readings(scored=len(cols))
        if events:
            log.info("anomalies published", readings=len(cols), events=len(events))


class GapSweeper:
    """Finds meters that have gone silent (from the meters table the storage writer keeps) and
    publishes one communication-gap event per gap; the event id derives from the last read time, so
    sweeping the same gap again yields the same id."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        stack: DetectorStack,
        publisher: EventPublisher,
        *,
        gap_intervals: int,
        max_age_days: float,
    ) -> None:
        self.pool = pool
        self.stack = stack
        self.publisher = publisher
        self.gap_intervals = gap_intervals
        self.max_age_days = max_age_days
        self._reported: dict[str, int] = {}  # meter -> last read time of the gap already published

    async def sweep(self) -> int:
        import numpy as np

        cands = await store.gap_candidates(self.pool, self.gap_intervals, self.max_age_days)
        fresh = [(m, t) for m, t in cands if self._reported.get(m.meter_id) != t]
        if not fresh:
            return 0
        now_us = time.time_ns() // 1000
        events = self.stack.rules.gap_events(
            [m for m, _ in fresh], np.asarray([t for _, t in fresh], dtype=np.int64), now_us
        )
        await self.publisher.publish(events)
        for m, t in fresh:
            self._reported[m.meter_id] = t
        if events:
            log.info("communication gaps published", events=len(events))
        return len(events)
