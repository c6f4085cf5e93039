"""Test support for the gateway: starting it beside a test platform's services, tokens, the Node
gRPC-web client (Connect's transport, bundled from client.ts) and a hand-framing httpx client for what
Connect does not speak (application/grpc-web-text) or what a test must see on the wire."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf.message import Message

from gateway.auth import issue_token
from gateway.grpcweb import TRAILER_FLAG, parse_trailers, percent_decode
from services.common.embedded import free_port
from services.common.procs import ServiceProcess
from tests.support import Platform

ROOT = Path(__file__).resolve().parents[2]
CLIENT_TS = Path(__file__).resolve().parent / "client.ts"

# One secret per test session, never written anywhere.
SECRET = secrets.token_urlsafe(48)


def token(role: str, subject: str = "tester", meters: Iterable[str] = (), ttl: float = 3600.0) -> str:
    return issue_token(SECRET, role=role, subject=subject, meters=meters, ttl_seconds=ttl)


OPERATOR = "operator"
CONSUMER = "consumer"


@dataclass
class GatewayProc:
    addr: str
    proc: ServiceProcess

    @property
    def url(self) -> str:
        return f"http://{self.addr}"


async def start_gateway(platform: Platform, **env: str) -> GatewayProc:
    """The gateway in front of the platform's services (their addresses are in platform.env)."""
    addr = f"127.0.0.1:{free_port()}"
    proc = platform.process(
        "gateway",
        "gateway",
        addr,
        METERMESH_GATEWAY_ADDR=addr,
        METERMESH_GATEWAY_JWT_SECRET=SECRET,
        **env,
    )
    proc.health_url = f"http://{addr}/healthz"
    proc.start()
    await proc.wait_serving(30)
    return GatewayProc(addr, proc)


def build_node_client(out_dir: Path) -> Path:
    """Bundles client.ts (and the web/gen code it imports) into one ES module Node 20 can run."""
    out = out_dir / "grpcweb-client.mjs"
    subprocess.run(
        [
            str(ROOT / "node_modules" / ".bin" / "esbuild"),
            str(CLIENT_TS),
            "--bundle",
            "--platform=node",
            "--format=esm",
            "--target=node20",
            "--log-level=warning",
            f"--outfile={out}",
        ],
        check=True,
        cwd=ROOT,
    )
    return out


@dataclass
class NodeStream:
    """A running Node client: its JSON output lines as they come; cancel() aborts the call."""

    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)

    async def next_line(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            raise AssertionError(f"the node client ended without a result: {err.decode(errors='replace')}")
        line = json.loads(raw)
        self.lines.append(line)
        return line

    async def cancel(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"cancel\n")
        await self.proc.stdin.drain()

    async def finish(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Reads to the end; returns every line."""
        while True:
            line = await self.next_line(timeout)
            if "message" not in line:
                await asyncio.wait_for(self.proc.wait(), timeout)
                return self.lines

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@dataclass
class NodeClient:
    script: Path
    base_url: str

    async def start(
        self,
        service: str,
        method: str,
        request: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        timeout_ms: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> NodeStream:
        cmd = {
            "baseUrl": self.base_url,
            "token": token,
            "service": service,
            "method": method,
            "request": request or {},
            "timeoutMs": timeout_ms,
            "headers": headers or {},
        }
        node = shutil.which("node")
        assert node, "node (20+) is needed for the gRPC-web client tests"
        proc = await asyncio.create_subprocess_exec(
            node,
            str(self.script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await proc.stdin.drain()
        return NodeStream(proc)

    async def call(
        self, service: str, method: str, request: dict[str, Any] | None = None, **kw: Any
    ) -> NodeResult:
        stream = await self.start(service, method, request, **kw)
        try:
            return NodeResult(await stream.finish())
        finally:
            await stream.close()


@dataclass
class NodeResult:
    lines: list[dict[str, Any]]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [line["message"] for line in self.lines if "message" in line]

    @property
    def response(self) -> dict[str, Any]:
        assert self.ok, self.lines
        (message,) = self.messages
        return message

    @property
    def ok(self) -> bool:
        return bool(self.lines) and self.lines[-1].get("ok") is True

    @property
    def code(self) -> grpc.StatusCode:
        last = self.lines[-1]
        if last.get("ok"):
            return grpc.StatusCode.OK
        number = last["error"]["code"]
        return next(c for c in grpc.StatusCode if c.value[0] == number)

    @property
    def message(self) -> str:
        return self.lines[-1].get("error", {}).get("message", "")

    @property
    def details(self) -> list[dict[str, str]]:
        return self.lines[-1].get("error", {}).get("details", [])


# --- a hand-framing client (httpx) ---------------------------------------------------------------


def encode_request(message: Message | bytes, *, text: bool) -> bytes:
    payload = message if isinstance(message, bytes) else message.SerializeToString()
    framed = struct.pack(">BI", 0, len(payload)) + payload
    return base64.b64encode(framed) if text else framed


class FrameDecoder:
    """Incremental decoder of a gRPC-web response body, binary or base64 text (which may carry padded
    chunks back to back, so it is decoded in 4-character quanta, not as one base64 string)."""

    def __init__(self, text: bool) -> None:
        self.text = text
        self._pending_text = b""
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self.text:
            data = self._pending_text + data.translate(None, b"\r\n ")
            whole = len(data) // 4 * 4
            self._pending_text = data[whole:]
            data = b"".join(base64.b64decode(data[i : i + 4]) for i in range(0, whole, 4))
        self._buf += data
        frames = []
        while len(self._buf) >= 5:
            flags, length = struct.unpack(">BI", self._buf[:5])
            if len(self._buf) < 5 + length:
                break
            frames.append((flags, self._buf[5 : 5 + length]))
            self._buf = self._buf[5 + length :]
        return frames


@dataclass
class WebResult:
    http_status: int
    headers: httpx.Headers
    messages: list[bytes]
    trailers: dict[str, str]

    @property
    def code(self) -> grpc.StatusCode:
        number = int(self.trailers["grpc-status"])
        return next(c for c in grpc.StatusCode if c.value[0] == number)

    @property
    def message(self) -> str:
        return percent_decode(self.trailers.get("grpc-message", ""))


def web_headers(token: str | None, *, text: bool, timeout: str | None = None, **extra: str) -> dict[str, str]:
    headers = {
        "content-type": "application/grpc-web-text" if text else "application/grpc-web+proto",
        "x-grpc-web": "1",
        **extra,
    }
    if text:
        headers["accept"] = "application/grpc-web-text"
    if token:
        headers["authorization"] = f"Bearer {token}"
    if timeout:
        headers["grpc-timeout"] = timeout
    return headers


async def web_call(
    client: httpx.AsyncClient,
    method: str,
    request: Message | bytes,
    *,
    token: str | None,
    text: bool = False,
    timeout: str | None = None,
    **extra: str,
) -> WebResult:
    """One call, read to the end (unary, or a stream that ends)."""
    frames: list[tuple[int, bytes]] = []
    async with stream_call(client, method, request, token=token, text=text, timeout=timeout, **extra) as (
        resp,
        chunks,
    ):
        async for got in chunks:
            frames.extend(got)
    return _result(resp, frames)


def _result(resp: httpx.Response, frames: list[tuple[int, bytes]]) -> WebResult:
    messages = [data for flags, data in frames if not flags & TRAILER_FLAG]
    trailer_frames = [data for flags, data in frames if flags & TRAILER_FLAG]
    assert len(trailer_frames) <= 1, frames
    trailers = parse_trailers(trailer_frames[0]) if trailer_frames else {}
    return WebResult(resp.status_code, resp.headers, messages, trailers)


class _StreamCall:
    def __init__(
        self, client: httpx.AsyncClient, method: str, body: bytes, headers: dict[str, str], text: bool
    ):
        self._cm = client.stream("POST", f"/{method.lstrip('/')}", content=body, headers=headers)
        self._text = text

    async def __aenter__(self) -> tuple[httpx.Response, AsyncIterator[list[tuple[int, bytes]]]]:
        resp = await self._cm.__aenter__()
        decoder = FrameDecoder(self._text)

        async def chunks() -> AsyncIterator[list[tuple[int, bytes]]]:
            async for data in resp.aiter_raw():
                got = decoder.feed(data)
                if got:
                    yield got

        return resp, chunks()

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(*exc)


def stream_call(
    client: httpx.AsyncClient,
    method: str,
    request: Message | bytes,
    *,
    token: str | None,
    text: bool = False,
    timeout: str | None = None,
    **extra: str,
) -> _StreamCall:
    """`async with stream_call(...) as (response, chunks)`: frames as they arrive, a list per chunk."""
    body = encode_request(request, text=text)
    return _StreamCall(client, method, body, web_headers(token, text=text, timeout=timeout, **extra), text)
