"""The storage writer: a durable JetStream consumer that writes READINGS into PostgreSQL exactly once
and acks only after commit. Runs as its own process (`python -m services.ingest.writer`) so it scales
and fails independently of the ingest API; it serves gRPC health (and nothing else) for probes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from nats.aio.msg import Msg

from services.common import jetstream, metrics
from services.common.config import load_settings
from services.common.errors import is_transient
from services.common.server import Runtime, run_service
from services.ingest.codec import BadBatch, from_batch
from services.ingest.columns import ReadingColumns
from services.ingest.config import WriterSettings
from services.ingest.store import ReadingStore

log = structlog.get_logger(__name__)

SERVICE_NAME = "metermesh.ingest.v1.StorageWriter"


class ReadingWriter:
    """Decodes a batch of READINGS messages and stores them in one transaction."""

    def __init__(self, store: ReadingStore) -> None:
        self.store = store

    async def handle(self, msgs: Sequence[Msg]) -> None:
        parts: list[ReadingColumns] = []
        poison: dict[int, str] = {}
        for i, msg in enumerate(msgs):
            try:
                parts.append(from_batch(msg.data))
            except BadBatch as exc:
                poison[i] = str(exc)
        if poison:
            raise jetstream.Poison(poison)
        written = await self.store.write(ReadingColumns.concat(parts))
        metrics.count_readings(stored=written.inserted, duplicate=written.duplicates)


async def serve(settings: WriterSettings) -> None:
    async def on_ready(rt: Runtime) -> None:
        assert rt.pool is not None and rt.js is not None
        store = ReadingStore(rt.pool)
        writer = ReadingWriter(store)
        spec = rt.topology.writer_consumer
        workers = [
            jetstream.PullWorker(
                js=rt.js,
                spec=spec,
                handler=writer.handle,
                dead_letter_subject=rt.topology.dead_letter_subject(spec.stream, spec.durable),
                batch_size=settings.writer_fetch_batch,
            )
            for _ in range(settings.writer_concurrency)
        ]
        tasks = [rt.spawn(w.run(), f"readings-writer-{i}") for i, w in enumerate(workers)]

        async def flush_periodically() -> None:
            while True:
                await asyncio.sleep(settings.writer_last_seen_flush_seconds)
                try:
                    await store.flush_last_seen()
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("last-seen flush failed; will retry", error=repr(exc))

        rt.spawn(flush_periodically(), "last-seen-flush")

        async def finish_batches() -> None:
            # Let the transactions in hand commit and their messages be acked, rather than cancel them.
            for w in workers:
                w.stop()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(
                    asyncio.shield(asyncio.gather(*tasks)), timeout=settings.shutdown_grace_seconds
                )
            with contextlib.suppress(Exception):
                await store.flush_last_seen()

        rt.stop_hooks.append(finish_batches)

    await run_service(
        name="writer",
        settings=settings,
        listen_addr=settings.writer_addr,
        service_names=[SERVICE_NAME],
        register=lambda rt: None,
        on_ready=on_ready,
    )


def main() -> None:
    asyncio.run(serve(load_settings(WriterSettings)))


if __name__ == "__main__":
    main()
