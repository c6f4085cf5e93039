"""Start-up of every service: numbered SQL migrations (services/common/db.py) against a real
PostgreSQL, and settings from the environment (services/common/config.py) that stop a misconfigured
service at once with a message naming the variable."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import asyncpg
import pytest

from services.common.db import apply_migrations, load_migrations, with_database

ROOT = Path(__file__).resolve().parent.parent


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # Written in reverse name order, so no file-system listing order can pass for sorting.
    for name in sorted(files, reverse=True):
        (directory / name).write_text(files[name])
    return directory


# --- load_migrations -------------------------------------------------------------------------------


def test_migrations_load_in_number_order_and_other_files_are_ignored(tmp_path: Path) -> None:
    d = write(
        tmp_path,
        {
            "0010_later.sql": "SELECT 10;",
            "0002_second.sql": "SELECT 2;",
            "0001_first_one.sql": "SELECT 1;",
            "README.md": "not a migration",
        },
    )
    migs = load_migrations(d)
    assert [(m.version, m.name, m.sql) for m in migs] == [
        (1, "first_one", "SELECT 1;"),
        (2, "second", "SELECT 2;"),
        (10, "later", "SELECT 10;"),
    ]


@pytest.mark.parametrize(
    "bad", ["1_init.sql", "001_init.sql", "00001_init.sql", "0001-init.sql", "0001_Init.sql", "init.sql"]
)
def test_a_badly_named_migration_file_is_rejected_by_name(tmp_path: Path, bad: str) -> None:
    d = write(tmp_path, {"0001_ok.sql": "SELECT 1;", bad: "SELECT 2;"})
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        load_migrations(d)


def test_two_migrations_with_one_number_are_rejected(tmp_path: Path) -> None:
    d = write(tmp_path, {"0001_a.sql": "SELECT 1;", "0002_b.sql": "SELECT 2;", "0002_c.sql": "SELECT 3;"})
    with pytest.raises(ValueError, match="share a number"):
        load_migrations(d)


def test_the_shipped_migrations_are_well_formed() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions and versions[0] == 1 and versions == sorted(set(versions))


# --- apply_migrations against PostgreSQL -----------------------------------------------------------


async def _admin(admin_db_url: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_db_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def db_url(admin_db_url: str) -> AsyncIterator[str]:
    """A database of its own for the test, dropped afterwards."""
    name = "migr" + uuid.uuid4().hex[:10]
    await _admin(admin_db_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_db_url, name)
    finally:
        await _admin(admin_db_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db_url)
    try:
        yield c
    finally:
        await c.close()


# Each migration logs its own version: the log shows what ran, how often and in which order.
LOGGED = {
    "0001_create_log.sql": "CREATE TABLE log (seq serial PRIMARY KEY, version integer NOT NULL);\n"
    "INSERT INTO log (version) VALUES (1);",
    "0002_second.sql": "INSERT INTO log (version) VALUES (2);",
    "0010_tenth.sql": "INSERT INTO log (version) VALUES (10);",
}


async def ran(conn: asyncpg.Connection) -> list[int]:
    return [r["version"] for r in await conn.fetch("SELECT version FROM log ORDER BY seq")]


async def recorded(conn: asyncpg.Connection) -> list[tuple[int, str, str]]:
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


async def test_migrations_are_applied_in_order_once_and_recorded(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write(tmp_path, LOGGED)
    assert await apply_migrations(conn, d) == [1, 2, 10]
    assert await ran(conn) == [1, 2, 10]
    assert await recorded(conn) == [
        (1, "create_log", hashlib.sha256(LOGGED["0001_create_log.sql"].encode()).hexdigest()),
        (2, "second", hashlib.sha256(LOGGED["0002_second.sql"].encode()).hexdigest()),
        (10, "tenth", hashlib.sha256(LOGGED["0010_tenth.sql"].encode()).hexdigest()),
    ]

    # A restart applies nothing again.
    assert await apply_migrations(conn, d) == []
    assert await ran(conn) == [1, 2, 10]

    # A release with a new migration applies just that one.
    write(d, {"0011_eleventh.sql": "INSERT INTO log (version) VALUES (11);"})
    assert await apply_migrations(conn, d) == [11]
    assert await ran(conn) == [1, 2, 10, 11]
    assert [v for v, _, _ in await recorded(conn)] == [1, 2, 10, 11]


async def test_a_service_refuses_to_start_when_an_applied_migration_was_edited(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write(tmp_path, LOGGED)
    await apply_migrations(conn, d)
    write(
        d,
        {
            "0002_second.sql": "INSERT INTO log (version) VALUES (2); -- edited after release",
            "0020_new.sql": "INSERT INTO log (version) VALUES (20);",
        },
    )
    with pytest.raises(RuntimeError, match=r"0002_second\.sql changed after it was applied"):
        await apply_migrations(conn, d)
    # Nothing after the edited migration ran either.
    assert await ran(conn) == [1, 2, 10]
    assert [v for v, _, _ in await recorded(conn)] == [1, 2, 10]


async def test_a_failing_migration_leaves_no_trace_and_does_not_block_the_next_start(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write(
        tmp_path,
        {
            **LOGGED,
            "0003_broken.sql": "CREATE TABLE half_done (x integer);\nINSERT INTO log (version) VALUES (1 / 0);",
        },
    )
    with pytest.raises(asyncpg.DivisionByZeroError):
        await apply_migrations(conn, d)
    assert await ran(conn) == [1, 2]
    assert [v for v, _, _ in await recorded(conn)] == [1, 2]
    assert await conn.fetchval("SELECT to_regclass('half_done')") is None

    # Fixed, and applied by another service's connection: the failed attempt holds no lock.
    write(
        d, {"0003_broken.sql": "CREATE TABLE half_done (x integer);\nINSERT INTO log (version) VALUES (3);"}
    )
    other = await asyncpg.connect(db_url)
    try:
        assert await asyncio.wait_for(apply_migrations(other, d), timeout=20) == [3, 10]
    finally:
        await other.close()
    assert await ran(conn) == [1, 2, 3, 10]


async def test_services_starting_together_on_a_fresh_database_apply_each_migration_once(
    admin_db_url: str, tmp_path: Path
) -> None:
    d = write(tmp_path, LOGGED)
    for _ in range(3):
        name = "migr" + uuid.uuid4().hex[:10]
        await _admin(admin_db_url, f'CREATE DATABASE "{name}"')
        conns = [await asyncpg.connect(with_database(admin_db_url, name)) for _ in range(8)]
        try:
            results = await asyncio.gather(*(apply_migrations(c, d) for c in conns), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, errors[0]
            assert sorted(v for r in results for v in r) == [1, 2, 10]
            assert await ran(conns[0]) == [1, 2, 10]
        finally:
            for c in conns:
                await c.close()
            await _admin(admin_db_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- load_settings: python -m services.ingest with bad configuration -------------------------------


class Exit(NamedTuple):
    code: int
    stderr: str
    seconds: float


# Environments `python -m services.ingest` must refuse. The URLs point at closed ports: were the
# settings accepted, the service would go on trying to connect instead of exiting.
BAD_CONFIGS = {
    "no connection urls": {},
    "zero retention days": {
        "NATS_URL": "nats://127.0.0.1:9",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "METERMESH_RETENTION_DAYS": "0",
    },
}


@pytest.fixture(scope="module")
def refused() -> dict[str, Exit]:
    """Each bad configuration started at once (concurrently, to keep the suite fast)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL") and not k.startswith("METERMESH_")
    }
    started = time.monotonic()
    procs = {
        what: subprocess.Popen(
            [sys.executable, "-m", "services.ingest"],
            env={**clean, **env},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for what, env in BAD_CONFIGS.items()
    }
    out = {}
    try:
        for what, proc in procs.items():
            _, err = proc.communicate(timeout=20)
            out[what] = Exit(proc.returncode, err, time.monotonic() - started)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def named(stderr: str) -> list[str]:
    """The environment variables the error lines name (lines like `  NATS_URL: Field required`)."""
    return re.findall(r"^\s+([A-Z][A-Z0-9_]*): ", stderr, re.MULTILINE)


@pytest.mark.parametrize("what", BAD_CONFIGS)
def test_a_misconfigured_ingest_exits_with_code_2_at_once(refused: dict[str, Exit], what: str) -> None:
    result = refused[what]
    assert result.code == 2, result.stderr
    assert result.seconds < 10, "a misconfigured service must not wait for anything before giving up"


def test_missing_connection_urls_are_both_reported(refused: dict[str, Exit]) -> None:
    result = refused["no connection urls"]
    assert len(named(result.stderr)) == 2, result.stderr
    assert all("Field required" in line for line in result.stderr.splitlines()[1:]), result.stderr


def test_missing_connection_urls_are_named_nats_url_and_database_url(refused: dict[str, Exit]) -> None:
    result = refused["no connection urls"]
    assert sorted(named(result.stderr)) == ["DATABASE_URL", "NATS_URL"], result.stderr


def test_zero_retention_days_is_reported_naming_the_variable_and_the_value(refused: dict[str, Exit]) -> None:
    result = refused["zero retention days"]
    assert named(result.stderr) == ["METERMESH_RETENTION_DAYS"], result.stderr
    assert "greater than or equal to 1 (got '0')" in result.stderr
