"""The detector stack: rules, then the Isolation Forest on the same batch with the baselines the rules
computed, then the autoencoder on the local days the batch completed. One call per layer per batch.
Domain code: no gRPC, no NATS."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.anomaly.model import DetectorKind, Event, MeterInfo
from services.anomaly.rules import RuleEngine
from services.anomaly.state import StateTable
from services.ingest.columns import ReadingColumns


@dataclass(frozen=True)
class DetectorStatus:
    detector: DetectorKind
    active: bool
    model_version: str = ""
    inactive_reason: str = ""


@dataclass(frozen=True)
class StackResult:
    events: list[Event]
    statuses: list[DetectorStatus]
    scored: int


@dataclass
class DetectorStack:
    rules: RuleEngine
    iforest: Any | None = None  # services.anomaly.iforest.IsolationForestDetector
    autoencoder: Any | None = None  # services.anomaly.autoencoder.AutoencoderDetector
    learned_errors: dict[DetectorKind, str] = field(default_factory=dict)

    def score(
        self,
        cols: ReadingColumns,
        meters: Mapping[str, MeterInfo],
        state: StateTable,
        *,
        detectors: Collection[DetectorKind] = (),
        days: Any | None = None,
    ) -> StackResult:
        """Scores the batch and folds it into state. `detectors` empty means all available; `days`
        replaces the days the state completed (on-demand scoring of a stored range)."""
        wanted = set(detectors) or set(DetectorKind)
        result = self.rules.score(cols, meters, state)
        events: list[Event] = []
        statuses: list[DetectorStatus] = []
        if DetectorKind.RULES in wanted:
            events.extend(result.events)
            statuses.append(DetectorStatus(DetectorKind.RULES, True, self.rules.version))
        else:
            statuses.append(DetectorStatus(DetectorKind.RULES, False, inactive_reason="not requested"))

        iforest = self.iforest
        if DetectorKind.ISOLATION_FOREST not in wanted:
            statuses.append(
                DetectorStatus(DetectorKind.ISOLATION_FOREST, False, inactive_reason="not requested")
            )
        elif iforest is None:
            statuses.append(
                DetectorStatus(DetectorKind.ISOLATION_FOREST, False, inactive_reason="no trained model")
            )
        else:
            found, _ = iforest.detect(cols, result.baseline, meters)
            events.extend(found)
            statuses.append(DetectorStatus(DetectorKind.ISOLATION_FOREST, True, iforest.version))

        ae = self.autoencoder
        complete = days if days is not None else result.completed_days
        if DetectorKind.AUTOENCODER not in wanted:
            statuses.append(DetectorStatus(DetectorKind.AUTOENCODER, False, inactive_reason="not requested"))
        elif ae is None:
            statuses.append(
                DetectorStatus(DetectorKind.AUTOENCODER, False, inactive_reason="no trained model")
            )
        elif complete is None or len(complete.meter_ids) == 0:
            statuses.append(
                DetectorStatus(
                    DetectorKind.AUTOENCODER,
                    False,
                    ae.version,
                    inactive_reason="needs a complete local day of readings",
                )
            )
        else:
            found, _ = ae.detect(complete)
            events.extend(found)
            statuses.append(DetectorStatus(DetectorKind.AUTOENCODER, True, ae.version))
        events.sort(key=lambda e: (e.start_time_us, e.meter_id, int(e.kind)))
        return StackResult(events=events, statuses=statuses, scored=len(cols))
