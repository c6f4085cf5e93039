"""PostgreSQL access of the anomaly service: meters as the detectors see them, the per-meter detector
state, stored reading history, and the registry of trained detector versions."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from services.anomaly.model import DetectorKind, MeterInfo
from services.ingest.columns import FLOAT_COLUMNS, ReadingColumns

UTC = dt.UTC


def micros_to_dt(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=int(us))


def dt_to_micros(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)


class MeterInfoCache:
    """Meter attributes the detectors need, cached for a while (they rarely change)."""

    def __init__(self, pool: asyncpg.Pool, ttl: float) -> None:
        self.pool = pool
        self.ttl = ttl
        self._cache: dict[str, tuple[float, MeterInfo | None]] = {}

    async def get(self, meter_ids: Sequence[str]) -> dict[str, MeterInfo]:
        """The registered meters among meter_ids (unregistered ones are absent)."""
        now = time.monotonic()
        missing = [m for m in meter_ids if (hit := self._cache.get(m)) is None or now - hit[0] > self.ttl]
        if missing:
            rows = await self.pool.fetch(
                "SELECT meter_id, category, nominal_voltage_v, rated_current_a, interval_seconds, time_zone, "
                "labels FROM meters WHERE meter_id = ANY($1::text[])",
                missing,
            )
            found = {r["meter_id"]: _info(r) for r in rows}
            for m in missing:
                self._cache[m] = (now, found.get(m))
        out = {}
        for m in meter_ids:
            info = self._cache[m][1]
            if info is not None:
                out[m] = info
        return out


def _info(r: asyncpg.Record) -> MeterInfo:
    labels = r["labels"]
    if isinstance(labels, str):
        labels = json.loads(labels)
    return MeterInfo(
        meter_id=r["meter_id"],
        category=r["category"],
        nominal_voltage_v=r["nominal_voltage_v"],
        rated_current_a=r["rated_current_a"],
        interval_seconds=r["interval_seconds"],
        time_zone=r["time_zone"],
        labels=dict(labels or {}),
    )


async def all_meters(pool: asyncpg.Pool, meter_ids: Sequence[str] = ()) -> dict[str, MeterInfo]:
    if meter_ids:
        rows = await pool.fetch(
            "SELECT meter_id, category, nominal_voltage_v, rated_current_a, interval_seconds, time_zone, labels "
            "FROM meters WHERE meter_id = ANY($1::text[])",
            list(meter_ids),
        )
    else:
        rows = await pool.fetch(
            "SELECT meter_id, category, nominal_voltage_v, rated_current_a, interval_seconds, time_zone, labels "
            "FROM meters"
        )
    return {r["meter_id"]: _info(r) for r in rows}


async def load_states(pool: asyncpg.Pool, meter_ids: Sequence[str]) -> list[tuple[str, bytes]]:
    rows = await pool.fetch(
        "SELECT meter_id, state FROM anomaly_meter_state WHERE meter_id = ANY($1::text[])", list(meter_ids)
    )
    return [(r["meter_id"], bytes(r["state"])) for r in rows]


async def save_states(pool: asyncpg.Pool, rows: Sequence[tuple[str, bytes]]) -> None:
    if not rows:
        return
    await pool.execute(
        """INSERT INTO anomaly_meter_state (meter_id, state, update_time)
           SELECT m, s, now() FROM unnest($1::text[], $2::bytea[]) AS t(m, s)
           ON CONFLICT (meter_id) DO UPDATE SET state = excluded.state, update_time = excluded.update_time""",
        [m for m, _ in rows],
        [s for _, s in rows],
    )


async def gap_candidates(
    pool: asyncpg.Pool, gap_intervals: int, max_age_days: float
) -> list[tuple[MeterInfo, int]]:
    """Meters whose last stored reading is older than gap_intervals of their interval (and younger
    than max_age_days): (meter, last read_time in µs)."""
    rows = await pool.fetch(
        """SELECT meter_id, category, nominal_voltage_v, rated_current_a, interval_seconds, time_zone, labels,
                  last_read_time
             FROM meters
            WHERE last_read_time IS NOT NULL
              AND last_read_time < now() - make_interval(secs => interval_seconds * $1::double precision)
              AND last_read_time > now() - make_interval(days => $2::integer)""",
        gap_intervals,
        max(1, int(max_age_days)),
    )
    return [(_info(r), dt_to_micros(r["last_read_time"])) for r in rows]


_HISTORY_SQL = (
    "SELECT meter_id, (extract(epoch FROM read_time) * 1000000)::bigint AS t, interval_seconds, "
    + ", ".join(f"coalesce({c}, 'NaN'::float8) AS {c}" for c in FLOAT_COLUMNS)
    + " FROM readings WHERE meter_id = ANY($1::text[]) AND read_time >= $2 AND read_time < $3"
    " ORDER BY meter_id, read_time"
)


async def load_history(
    pool: asyncpg.Pool, meter_ids: Sequence[str], start: dt.datetime, end: dt.datetime
) -> ReadingColumns:
    """Stored readings of these meters in [start, end), as columns sorted by meter and time."""
    rows = await pool.fetch(_HISTORY_SQL, list(meter_ids), start, end)
    return records_to_columns(rows)


def records_to_columns(rows: Sequence[Any]) -> ReadingColumns:
    n = len(rows)
    ids = [r[0] for r in rows]
    pos: dict[str, int] = {m: i for i, m in enumerate(dict.fromkeys(ids))}
    return ReadingColumns(
        meter_ids=list(pos),
        meter_index=np.fromiter((pos[m] for m in ids), dtype=np.uint32, count=n),
        read_time_unix_micros=np.fromiter((r[1] for r in rows), dtype=np.int64, count=n),
        interval_seconds=np.fromiter((r[2] for r in rows), dtype=np.int32, count=n),
        **{
            c: np.fromiter((r[3 + k] for r in rows), dtype=np.float64, count=n)
            for k, c in enumerate(FLOAT_COLUMNS)
        },
    )


async def meters_with_history(
    pool: asyncpg.Pool, start: dt.datetime, end: dt.datetime, meter_ids: Sequence[str]
) -> list[tuple[str, int]]:
    """(meter, readings in [start, end)) from the hourly rollup (cheap), largest first."""
    if meter_ids:
        rows = await pool.fetch(
            "SELECT meter_id, sum(reading_count)::bigint AS n FROM readings_hourly "
            "WHERE hour_start_time >= $1 AND hour_start_time < $2 AND meter_id = ANY($3::text[]) "
            "GROUP BY meter_id ORDER BY meter_id",
            start,
            end,
            list(meter_ids),
        )
    else:
        rows = await pool.fetch(
            "SELECT meter_id, sum(reading_count)::bigint AS n FROM readings_hourly "
            "WHERE hour_start_time >= $1 AND hour_start_time < $2 GROUP BY meter_id ORDER BY meter_id",
            start,
            end,
        )
    return [(r["meter_id"], int(r["n"])) for r in rows]


# --- model registry ---------------------------------------------------------------------------

PREFIX = {DetectorKind.ISOLATION_FOREST: "iforest", DetectorKind.AUTOENCODER: "autoencoder"}


@dataclass(frozen=True)
class RegisteredModel:
    id: int
    detector: DetectorKind
    model_version: str
    state: str
    create_time: dt.datetime
    promote_time: dt.datetime | None
    training_start_time: dt.datetime | None
    training_end_time: dt.datetime | None
    meter_count: int
    training_sample_count: int
    precision: float | None
    recall: float | None
    f1: float | None
    roc_auc: float | None
    evaluated_count: int
    anomalous_count: int
    promotion_reason: str


_MODEL_COLUMNS = (
    "id, detector, model_version, state, create_time, promote_time, training_start_time, training_end_time, "
    "meter_count, training_sample_count, precision, recall, f1, roc_auc, evaluated_count, anomalous_count, "
    "promotion_reason"
)


def _model(r: asyncpg.Record) -> RegisteredModel:
    d = dict(r)
    d["detector"] = DetectorKind(d["detector"])
    return RegisteredModel(**d)


async def next_version(conn: asyncpg.Connection, detector: DetectorKind) -> str:
    n = await conn.fetchval("SELECT count(*) FROM detector_models WHERE detector = $1", int(detector))
    return f"{PREFIX[detector]}-{int(n) + 1}"


async def register_model(
    pool: asyncpg.Pool,
    *,
    detector: DetectorKind,
    artifact: bytes,
    training_range_us: tuple[int, int],
    meter_count: int,
    training_sample_count: int,
    metrics: Any,
    params: dict[str, Any],
    promote: bool,
    promotion_reason: str,
) -> RegisteredModel:
    """Registers a new version (named <detector>-<n>) and, if promote, makes it the one serving."""
    async with pool.acquire() as conn, conn.transaction():
        # Serialises registrations per detector: version numbers and the single serving row.
        await conn.execute("SELECT pg_advisory_xact_lock(727001, $1)", int(detector))
        version = await next_version(conn, detector)
        if promote:
            await conn.execute(
                "UPDATE detector_models SET state = 'retired' WHERE detector = $1 AND state = 'serving'",
                int(detector),
            )
        row = await conn.fetchrow(
            f"""INSERT INTO detector_models (detector, model_version, state, promote_time, training_start_time,
                   training_end_time, meter_count, training_sample_count, precision, recall, f1, roc_auc,
                   evaluated_count, anomalous_count, params, promotion_reason, artifact)
               VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                       $15::jsonb, $16, $17)
               RETURNING {_MODEL_COLUMNS}""",
            int(detector),
            version,
            "serving" if promote else "candidate",
            promote,
            micros_to_dt(training_range_us[0]),
            micros_to_dt(training_range_us[1]),
            meter_count,
            training_sample_count,
            metrics.precision,
            metrics.recall,
            metrics.f1,
            metrics.roc_auc,
            metrics.evaluated_count,
            metrics.anomalous_count,
            json.dumps(params),
            promotion_reason,
            artifact,
        )
    return _model(row)


async def serving_models(pool: asyncpg.Pool) -> dict[DetectorKind, tuple[str, bytes]]:
    rows = await pool.fetch(
        "SELECT detector, model_version, artifact FROM detector_models WHERE state = 'serving'"
    )
    return {DetectorKind(r["detector"]): (r["model_version"], bytes(r["artifact"])) for r in rows}


async def serving_versions(pool: asyncpg.Pool) -> dict[DetectorKind, str]:
    rows = await pool.fetch("SELECT detector, model_version FROM detector_models WHERE state = 'serving'")
    return {DetectorKind(r["detector"]): r["model_version"] for r in rows}


async def list_models(
    pool: asyncpg.Pool, *, detector: int, state: str | None, limit: int, before_id: int | None
) -> list[RegisteredModel]:
    rows = await pool.fetch(
        f"""SELECT {_MODEL_COLUMNS} FROM detector_models
             WHERE ($1 = 0 OR detector = $1) AND ($2::text IS NULL OR state = $2)
               AND ($3::bigint IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4""",
        detector,
        state,
        before_id,
        limit,
    )
    return [_model(r) for r in rows]


def chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
