"""Running services as child processes and waiting on their gRPC health (the gateway: an HTTP health
URL): used by `metermesh up`, the tests and the benchmarks alike, so all three exercise the same start
and stop paths."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def health_status(addr: str, service: str = "", timeout: float = 1.0) -> int | None:
    """The health status of `service` at addr, or None when nothing answers."""
    async with grpc.aio.insecure_channel(addr) as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return None
        return int(resp.status)


async def wait_serving(addr: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process serving {addr} exited with {proc.returncode}")
        if await health_status(addr) == health_pb2.HealthCheckResponse.SERVING:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{addr} was not SERVING within {timeout:g} s")


async def wait_http_ok(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """For HTTP servers (the gateway): waits until GET url answers 200."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the process serving {url} exited with {proc.returncode}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:g} s")


@dataclass
class ServiceProcess:
    name: str
    module: str
    addr: str
    env: dict[str, str]
    log_path: Path | None = None
    # An HTTP URL answering 200 once the process serves, for processes without gRPC health (the gateway).
    health_url: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor only, which stops children in order
        )

    async def wait_serving(self, timeout: float = 60.0) -> None:
        if self.health_url is not None:
            await wait_http_ok(self.health_url, timeout, self.proc)
        else:
            await wait_serving(self.addr, timeout, self.proc)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait for the graceful stop; SIGKILL if it takes longer than timeout."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()
