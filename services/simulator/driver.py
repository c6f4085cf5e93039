"""Drives a simulated fleet through the real ingest API: registers the meters, backfills recent
history, then pushes each interval as it ends. Used by `metermesh up --simulate` and `metermesh simulate`."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import grpc
import structlog
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.common import clients
from services.simulator.fleet import Fleet, IntervalReadings

log = structlog.get_logger(__name__)

_CATEGORY = {
    "residential": common_pb2.METER_CATEGORY_RESIDENTIAL,
    "commercial": common_pb2.METER_CATEGORY_COMMERCIAL,
    "industrial": common_pb2.METER_CATEGORY_INDUSTRIAL,
    "agricultural": common_pb2.METER_CATEGORY_AGRICULTURAL,
}
MAX_BATCH = 10_000


def to_readings(iv: IntervalReadings) -> list[common_pb2.Reading]:
    secs = int(iv.read_time.timestamp())
    cols = [
        iv.import_energy_wh.tolist(),
        iv.export_energy_wh.tolist(),
        iv.voltage_v.tolist(),
        iv.current_a.tolist(),
        iv.active_power_w.tolist(),
        iv.power_factor.tolist(),
        iv.frequency_hz.tolist(),
    ]
    out = []
    for i, m in enumerate(iv.meter_ids):
        imp, exp, v, a, w, pf, hz = (c[i] for c in cols)
        r = common_pb2.Reading(
            meter_id=m,
            interval_seconds=iv.interval_seconds,
            import_energy_wh=imp,
            export_energy_wh=exp,
            voltage_v=v,
            current_a=a,
            active_power_w=w,
            power_factor=pf,
            frequency_hz=hz,
        )
        r.read_time.seconds = secs
        out.append(r)
    return out


async def _push(
    stub: ingest_pb2_grpc.IngestServiceStub, readings: list[common_pb2.Reading], stop: asyncio.Event
) -> int:
    """Retries UNAVAILABLE with backoff (the platform's backpressure), as a real head-end should."""
    delay = 0.2
    while not stop.is_set():
        try:
            resp = await stub.PushReadings(ingest_pb2.PushReadingsRequest(readings=readings), timeout=30)
            if resp.rejections:
                log.warning(
                    "simulator readings rejected",
                    count=len(resp.rejections),
                    first=resp.rejections[0].message,
                )
            return resp.accepted_count
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            log.info("ingest busy; retrying", status=exc.code().name, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    return 0


async def register_fleet(stub: ingest_pb2_grpc.IngestServiceStub, fleet: Fleet) -> None:
    for m in fleet.meters:
        await stub.RegisterMeter(
            ingest_pb2.RegisterMeterRequest(
                meter=common_pb2.Meter(
                    meter_id=m.meter_id,
                    category=_CATEGORY[m.category],
                    tariff_id=m.tariff_id,
                    sanctioned_load_kw=m.sanctioned_load_kw,
                    rated_current_a=m.rated_current_a,
                    nominal_voltage_v=m.nominal_voltage_v,
                    interval_seconds=m.interval_seconds,
                    time_zone=m.time_zone,
                    labels={"simulated": "true", "solar": str(m.has_solar).lower()},
                )
            ),
            timeout=10,
        )


async def run_simulator(
    ingest_addr: str,
    *,
    meters: int = 200,
    interval_seconds: int = 60,
    backfill_hours: float = 24.0,
    seed: int = 7,
    stop: asyncio.Event,
) -> None:
    """Runs until `stop` is set. Readings are a pure function of (seed, meter, time), so after a restart
    the backfill regenerates exactly what was stored and the platform deduplicates it; the start point
    resumes from the fleet's oldest last_read_time to avoid even that."""
    fleet = Fleet(meters, seed=seed, interval_seconds=interval_seconds)
    step = interval_seconds
    async with clients.channel(ingest_addr) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        await register_fleet(stub, fleet)
        now = int(time.time())
        t = (now - int(backfill_hours * 3600)) // step * step + step
        first = await stub.GetMeter(ingest_pb2.GetMeterRequest(meter_id=fleet.meters[-1].meter_id))
        if first.meter.HasField("last_read_time"):
            t = max(t, first.meter.last_read_time.seconds + step)
        log.info(
            "simulator started",
            meters=meters,
            interval_seconds=step,
            start=dt.datetime.fromtimestamp(t, dt.UTC).isoformat(),
        )
        pending: list[common_pb2.Reading] = []
        pushed = 0
        while not stop.is_set():
            wait = t - time.time()
            if wait > 0:
                # Caught up: flush what the backfill gathered, then wait for the interval to end.
                if pending:
                    pushed += await _push(stub, pending, stop)
                    pending = []
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                    break
                except TimeoutError:
                    pass
            iv = fleet.readings_at(dt.datetime.fromtimestamp(t, dt.UTC))
            for meter_id, kind in iv.faults:
                log.info("simulated fault", meter_id=meter_id, fault=kind, read_time=iv.read_time.isoformat())
            pending.extend(to_readings(iv))
            if len(pending) + len(fleet.meters) > MAX_BATCH or t + step > time.time():
                pushed += await _push(stub, pending, stop)
                pending = []
            t += step
        log.info("simulator stopped", readings_pushed=pushed)
