"""NATS JetStream plumbing shared by services: the stream topology, idempotent publishing with trace
context, and a durable pull-consumer loop with ack / nak-with-delay / in-progress / dead-letter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, NotFoundError
from opentelemetry import propagate, trace

from services.common import metrics
from services.common.errors import is_transient

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("metermesh.jetstream")

MSG_ID = "Nats-Msg-Id"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    max_bytes: int
    max_age_seconds: float
    duplicate_window_seconds: float = 600.0
    # Interest retention: a message leaves the stream once every durable consumer has acked it, so a
    # stream that keeps up never fills; discard=new turns a full stream into backpressure, never loss.
    retention: jsapi.RetentionPolicy = jsapi.RetentionPolicy.INTEREST
    replicas: int = 1

    def config(self) -> jsapi.StreamConfig:
        return jsapi.StreamConfig(
            name=self.name,
            subjects=self.subjects,
            retention=self.retention,
            discard=jsapi.DiscardPolicy.NEW,
            max_bytes=self.max_bytes,
            max_age=self.max_age_seconds,
            duplicate_window=self.duplicate_window_seconds,
            storage=jsapi.StorageType.FILE,
            num_replicas=self.replicas,
        )


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    max_deliver: int = 10
    ack_wait_seconds: float = 30.0
    max_ack_pending: int = 256
    filter_subject: str | None = None

    def config(self) -> jsapi.ConsumerConfig:
        return jsapi.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            deliver_policy=jsapi.DeliverPolicy.ALL,
            max_deliver=self.max_deliver,
            ack_wait=self.ack_wait_seconds,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subject,
        )


@dataclass(frozen=True)
class Topology:
    """Every stream and durable consumer of the platform, in one place.

    Consumers are declared here rather than by the service that reads them because READINGS uses
    interest retention: a message published while no consumer exists would be dropped, so whoever
    provisions the stream also provisions its consumers, and ingest never publishes into a void.
    """

    prefix: str = ""
    reading_partitions: int = 8
    readings_max_bytes: int = 4 * 1024**3
    dead_letter_max_bytes: int = 512 * 1024**2
    replicas: int = 1
    writer_ack_wait_seconds: float = 30.0
    anomaly_ack_wait_seconds: float = 30.0
    alerts_ack_wait_seconds: float = 30.0
    anomalies_max_bytes: int = 1024**3

    @property
    def readings_stream(self) -> str:
        return f"{self.prefix}READINGS"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.prefix}DEADLETTER"

    @property
    def anomalies_stream(self) -> str:
        return f"{self.prefix}ANOMALIES"

    def anomalies_subject(self, kind: str) -> str:
        """kind: the anomaly kind in lower case, e.g. "voltage_surge"."""
        return f"{self.prefix}anomalies.v1.{kind}"

    def readings_subject(self, partition: int) -> str:
        return f"{self.prefix}readings.v1.p{partition:02d}"

    def dead_letter_subject(self, stream: str, durable: str) -> str:
        return f"{self.prefix}deadletter.{stream}.{durable}"

    @property
    def writer_consumer(self) -> ConsumerSpec:
        return ConsumerSpec(
            stream=self.readings_stream,
            durable="readings-writer",
            ack_wait_seconds=self.writer_ack_wait_seconds,
        )

    @property
    def anomaly_consumer(self) -> ConsumerSpec:
        """The streaming detector's cursor on READINGS (every reading is scored once)."""
        return ConsumerSpec(
            stream=self.readings_stream,
            durable="anomaly-detector",
            ack_wait_seconds=self.anomaly_ack_wait_seconds,
        )

    @property
    def alerts_consumer(self) -> ConsumerSpec:
        """The alert service's cursor on ANOMALIES."""
        return ConsumerSpec(
            stream=self.anomalies_stream,
            durable="alerts",
            ack_wait_seconds=self.alerts_ack_wait_seconds,
            max_ack_pending=1024,
        )

    def streams(self) -> list[StreamSpec]:
        return [
            StreamSpec(
                name=self.readings_stream,
                subjects=[f"{self.prefix}readings.v1.>"],
                max_bytes=self.readings_max_bytes,
                max_age_seconds=7 * 24 * 3600.0,
                replicas=self.replicas,
            ),
            StreamSpec(
                name=self.anomalies_stream,
                subjects=[f"{self.prefix}anomalies.v1.>"],
                max_bytes=self.anomalies_max_bytes,
                max_age_seconds=7 * 24 * 3600.0,
                replicas=self.replicas,
            ),
            StreamSpec(
                name=self.dead_letter_stream,
                subjects=[f"{self.prefix}deadletter.>"],
                max_bytes=self.dead_letter_max_bytes,
                max_age_seconds=30 * 24 * 3600.0,
                retention=jsapi.RetentionPolicy.LIMITS,
                replicas=self.replicas,
            ),
        ]

    def consumers(self) -> list[ConsumerSpec]:
        return [self.writer_consumer, self.anomaly_consumer, self.alerts_consumer]


async def connect(url: str, name: str, **callbacks: Any) -> NATS:
    """Connects with unlimited reconnects: a NATS restart is an outage to ride out, not a crash."""
    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
        **callbacks,
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> jsapi.StreamInfo:
    try:
        await js.stream_info(spec.name)
    except NotFoundError:
        return await js.add_stream(spec.config())
    return await js.update_stream(spec.config())


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> jsapi.ConsumerInfo:
    # add_consumer with a durable name creates it or updates the mutable fields of an existing one.
    return await js.add_consumer(spec.stream, spec.config())


async def provision(js: JetStreamContext, topology: Topology) -> None:
    for stream in topology.streams():
        await ensure_stream(js, stream)
    for consumer in topology.consumers():
        await ensure_consumer(js, consumer)


def trace_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    headers = dict(headers or {})
    propagate.inject(headers)
    return headers


async def publish(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    stream: str | None = None,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
) -> jsapi.PubAck:
    """Publishes with the current trace context and waits until JetStream has stored the message.
    msg_id makes a re-send within the stream's duplicate window a no-op (the ack then says
    duplicate=True); `stream` makes JetStream refuse a subject that another stream has taken."""
    return await js.publish(
        subject,
        payload,
        timeout=timeout,
        stream=stream,
        headers=trace_headers({**(headers or {}), MSG_ID: msg_id}),
    )


def is_stream_full(err: APIError) -> bool:
    """A stream with discard=new at its limits answers 503 with 'maximum ... exceeded'."""
    desc = (err.description or "").lower()
    return "maximum" in desc and "exceeded" in desc


class Poison(Exception):
    """Raised by a handler for messages that can never succeed (undecodable, invalid): they go to the
    dead-letter subject at once instead of being retried max_deliver times."""

    def __init__(self, reasons: dict[int, str]) -> None:
        super().__init__("; ".join(f"message {i}: {r}" for i, r in reasons.items()))
        self.reasons = reasons


BatchHandler = Callable[[Sequence[Msg]], Awaitable[None]]


@dataclass
class PullWorker:
    """One fetch loop on a durable pull consumer.

    The handler gets a batch of messages and commits their effect; the messages are acked only after
    it returns. It may raise Poison naming the messages that can never succeed: those are
    dead-lettered and the rest handled again. Any other error splits the batch, so one bad message
    cannot hold back its neighbours; a single message that keeps failing is nak'ed with a growing
    delay and dead-lettered after max_deliver deliveries. While the handler runs, in_progress() keeps
    the messages from being redelivered to another replica.
    """

    js: JetStreamContext
    spec: ConsumerSpec
    handler: BatchHandler
    dead_letter_subject: str
    batch_size: int = 32
    fetch_timeout: float = 1.0
    nak_base_delay: float = 1.0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        sub = await self.js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream)
        metrics.track_consumer(self.spec)
        log.info("consumer started", stream=self.spec.stream, durable=self.spec.durable)
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(self.batch_size, timeout=self.fetch_timeout)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue  # nothing to do within fetch_timeout
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    break
                except nats.errors.Error as exc:
                    # Reconnecting, slow consumer and the like: transient; the server keeps the messages.
                    log.warning("fetch failed; retrying", error=repr(exc))
                    await asyncio.sleep(0.5)
                    continue
                if msgs:
                    await self._handle(msgs)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def stop(self) -> None:
        """Finishes the batch in hand, then returns from run()."""
        self._stopping.set()

    async def _call_handler(self, msgs: Sequence[Msg]) -> None:
        """Runs the handler, waiting out transient failures (PostgreSQL restarting, NATS reconnecting)
        while in_progress() holds the messages: a nak would spend one of max_deliver deliveries, and
        an outage longer than max_deliver retries must not dead-letter good data."""
        delay = self.nak_base_delay
        while True:
            try:
                t = time.perf_counter()
                with tracer.start_as_current_span(
                    f"consume {self.spec.stream}",
                    links=[trace.Link(_span_context(m)) for m in msgs if _span_context(m).is_valid],
                    attributes={"messaging.batch.message_count": len(msgs)},
                ):
                    await self.handler(msgs)
                metrics.observe_batch(self.spec, time.perf_counter() - t)
                return
            except Exception as exc:
                if not is_transient(exc) or self._stopping.is_set():
                    raise
                log.warning(
                    "dependency unavailable; holding the batch and retrying", error=repr(exc), retry_in=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _handle(self, msgs: Sequence[Msg]) -> None:
        heartbeat = asyncio.create_task(self._keep_alive(msgs))
        try:
            await self._call_handler(msgs)
        except Poison as poison:
            heartbeat.cancel()
            for i in sorted(poison.reasons):
                await self._dead_letter(msgs[i], poison.reasons[i])
            rest = [m for i, m in enumerate(msgs) if i not in poison.reasons]
            if rest:
                await self._handle(rest)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            heartbeat.cancel()
            if len(msgs) > 1:
                log.warning("batch failed; retrying its messages one by one", error=repr(exc), size=len(msgs))
                for m in msgs:
                    await self._handle([m])
                return
            await self._retry_or_dead_letter(msgs[0], exc)
            return
        finally:
            heartbeat.cancel()
        # An ack lost here (NATS away) only means a redelivery, which the handler's idempotence absorbs.
        results = await asyncio.gather(*(m.ack() for m in msgs), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        metrics.consumed(self.spec, "acked", len(msgs) - len(failed))
        if failed:
            log.warning(
                "acks failed; the messages will be redelivered", failed=len(failed), error=repr(failed[0])
            )

    async def _keep_alive(self, msgs: Sequence[Msg]) -> None:
        period = max(self.spec.ack_wait_seconds / 3, 0.5)
        while True:
            await asyncio.sleep(period)
            await asyncio.gather(*(m.in_progress() for m in msgs), return_exceptions=True)

    async def _retry_or_dead_letter(self, msg: Msg, exc: Exception) -> None:
        delivered = msg.metadata.num_delivered
        if delivered >= self.spec.max_deliver:
            await self._dead_letter(msg, f"failed {delivered} times; last error: {exc!r}")
            return
        delay = min(self.nak_base_delay * 2 ** (delivered - 1), 60.0)
        log.warning(
            "message failed; will be redelivered",
            error=repr(exc),
            stream_seq=msg.metadata.sequence.stream,
            delivered=delivered,
            delay_seconds=delay,
        )
        await msg.nak(delay=delay)
        metrics.consumed(self.spec, "retried")

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        md = msg.metadata
        headers = dict(msg.headers or {})
        headers.pop(MSG_ID, None)
        headers.update(
            {
                "Metermesh-Dead-Reason": reason[:1000],
                "Metermesh-Source-Subject": msg.subject,
                "Metermesh-Source-Sequence": str(md.sequence.stream),
                "Metermesh-Delivered": str(md.num_delivered),
            }
        )
        # Published (and stored) before the ack: a crash in between repeats the dead-lettering, never
        # loses the message.
        await self.js.publish(
            self.dead_letter_subject,
            msg.data,
            headers={**headers, MSG_ID: f"{md.stream}:{md.sequence.stream}"},
        )
        await msg.ack()
        metrics.consumed(self.spec, "dead_lettered")
        log.error(
            "message dead-lettered",
            reason=reason,
            stream_seq=md.sequence.stream,
            dead_letter_subject=self.dead_letter_subject,
        )


def _span_context(msg: Msg) -> trace.SpanContext:
    ctx = propagate.extract(msg.headers or {})
    return trace.get_current_span(ctx).get_span_context()
