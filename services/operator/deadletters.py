"""`metermesh deadletters list|redrive`: what the consumers gave up on (the DEADLETTER stream, with the
reason each was dead-lettered), and sending it back to the subject it came from once the cause is
fixed. These talk to NATS JetStream directly (NATS_URL): dead letters live there, not behind a service."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Annotated, Any

import nats
import typer
from nats.js.errors import NotFoundError
from rich.markup import escape
from rich.table import Table

from services.common.jetstream import MSG_ID, Topology
from services.operator.output import (
    EXIT_OK,
    EXIT_RPC,
    EXIT_USAGE,
    Out,
    OutputFormat,
    OutputOpt,
    TimeoutOpt,
    run,
)

deadletters_app = typer.Typer(
    name="deadletters",
    help="Inspect dead-lettered messages, and send them back once the cause is fixed.",
    no_args_is_help=True,
    add_completion=False,
)

NatsOpt = Annotated[
    str | None, typer.Option("--nats", envvar="NATS_URL", help="NATS JetStream (env NATS_URL).")
]
PrefixOpt = Annotated[
    str, typer.Option(envvar="METERMESH_STREAM_PREFIX", help="Prefix of the JetStream stream names.")
]
DurableOpt = Annotated[
    str | None,
    typer.Option(help="Only what this consumer dead-lettered: readings-writer, anomaly-detector or alerts."),
]
# Headers the dead-lettering added (services.common.jetstream.PullWorker._dead_letter); not sent back.
_DEAD_HEADERS = (
    "Metermesh-Dead-Reason",
    "Metermesh-Source-Subject",
    "Metermesh-Source-Sequence",
    "Metermesh-Delivered",
)


async def connect_nats(out: Out, url: str | None, timeout: float) -> Any:
    if not url:
        out.fail(EXIT_USAGE, "set NATS_URL (or --nats): dead letters are read from JetStream")

    async def quiet(*_: Any) -> None:
        return None

    try:
        return await asyncio.wait_for(
            nats.connect(
                url,
                connect_timeout=timeout,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=quiet,
                disconnected_cb=quiet,
                closed_cb=quiet,
                name="metermesh-deadletters",
            ),
            timeout * 2 + 1,
        )
    except Exception as exc:
        out.fail(EXIT_RPC, f"NATS at {url}: {type(exc).__name__}: {exc}", service="nats", addr=url)


def _filter(topo: Topology, durable: str | None) -> str:
    # Dead-letter subjects are deadletter.<stream>.<durable> (stream names hold no dots).
    return f"{topo.prefix}deadletter.*.{durable}" if durable else f"{topo.prefix}deadletter.>"


def _describe(msg: Any) -> dict[str, Any]:
    h = msg.headers or {}
    parts = msg.subject.split(".")
    return {
        "sequence": msg.seq,
        "time": msg.time.isoformat().replace("+00:00", "Z")
        if isinstance(msg.time, dt.datetime)
        else msg.time,
        "stream": parts[-2] if len(parts) >= 3 else "",
        "durable": parts[-1],
        "source_subject": h.get("Metermesh-Source-Subject"),
        "source_sequence": int(h["Metermesh-Source-Sequence"])
        if h.get("Metermesh-Source-Sequence")
        else None,
        "delivered": int(h["Metermesh-Delivered"]) if h.get("Metermesh-Delivered") else None,
        "reason": h.get("Metermesh-Dead-Reason", ""),
        "bytes": len(msg.data or b""),
    }


@deadletters_app.command("list")
def list_deadletters(
    durable: DurableOpt = None,
    limit: Annotated[int, typer.Option(min=0, help="Show the newest N messages with their reasons.")] = 20,
    output: OutputOpt = OutputFormat.table,
    nats_url: NatsOpt = None,
    stream_prefix: PrefixOpt = "",
    timeout: TimeoutOpt = 5.0,
) -> None:
    """Count dead letters per consumer and show the newest with the reason each was given up on.

    A message is dead-lettered when it can never succeed (undecodable, invalid) or failed max_deliver times; the reason says which, with the last error. `--output json` prints one document.

    Examples:

      metermesh deadletters list

      metermesh deadletters list --durable readings-writer --limit 5 --output json
    """
    out = Out(output)
    topo = Topology(prefix=stream_prefix)

    async def main() -> dict[str, Any]:
        nc = await connect_nats(out, nats_url, timeout)
        try:
            js = nc.jetstream(timeout=timeout)
            stream = topo.dead_letter_stream
            try:
                info = await js.stream_info(stream, subjects_filter=_filter(topo, durable))
            except NotFoundError:
                out.fail(EXIT_USAGE, f"no stream {stream} (wrong METERMESH_STREAM_PREFIX?)")
            by_subject = dict(info.state.subjects or {})
            newest: list[dict[str, Any]] = []
            seq = info.state.last_seq
            first = info.state.first_seq
            while limit and seq >= first and len(newest) < limit:
                with contextlib.suppress(NotFoundError):
                    msg = await js.get_msg(stream, seq)
                    if not durable or msg.subject.endswith(f".{durable}"):
                        newest.append(_describe(msg))
                seq -= 1
            return {
                "stream": stream,
                "total": sum(by_subject.values()),
                "bytes": int(info.state.bytes),
                "by_consumer": [
                    {"stream": s.split(".")[-2], "durable": s.split(".")[-1], "messages": n}
                    for s, n in sorted(by_subject.items())
                ],
                "newest": newest,
            }
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    doc = run(out, main())
    if out.json:
        out.doc(doc)
        raise typer.Exit(EXIT_OK)
    out.console.print(f"{doc['stream']}: {doc['total']:,} dead letter(s), {doc['bytes']:,} bytes")
    if doc["by_consumer"]:
        t = Table()
        t.add_column("stream")
        t.add_column("consumer")
        t.add_column("messages", justify="right")
        for row in doc["by_consumer"]:
            t.add_row(row["stream"], row["durable"], f"{row['messages']:,}")
        out.table(t)
    if doc["newest"]:
        t = Table(title="newest", title_justify="left")
        for col in ("seq", "dead-lettered (UTC)", "consumer", "from", "delivered", "reason"):
            t.add_column(col)
        for m in doc["newest"]:
            t.add_row(
                str(m["sequence"]),
                str(m["time"] or "-").replace("T", " ")[:19],
                m["durable"],
                f"{m['source_subject']} #{m['source_sequence']}",
                str(m["delivered"] or "-"),
                escape(m["reason"]),
            )
        out.table(t)


@deadletters_app.command("redrive")
def redrive(
    durable: DurableOpt = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many messages (oldest first); 0: all.")] = 0,
    dry_run: Annotated[bool, typer.Option(help="Count what would be sent back; change nothing.")] = False,
    output: OutputOpt = OutputFormat.table,
    nats_url: NatsOpt = None,
    stream_prefix: PrefixOpt = "",
    timeout: TimeoutOpt = 5.0,
) -> None:
    """Send dead letters back to the subject they came from (oldest first), then delete them.

    Do this once the cause is fixed (a bug deployed away, a dependency back): each message is published again to its original subject, so the consumer that gave up on it gets it anew, and removed from DEADLETTER only once JetStream has stored it again. The consumers are idempotent (readings are stored once per meter and time, anomaly events and alerts are deduplicated by id), so sending back something that did land is harmless. A message that fails again is dead-lettered again. `--output json` prints one document.

    Examples:

      metermesh deadletters redrive --durable readings-writer --dry-run

      metermesh deadletters redrive --durable alerts --limit 1000
    """
    out = Out(output)
    topo = Topology(prefix=stream_prefix)

    async def main() -> dict[str, Any]:
        nc = await connect_nats(out, nats_url, timeout)
        counts: dict[str, int] = {}
        moved = 0
        try:
            js = nc.jetstream(timeout=timeout)
            stream = topo.dead_letter_stream
            subject = _filter(topo, durable)
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                out.fail(EXIT_USAGE, f"no stream {stream} (wrong METERMESH_STREAM_PREFIX?)")
            seq = info.state.first_seq
            while not limit or moved < limit:
                try:
                    msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
                except NotFoundError:
                    break
                seq = msg.seq + 1
                headers = dict(msg.headers or {})
                source = headers.get("Metermesh-Source-Subject")
                if not source:
                    continue  # not written by a metermesh consumer: leave it
                key = msg.subject.split(".")[-1]
                counts[key] = counts.get(key, 0) + 1
                moved += 1
                if dry_run:
                    continue
                for h in (*_DEAD_HEADERS, MSG_ID):
                    headers.pop(h, None)
                # A new id: the original one may still be in the source stream's duplicate window.
                headers[MSG_ID] = f"redrive:{stream}:{msg.seq}"
                try:
                    await js.publish(source, msg.data or b"", headers=headers, timeout=timeout)
                except Exception as exc:
                    out.fail(
                        EXIT_RPC,
                        f"sending dead letter {msg.seq} back to {source} failed after {moved - 1} sent: "
                        f"{type(exc).__name__}: {exc} (it stays in {stream}; run again to continue)",
                        service="nats",
                        redriven=moved - 1,
                    )
                await js.delete_msg(stream, msg.seq)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        return {
            "stream": topo.dead_letter_stream,
            "dry_run": dry_run,
            "redriven": moved,
            "by_consumer": counts,
        }

    doc = run(out, main())
    if out.json:
        out.doc(doc)
    else:
        what = "would send back" if dry_run else "sent back"
        per = ", ".join(f"{k} {v:,}" for k, v in sorted(doc["by_consumer"].items())) or "nothing"
        out.console.print(f"{what} {doc['redriven']:,} dead letter(s): {per}")
    raise typer.Exit(EXIT_OK)
