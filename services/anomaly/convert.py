"""Translation between the anomaly domain types and metermesh.anomaly.v1 messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from metermesh.anomaly.v1 import anomaly_pb2

from services.anomaly.model import DetectorKind, Event, Kind, Severity


def ts(us: int) -> Timestamp:
    t = Timestamp()
    t.seconds, rem = divmod(int(us), 1_000_000)
    t.nanos = rem * 1000
    return t


def micros(t: Timestamp) -> int:
    return t.seconds * 1_000_000 + t.nanos // 1000


def kind_subject(kind: Kind) -> str:
    """The subject token of a kind on ANOMALIES, e.g. anomalies.v1.voltage_surge."""
    return kind.name.lower()


def event_to_proto(e: Event, detect_time_us: int) -> anomaly_pb2.AnomalyEvent:
    msg = anomaly_pb2.AnomalyEvent(
        event_id=e.event_id,
        meter_id=e.meter_id,
        kind=int(e.kind),  # type: ignore[arg-type]
        severity=int(e.severity),  # type: ignore[arg-type]
        score=float(e.score),
        detector=int(e.detector),  # type: ignore[arg-type]
        model_version=e.model_version,
        start_time=ts(e.start_time_us),
        end_time=ts(e.end_time_us),
        detect_time=ts(detect_time_us),
        explanation=e.explanation,
        trace_id=e.trace_id,
    )
    for f in e.features:
        pf = msg.features.add(
            name=f.name, value=float(f.value), unit=f.unit, contribution=float(f.contribution)
        )
        if f.expected is not None:
            pf.expected_value = float(f.expected)
    return msg


SEVERITY = {int(s): s for s in Severity}
DETECTOR = {int(d): d for d in DetectorKind}
KIND = {int(k): k for k in Kind}
