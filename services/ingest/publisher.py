"""Publishing accepted readings to the READINGS stream: split by meter partition, encoded as columnar
ReadingBatch messages, each with a content-derived Nats-Msg-Id, stored before the client is answered."""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib

import nats.errors
import numpy as np
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from services.common import jetstream
from services.ingest.codec import to_batch
from services.ingest.columns import ReadingColumns


class StreamUnavailable(Exception):
    """JetStream did not store the batch (full stream, timeout, no connection): the client should retry
    the whole batch; what was stored already is deduplicated."""


def partition_of(meter_id: str, partitions: int) -> int:
    # crc32 is stable across processes and releases (unlike hash()), so a meter always maps to one subject.
    return zlib.crc32(meter_id.encode()) % partitions


class ReadingPublisher:
    def __init__(
        self, js: JetStreamContext, topology: jetstream.Topology, max_payload: int, timeout: float
    ) -> None:
        self.js = js
        self.topology = topology
        # Leave room for headers and the protocol line.
        self.max_payload = max(max_payload - 4096, 64 * 1024)
        self.timeout = timeout

    def _partitions(self, meter_ids: list[str]) -> np.ndarray:
        # map() over C functions: no Python bytecode per meter (a batch may name 10,000 of them).
        crc = np.fromiter(map(zlib.crc32, map(str.encode, meter_ids)), dtype=np.uint32, count=len(meter_ids))
        return (crc % self.topology.reading_partitions).astype(np.int32)

    def messages(self, cols: ReadingColumns) -> list[tuple[str, bytes]]:
        """(subject, payload) per partition present, chunked below the server's max_payload."""
        row_part = self._partitions(cols.meter_ids)[cols.meter_index]
        out = []
        for part in np.unique(row_part).tolist():
            rows = np.flatnonzero(row_part == part)
            subject = self.topology.readings_subject(part)
            out.extend((subject, payload) for payload in self._encode(cols.take(rows)))
        return out

    def _encode(self, cols: ReadingColumns) -> list[bytes]:
        payload = to_batch(cols).SerializeToString()
        if len(payload) <= self.max_payload or len(cols) == 1:
            return [payload]
        half = len(cols) // 2
        return self._encode(cols.take(np.arange(half))) + self._encode(cols.take(np.arange(half, len(cols))))

    async def publish(self, cols: ReadingColumns) -> int:
        """Returns the number of messages JetStream reports as duplicates (already stored)."""
        msgs = self.messages(cols)
        accept = str(time.time_ns())
        stream = self.topology.readings_stream

        async def one(subject: str, payload: bytes) -> bool:
            ack = await jetstream.publish(
                self.js,
                subject,
                payload,
                msg_id=hashlib.blake2b(payload, digest_size=16).hexdigest(),
                stream=stream,
                timeout=self.timeout,
                headers={"Metermesh-Accept-Time": accept},
            )
            return bool(ack.duplicate)

        try:
            results = await asyncio.gather(*(one(s, p) for s, p in msgs))
        except APIError as exc:
            if jetstream.is_stream_full(exc):
                raise StreamUnavailable(
                    f"the {stream} stream is full ({exc.description}); the storage writer is behind: "
                    "retry with backoff"
                ) from exc
            raise StreamUnavailable(
                f"JetStream refused the batch: {exc.description} (code {exc.err_code})"
            ) from exc
        except (TimeoutError, nats.errors.TimeoutError, NoStreamResponseError) as exc:
            raise StreamUnavailable(
                f"JetStream did not confirm storage within {self.timeout:g} s; retry the batch"
            ) from exc
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.ConnectionDrainingError,
            nats.errors.StaleConnectionError,
        ) as exc:
            raise StreamUnavailable(f"not connected to NATS ({type(exc).__name__}); retry the batch") from exc
        return sum(results)
