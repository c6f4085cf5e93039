"""Domain types shared by the anomaly detectors, the streaming detector and the servicer. Plain
Python: the enums carry the same numbers as the protobuf enums of metermesh.anomaly.v1, so the
servicer translates by value, and nothing here knows about gRPC or NATS."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum


class Kind(IntEnum):
    VOLTAGE_SURGE = 1
    VOLTAGE_SAG = 2
    OUTAGE = 3
    OVERCURRENT = 4
    PHANTOM_LOAD = 5
    REVERSE_ENERGY = 6
    TAMPER = 7
    FLATLINE = 8
    COMMUNICATION_GAP = 9
    POINT_ANOMALY = 10
    PATTERN_ANOMALY = 11


class Severity(IntEnum):
    INFO = 1
    WARNING = 2
    MAJOR = 3
    CRITICAL = 4


class DetectorKind(IntEnum):
    RULES = 1
    ISOLATION_FOREST = 2
    AUTOENCODER = 3


@dataclass(frozen=True)
class Feature:
    """One feature that drove an event: observed value, the value it was compared against (the
    rule's limit, or the meter's baseline), unit, and its share of the score (0-1)."""

    name: str
    value: float
    expected: float | None
    unit: str
    contribution: float


@dataclass(frozen=True)
class Event:
    """One detected anomaly. Times are unix microseconds (UTC)."""

    meter_id: str
    kind: Kind
    severity: Severity
    score: float  # 0 normal .. 1 certainly anomalous
    detector: DetectorKind
    model_version: str  # e.g. "rules-1", "iforest-3", "autoencoder-2"
    start_time_us: int
    end_time_us: int
    features: tuple[Feature, ...]
    explanation: str
    trace_id: str = ""

    @property
    def event_id(self) -> str:
        """Deterministic: the same anomaly found again (redelivery, restart, a repeated gap sweep)
        has the same id, which is also its Nats-Msg-Id, so JetStream and the alert service drop it."""
        key = f"{self.meter_id}|{int(self.kind)}|{int(self.detector)}|{self.start_time_us}"
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class MeterInfo:
    """What the detectors know about a registered meter (from the meters table)."""

    meter_id: str
    category: str = "residential"
    nominal_voltage_v: float = 230.0
    rated_current_a: float = 0.0  # 0: unknown, no overcurrent check
    interval_seconds: int = 900
    time_zone: str = "UTC"
    labels: dict[str, str] = field(default_factory=dict)
