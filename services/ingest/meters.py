"""The meter registry: validation of meter definitions, storage, and the cache ingest checks readings against."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

METER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CATEGORIES = ("residential", "commercial", "industrial", "agricultural", "feeder")


@dataclass(frozen=True)
class MeterRecord:
    meter_id: str
    category: str
    tariff_id: str = ""
    sanctioned_load_kw: float = 0.0
    rated_current_a: float = 0.0
    nominal_voltage_v: float = 230.0
    interval_seconds: int = 900
    time_zone: str = "UTC"
    labels: dict[str, str] = field(default_factory=dict)
    create_time: Any = None
    last_read_time: Any = None
    last_seen_time: Any = None


class InvalidMeter(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field_name = field_name


def check_meter(m: MeterRecord) -> None:
    """Raises InvalidMeter naming the first bad field and its value."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not METER_ID.match(m.meter_id):
        raise InvalidMeter("meter.meter_id", f"{m.meter_id!r} must be 1-64 characters of [A-Za-z0-9._:-]")
    if m.category not in CATEGORIES:
        raise InvalidMeter("meter.category", f"{m.category!r} must be one of {', '.join(CATEGORIES)}")
    for name in ("sanctioned_load_kw", "rated_current_a", "nominal_voltage_v"):
        v = getattr(m, name)
        if not math.isfinite(v) or v < 0:
            raise InvalidMeter(f"meter.{name}", f"{v!r} must be a finite number >= 0")
    if not 0 < m.nominal_voltage_v <= 500:
        raise InvalidMeter("meter.nominal_voltage_v", f"{m.nominal_voltage_v!r} must be within 0-500 V")
    if not 0 < m.interval_seconds <= 86_400:
        raise InvalidMeter("meter.interval_seconds", f"{m.interval_seconds} must be within 1-86400")
    try:
        ZoneInfo(m.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidMeter("meter.time_zone", f"{m.time_zone!r} is not an IANA time zone") from None


_COLUMNS = (
    "meter_id, category, tariff_id, sanctioned_load_kw, rated_current_a, nominal_voltage_v, "
    "interval_seconds, time_zone, labels, create_time, last_read_time, last_seen_time"
)


def _record(row: asyncpg.Record) -> MeterRecord:
    d = dict(row)
    d["labels"] = json.loads(d["labels"]) if isinstance(d["labels"], str) else d["labels"]
    return MeterRecord(**d)


async def upsert_meter(conn: asyncpg.Connection | asyncpg.Pool, m: MeterRecord) -> tuple[MeterRecord, bool]:
    row = await conn.fetchrow(
        f"""INSERT INTO meters (meter_id, category, tariff_id, sanctioned_load_kw, rated_current_a,
                               nominal_voltage_v, interval_seconds, time_zone, labels)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
            ON CONFLICT (meter_id) DO UPDATE SET
                category = EXCLUDED.category, tariff_id = EXCLUDED.tariff_id,
                sanctioned_load_kw = EXCLUDED.sanctioned_load_kw, rated_current_a = EXCLUDED.rated_current_a,
                nominal_voltage_v = EXCLUDED.nominal_voltage_v, interval_seconds = EXCLUDED.interval_seconds,
                time_zone = EXCLUDED.time_zone, labels = EXCLUDED.labels
            RETURNING {_COLUMNS}, (xmax = 0) AS created""",
        m.meter_id,
        m.category,
        m.tariff_id,
        m.sanctioned_load_kw,
        m.rated_current_a,
        m.nominal_voltage_v,
        m.interval_seconds,
        m.time_zone,
        json.dumps(m.labels, sort_keys=True),
    )
    assert row is not None
    d = dict(row)
    created = d.pop("created")
    return _record(d), created  # type: ignore[arg-type]


async def get_meter(conn: asyncpg.Connection | asyncpg.Pool, meter_id: str) -> MeterRecord | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM meters WHERE meter_id = $1", meter_id)
    return _record(row) if row else None


async def list_meters(
    conn: asyncpg.Connection | asyncpg.Pool, *, after: str, limit: int, category: str | None
) -> list[MeterRecord]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM meters
            WHERE meter_id > $1 AND ($2::text IS NULL OR category = $2)
            ORDER BY meter_id LIMIT $3""",
        after,
        category,
        limit,
    )
    return [_record(r) for r in rows]


class MeterCache:
    """Which meter ids are registered, as ingest needs to know for every reading. Known ids are kept
    for `ttl` seconds; unknown ones are looked up in one query per batch, so a meter registered
    through another ingest replica is accepted on its first reading."""

    def __init__(self, pool: asyncpg.Pool, ttl: float) -> None:
        self.pool = pool
        self.ttl = ttl
        self._known: dict[str, float] = {}

    def add(self, meter_id: str) -> None:
        self._known[meter_id] = time.monotonic() + self.ttl

    async def known(self, meter_ids: Iterable[str]) -> set[str]:
        now = time.monotonic()
        ids = [m for m in meter_ids if m]
        hit = {m for m in ids if self._known.get(m, 0.0) > now}
        missing = [m for m in ids if m not in hit]
        if missing:
            rows = await self.pool.fetch(
                "SELECT meter_id FROM meters WHERE meter_id = ANY($1::text[])", missing
            )
            for r in rows:
                self.add(r["meter_id"])
                hit.add(r["meter_id"])
        return hit
