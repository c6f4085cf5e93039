"""Protobuf <-> domain for the alert service: anomaly events in, alerts, changes and filters out.
Enums cross by value (the domain enums carry the protobuf numbers)."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from metermesh.alerts.v1 import alerts_pb2
from metermesh.anomaly.v1 import anomaly_pb2

from services.alerts.folding import Alert, AlertFilter, Change, EventFacts, State, headline_of
from services.anomaly.model import Kind, Severity

MAX_ID_LENGTH = 256
MAX_FILTER_VALUES = 1000


class BadEvent(ValueError):
    """An anomaly event that can never become an alert (goes to the dead letters)."""


class BadArgument(ValueError):
    """Bad request input; the message names the field and the value."""


def _ts(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    t = Timestamp()
    t.FromDatetime(value)
    return t


def _time(ts: Timestamp) -> dt.datetime:
    return ts.ToDatetime(tzinfo=dt.UTC)


def event_from_proto(ev: anomaly_pb2.AnomalyEvent, payload: bytes) -> EventFacts:
    """Raises BadEvent naming what is missing or invalid."""
    if not ev.event_id or len(ev.event_id) > MAX_ID_LENGTH:
        raise BadEvent(f"event_id {ev.event_id!r} must be 1-{MAX_ID_LENGTH} characters")
    if not ev.meter_id or len(ev.meter_id) > MAX_ID_LENGTH:
        raise BadEvent(f"event {ev.event_id}: meter_id {ev.meter_id!r} must be 1-{MAX_ID_LENGTH} characters")
    if ev.kind not in Kind._value2member_map_:
        raise BadEvent(f"event {ev.event_id}: kind {ev.kind} is not a known AnomalyKind")
    if ev.severity not in Severity._value2member_map_:
        raise BadEvent(f"event {ev.event_id}: severity {ev.severity} is not a known Severity")
    # start_time and end_time should both be set; fall back on what there is rather than lose the event.
    given = {
        name: _time(getattr(ev, name))
        for name in ("start_time", "end_time", "detect_time")
        if ev.HasField(name)
    }
    if not given:
        raise BadEvent(f"event {ev.event_id}: start_time, end_time and detect_time are all unset")
    start = given.get("start_time") or given.get("end_time") or given["detect_time"]
    end = given.get("end_time", start)
    top = ev.features[0] if ev.features else None
    return EventFacts(
        event_id=ev.event_id,
        meter_id=ev.meter_id,
        kind=Kind(ev.kind),
        severity=Severity(ev.severity),
        start_time=min(start, end),
        end_time=max(start, end),
        headline=headline_of(top.value, top.unit) if top is not None else "",
        payload=payload,
    )


def alert_to_proto(a: Alert) -> alerts_pb2.Alert:
    return alerts_pb2.Alert(
        alert_id=a.alert_id,
        meter_id=a.meter_id,
        kind=int(a.kind),  # type: ignore[arg-type]
        severity=int(a.severity),  # type: ignore[arg-type]
        state=int(a.state),  # type: ignore[arg-type]
        event_count=a.event_count,
        first_seen_time=_ts(a.first_seen_time),
        last_seen_time=_ts(a.last_seen_time),
        summary=a.summary,
        last_event=anomaly_pb2.AnomalyEvent.FromString(a.last_event),
        acknowledged_by=a.acknowledged_by,
        acknowledge_time=_ts(a.acknowledge_time),
        acknowledge_note=a.acknowledge_note,
        resolved_by=a.resolved_by,
        resolve_time=_ts(a.resolve_time),
        resolve_note=a.resolve_note,
        create_time=_ts(a.create_time),
        update_time=_ts(a.update_time),
    )


def update_to_proto(c: Change) -> alerts_pb2.AlertUpdate:
    return alerts_pb2.AlertUpdate(
        sequence=c.sequence,
        change_kind=int(c.kind),  # type: ignore[arg-type]
        alert=alert_to_proto(c.alert),
        change_time=_ts(c.time),
    )


def filter_from_proto(f: alerts_pb2.AlertFilter, field: str = "filter") -> AlertFilter:
    """Raises BadArgument naming the field and the value. ALERT_STATE_UNSPECIFIED among the states
    means "any" (as the contract says), so it is ignored; every other value must be known."""
    states = set()
    for i, s in enumerate(f.states):
        if s == alerts_pb2.ALERT_STATE_UNSPECIFIED:
            continue
        if s not in State._value2member_map_:
            raise BadArgument(f"{field}.states[{i}] is {s}; give OPEN (1), ACKNOWLEDGED (2) or RESOLVED (3)")
        states.add(State(s))
    if f.min_severity and f.min_severity not in Severity._value2member_map_:
        raise BadArgument(
            f"{field}.min_severity is {f.min_severity}; give a Severity from INFO (1) to CRITICAL (4)"
        )
    if len(f.meter_ids) > MAX_FILTER_VALUES:
        raise BadArgument(
            f"{field}.meter_ids has {len(f.meter_ids)} ids; at most {MAX_FILTER_VALUES} are allowed"
        )
    for i, m in enumerate(f.meter_ids):
        if not m or len(m) > MAX_ID_LENGTH:
            raise BadArgument(f"{field}.meter_ids[{i}] is {m!r}; a meter id is 1-{MAX_ID_LENGTH} characters")
    kinds = set()
    for i, k in enumerate(f.kinds):
        if k not in Kind._value2member_map_:
            raise BadArgument(
                f"{field}.kinds[{i}] is {k}; give an AnomalyKind from VOLTAGE_SURGE (1) to PATTERN_ANOMALY (11)"
            )
        kinds.add(Kind(k))
    return AlertFilter(
        states=frozenset(states),
        min_severity=int(f.min_severity),
        meter_ids=frozenset(f.meter_ids),
        kinds=frozenset(kinds),
    )
