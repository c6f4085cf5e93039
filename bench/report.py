"""Shared by the benchmarks and evaluations: the machine description and replacing one labelled
section of BENCHMARKS.md (between `<!-- label:start -->` and `<!-- label:end -->`), so each command
rewrites only its own figures."""

from __future__ import annotations

import os
import platform as pyplatform
from pathlib import Path


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {pyplatform.system()} {pyplatform.release()}, "
        f"Python {pyplatform.python_version()}"
    )


def write_section(path: Path, label: str, body: str) -> None:
    """Replaces (or appends) the section `label` of the markdown file at path with body."""
    begin, end = f"<!-- {label}:start -->", f"<!-- {label}:end -->\n"
    section = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text += "\n" + section
    path.write_text(text)


async def drop_streams(nats_url: str, prefix: str) -> None:
    """Deletes a benchmark's streams: each reserves its size limit of JetStream storage until then."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if prefix and info.config.name and info.config.name.startswith(prefix):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()
