"""The gRPC-web endpoint: an ASGI handler that authenticates, limits and authorizes a call, forwards
it to the service as bytes, and writes the answer back as gRPC-web frames, trailers last. A client
that goes away cancels the upstream call; a stopping gateway ends open streams with UNAVAILABLE."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import grpc
import structlog
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2
from opentelemetry import context as otel_context
from opentelemetry import propagate

from gateway.auth import Authenticator, Principal
from gateway.config import GatewaySettings
from gateway.grpcweb import GrpcError, WireFormat, frame, parse_request, trailer_frame, wire_format
from gateway.limits import RateLimiter, upstream_timeout
from gateway.metrics import GatewayMetrics
from gateway.policy import Decision, authorize, check_response
from gateway.upstream import Method, Upstreams

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = structlog.get_logger("metermesh.gateway")

QUIET_CODES = frozenset(
    {"OK", "CANCELLED", "NOT_FOUND", "INVALID_ARGUMENT", "ALREADY_EXISTS", "OUT_OF_RANGE"}
)
GET_METER = "/metermesh.ingest.v1.IngestService/GetMeter"


class _ClientGone(Exception):
    """The client closed the connection: nobody to answer."""


class _Response:
    """Writes one gRPC-web response: HTTP 200 headers, data frames, then the trailer frame."""

    def __init__(self, send: Send, fmt: WireFormat) -> None:
        self._send = send
        self._fmt = fmt
        self.started = False
        self.finished = False
        self.code = "UNKNOWN"
        self.status_message = ""

    def _encode(self, data: bytes) -> bytes:
        return base64.b64encode(data) if self._fmt.text_response else data

    async def start(self, content_length: int | None = None) -> None:
        headers = [(b"content-type", self._fmt.response_content_type.encode())]
        if content_length is not None:
            headers.append((b"content-length", str(content_length).encode()))
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        self.started = True

    async def send_message(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": self._encode(frame(data)), "more_body": True})

    async def finish(
        self,
        code: grpc.StatusCode,
        message: str = "",
        details_bin: bytes | None = None,
        metadata: Iterable[tuple[str, str | bytes]] = (),
        response: bytes | None = None,
    ) -> None:
        """The last of the response: an OK unary answer with its trailers, or the status of a stream
        or a failed call (a body with only the trailer frame)."""
        if self.finished:
            return
        body = trailer_frame(code, message, details_bin, metadata)
        if response is not None:
            body = frame(response) + body
        body = self._encode(body)
        if not self.started:
            await self.start(len(body))
        self.finished = True
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        self.code = code.name
        self.status_message = message


def _upstream_error(exc: grpc.aio.AioRpcError, method: Method) -> GrpcError:
    """The upstream status as it is, except that channel-level failures do not tell browsers the
    internal addresses."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
        details = f"{method.service} is unreachable; retry later"
    return GrpcError(code, details, metadata=exc.trailing_metadata() or ())


def _split_details(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[bytes | None, list]:
    details, rest = None, []
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            details = value if isinstance(value, bytes) else value.encode()
        else:
            rest.append((key, value))
    return details, rest


class GrpcWebProxy:
    def __init__(
        self,
        settings: GatewaySettings,
        upstreams: Upstreams,
        auth: Authenticator,
        limiter: RateLimiter,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.methods = upstreams.methods
        self.auth = auth
        self.limiter = limiter
        self.metrics = metrics
        self.stopping = False
        self._open_streams: set[grpc.aio.Call] = set()
        # A base64 body is 4/3 of the bytes it carries, plus padding of several chunks.
        framed = settings.max_request_bytes + 5
        self._body_limit = {False: framed, True: (framed + 2) // 3 * 4 + 1024}

    def begin_shutdown(self) -> None:
        """Ends every open stream with UNAVAILABLE (clients reconnect elsewhere or later)."""
        self.stopping = True
        for call in list(self._open_streams):
            call.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        path: str = scope["path"]
        method = self.methods.get(path)
        if scope["method"] != "POST":
            await _plain(send, 405, "gRPC-web calls are HTTP POST requests\n", [(b"allow", b"POST, OPTIONS")])
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        fmt = wire_format(headers.get("content-type", ""), headers.get("accept", ""))
        if fmt is None:
            await _plain(
                send,
                415,
                "this path takes gRPC-web: content-type application/grpc-web(+proto) or "
                "application/grpc-web-text(+proto)\n",
            )
            return
        response = _Response(send, fmt)
        principal: Principal | None = None
        token = None
        metadata: tuple[tuple[str, str], ...] = ()
        if "traceparent" in headers:
            if self.upstreams.traced:  # the client interceptor injects the context it finds current
                token = otel_context.attach(propagate.extract(headers))
            else:
                metadata = tuple((k, headers[k]) for k in ("traceparent", "tracestate") if k in headers)
        try:
            try:
                principal = self.auth.authenticate(headers.get("authorization"))
                if method is None:
                    raise GrpcError(
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"unknown method {path[1:]!r}: the gateway serves the metermesh.*.v1 services",
                    )
                if method.client_streaming:
                    raise GrpcError(
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"{method.name} is client-streaming, which gRPC-web cannot carry; call it over gRPC",
                    )
                self.limiter.check(principal.subject)
                timeout = upstream_timeout(
                    headers.get("grpc-timeout"),
                    streaming=method.server_streaming,
                    default=self.settings.default_timeout_seconds,
                    cap=self.settings.max_timeout_seconds,
                    stream_cap=self.settings.stream_timeout_seconds,
                )
                body = await self._read_body(receive, headers, fmt)
                request = parse_request(
                    body, text=fmt.text_request, max_message_bytes=self.settings.max_request_bytes
                )
                decision = authorize(method.name, method.rule, method.input, principal, request)
                # The client's deadline runs from when the call arrived: what is left of it goes upstream.
                timeout -= time.perf_counter() - start
                if timeout <= 0:
                    raise GrpcError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the deadline (grpc-timeout {headers.get('grpc-timeout')}) expired before the call "
                        "was forwarded",
                    )
                await self._forward(method, decision, principal, timeout, metadata, receive, response)
            except GrpcError as exc:
                details, rest = _split_details(exc.metadata)
                await response.finish(exc.code, exc.message, exc.details_bin or details, rest)
            except _ClientGone:
                raise
            except Exception as exc:
                log.error("gateway error", method=path, error=repr(exc), exc_info=exc)
                await response.finish(grpc.StatusCode.INTERNAL, f"the gateway failed: {type(exc).__name__}")
        except _ClientGone:
            response.code = "CANCELLED"
            response.status_message = "the client went away"
        finally:
            if token is not None:
                otel_context.detach(token)
            self._record(method, path, principal, response, time.perf_counter() - start)

    async def _read_body(self, receive: Receive, headers: dict[str, str], fmt: WireFormat) -> bytes:
        limit = self._body_limit[fmt.text_request]

        def too_big() -> GrpcError:
            return GrpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request is larger than the gateway accepts ({self.settings.max_request_bytes:,} bytes "
                "per message)",
            )

        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_big()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _forward(
        self,
        method: Method,
        decision: Decision,
        principal: Principal,
        timeout: float,
        metadata: tuple[tuple[str, str], ...],
        receive: Receive,
        response: _Response,
    ) -> None:
        # The request body has been read: the next ASGI message is the client's disconnect.
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            if decision.own_listing:
                await self._own_listing(
                    method, decision.request, principal, timeout, metadata, response, gone
                )
            elif method.server_streaming:
                await self._stream(method, decision, principal, timeout, metadata, response, gone)
            else:
                await self._unary(method, decision, principal, timeout, metadata, response, gone)
        finally:
            gone.cancel()

    async def _unary(
        self,
        method: Method,
        decision: Decision,
        principal: Principal,
        timeout: float,
        metadata: tuple[tuple[str, str], ...],
        response: _Response,
        gone: asyncio.Future[None],
    ) -> None:
        call = self.upstreams.unary(method)(decision.request, timeout=timeout, metadata=metadata or None)
        gone.add_done_callback(lambda _: call.cancel())
        try:
            answer = await call
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            raise _upstream_error(exc, method) from None
        except asyncio.CancelledError:
            _raise_if_task_cancelled()
            raise _ClientGone from None
        if decision.response_meters is not None:
            answer = check_response(method.output, answer, decision.response_meters, principal, stream=False)
        details, rest = _split_details(trailing or ())
        await response.finish(grpc.StatusCode.OK, "", details, rest, response=answer)

    async def _stream(
        self,
        method: Method,
        decision: Decision,
        principal: Principal,
        timeout: float,
        metadata: tuple[tuple[str, str], ...],
        response: _Response,
        gone: asyncio.Future[None],
    ) -> None:
        call = self.upstreams.stream(method)(decision.request, timeout=timeout, metadata=metadata or None)
        gone.add_done_callback(lambda _: call.cancel())
        self._open_streams.add(call)
        self.metrics.streams.inc()
        try:
            if self.stopping:
                call.cancel()
            # Headers go out at once: a browser learns the stream is open before the first message.
            await response.start()
            while True:
                try:
                    item = await call.read()
                except grpc.aio.AioRpcError as exc:
                    raise _upstream_error(exc, method) from None
                except asyncio.CancelledError:
                    _raise_if_task_cancelled()
                    if gone.done():
                        raise _ClientGone from None
                    raise GrpcError(
                        grpc.StatusCode.UNAVAILABLE,
                        "the gateway is stopping; call again (WatchAlerts: resume with after_sequence set "
                        "to the last sequence received)",
                    ) from None
                if item is grpc.aio.EOF:
                    break
                if decision.response_meters is not None:
                    item = check_response(
                        method.output, item, decision.response_meters, principal, stream=True
                    )
                    if item is None:
                        continue
                await response.send_message(item)
            code = await call.code()
            details, rest = _split_details(await call.trailing_metadata() or ())
            await response.finish(code, await call.details() or "", details, rest)
        finally:
            self._open_streams.discard(call)
            self.metrics.streams.dec()

    async def _own_listing(
        self,
        method: Method,
        request: bytes,
        principal: Principal,
        timeout: float,
        metadata: tuple[tuple[str, str], ...],
        response: _Response,
        gone: asyncio.Future[None],
    ) -> None:
        """ListMeters for a consumer: its own meters (GetMeter for each), in meter_id order and paged
        as ListMeters is, instead of a fleet listing filtered page by page."""
        req = ingest_pb2.ListMetersRequest.FromString(request)
        size = req.page_size or 100
        if not 1 <= size <= 1000:
            raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, f"page_size is {size}; must be within 1-1000")
        after = req.page_token.removeprefix("own:") if req.page_token else ""
        candidates = [m for m in sorted(principal.meters) if m > after]
        get_meter = self.upstreams.unary(self.methods[GET_METER])
        meters: list[common_pb2.Meter] = []
        last = ""
        while candidates and len(meters) < size:
            batch, candidates = candidates[: size - len(meters)], candidates[size - len(meters) :]
            calls = [
                get_meter(
                    ingest_pb2.GetMeterRequest(meter_id=m).SerializeToString(),
                    timeout=timeout,
                    metadata=metadata or None,
                )
                for m in batch
            ]
            gone.add_done_callback(lambda _, calls=calls: [c.cancel() for c in calls])
            results = await asyncio.gather(*calls, return_exceptions=True)
            for meter_id, result in zip(batch, results, strict=True):
                last = meter_id
                if isinstance(result, asyncio.CancelledError):
                    _raise_if_task_cancelled()
                    raise _ClientGone
                if isinstance(result, grpc.aio.AioRpcError):
                    if result.code() == grpc.StatusCode.NOT_FOUND:
                        continue  # in the token but not (or no longer) registered
                    raise _upstream_error(result, method)
                if isinstance(result, BaseException):
                    raise result
                meter = ingest_pb2.GetMeterResponse.FromString(result).meter
                if req.category and meter.category != req.category:
                    continue
                meters.append(meter)
        answer = ingest_pb2.ListMetersResponse(
            meters=meters, next_page_token=f"own:{last}" if candidates else ""
        )
        await response.finish(grpc.StatusCode.OK, response=answer.SerializeToString())

    def _record(
        self,
        method: Method | None,
        path: str,
        principal: Principal | None,
        response: _Response,
        seconds: float,
    ) -> None:
        name = method.name if method is not None else "unknown"
        self.metrics.observe(name, response.code, seconds)
        fields: dict[str, Any] = {
            "method": method.name if method is not None else path,
            "status": response.code,
            "duration_ms": round(seconds * 1000, 2),
        }
        if principal is not None:
            fields["subject"] = principal.subject
            fields["role"] = principal.role.value
        if response.code in QUIET_CODES:
            log.info("rpc", **fields)
        else:
            log.warning("rpc", message=response.status_message, **fields)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _raise_if_task_cancelled() -> None:
    """A CancelledError is ours to absorb only when the upstream call was cancelled, not this task."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _plain(
    send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": body})
