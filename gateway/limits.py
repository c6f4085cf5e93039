"""Limits the gateway puts on callers: a token bucket per token subject, and the upstream deadline of
a call from its grpc-timeout header, the defaults and the caps."""

from __future__ import annotations

import time

import grpc

from gateway.grpcweb import GrpcError, parse_timeout


class RateLimiter:
    """A token bucket per key: `rate` calls per second on average, `burst` at once. Buckets that
    have refilled completely are forgotten, so idle subjects cost no memory."""

    def __init__(self, rate_per_second: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._max_keys = max_keys

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, now: float | None = None) -> float:
        """Takes one token; returns 0, or the seconds until one is available when the bucket is empty."""
        if not self.enabled:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= self._max_keys:
            self._prune(now)
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

    def check(self, key: str) -> None:
        wait = self.take(key)
        if wait:
            raise GrpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit exceeded for {key!r}: at most {self.rate:g} calls/s (bursts of "
                f"{self.burst:g}); retry in {max(wait, 0.001):.3f} s",
            )

    def _prune(self, now: float) -> None:
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self._max_keys:  # all busy: start over rather than grow without bound
            self._buckets.clear()


def upstream_timeout(
    header: str | None, *, streaming: bool, default: float, cap: float, stream_cap: float
) -> float:
    """The deadline (seconds) to give the upstream call: the client's grpc-timeout when sent, else the
    default (unary) or the stream cap (streaming), never more than the cap."""
    limit = stream_cap if streaming else cap
    if header:
        return min(parse_timeout(header), limit)
    return stream_cap if streaming else min(default, limit)
