"""Real NATS JetStream and PostgreSQL for the tests: the servers at NATS_URL / DATABASE_URL when set,
otherwise embedded ones started once per session from the PyPI wheels."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.common.embedded import EmbeddedNats, EmbeddedPostgres
from tests.support import Platform

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def admin_db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", database="postgres")
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def log_dir() -> Path:
    d = ARTIFACTS / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
async def platform(nats_url: str, admin_db_url: str, log_dir: Path) -> AsyncIterator[Platform]:
    """An empty platform: its own database and stream prefix; services started by the test."""
    p = Platform(nats_url=nats_url, admin_db_url=admin_db_url, log_dir=log_dir)
    await p.create()
    try:
        yield p
    finally:
        await p.destroy()
