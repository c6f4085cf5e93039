"""`python -m services.common.migrate`: applies the schema migrations and exits (the Kubernetes Job that
runs before the services; they apply the same migrations at start-up under the same advisory lock, so
whichever comes first does the work and the others find nothing left to do)."""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg
import structlog
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.config import load_settings
from services.common.db import apply_migrations
from services.common.errors import is_transient
from services.common.logging import configure_logging

log = structlog.get_logger(__name__)


class MigrateSettings(BaseSettings):
    """Only the database: migrating needs neither NATS nor a listen address."""

    model_config = SettingsConfigDict(env_prefix="METERMESH_", frozen=True, extra="ignore")

    database_url: str = Field(validation_alias="DATABASE_URL", min_length=1)
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    # How long to wait for PostgreSQL to accept connections (a Job may start before the database
    # cluster has elected its primary); past it the Job fails and its backoffLimit decides.
    migrate_wait_seconds: float = Field(default=300.0, ge=0)


def _retryable(exc: BaseException) -> bool:
    # Unreachable or still starting: wait. A rejected password or a broken migration: fail now.
    return is_transient(exc) or isinstance(exc, OSError)


async def migrate(settings: MigrateSettings) -> list[int]:
    deadline = time.monotonic() + settings.migrate_wait_seconds
    delay = 0.5
    while True:
        try:
            conn = await asyncpg.connect(settings.database_url, timeout=10)
            break
        except Exception as exc:
            if not _retryable(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("PostgreSQL not reachable yet", error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


def main() -> None:
    settings = load_settings(MigrateSettings)
    configure_logging("migrate", settings.log_level)
    try:
        applied = asyncio.run(migrate(settings))
    except Exception as exc:
        log.error("migrations failed", error=repr(exc))
        sys.exit(1)
    log.info("migrations up to date", applied_now=applied)


if __name__ == "__main__":
    main()
