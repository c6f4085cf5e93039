"""Settings of the billing service (env METERMESH_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.billing.catalog import DEFAULT_TARIFF_DIR
from services.common.config import CommonSettings


class BillingSettings(CommonSettings):
    billing_addr: str = "127.0.0.1:50054"
    # Billing reads PostgreSQL only: NATS_URL may be left unset.
    nats_url: str = Field(default="", validation_alias="NATS_URL")
    # Where the tariff files are (one directory per tariff id, one YAML file per version).
    tariff_dir: Path = DEFAULT_TARIFF_DIR
    # Meters per chunk of a billing cycle: one rollup query, one pricing step and one write
    # transaction each. Larger chunks mean fewer round trips, smaller ones earlier progress.
    cycle_chunk_meters: int = Field(default=2000, ge=1, le=100_000)
    # A cycle reads the period's rollups in one pass over every meter's (PostgreSQL sums them per meter
    # in parallel) unless the meters it has to bill are fewer than this percentage of the registered
    # ones; those few are read through the primary key instead. Per-meter look-ups on a table laid
    # out by time (as the writer fills it) touch a page per row, so they only pay for small cycles.
    cycle_scan_min_percent: float = Field(default=1.0, ge=0)
    # How often a running cycle reports progress (the contract asks for at least every 2 seconds).
    cycle_progress_seconds: float = Field(default=1.0, gt=0, le=2.0)
