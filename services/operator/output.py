"""Rendering shared by the operator commands: table (rich) or JSON output, error reporting and exit
codes, service addresses and deadlines, and small converters from protobuf values to plain ones."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from importlib import metadata
from typing import Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from services.stack import SERVICES

EXIT_OK = 0
EXIT_FAILURES = 1  # the command ran, but something failed or is down
EXIT_USAGE = 2  # bad option value, unreadable input
EXIT_RPC = 3  # a call failed (unreachable, or the service answered with an error)

T = TypeVar("T")


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


OutputOpt = Annotated[
    OutputFormat,
    typer.Option(
        "--output",
        "-o",
        help="table for people; json for scripts (see the command's help for one document vs JSON lines).",
        case_sensitive=False,
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Deadline of each unary gRPC call, in seconds.")
]


def default_addr(name: str) -> str:
    svc = next(s for s in SERVICES if s.name == name)
    return svc.default_addr


def addr_option(name: str) -> Any:
    """A --<service> ADDR option read from the env var the service itself listens on."""
    svc = next(s for s in SERVICES if s.name == name)
    return typer.Option(
        f"--{name}",
        envvar=svc.addr_env,
        metavar="HOST:PORT",
        help=f"Address of the {name} service (env {svc.addr_env}).",
    )


def package_version() -> str:
    try:
        return metadata.version("metermesh")
    except metadata.PackageNotFoundError:
        return "unknown"


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output is read by people too (logs, CI): wide enough that tables are not squeezed.
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "160"))
    return Console(file=stream, width=width, soft_wrap=True, highlight=False)


@dataclass
class Out:
    """Where a command writes: results to stdout (a table or JSON), messages and progress to stderr,
    so `--output json` leaves stdout holding JSON only."""

    fmt: OutputFormat

    def __post_init__(self) -> None:
        self.console = _console(stderr=False)
        self.err = _console(stderr=True)

    @property
    def json(self) -> bool:
        return self.fmt == OutputFormat.json

    def doc(self, value: Any) -> None:
        """One JSON document (json mode)."""
        sys.stdout.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()

    def line(self, value: Any) -> None:
        """One JSON line (streaming commands in json mode), flushed at once."""
        sys.stdout.write(json.dumps(value, separators=(",", ":"), default=str) + "\n")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        """A message for people (rich markup; escape what came from elsewhere); on stderr, in both modes."""
        self.err.print(text)

    def table(self, table: Table) -> None:
        self.console.print(table)

    def fail(self, exit_code: int, message: str, **details: Any) -> NoReturn:
        """Reports an error (stderr; plus a JSON document {"error": ...} on stdout in json mode) and exits."""
        self.err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
        if self.json:
            self.doc({"error": {"message": message, **details}})
        raise typer.Exit(exit_code)

    def rpc_failed(self, service: str, addr: str, exc: grpc.aio.AioRpcError) -> NoReturn:
        code = exc.code()
        hint = ""
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = f" (is the {service} service running at {addr}? `metermesh status` shows what is up)"
        self.fail(
            EXIT_RPC,
            f"{service} at {addr}: {code.name}: {exc.details()}{hint}",
            service=service,
            addr=addr,
            code=code.name,
            details=exc.details(),
        )


class _Interrupted(Exception):
    pass


def run(out: Out, coro: Coroutine[Any, Any, T], *, interrupted_code: int = 130, streaming: bool = False) -> T:
    """asyncio.run, with SIGINT (Ctrl-C) and SIGTERM cancelling the command cleanly: a message and an
    exit code instead of a traceback. The handlers are installed explicitly because a process started
    in the background by a shell, or by a supervisor, may inherit SIGINT ignored."""

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        caught: list[int] = []

        def stop(sig: int) -> None:
            caught.append(sig)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
        try:
            return await coro
        except asyncio.CancelledError:
            if caught:
                raise _Interrupted from None
            raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, _Interrupted):
        out.note("[yellow]interrupted[/]")
        if out.json and not streaming:
            out.doc({"error": {"message": "interrupted", "code": "CANCELLED"}})
        raise typer.Exit(interrupted_code) from None


async def call(
    out: Out, service: str, addr: str, fn: Callable[[], Awaitable[T]], *, ok: tuple[grpc.StatusCode, ...] = ()
) -> T:
    """Runs one call; an RPC error ends the command (exit 3) naming the service, address and status."""
    try:
        return await fn()
    except grpc.aio.AioRpcError as exc:
        if exc.code() in ok:
            raise
        out.rpc_failed(service, addr, exc)


# --- converters ---------------------------------------------------------------------------------


def to_dict(msg: Message) -> dict[str, Any]:
    """The proto3 JSON mapping: field names as in the .proto, 64-bit integers as numbers, zero values shown."""
    return json_format.MessageToDict(
        msg,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
        always_print_fields_with_no_presence=True,
    )


def ts_to_dt(ts: timestamp_pb2.Timestamp) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, dt.UTC)


def ts_iso(ts: timestamp_pb2.Timestamp) -> str | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts_to_dt(ts).isoformat().replace("+00:00", "Z")


def set_ts(ts: timestamp_pb2.Timestamp, when: dt.datetime) -> None:
    micros = round(when.timestamp() * 1_000_000)
    ts.seconds, rest = divmod(micros, 1_000_000)
    ts.nanos = rest * 1000


def enum_short(enum_type: Any, value: int, prefix: str) -> str:
    """ANOMALY_KIND_VOLTAGE_SURGE -> voltage_surge."""
    try:
        name = enum_type.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def enum_choices(enum_type: Any, prefix: str) -> list[str]:
    return [n.removeprefix(prefix).lower() for n in enum_type.keys() if not n.endswith("_UNSPECIFIED")]


def parse_enum(out: Out, enum_type: Any, prefix: str, value: str, option: str) -> int:
    name = prefix + value.strip().upper().removeprefix(prefix).replace("-", "_")
    try:
        v = int(enum_type.Value(name))
    except ValueError:
        out.fail(EXIT_USAGE, f"{option} {value!r}: use one of {', '.join(enum_choices(enum_type, prefix))}")
    if name.endswith("_UNSPECIFIED"):
        out.fail(EXIT_USAGE, f"{option} {value!r}: use one of {', '.join(enum_choices(enum_type, prefix))}")
    return v


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


# --- retries ------------------------------------------------------------------------------------

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def retryable(exc: BaseException) -> bool:
    """UNAVAILABLE is the platform's backpressure (a full stream, a restarting service); a deadline
    exceeded may have landed or not. Only idempotent calls are retried, so both are safe to repeat."""
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in RETRYABLE


def retrying(retry_for: float, on_retry: Callable[[Any], None] | None = None) -> Any:
    """A tenacity AsyncRetrying: exponential backoff with jitter (0.2 s doubling to 10 s) for up to
    retry_for seconds, then the last error is raised."""
    return AsyncRetrying(
        retry=retry_if_exception(retryable),
        stop=stop_after_delay(retry_for),
        wait=wait_exponential_jitter(initial=0.2, max=10.0),
        reraise=True,
        before_sleep=on_retry,
    )
