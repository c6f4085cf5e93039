"""Settings of the ingest service and the storage writer (env METERMESH_*)."""

from __future__ import annotations

from pydantic import Field

from services.common.config import CommonSettings


class IngestSettings(CommonSettings):
    ingest_addr: str = "127.0.0.1:50051"
    # Readings older than this are rejected (READ_TIME_TOO_OLD); the same window bounds what is kept.
    retention_days: int = Field(default=3650, ge=1)
    max_batch_readings: int = Field(default=10_000, ge=1, le=100_000)
    # How long PushReadings waits for JetStream to store a batch before answering UNAVAILABLE.
    publish_timeout_seconds: float = Field(default=10.0, gt=0)
    # How long a meter id learned from the database stays trusted without a new look-up.
    meter_cache_seconds: float = Field(default=300.0, ge=0)


class WriterSettings(CommonSettings):
    writer_addr: str = "127.0.0.1:50061"
    # Messages fetched (and written in one transaction) at a time; each carries up to 10,000 readings.
    writer_fetch_batch: int = Field(default=32, ge=1, le=1000)
    # Fetch loops (each with its own PostgreSQL connection) per writer process: while one waits on
    # PostgreSQL, another decodes and encodes its next batch.
    writer_concurrency: int = Field(default=2, ge=1, le=16)
    # How often meters' last read_time / last-seen time are written (coalesced across batches).
    writer_last_seen_flush_seconds: float = Field(default=1.0, gt=0, le=60)
