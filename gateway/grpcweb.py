"""The gRPC-web wire format (grpc/grpc doc/PROTOCOL-WEB.md): content types, length-prefixed frames,
trailers as a final 0x80 frame, base64 text mode, grpc-timeout and percent-encoded grpc-message.
Pure functions over bytes: no ASGI, no grpc calls."""

from __future__ import annotations

import base64
import binascii
import re
import struct
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

DATA_FLAG = 0x00
COMPRESSED_FLAG = 0x01
TRAILER_FLAG = 0x80
_HEADER = struct.Struct(">BI")

CONTENT_TYPE_BINARY = "application/grpc-web+proto"
CONTENT_TYPE_TEXT = "application/grpc-web-text+proto"


class GrpcError(Exception):
    """A call that ends with a gRPC status other than OK, raised anywhere in the gateway."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details_bin: bytes | None = None,
        metadata: Iterable[tuple[str, str | bytes]] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details_bin = details_bin
        # Upstream trailing metadata to pass on (grpc-status-details-bin among it).
        self.metadata = tuple(metadata)


@dataclass(frozen=True)
class WireFormat:
    """How the request body is encoded and how the response must be."""

    text_request: bool
    text_response: bool

    @property
    def response_content_type(self) -> str:
        return CONTENT_TYPE_TEXT if self.text_response else CONTENT_TYPE_BINARY


def wire_format(content_type: str, accept: str = "") -> WireFormat | None:
    """The format of a gRPC-web request, or None when content_type is not gRPC-web (HTTP 415).

    application/grpc-web, application/grpc-web+proto: binary; application/grpc-web-text(+proto): base64.
    A client may also ask for a text response with `Accept: application/grpc-web-text`."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("application/grpc-web", "application/grpc-web+proto"):
        text = False
    elif media in ("application/grpc-web-text", "application/grpc-web-text+proto"):
        text = True
    else:
        return None
    return WireFormat(text_request=text, text_response=text or "application/grpc-web-text" in accept.lower())


def decode_text(body: bytes) -> bytes:
    """Decodes a base64 request body. Clients may send several padded base64 chunks back to back
    (padding in the middle), which one b64decode of the whole body would refuse."""
    data = bytes(body).translate(None, b" \t\r\n")
    if b"=" not in data.rstrip(b"="):
        return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    out = []
    for chunk in re.findall(rb"[^=]*=*", data):
        if chunk:
            out.append(base64.b64decode(chunk + b"=" * (-len(chunk) % 4), validate=True))
    return b"".join(out)


def parse_request(body: bytes, *, text: bool, max_message_bytes: int) -> bytes:
    """The single message of a unary or server-streaming request, from its gRPC-web body."""
    if text:
        try:
            body = decode_text(body)
        except (binascii.Error, ValueError) as exc:
            raise GrpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the application/grpc-web-text body is not valid base64 ({exc})",
            ) from None
    frames = list(iter_frames(body))
    if not frames:
        # A client may send an empty body for a message with all fields at their defaults.
        return b""
    if len(frames) > 1:
        raise GrpcError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"the request has {len(frames)} messages: gRPC-web carries unary and server-streaming calls, "
            "which take exactly one",
        )
    flags, message = frames[0]
    if flags & COMPRESSED_FLAG:
        raise GrpcError(
            grpc.StatusCode.UNIMPLEMENTED,
            "compressed request messages are not supported; send them uncompressed",
        )
    if flags != DATA_FLAG:
        raise GrpcError(
            grpc.StatusCode.INVALID_ARGUMENT, f"unexpected frame flags 0x{flags:02x} in the request"
        )
    if len(message) > max_message_bytes:
        raise GrpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the request message is {len(message):,} bytes; the gateway accepts at most {max_message_bytes:,}",
        )
    return message


def iter_frames(data: bytes) -> Iterable[tuple[int, bytes]]:
    """(flags, payload) of each length-prefixed frame; INVALID_ARGUMENT on a truncated body."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if len(view) - pos < _HEADER.size:
            raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, "the request body ends inside a frame header")
        flags, length = _HEADER.unpack_from(view, pos)
        pos += _HEADER.size
        if len(view) - pos < length:
            raise GrpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a request frame announces {length:,} bytes but the body holds only {len(view) - pos:,}",
            )
        yield flags, bytes(view[pos : pos + length])
        pos += length


def frame(payload: bytes, flags: int = DATA_FLAG) -> bytes:
    return _HEADER.pack(flags, len(payload)) + payload


# Bytes that grpc-message carries as they are (PROTOCOL-HTTP2: printable ASCII except '%').
_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}


def percent_encode(message: str) -> str:
    raw = message.encode("utf-8")
    if all(b in _UNRESERVED for b in raw):
        return message
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in raw)


def percent_decode(value: str) -> str:
    """The inverse of percent_encode, lenient as the spec asks (a malformed escape stays as it is)."""
    return urllib.parse.unquote(value, errors="replace")


_RESERVED_TRAILERS = frozenset({"grpc-status", "grpc-message", "grpc-status-details-bin", "content-type"})


def trailer_block(
    code: grpc.StatusCode,
    message: str = "",
    details_bin: bytes | None = None,
    metadata: Iterable[tuple[str, str | bytes]] = (),
) -> bytes:
    """The payload of the trailer frame: an HTTP/1 header block, lower-case names, CRLF-terminated.

    Binary values (grpc-status-details-bin, other *-bin keys) are base64 in both the binary and the
    text format: PROTOCOL-WEB lets text mode skip that, but raw bytes could contain CR LF and break the
    block, so the gateway does what Envoy and grpc-dotnet do."""
    lines = [f"grpc-status: {code.value[0]}\r\n"]
    if message:
        lines.append(f"grpc-message: {percent_encode(message)}\r\n")
    if details_bin:
        lines.append(f"grpc-status-details-bin: {base64.b64encode(details_bin).decode()}\r\n")
    for key, value in metadata:
        key = key.lower()
        if key in _RESERVED_TRAILERS or key.startswith(":"):
            continue
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            value = base64.b64encode(raw).decode()
        elif isinstance(value, bytes):
            continue
        if "\r" in value or "\n" in value:
            continue
        lines.append(f"{key}: {value}\r\n")
    return "".join(lines).encode("latin-1", "replace")


def trailer_frame(
    code: grpc.StatusCode,
    message: str = "",
    details_bin: bytes | None = None,
    metadata: Iterable[tuple[str, str | bytes]] = (),
) -> bytes:
    return frame(trailer_block(code, message, details_bin, metadata), TRAILER_FLAG)


def parse_trailers(payload: bytes) -> dict[str, str]:
    """A trailer block as a dict (used by tests and the benchmark's client)."""
    out: dict[str, str] = {}
    for line in payload.decode("latin-1").split("\r\n"):
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip().lower()] = value.strip()
    return out


_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str) -> float:
    """Seconds of a grpc-timeout header ("100m", "5S", at most 8 digits and a unit)."""
    m = _TIMEOUT.match(value.strip())
    if m is None:
        raise GrpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"grpc-timeout {value!r} is malformed; give up to 8 digits and a unit of H, M, S, m, u or n",
        )
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
