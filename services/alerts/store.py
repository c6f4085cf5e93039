"""PostgreSQL side of the alert service: applies the folding rules (services.alerts.folding) inside
transactions, records every change with a sequence number in commit order, and reads alerts, the
change history and the webhook outbox back.

Commit order. Every writing transaction starts with one transaction-level advisory lock and only then
draws sequence numbers from alert_changes' identity, so transactions that change alerts commit one at
a time, in the order of their numbers: whoever sees sequence N sees every change before N. The lock is
released by the commit itself, after the changes became visible. This holds across any number of
replicas (a single writer task would hold only within one process), costs one lock round trip per
batch (events are folded a fetch batch per transaction), and makes the "at most one active alert per
meter and kind" check race-free without retry loops. The NOTIFY sent in the same transaction is
delivered on commit, in commit order, to every replica's change feed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from services.alerts import folding
from services.alerts.folding import Alert, AlertFilter, Change, ChangeKind, EventFacts, State
from services.anomaly.model import Kind, Severity
from services.common import metrics

log = structlog.get_logger(__name__)

# Any fixed number, distinct from the migration and partition locks.
WRITE_LOCK = 0x616C657274
NOTIFY_CHANNEL = "metermesh_alert_changes"

ALERT_COLUMNS = (
    "alert_id",
    "meter_id",
    "kind",
    "severity",
    "state",
    "event_count",
    "first_seen_time",
    "last_seen_time",
    "summary",
    "last_event",
    "acknowledged_by",
    "acknowledge_time",
    "acknowledge_note",
    "resolved_by",
    "resolve_time",
    "resolve_note",
    "create_time",
    "update_time",
    "last_event_receive_time",
)
_ALERT_ROW = (*ALERT_COLUMNS, "sequence", "last_change_kind")
_CHANGE_ROW = (
    "sequence",
    "change_kind",
    "change_time",
    "actor",
    "note",
    "previous_state",
    "previous_severity",
    *ALERT_COLUMNS,
)


_TYPES = {
    **dict.fromkeys(("alert_id", "meter_id", "summary", "actor", "note"), "text"),
    **dict.fromkeys(("acknowledged_by", "acknowledge_note", "resolved_by", "resolve_note"), "text"),
    **dict.fromkeys(("kind", "severity", "state", "last_change_kind", "change_kind"), "smallint"),
    **dict.fromkeys(("previous_state", "previous_severity"), "smallint"),
    **dict.fromkeys(("event_count", "sequence"), "bigint"),
    **dict.fromkeys(("first_seen_time", "last_seen_time", "acknowledge_time", "resolve_time"), "timestamptz"),
    **dict.fromkeys(("create_time", "update_time", "last_event_receive_time", "change_time"), "timestamptz"),
    "last_event": "bytea",
}


def _unnest(columns: Sequence[str]) -> str:
    """Rows given as one array per column: one statement for a whole batch, not one per row."""
    arrays = ", ".join(f"${i}::{_TYPES[c]}[]" for i, c in enumerate(columns, 1))
    return f"SELECT * FROM unnest({arrays})"


def _columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)]


_UPSERT_ALERTS = f"""
    INSERT INTO alerts ({", ".join(_ALERT_ROW)}) {_unnest(_ALERT_ROW)}
    ON CONFLICT (alert_id) DO UPDATE SET
        {", ".join(f"{c} = EXCLUDED.{c}" for c in _ALERT_ROW if c != "alert_id")}"""
_INSERT_CHANGES = f"INSERT INTO alert_changes ({', '.join(_CHANGE_ROW)}) {_unnest(_CHANGE_ROW)}"
_CHANGE_SELECT = f"SELECT {', '.join(_CHANGE_ROW)} FROM alert_changes"


class AlertNotFound(LookupError):
    def __init__(self, alert_id: str) -> None:
        super().__init__(f"alert_id {alert_id!r} does not exist")
        self.alert_id = alert_id


class HistoryGone(Exception):
    """A resume point the change history can no longer serve (pruned, or never reached)."""


def _alert_values(a: Alert) -> tuple[Any, ...]:
    return (
        a.alert_id,
        a.meter_id,
        int(a.kind),
        int(a.severity),
        int(a.state),
        a.event_count,
        a.first_seen_time,
        a.last_seen_time,
        a.summary,
        a.last_event,
        a.acknowledged_by,
        a.acknowledge_time,
        a.acknowledge_note,
        a.resolved_by,
        a.resolve_time,
        a.resolve_note,
        a.create_time,
        a.update_time,
        a.last_event_receive_time,
    )


def _alert_of(r: asyncpg.Record, sequence: int, change_kind: int) -> Alert:
    return Alert(
        alert_id=r["alert_id"],
        meter_id=r["meter_id"],
        kind=Kind(r["kind"]),
        severity=Severity(r["severity"]),
        state=State(r["state"]),
        event_count=r["event_count"],
        first_seen_time=r["first_seen_time"],
        last_seen_time=r["last_seen_time"],
        summary=r["summary"],
        last_event=bytes(r["last_event"]),
        acknowledged_by=r["acknowledged_by"],
        acknowledge_time=r["acknowledge_time"],
        acknowledge_note=r["acknowledge_note"],
        resolved_by=r["resolved_by"],
        resolve_time=r["resolve_time"],
        resolve_note=r["resolve_note"],
        create_time=r["create_time"],
        update_time=r["update_time"],
        last_event_receive_time=r["last_event_receive_time"],
        sequence=sequence,
        last_change_kind=ChangeKind(change_kind),
    )


def alert_from_row(r: asyncpg.Record) -> Alert:
    return _alert_of(r, r["sequence"], r["last_change_kind"])


def change_from_row(r: asyncpg.Record) -> Change:
    return Change(
        kind=ChangeKind(r["change_kind"]),
        alert=_alert_of(r, r["sequence"], r["change_kind"]),
        actor=r["actor"],
        time=r["change_time"],
        note=r["note"],
        previous_state=None if r["previous_state"] is None else State(r["previous_state"]),
        previous_severity=None if r["previous_severity"] is None else Severity(r["previous_severity"]),
        sequence=r["sequence"],
    )


def snapshot_change(a: Alert) -> Change:
    """An alert as its latest change left it: what a watcher without a resume point is sent first."""
    return Change(kind=a.last_change_kind, alert=a, actor="", time=a.update_time, sequence=a.sequence)


def _filter_sql(f: AlertFilter, args: list[Any]) -> list[str]:
    """WHERE conditions for a filter, appending their parameters to args. Only the conditions given
    are written, so each shape gets a plan that uses its index."""
    where = []
    if f.states:
        args.append(sorted(int(s) for s in f.states))
        where.append(f"state = ANY(${len(args)}::smallint[])")
    if f.min_severity:
        args.append(f.min_severity)
        where.append(f"severity >= ${len(args)}")
    if f.meter_ids:
        args.append(sorted(f.meter_ids))
        where.append(f"meter_id = ANY(${len(args)}::text[])")
    if f.kinds:
        args.append(sorted(int(k) for k in f.kinds))
        where.append(f"kind = ANY(${len(args)}::smallint[])")
    return where


def _new_alert_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Delivery:
    delivery_id: int
    url: str
    attempts: int
    change: Change


class AlertStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        webhook_targets: Callable[[Change], Sequence[str]] = lambda change: (),
    ) -> None:
        self.pool = pool
        # Which webhook URLs a change is posted to: outbox rows are written with the change.
        self.webhook_targets = webhook_targets

    # --- writing ------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[tuple[asyncpg.Connection, dt.datetime]]:
        """A transaction holding the write lock, and the database clock read under it: one clock
        for every replica, and change times that never go backwards along the sequence."""
        async with self.pool.acquire() as conn, conn.transaction():
            now = await conn.fetchval("SELECT clock_timestamp() FROM pg_advisory_xact_lock($1)", WRITE_LOCK)
            yield conn, now

    async def _commit(self, conn: asyncpg.Connection, changes: list[Change]) -> list[Change]:
        """Numbers the changes, writes the alerts, the history rows and the webhook outbox, and
        notifies the feeds (delivered on commit). Call under the write lock."""
        if not changes:
            return []
        rows = await conn.fetch(
            "SELECT nextval(pg_get_serial_sequence('alert_changes', 'sequence')) AS s "
            "FROM generate_series(1, $1)",
            len(changes),
        )
        numbers = sorted(r["s"] for r in rows)
        numbered = [c.numbered(s) for c, s in zip(changes, numbers, strict=True)]
        await conn.execute(
            _UPSERT_ALERTS,
            *_columns([(*_alert_values(c.alert), c.sequence, int(c.kind)) for c in numbered]),
        )
        await conn.execute(
            _INSERT_CHANGES,
            *_columns(
                [
                    (
                        c.sequence,
                        int(c.kind),
                        c.time,
                        c.actor,
                        c.note,
                        None if c.previous_state is None else int(c.previous_state),
                        None if c.previous_severity is None else int(c.previous_severity),
                        *_alert_values(c.alert),
                    )
                    for c in numbered
                ]
            ),
        )
        outbox = [(url, c.sequence) for c in numbered for url in self.webhook_targets(c)]
        if outbox:
            await conn.execute(
                "INSERT INTO alert_webhook_outbox (url, sequence) SELECT * FROM unnest($1::text[], $2::bigint[])",
                *_columns(outbox),
            )
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(numbered[-1].sequence))
        metrics.count_alert_changes(c.kind for c in numbered)
        return numbered

    async def fold_events(self, events: Sequence[EventFacts]) -> list[Change]:
        """Folds a batch of events in one transaction: skips the ids folded before, folds the rest
        per meter and kind (one change per alert touched), records the ids. Redelivering any part of
        the batch later changes nothing."""
        ids = sorted({e.event_id for e in events})
        if not ids:
            return []
        async with self._writing() as (conn, now):
            seen = await conn.fetch("SELECT event_id FROM alert_events WHERE event_id = ANY($1::text[])", ids)
            fresh = folding.distinct_new(events, {r["event_id"] for r in seen})
            if not fresh:
                return []
            groups = folding.group_by_key(fresh)
            keys = list(groups)
            rows = await conn.fetch(
                f"""SELECT {", ".join(_ALERT_ROW)} FROM alerts
                    WHERE state <> 3 AND (meter_id, kind) IN (
                        SELECT * FROM unnest($1::text[], $2::smallint[]))""",
                [m for m, _ in keys],
                [int(k) for _, k in keys],
            )
            active = {(r["meter_id"], Kind(r["kind"])): alert_from_row(r) for r in rows}
            changes: list[Change] = []
            folded_into: list[tuple[str, str]] = []
            for key, group in groups.items():
                change = folding.fold(active.get(key), group, now=now, new_alert_id=_new_alert_id)
                assert change is not None
                changes.append(change)
                folded_into.extend((e.event_id, change.alert.alert_id) for e in group)
            await conn.execute(
                """INSERT INTO alert_events (event_id, alert_id, receive_time)
                   SELECT e, a, $3 FROM unnest($1::text[], $2::text[]) AS u (e, a)
                   ON CONFLICT (event_id) DO NOTHING""",
                *_columns(folded_into),
                now,
            )
            return await self._commit(conn, changes)

    async def _transition(
        self, alert_id: str, apply: Callable[[Alert, dt.datetime], Change | None]
    ) -> tuple[Alert, Change | None]:
        async with self._writing() as (conn, now):
            row = await conn.fetchrow(
                f"SELECT {', '.join(_ALERT_ROW)} FROM alerts WHERE alert_id = $1", alert_id
            )
            if row is None:
                raise AlertNotFound(alert_id)
            alert = alert_from_row(row)
            change = apply(alert, now)
            if change is None:
                return alert, None
            (numbered,) = await self._commit(conn, [change])
            return numbered.alert, numbered

    async def acknowledge(self, alert_id: str, by: str, note: str) -> tuple[Alert, Change | None]:
        """Raises AlertNotFound, or folding.AlertIsResolved."""
        return await self._transition(alert_id, lambda a, now: folding.acknowledge(a, by, note, now))

    async def resolve(self, alert_id: str, by: str, note: str) -> tuple[Alert, Change | None]:
        """Raises AlertNotFound."""
        return await self._transition(alert_id, lambda a, now: folding.resolve(a, by, note, now))

    async def auto_resolve(self, quiet: dt.timedelta, limit: int = 500) -> list[Change]:
        """Resolves up to `limit` active alerts that have been quiet for `quiet`. Looks first without
        the write lock, so an idle sweep costs one index probe."""
        due = await self.pool.fetchval(
            "SELECT 1 FROM alerts WHERE state <> 3 AND last_event_receive_time <= clock_timestamp() - $1::interval LIMIT 1",
            quiet,
        )
        if due is None:
            return []
        async with self._writing() as (conn, now):
            rows = await conn.fetch(
                f"""SELECT {", ".join(_ALERT_ROW)} FROM alerts
                    WHERE state <> 3 AND last_event_receive_time <= $1
                    ORDER BY last_event_receive_time LIMIT $2""",
                now - quiet,
                limit,
            )
            changes = [c for r in rows if (c := folding.auto_resolve(alert_from_row(r), now, quiet))]
            return await self._commit(conn, changes)

    async def prune(self, older_than: dt.timedelta) -> int:
        """Deletes history and event ids older than the retention period, and webhook deliveries
        never made; advances the history horizon. Returns the number of history rows deleted."""
        # Not under the write lock: readers take the horizon and the rows from one snapshot, and
        # this transaction changes both at once; folding need not wait for a large delete.
        async with self.pool.acquire() as conn, conn.transaction():
            cutoff = await conn.fetchval("SELECT clock_timestamp() - $1::interval", older_than)
            keep_from = await conn.fetchval(
                "SELECT sequence FROM alert_changes WHERE change_time >= $1 ORDER BY sequence LIMIT 1", cutoff
            )
            # The horizon is the last sequence deleted (not keep_from - 1: a rolled-back number
            # there would turn a resume point that lost nothing into OUT_OF_RANGE).
            through = await conn.fetchval(
                "SELECT max(sequence) FROM alert_changes WHERE $1::bigint IS NULL OR sequence < $1", keep_from
            )
            deleted = 0
            if through is not None:
                status = await conn.execute("DELETE FROM alert_changes WHERE sequence <= $1", through)
                deleted = int(status.split()[-1])
                await conn.execute(
                    "UPDATE alert_history SET pruned_through = greatest(pruned_through, $1)", through
                )
            await conn.execute("DELETE FROM alert_events WHERE receive_time < $1", cutoff)
            return deleted

    async def drop_stale_deliveries(self, older_than: dt.timedelta) -> int:
        status = await self.pool.execute(
            "DELETE FROM alert_webhook_outbox WHERE create_time < clock_timestamp() - $1::interval",
            older_than,
        )
        return int(status.split()[-1])

    # --- reading ------------------------------------------------------------------------------------

    async def get(self, alert_id: str) -> Alert | None:
        row = await self.pool.fetchrow(
            f"SELECT {', '.join(_ALERT_ROW)} FROM alerts WHERE alert_id = $1", alert_id
        )
        return None if row is None else alert_from_row(row)

    @staticmethod
    async def _latest(conn: asyncpg.Connection) -> int:
        """The latest committed sequence (the horizon when the whole history has been pruned)."""
        return await conn.fetchval(
            "SELECT coalesce((SELECT max(sequence) FROM alert_changes), "
            "(SELECT pruned_through FROM alert_history))"
        )

    async def latest_sequence(self) -> int:
        async with self.pool.acquire() as conn:
            return await self._latest(conn)

    async def list_alerts(
        self, f: AlertFilter, *, after: tuple[dt.datetime, str] | None, limit: int
    ) -> tuple[list[Alert], int]:
        """Alerts matching f, newest create_time first (then alert_id, descending), after the given
        (create_time, alert_id) position; and the latest sequence, read in the same snapshot."""
        args: list[Any] = []
        where = _filter_sql(f, args)
        if after is not None:
            args.extend(after)
            where.append(f"(create_time, alert_id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        sql = (
            f"SELECT {', '.join(_ALERT_ROW)} FROM alerts"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY create_time DESC, alert_id DESC LIMIT ${len(args)}"
        )
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            sequence = await self._latest(conn)
            rows = await conn.fetch(sql, *args)
        return [alert_from_row(r) for r in rows], sequence

    async def snapshot(self, f: AlertFilter) -> tuple[list[Alert], int]:
        """The active alerts matching f in the order of their latest change, and the latest sequence,
        from one snapshot: every change after that sequence is news to whoever got this snapshot."""
        args: list[Any] = []
        where = ["state <> 3", *_filter_sql(f, args)]
        sql = f"SELECT {', '.join(_ALERT_ROW)} FROM alerts WHERE {' AND '.join(where)} ORDER BY sequence"
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            sequence = await self._latest(conn)
            rows = await conn.fetch(sql, *args)
        return [alert_from_row(r) for r in rows], sequence

    async def check_resume_point(self, after: int) -> None:
        """Raises HistoryGone when the changes after `after` cannot all be replayed."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            horizon = await conn.fetchval("SELECT pruned_through FROM alert_history")
            latest = await self._latest(conn)
        if after < horizon:
            raise HistoryGone(
                f"after_sequence {after} is older than the retained change history (it starts after "
                f"{horizon}); list the alerts again and watch from the listing's sequence"
            )
        if after > latest:
            raise HistoryGone(
                f"after_sequence {after} is ahead of the latest change ({latest}): it comes from another "
                "database or a restored one; list the alerts again and watch from the listing's sequence"
            )

    async def changes_after(
        self, after: int, *, up_to: int | None = None, limit: int = 500, check_horizon: bool = True
    ) -> list[Change]:
        """Changes with after < sequence <= up_to, in sequence order, at most limit. Raises
        HistoryGone when some of them have been pruned (checked in the same snapshot)."""
        args: list[Any] = [after, limit]
        bound = ""
        if up_to is not None:
            args.append(up_to)
            bound = " AND sequence <= $3"
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            if check_horizon:
                horizon = await conn.fetchval("SELECT pruned_through FROM alert_history")
                if after < horizon:
                    raise HistoryGone(
                        f"the changes after sequence {after} have been pruned (history starts after "
                        f"{horizon}); list the alerts again and watch from the listing's sequence"
                    )
            rows = await conn.fetch(
                f"{_CHANGE_SELECT} WHERE sequence > $1{bound} ORDER BY sequence LIMIT $2", *args
            )
        return [change_from_row(r) for r in rows]

    async def change(self, sequence: int) -> Change | None:
        row = await self.pool.fetchrow(f"{_CHANGE_SELECT} WHERE sequence = $1", sequence)
        return None if row is None else change_from_row(row)

    # --- webhook outbox -----------------------------------------------------------------------------

    async def claim_delivery(self, url: str, lease: dt.timedelta) -> Delivery | None:
        """Leases the oldest delivery due for url (SKIP LOCKED: replicas share the outbox)."""
        row = await self.pool.fetchrow(
            f"""WITH claimed AS (
                    UPDATE alert_webhook_outbox
                    SET lease_until = clock_timestamp() + $2::interval, attempts = attempts + 1
                    WHERE delivery_id = (
                        SELECT delivery_id FROM alert_webhook_outbox
                        WHERE url = $1 AND lease_until < clock_timestamp()
                        ORDER BY delivery_id LIMIT 1 FOR UPDATE SKIP LOCKED)
                    RETURNING delivery_id, url, sequence, attempts)
                SELECT claimed.delivery_id, claimed.url, claimed.attempts,
                       {", ".join(f"c.{col}" for col in _CHANGE_ROW)}
                FROM claimed JOIN alert_changes c USING (sequence)""",
            url,
            lease,
        )
        if row is None:
            return None
        return Delivery(row["delivery_id"], row["url"], row["attempts"], change_from_row(row))

    async def finish_delivery(self, delivery_id: int) -> None:
        await self.pool.execute("DELETE FROM alert_webhook_outbox WHERE delivery_id = $1", delivery_id)

    async def postpone_delivery(self, delivery_id: int, delay: dt.timedelta) -> None:
        await self.pool.execute(
            "UPDATE alert_webhook_outbox SET lease_until = clock_timestamp() + $2::interval WHERE delivery_id = $1",
            delivery_id,
            delay,
        )

    async def pending_deliveries(self) -> int:
        return await self.pool.fetchval("SELECT count(*) FROM alert_webhook_outbox")
