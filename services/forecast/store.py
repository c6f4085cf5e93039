"""PostgreSQL access of the forecast service: meters, their hourly history from the `readings_hourly`
rollup (UTC hours), peers for comparisons, and the registry of trained forecaster versions."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

UTC = dt.UTC
HOUR_US = 3_600_000_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def micros_to_dt(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=int(us))


def dt_to_micros(t: dt.datetime) -> int:
    return (t - EPOCH) // dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class MeterRow:
    meter_id: str
    category: str
    tariff_id: str
    sanctioned_load_kw: float
    interval_seconds: int
    time_zone: str

    @property
    def readings_per_hour(self) -> int:
        """Readings a complete hour holds (1 for hourly and longer intervals)."""
        return max(1, 3600 // max(1, self.interval_seconds))


_METER_COLUMNS = "meter_id, category, tariff_id, sanctioned_load_kw, interval_seconds, time_zone"


def _meter(r: asyncpg.Record) -> MeterRow:
    return MeterRow(**dict(r))


async def get_meter(pool: asyncpg.Pool, meter_id: str) -> MeterRow | None:
    row = await pool.fetchrow(f"SELECT {_METER_COLUMNS} FROM meters WHERE meter_id = $1", meter_id)
    return None if row is None else _meter(row)


async def get_meters(pool: asyncpg.Pool, meter_ids: Sequence[str]) -> dict[str, MeterRow]:
    rows = await pool.fetch(
        f"SELECT {_METER_COLUMNS} FROM meters WHERE meter_id = ANY($1::text[])", list(meter_ids)
    )
    return {r["meter_id"]: _meter(r) for r in rows}


@dataclass(frozen=True)
class HourlyRows:
    """One meter's stored rollup hours: UTC hour starts (µs), imported Wh and readings per hour."""

    hour_us: np.ndarray  # int64, ascending
    import_wh: np.ndarray  # float64
    reading_count: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.hour_us)


_EMPTY = HourlyRows(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))

_HOURLY_SQL = """
SELECT meter_id,
       array_agg((extract(epoch FROM hour_start_time) * 1000000)::int8 ORDER BY hour_start_time) AS t,
       array_agg(import_energy_wh ORDER BY hour_start_time) AS wh,
       array_agg(reading_count::int8 ORDER BY hour_start_time) AS n
  FROM readings_hourly
 WHERE meter_id = ANY($1::text[]) AND hour_start_time >= $2 AND hour_start_time < $3
 GROUP BY meter_id"""


async def load_hourly(
    pool: asyncpg.Pool, meter_ids: Sequence[str], start: dt.datetime, end: dt.datetime
) -> dict[str, HourlyRows]:
    """Rollup hours of these meters with hour_start_time in [start, end); meters without any are absent."""
    rows = await pool.fetch(_HOURLY_SQL, list(meter_ids), start, end)
    return {
        r["meter_id"]: HourlyRows(
            np.asarray(r["t"], dtype=np.int64),
            np.asarray(r["wh"], dtype=np.float64),
            np.asarray(r["n"], dtype=np.int64),
        )
        for r in rows
    }


async def load_meter_hourly(
    pool: asyncpg.Pool, meter_id: str, start: dt.datetime, end: dt.datetime
) -> HourlyRows:
    return (await load_hourly(pool, [meter_id], start, end)).get(meter_id, _EMPTY)


async def last_complete_hour(pool: asyncpg.Pool, meter_id: str, now: dt.datetime) -> dt.datetime | None:
    """Start of the meter's latest stored hour that has ended by now; None without any."""
    return await pool.fetchval(
        "SELECT max(hour_start_time) FROM readings_hourly "
        "WHERE meter_id = $1 AND hour_start_time <= $2::timestamptz - interval '1 hour'",
        meter_id,
        now,
    )


async def peer_meters(
    pool: asyncpg.Pool,
    *,
    category: str,
    tariff_id: str,
    exclude: str,
    start: dt.datetime,
    end: dt.datetime,
    limit: int,
) -> list[MeterRow]:
    """Up to `limit` other meters of the same category and tariff with stored hours in [start, end):
    a fixed pseudo-random sample (ordered by a hash of the id), the same on every call."""
    rows = await pool.fetch(
        f"""SELECT {_METER_COLUMNS} FROM meters m
             WHERE category = $1 AND tariff_id = $2 AND meter_id <> $3
               AND EXISTS (SELECT 1 FROM readings_hourly h WHERE h.meter_id = m.meter_id
                                                              AND h.hour_start_time >= $4
                                                              AND h.hour_start_time < $5)
             ORDER BY md5(meter_id) LIMIT $6""",
        category,
        tariff_id,
        exclude,
        start,
        end,
        limit,
    )
    return [_meter(r) for r in rows]


async def training_candidates(
    pool: asyncpg.Pool, start: dt.datetime, end: dt.datetime, meter_ids: Sequence[str], min_hours: int
) -> list[tuple[str, int]]:
    """(meter, stored hours in [start, end)) of meters with at least min_hours, most history first."""
    rows = await pool.fetch(
        """SELECT meter_id, count(*)::int8 AS n FROM readings_hourly
            WHERE hour_start_time >= $1 AND hour_start_time < $2
              AND (cardinality($3::text[]) = 0 OR meter_id = ANY($3::text[]))
            GROUP BY meter_id HAVING count(*) >= $4
            ORDER BY count(*) DESC, meter_id""",
        start,
        end,
        list(meter_ids),
        min_hours,
    )
    return [(r["meter_id"], int(r["n"])) for r in rows]


# --- model registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredModel:
    id: int
    model_version: str
    state: str
    create_time: dt.datetime
    promote_time: dt.datetime | None
    training_start_time: dt.datetime | None
    training_end_time: dt.datetime | None
    backtest_start_time: dt.datetime | None
    backtest_end_time: dt.datetime | None
    meter_count: int
    sample_count: int
    epochs: int
    seed: int
    hyperparameters: dict[str, Any]
    metrics: dict[str, float]
    baseline_metrics: dict[str, dict[str, float]]
    promotion_reason: str


_MODEL_COLUMNS = (
    "id, model_version, state, create_time, promote_time, training_start_time, training_end_time, "
    "backtest_start_time, backtest_end_time, meter_count, sample_count, epochs, seed, hyperparameters, "
    "metrics, baseline_metrics, promotion_reason"
)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _model(r: asyncpg.Record) -> RegisteredModel:
    d = dict(r)
    for k in ("hyperparameters", "metrics", "baseline_metrics"):
        d[k] = _json(d[k]) or {}
    return RegisteredModel(**d)


async def register_model(
    pool: asyncpg.Pool,
    *,
    artifact: bytes,
    training_range_us: tuple[int, int],
    backtest_range_us: tuple[int, int],
    meter_count: int,
    sample_count: int,
    epochs: int,
    seed: int,
    hyperparameters: dict[str, Any],
    metrics: dict[str, float],
    baseline_metrics: dict[str, dict[str, float]],
    promote: bool,
    promotion_reason: str,
    compared_with: str | None,
) -> RegisteredModel:
    """Registers a new version (lstm-<n>) and, if promote, makes it the one serving (the previous
    serving version, if any, is retired in the same transaction). A promotion decided against
    `compared_with` (the serving version then, None for none) is withdrawn when another version has
    been promoted since (by another replica): the new one is then registered as a candidate."""
    async with pool.acquire() as conn, conn.transaction():
        # Serialises registrations: version numbers and the single serving row.
        await conn.execute("SELECT pg_advisory_xact_lock(727005)")
        n = await conn.fetchval("SELECT count(*) FROM forecast_models")
        version = f"lstm-{int(n) + 1}"
        if promote:
            now_serving = await conn.fetchval(
                "SELECT model_version FROM forecast_models WHERE state = 'serving'"
            )
            if now_serving != compared_with:
                promote = False
                promotion_reason = (
                    f"not promoted: {now_serving} was promoted while this version was trained and compared "
                    f"with {compared_with or 'no serving version'}; train again to compare with it"
                )
        if promote:
            await conn.execute("UPDATE forecast_models SET state = 'retired' WHERE state = 'serving'")
        row = await conn.fetchrow(
            f"""INSERT INTO forecast_models (model_version, state, promote_time, training_start_time,
                   training_end_time, backtest_start_time, backtest_end_time, meter_count, sample_count,
                   epochs, seed, hyperparameters, metrics, baseline_metrics, promotion_reason, artifact)
               VALUES ($1, $2, CASE WHEN $3 THEN now() END, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb,
                       $13::jsonb, $14::jsonb, $15, $16)
               RETURNING {_MODEL_COLUMNS}""",
            version,
            "serving" if promote else "candidate",
            promote,
            micros_to_dt(training_range_us[0]),
            micros_to_dt(training_range_us[1]),
            micros_to_dt(backtest_range_us[0]),
            micros_to_dt(backtest_range_us[1]),
            meter_count,
            sample_count,
            epochs,
            seed,
            json.dumps(hyperparameters),
            json.dumps(metrics),
            json.dumps(baseline_metrics),
            promotion_reason,
            artifact,
        )
    return _model(row)


async def serving_version(pool: asyncpg.Pool) -> str | None:
    return await pool.fetchval("SELECT model_version FROM forecast_models WHERE state = 'serving'")


async def serving_model(pool: asyncpg.Pool) -> tuple[str, bytes] | None:
    row = await pool.fetchrow("SELECT model_version, artifact FROM forecast_models WHERE state = 'serving'")
    return None if row is None else (row["model_version"], bytes(row["artifact"]))


async def list_models(
    pool: asyncpg.Pool, *, state: str | None, limit: int, before_id: int | None
) -> list[RegisteredModel]:
    rows = await pool.fetch(
        f"""SELECT {_MODEL_COLUMNS} FROM forecast_models
             WHERE ($1::text IS NULL OR state = $1) AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3""",
        state,
        before_id,
        limit,
    )
    return [_model(r) for r in rows]
