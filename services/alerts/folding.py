"""The alert rules, free of gRPC, NATS and SQL: how anomaly events fold into alerts, the lifecycle
(open -> acknowledged -> resolved, with auto-resolution after a quiet period), and which alerts and
alert changes a filter matches. The store persists what these functions decide."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

from services.anomaly.model import Kind, Severity

# Who made the changes nobody made by hand: events folded in, auto-resolution.
SYSTEM_ACTOR = "metermesh"


class State(IntEnum):
    """Same numbers as metermesh.alerts.v1.AlertState."""

    OPEN = 1
    ACKNOWLEDGED = 2
    RESOLVED = 3


class ChangeKind(IntEnum):
    """Same numbers as metermesh.alerts.v1.AlertChangeKind."""

    CREATED = 1
    UPDATED = 2
    ESCALATED = 3
    ACKNOWLEDGED = 4
    RESOLVED = 5


@dataclass(frozen=True)
class EventFacts:
    """What alerting needs of one anomaly event. Times are timezone-aware (UTC)."""

    event_id: str
    meter_id: str
    kind: Kind
    severity: Severity
    start_time: dt.datetime
    end_time: dt.datetime
    # The observation that drove it, for the summary, e.g. "262 V"; empty when there is none.
    headline: str = ""
    # The event as received, kept opaque here: shown as the alert's last event.
    payload: bytes = b""


@dataclass(frozen=True)
class Alert:
    alert_id: str
    meter_id: str
    kind: Kind
    severity: Severity
    state: State
    event_count: int  # distinct event ids folded in
    first_seen_time: dt.datetime  # earliest start_time folded in
    last_seen_time: dt.datetime  # latest end_time folded in
    summary: str
    last_event: bytes  # payload of the event with the latest end_time (the later fold on a tie)
    create_time: dt.datetime
    update_time: dt.datetime
    # When an event was last folded in (wall clock): the quiet-period clock of auto-resolution. Wall
    # clock rather than last_seen_time, so a detector catching up on old readings does not resolve
    # the alerts it is raising.
    last_event_receive_time: dt.datetime
    acknowledged_by: str = ""
    acknowledge_time: dt.datetime | None = None
    acknowledge_note: str = ""
    resolved_by: str = ""
    resolve_time: dt.datetime | None = None
    resolve_note: str = ""
    # The latest change: its sequence (0 until stored) and kind.
    sequence: int = 0
    last_change_kind: ChangeKind = ChangeKind.CREATED

    @property
    def active(self) -> bool:
        return self.state is not State.RESOLVED

    @property
    def key(self) -> tuple[str, Kind]:
        return (self.meter_id, self.kind)


@dataclass(frozen=True)
class Change:
    """One change to an alert: the alert after it, who made it and when. The alert before it differs
    at most in state and severity (and the counters), which is all a filter needs to know."""

    kind: ChangeKind
    alert: Alert
    actor: str
    time: dt.datetime
    note: str = ""
    previous_state: State | None = None  # None for CREATED
    previous_severity: Severity | None = None
    sequence: int = 0  # assigned when stored, in commit order

    def numbered(self, sequence: int) -> Change:
        return replace(
            self,
            sequence=sequence,
            alert=replace(self.alert, sequence=sequence, last_change_kind=self.kind),
        )


class AlertIsResolved(Exception):
    """Acknowledging a resolved alert: it is final; the next event opens a new one."""

    def __init__(self, alert: Alert) -> None:
        when = alert.resolve_time.isoformat() if alert.resolve_time else "?"
        super().__init__(
            f"alert {alert.alert_id!r} was resolved by {alert.resolved_by!r} at {when} and cannot be "
            "acknowledged; a resolved alert is final (the next event opens a new alert)"
        )
        self.alert = alert


def summary_of(kind: Kind, meter_id: str, headline: str) -> str:
    """E.g. "Voltage surge on GJ-DGVCL-000123 (262 V)"."""
    text = f"{kind.name.replace('_', ' ').capitalize()} on {meter_id}"
    return f"{text} ({headline})" if headline else text


def headline_of(value: float, unit: str) -> str:
    """A feature value as people read it: 262.4 V -> "262 V", 12.25 A -> "12.3 A", 0.95 -> "0.95"."""
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"
    return f"{text} {unit}".strip()


def distinct_new(events: Iterable[EventFacts], seen: Collection[str]) -> list[EventFacts]:
    """The events to fold: the first occurrence of each event_id not in `seen` (the ids already
    folded in, by any alert). A redelivered or re-detected event is therefore counted once."""
    out: list[EventFacts] = []
    taken = set(seen)
    for e in events:
        if e.event_id not in taken:
            taken.add(e.event_id)
            out.append(e)
    return out


def group_by_key(events: Iterable[EventFacts]) -> dict[tuple[str, Kind], list[EventFacts]]:
    """Events per (meter_id, kind), in arrival order within each group."""
    groups: dict[tuple[str, Kind], list[EventFacts]] = {}
    for e in events:
        groups.setdefault((e.meter_id, e.kind), []).append(e)
    return groups


def _open(e: EventFacts, alert_id: str, now: dt.datetime) -> Alert:
    return Alert(
        alert_id=alert_id,
        meter_id=e.meter_id,
        kind=e.kind,
        severity=e.severity,
        state=State.OPEN,
        event_count=1,
        first_seen_time=e.start_time,
        last_seen_time=e.end_time,
        summary=summary_of(e.kind, e.meter_id, e.headline),
        last_event=e.payload,
        create_time=now,
        update_time=now,
        last_event_receive_time=now,
    )


def _absorb(a: Alert, e: EventFacts, now: dt.datetime) -> Alert:
    latest = e.end_time >= a.last_seen_time
    return replace(
        a,
        severity=max(a.severity, e.severity),  # only rises while active
        event_count=a.event_count + 1,
        first_seen_time=min(a.first_seen_time, e.start_time),
        last_seen_time=max(a.last_seen_time, e.end_time),
        summary=summary_of(e.kind, e.meter_id, e.headline) if latest else a.summary,
        last_event=e.payload if latest else a.last_event,
        update_time=now,
        last_event_receive_time=now,
    )


def fold(
    current: Alert | None,
    events: Sequence[EventFacts],
    *,
    now: dt.datetime,
    new_alert_id: Callable[[], str],
) -> Change | None:
    """Folds events of one meter and kind, not folded before (see distinct_new), into that meter and
    kind's current alert, or into a new alert when there is none or it is resolved. One call records
    one change: CREATED when it opened the alert, else ESCALATED when the severity rose, else UPDATED.
    Returns None when there is nothing to fold."""
    events = distinct_new(events, ())
    if not events:
        return None
    key = (events[0].meter_id, events[0].kind)
    if any((e.meter_id, e.kind) != key for e in events) or (current is not None and current.key != key):
        raise ValueError(f"fold() takes the events of one meter and kind; got several besides {key}")
    alert = current if current is not None and current.active else None
    before = alert
    for e in events:
        alert = _open(e, new_alert_id(), now) if alert is None else _absorb(alert, e, now)
    assert alert is not None
    if before is None:
        return Change(ChangeKind.CREATED, alert, SYSTEM_ACTOR, now)
    kind = ChangeKind.ESCALATED if alert.severity > before.severity else ChangeKind.UPDATED
    return Change(kind, alert, SYSTEM_ACTOR, now, "", before.state, before.severity)


def acknowledge(alert: Alert, by: str, note: str, now: dt.datetime) -> Change | None:
    """OPEN -> ACKNOWLEDGED. None (no change) when it is acknowledged already, whoever asks again.
    Raises AlertIsResolved for a resolved alert."""
    if alert.state is State.RESOLVED:
        raise AlertIsResolved(alert)
    if alert.state is State.ACKNOWLEDGED:
        return None
    after = replace(
        alert,
        state=State.ACKNOWLEDGED,
        acknowledged_by=by,
        acknowledge_time=now,
        acknowledge_note=note,
        update_time=now,
    )
    return Change(ChangeKind.ACKNOWLEDGED, after, by, now, note, alert.state, alert.severity)


def resolve(alert: Alert, by: str, note: str, now: dt.datetime) -> Change | None:
    """OPEN or ACKNOWLEDGED -> RESOLVED. None (no change) when it is resolved already."""
    if alert.state is State.RESOLVED:
        return None
    after = replace(
        alert, state=State.RESOLVED, resolved_by=by, resolve_time=now, resolve_note=note, update_time=now
    )
    return Change(ChangeKind.RESOLVED, after, by, now, note, alert.state, alert.severity)


def auto_resolve(alert: Alert, now: dt.datetime, quiet: dt.timedelta) -> Change | None:
    """Resolves an active alert no event has been folded into for `quiet`, as "metermesh"."""
    if not alert.active or now - alert.last_event_receive_time < quiet:
        return None
    return resolve(alert, SYSTEM_ACTOR, f"no new event for {_duration(quiet)}; resolved automatically", now)


def _duration(d: dt.timedelta) -> str:
    seconds = d.total_seconds()
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


@dataclass(frozen=True)
class AlertFilter:
    """Conditions combine with AND; an empty condition matches everything."""

    states: frozenset[State] = frozenset()
    min_severity: int = 0  # 0: no minimum
    meter_ids: frozenset[str] = frozenset()
    kinds: frozenset[Kind] = frozenset()

    def matches(self, a: Alert) -> bool:
        return (
            (not self.states or a.state in self.states)
            and a.severity >= self.min_severity
            and (not self.meter_ids or a.meter_id in self.meter_ids)
            and (not self.kinds or a.kind in self.kinds)
        )

    def matches_change(self, c: Change) -> bool:
        """A change is of interest when its alert matches before or after it, so a watcher also
        learns when an alert leaves its view (e.g. is resolved)."""
        if self.matches(c.alert):
            return True
        if c.previous_state is None or c.previous_severity is None:
            return False  # created: there was no "before"
        return self.matches(replace(c.alert, state=c.previous_state, severity=c.previous_severity))

    def fingerprint(self) -> str:
        """Stable across calls and processes: ties a page token to the filter it was issued for."""
        text = "|".join(
            [
                ",".join(str(int(s)) for s in sorted(self.states)),
                str(self.min_severity),
                ",".join(sorted(self.meter_ids)),
                ",".join(str(int(k)) for k in sorted(self.kinds)),
            ]
        )
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
