"""Live alert changes for WatchAlerts: one PostgreSQL LISTEN per process, fanned out to any number of
watchers through bounded per-watcher queues, with replay from the change history for resuming and for
watchers that fall behind.

Every transaction that changes alerts sends NOTIFY (delivered on commit, in commit order) on one
channel. The feed wakes on it, reads the new rows once, in sequence order, from alert_changes (so
replicas see each other's changes, and a missed notification is repaired by the next one or by a
periodic poll), and offers each change to every subscription whose filter matches.

The feed never waits for a watcher: a subscription whose queue is full is dropped from the fan-out
and marked overflowed. Its watcher sends what it had queued, then catches up from the history table
by sequence at its own pace and subscribes again. So a slow watcher costs its own latency and one
bounded queue of memory, never the pipeline's time. One that falls behind the retained history
(days) is ended with OUT_OF_RANGE like any stale resume point.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import structlog

from services.alerts.folding import AlertFilter, Change
from services.alerts.store import NOTIFY_CHANNEL, AlertStore, snapshot_change
from services.common.errors import is_transient

log = structlog.get_logger(__name__)


class FeedClosed(Exception):
    """The service is stopping; the watcher should resume elsewhere after `sequence`."""

    def __init__(self, sequence: int) -> None:
        super().__init__(f"the alert service is stopping; resume with after_sequence={sequence}")
        self.sequence = sequence


class Subscription:
    """One watcher's queue. `start`: the feed had dispatched every change up to this sequence before
    the subscription existed; it receives every matching change after it, until it overflows."""

    def __init__(self, filt: AlertFilter, max_size: int, start: int) -> None:
        self.filter = filt
        self.start = start
        self.overflowed = False
        self.closed = False
        self._max = max_size
        self._items: deque[Change] = deque()
        self._ready = asyncio.Event()

    def offer(self, change: Change) -> bool:
        """Queues a matching change; False when the queue is full (the subscription is now dead)."""
        if not self.filter.matches_change(change):
            return True
        if len(self._items) >= self._max:
            self.overflowed = True
            self._ready.set()
            return False
        self._items.append(change)
        self._ready.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self) -> Change | None:
        """The next queued change; None once the queue is drained and it overflowed or was closed."""
        while not self._items:
            if self.overflowed or self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class ChangeFeed:
    def __init__(
        self,
        store: AlertStore,
        database_url: str,
        *,
        queue_size: int = 1000,
        poll_seconds: float = 5.0,
        page_size: int = 500,
    ) -> None:
        self.store = store
        self.database_url = database_url
        self.queue_size = queue_size
        self.poll_seconds = poll_seconds
        self.page_size = page_size
        self.position = 0  # every change up to here has been offered to the subscriptions
        self.closed = False
        self._subs: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._listeners: list[Any] = []

    @property
    def watchers(self) -> int:
        return len(self._subs)

    async def start(self) -> None:
        """Listens before reading the position, so no commit falls between the two."""
        await self._listen()
        self.position = await self.store.latest_sequence()

    def wake(self) -> None:
        """A hint that changes were committed (by this process); NOTIFY says the same a moment later."""
        self._wake.set()

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.database_url)
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        conn.add_termination_listener(self._notified)
        self._conn = conn

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    async def run(self) -> None:
        delay = 0.2
        try:
            while not self.closed:
                try:
                    if self._conn is None or self._conn.is_closed():
                        await self._drop_connection()
                        await self._listen()
                    self._wake.clear()
                    await self._catch_up()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
                    except TimeoutError:
                        # Quiet for a while: make sure the listening connection is still alive.
                        assert self._conn is not None
                        await self._conn.execute("SELECT 1")
                    delay = 0.2
                except Exception as exc:
                    if not (is_transient(exc) or isinstance(exc, OSError)):
                        raise
                    log.warning("change feed lost PostgreSQL; retrying", error=repr(exc), retry_in=delay)
                    await self._drop_connection()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            await self._drop_connection()

    async def _catch_up(self) -> None:
        while True:
            changes = await self.store.changes_after(self.position, limit=self.page_size, check_horizon=False)
            for change in changes:
                self.position = change.sequence
                self._dispatch(change)
            if len(changes) < self.page_size:
                return

    def _dispatch(self, change: Change) -> None:
        dead = [s for s in self._subs if not s.offer(change)]
        for s in dead:
            self._subs.discard(s)
            log.info("watcher fell behind; it catches up from the change history", sequence=change.sequence)

    def subscribe(self, filt: AlertFilter) -> Subscription:
        sub = Subscription(filt, self.queue_size, self.position)
        if self.closed:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def close(self) -> None:
        """Ends every watch (the service is stopping): watchers are told where to resume."""
        self.closed = True
        for s in self._subs:
            s.close()
        self._subs.clear()
        self._wake.set()

    async def watch(self, filt: AlertFilter, after: int | None) -> AsyncIterator[Change]:
        """The changes a watcher is sent, in sequence order, each once.

        after=None: first the active alerts matching filt (one change each: the alert's latest), then
        every matching change after the snapshot. after=N: every matching change after N, replayed
        from the history, then live ones. Raises store.HistoryGone for a resume point the history
        cannot serve, FeedClosed when the service stops."""
        sub = self.subscribe(filt)
        try:
            if after is None:
                alerts, cursor = await self.store.snapshot(filt)
                for alert in alerts:
                    yield snapshot_change(alert)
            else:
                await self.store.check_resume_point(after)
                cursor = after
            while True:
                # Replay: the history up to where the subscription took over (nothing, after a
                # snapshot: the snapshot is at least as new).
                while cursor < sub.start:
                    changes = await self.store.changes_after(cursor, up_to=sub.start, limit=self.page_size)
                    for change in changes:
                        cursor = change.sequence
                        if filt.matches_change(change):
                            yield change
                    if len(changes) < self.page_size:
                        break
                # Live: switch over by sequence, so nothing is sent twice.
                while (change := await sub.next()) is not None:
                    if change.sequence > cursor:
                        cursor = change.sequence
                        yield change
                if sub.closed or self.closed:
                    raise FeedClosed(cursor)
                # Overflowed: the queue was sent; subscribe again and replay the gap from the history.
                self.unsubscribe(sub)
                sub = self.subscribe(filt)
        finally:
            self.unsubscribe(sub)
