"""How accepted readings are cut into READINGS messages: per meter partition, below the payload
limit, deterministic (the Nats-Msg-Id is a hash of the bytes)."""

from __future__ import annotations

import numpy as np
from metermesh.common.v1 import common_pb2

from services.common.jetstream import Topology
from services.ingest.codec import from_batch, from_readings
from services.ingest.publisher import ReadingPublisher, partition_of


def readings(meters: int, intervals: int) -> list[common_pb2.Reading]:
    out = []
    for k in range(intervals):
        for j in range(meters):
            r = common_pb2.Reading(
                meter_id=f"P-{j:04d}", interval_seconds=900, import_energy_wh=float(k * 1000 + j)
            )
            r.read_time.seconds = 1_700_000_000 + 900 * k
            out.append(r)
    return out


def decode(messages: list[tuple[str, bytes]]) -> list[tuple[str, str, int, float]]:
    rows = []
    for subject, payload in messages:
        cols = from_batch(payload)
        ids = cols.per_row_meter_ids()
        rows += [
            (subject, ids[i], int(cols.read_time_unix_micros[i]), float(cols.import_energy_wh[i]))
            for i in range(len(cols))
        ]
    return rows


def test_each_meter_lands_on_its_own_partition_subject_and_nothing_is_lost() -> None:
    topology = Topology(prefix="T_", reading_partitions=8)
    pub = ReadingPublisher(None, topology, max_payload=8 << 20, timeout=1)  # type: ignore[arg-type]
    batch = readings(200, 3)
    rows = decode(pub.messages(from_readings(batch)[0]))
    assert len(rows) == len(batch)
    assert {(m, t, wh) for _, m, t, wh in rows} == {
        (r.meter_id, r.read_time.seconds * 1_000_000, r.import_energy_wh) for r in batch
    }
    for subject, meter_id, _, _ in rows:
        assert subject == topology.readings_subject(partition_of(meter_id, 8))
    # Per meter, readings keep the order they came in (what per-meter consumers rely on).
    for m in {m for _, m, _, _ in rows}:
        times = [t for _, mm, t, _ in rows if mm == m]
        assert times == sorted(times)


def test_large_partitions_are_split_below_the_server_payload_limit() -> None:
    pub = ReadingPublisher(None, Topology(reading_partitions=1), max_payload=70_000, timeout=1)  # type: ignore[arg-type]
    batch = readings(100, 30)  # ~3,000 readings, over 100 kB in one partition
    msgs = pub.messages(from_readings(batch)[0])
    assert len(msgs) > 1
    assert all(len(payload) <= 70_000 for _, payload in msgs)
    assert len(decode(msgs)) == len(batch)


def test_the_same_readings_always_make_the_same_messages() -> None:
    pub = ReadingPublisher(None, Topology(), max_payload=8 << 20, timeout=1)  # type: ignore[arg-type]
    batch = readings(50, 4)
    first = pub.messages(from_readings(batch)[0])
    again = pub.messages(from_readings(list(batch))[0])
    assert first == again
    assert len({s for s, _ in first}) > 1
    assert np.all([len(p) > 0 for _, p in first])
