"""Settings of the anomaly service (env METERMESH_*)."""

from __future__ import annotations

from pydantic import Field

from services.common.config import CommonSettings


class AnomalySettings(CommonSettings):
    anomaly_addr: str = "127.0.0.1:50052"
    # READINGS messages scored together (each carries up to 10,000 readings): one model call per
    # detector per fetch, never one per reading.
    anomaly_fetch_batch: int = Field(default=16, ge=1, le=1000)
    # How long a meter's registry entry (nominal voltage, rated current, time zone) is reused.
    anomaly_meter_cache_seconds: float = Field(default=60.0, ge=0)
    # A meter silent for this many of its intervals raises a communication gap ...
    anomaly_gap_intervals: int = Field(default=4, ge=1, le=10_000)
    # ... found by a sweep this often (a gap is also found when the next reading finally arrives).
    anomaly_gap_sweep_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Meters silent for longer than this are decommissioned, not in a gap: the sweep ignores them.
    anomaly_gap_max_age_days: float = Field(default=30.0, gt=0)
    # Rules: supply limits as a fraction of the meter's nominal voltage (230 V +/- 10%: 253 V / 207 V).
    anomaly_voltage_tolerance: float = Field(default=0.10, gt=0, lt=1)
    # How often a replica looks for a newly promoted model version (one trained elsewhere).
    anomaly_model_poll_seconds: float = Field(default=30.0, gt=0)
    # Training data cap: a larger range is sampled down to this many readings (by meter).
    anomaly_train_max_readings: int = Field(default=3_000_000, ge=1000)
