"""The alert rules on their own (services/alerts/folding.py): events of one meter and kind fold into
one active alert, counted by distinct event id, severity only rises, a resolved alert is final and
the next event opens a new one; the lifecycle; auto-resolution; filters over alerts and changes."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.alerts import folding
from services.alerts.folding import (
    SYSTEM_ACTOR,
    AlertFilter,
    AlertIsResolved,
    ChangeKind,
    EventFacts,
    State,
)
from services.anomaly.model import Kind, Severity

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(hours=1)


def ev(
    n: int,
    severity: Severity = Severity.WARNING,
    *,
    meter: str = "M-1",
    kind: Kind = Kind.VOLTAGE_SURGE,
    minutes: int | None = None,
    headline: str = "",
) -> EventFacts:
    t = T0 + dt.timedelta(minutes=n * 15 if minutes is None else minutes)
    return EventFacts(
        event_id=f"e{n}",
        meter_id=meter,
        kind=kind,
        severity=severity,
        start_time=t,
        end_time=t + dt.timedelta(minutes=5),
        headline=headline,
        payload=f"payload-{n}".encode(),
    )


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"a{next(counter)}"


def test_the_first_event_opens_an_alert_and_later_ones_fold_into_it() -> None:
    new_id = ids()
    created = folding.fold(None, [ev(1, headline="262 V")], now=NOW, new_alert_id=new_id)
    assert created is not None and created.kind is ChangeKind.CREATED
    a = created.alert
    assert (a.alert_id, a.state, a.event_count, a.severity) == ("a1", State.OPEN, 1, Severity.WARNING)
    assert a.summary == "Voltage surge on M-1 (262 V)"
    assert created.actor == SYSTEM_ACTOR and created.previous_state is None

    later = NOW + dt.timedelta(minutes=1)
    updated = folding.fold(a, [ev(2), ev(3)], now=later, new_alert_id=new_id)
    assert updated is not None and updated.kind is ChangeKind.UPDATED
    b = updated.alert
    assert (b.alert_id, b.event_count) == ("a1", 3)
    assert b.first_seen_time == ev(1).start_time and b.last_seen_time == ev(3).end_time
    assert b.last_event == b"payload-3" and b.update_time == later and b.create_time == NOW
    assert updated.previous_state is State.OPEN and updated.previous_severity is Severity.WARNING


def test_severity_only_rises_and_a_rise_is_an_escalation() -> None:
    new_id = ids()
    a = folding.fold(None, [ev(1, Severity.MAJOR)], now=NOW, new_alert_id=new_id).alert  # type: ignore[union-attr]
    lower = folding.fold(a, [ev(2, Severity.INFO)], now=NOW, new_alert_id=new_id)
    assert lower is not None and lower.kind is ChangeKind.UPDATED and lower.alert.severity is Severity.MAJOR
    higher = folding.fold(lower.alert, [ev(3, Severity.CRITICAL)], now=NOW, new_alert_id=new_id)
    assert higher is not None and higher.kind is ChangeKind.ESCALATED
    assert higher.alert.severity is Severity.CRITICAL and higher.previous_severity is Severity.MAJOR
    # A rise and a fall within one fold: still an escalation, and the maximum stays.
    again = folding.fold(a, [ev(4, Severity.CRITICAL), ev(5, Severity.INFO)], now=NOW, new_alert_id=new_id)
    assert (
        again is not None and again.kind is ChangeKind.ESCALATED and again.alert.severity is Severity.CRITICAL
    )


def test_events_are_counted_by_distinct_event_id() -> None:
    new_id = ids()
    # The same id twice in one batch counts once ...
    c = folding.fold(None, [ev(1), ev(2), ev(1)], now=NOW, new_alert_id=new_id)
    assert c is not None and c.alert.event_count == 2
    # ... and ids folded before are skipped before folding (the store keeps the seen ids).
    fresh = folding.distinct_new([ev(1), ev(2), ev(3), ev(3)], seen={"e1", "e2"})
    assert [e.event_id for e in fresh] == ["e3"]
    assert folding.distinct_new([ev(1)], seen={"e1"}) == []
    assert folding.fold(c.alert, [], now=NOW, new_alert_id=new_id) is None


def test_after_resolve_the_next_event_opens_a_new_alert() -> None:
    new_id = ids()
    a = folding.fold(None, [ev(1)], now=NOW, new_alert_id=new_id).alert  # type: ignore[union-attr]
    resolved = folding.resolve(a, "op-1", "fixed the tap changer", NOW)
    assert resolved is not None and resolved.alert.state is State.RESOLVED
    nxt = folding.fold(resolved.alert, [ev(2, Severity.INFO)], now=NOW, new_alert_id=new_id)
    assert nxt is not None and nxt.kind is ChangeKind.CREATED
    assert nxt.alert.alert_id == "a2" and nxt.alert.event_count == 1 and nxt.alert.severity is Severity.INFO


def test_an_out_of_order_event_widens_the_window_but_is_not_the_latest() -> None:
    new_id = ids()
    a = folding.fold(None, [ev(5)], now=NOW, new_alert_id=new_id).alert  # type: ignore[union-attr]
    c = folding.fold(a, [ev(1)], now=NOW, new_alert_id=new_id)
    assert c is not None
    assert c.alert.first_seen_time == ev(1).start_time and c.alert.last_seen_time == ev(5).end_time
    assert c.alert.last_event == b"payload-5"


def test_fold_refuses_events_of_another_meter_or_kind() -> None:
    new_id = ids()
    with pytest.raises(ValueError, match="one meter and kind"):
        folding.fold(None, [ev(1), ev(2, meter="M-2")], now=NOW, new_alert_id=new_id)
    a = folding.fold(None, [ev(1)], now=NOW, new_alert_id=new_id).alert  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="one meter and kind"):
        folding.fold(a, [ev(2, kind=Kind.OUTAGE)], now=NOW, new_alert_id=new_id)


def test_lifecycle_acknowledge_then_resolve_records_who_and_when() -> None:
    a = folding.fold(None, [ev(1)], now=T0, new_alert_id=ids()).alert  # type: ignore[union-attr]
    ack = folding.acknowledge(a, "op-7", "on my way", NOW)
    assert ack is not None and ack.kind is ChangeKind.ACKNOWLEDGED and ack.actor == "op-7"
    assert (ack.alert.state, ack.alert.acknowledged_by, ack.alert.acknowledge_time) == (
        State.ACKNOWLEDGED,
        "op-7",
        NOW,
    )
    assert ack.alert.acknowledge_note == "on my way" and ack.previous_state is State.OPEN
    # Idempotent: acknowledging again changes nothing, whoever asks.
    assert folding.acknowledge(ack.alert, "op-8", "me too", NOW) is None
    later = NOW + dt.timedelta(minutes=5)
    res = folding.resolve(ack.alert, "op-7", "replaced the fuse", later)
    assert res is not None and res.kind is ChangeKind.RESOLVED and res.previous_state is State.ACKNOWLEDGED
    assert (res.alert.resolved_by, res.alert.resolve_time, res.alert.resolve_note) == (
        "op-7",
        later,
        "replaced the fuse",
    )
    assert res.alert.acknowledged_by == "op-7"  # the acknowledgement stays on record
    assert folding.resolve(res.alert, "op-9", "", later) is None
    with pytest.raises(AlertIsResolved, match="cannot be acknowledged"):
        folding.acknowledge(res.alert, "op-9", "", later)


def test_an_alert_resolves_itself_after_the_quiet_period() -> None:
    a = folding.fold(None, [ev(1)], now=T0, new_alert_id=ids()).alert  # type: ignore[union-attr]
    quiet = dt.timedelta(hours=1)
    assert folding.auto_resolve(a, T0 + quiet - dt.timedelta(seconds=1), quiet) is None
    c = folding.auto_resolve(a, T0 + quiet, quiet)
    assert c is not None and c.kind is ChangeKind.RESOLVED
    assert c.alert.resolved_by == SYSTEM_ACTOR and "1 h" in c.alert.resolve_note
    # Acknowledged alerts resolve too; resolved ones are left alone.
    ack = folding.acknowledge(a, "op", "", T0)
    assert ack is not None and folding.auto_resolve(ack.alert, T0 + quiet, quiet) is not None
    assert folding.auto_resolve(c.alert, T0 + 2 * quiet, quiet) is None
    # The quiet clock is when an event was last folded in, not the event's own time.
    b = folding.fold(a, [ev(2)], now=T0 + quiet, new_alert_id=ids()).alert  # type: ignore[union-attr]
    assert folding.auto_resolve(b, T0 + quiet + dt.timedelta(minutes=59), quiet) is None


def test_a_filter_matches_a_change_when_the_alert_matched_before_or_after_it() -> None:
    a = folding.fold(None, [ev(1, Severity.WARNING)], now=T0, new_alert_id=ids()).alert  # type: ignore[union-attr]
    open_only = AlertFilter(states=frozenset({State.OPEN}))
    res = folding.resolve(a, "op", "", NOW)
    assert res is not None
    assert not open_only.matches(res.alert) and open_only.matches_change(res)  # it left the view
    resolved_only = AlertFilter(states=frozenset({State.RESOLVED}))
    assert resolved_only.matches_change(res)
    created = folding.fold(None, [ev(2)], now=T0, new_alert_id=ids())
    assert created is not None and not resolved_only.matches_change(created)

    critical = AlertFilter(min_severity=Severity.CRITICAL)
    esc = folding.fold(a, [ev(3, Severity.CRITICAL)], now=NOW, new_alert_id=ids())
    assert esc is not None and critical.matches_change(esc)  # it entered the view
    assert not critical.matches(a)
    assert AlertFilter(meter_ids=frozenset({"M-2"})).matches_change(esc) is False
    assert AlertFilter(kinds=frozenset({Kind.VOLTAGE_SURGE}), meter_ids=frozenset({"M-1"})).matches_change(
        esc
    )


def test_filter_fingerprints_ignore_order_and_tell_filters_apart() -> None:
    f1 = AlertFilter(meter_ids=frozenset({"a", "b"}), kinds=frozenset({Kind.OUTAGE, Kind.TAMPER}))
    f2 = AlertFilter(meter_ids=frozenset({"b", "a"}), kinds=frozenset({Kind.TAMPER, Kind.OUTAGE}))
    assert f1.fingerprint() == f2.fingerprint()
    assert f1.fingerprint() != AlertFilter(meter_ids=frozenset({"a"})).fingerprint()
    assert AlertFilter().fingerprint() != AlertFilter(min_severity=2).fingerprint()


def test_headlines_read_like_a_person_wrote_them() -> None:
    assert folding.headline_of(262.4, "V") == "262 V"
    assert folding.headline_of(12.25, "A") == "12.2 A"
    assert folding.headline_of(0.95, "") == "0.95"
    assert folding.headline_of(0.0, "V") == "0 V"
    assert folding.summary_of(Kind.COMMUNICATION_GAP, "GJ-1", "") == "Communication gap on GJ-1"


@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(list(Severity))),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 10),
)
def test_folding_in_any_batches_counts_distinct_ids_and_keeps_the_maximum_severity(
    stream: list[tuple[int, Severity]], batch: int
) -> None:
    """Whatever the batching and however often ids repeat (redelivery), one alert results, with the
    number of distinct ids and the highest severity seen; severity never falls along the way."""
    events = [ev(n, sev) for n, sev in stream]
    seen: set[str] = set()
    alert = None
    new_id = ids()
    for i in range(0, len(events), batch):
        fresh = folding.distinct_new(events[i : i + batch], seen)
        seen.update(e.event_id for e in fresh)
        change = folding.fold(alert, fresh, now=NOW, new_alert_id=new_id)
        if change is None:
            continue
        if alert is not None:
            assert change.alert.severity >= alert.severity
            assert (change.kind is ChangeKind.ESCALATED) == (change.alert.severity > alert.severity)
        alert = change.alert
    assert alert is not None and alert.alert_id == "a1"
    firsts = {f"e{n}": sev for n, sev in reversed(stream)}  # the first occurrence of each id counts
    assert alert.event_count == len(firsts)
    assert alert.severity == max(firsts.values())
