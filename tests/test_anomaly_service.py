"""The anomaly service against real NATS and PostgreSQL: readings pushed through ingest come out as
anomaly events on ANOMALIES; on-demand scoring explains itself and says which detectors ran; state
survives a restart; a SIGKILLed detector loses and duplicates nothing; training registers versions."""

from __future__ import annotations

import time

import grpc
import nats
import pytest
from metermesh.anomaly.v1 import anomaly_pb2, anomaly_pb2_grpc
from metermesh.common.v1 import common_pb2
from metermesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from tests.support import Platform, reading, register, wait_for

NOW = int(time.time()) // 900 * 900


async def anomaly_events(platform: Platform) -> list[anomaly_pb2.AnomalyEvent]:
    """Every event on the platform's ANOMALIES stream (kept there: no alert service acks them)."""
    nc = await nats.connect(platform.nats_url)
    try:
        js = nc.jetstream()
        stream = f"{platform.prefix}ANOMALIES"
        info = await js.stream_info(stream)
        out = []
        for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            out.append(anomaly_pb2.AnomalyEvent.FromString(msg.data))
        return out
    finally:
        await nc.close()


async def push(platform: Platform, readings: list[common_pb2.Reading]) -> None:
    async with platform.channel() as ch:
        resp = await ingest_pb2_grpc.IngestServiceStub(ch).PushReadings(
            ingest_pb2.PushReadingsRequest(readings=readings), timeout=10
        )
    assert resp.accepted_count == len(readings), resp.rejections[:3]


async def start(platform: Platform, **env: str) -> None:
    await platform.start_writer()
    await platform.start_anomaly(**env)
    await platform.start_ingest()


async def test_a_surge_pushed_through_ingest_is_published_with_its_explanation(platform: Platform) -> None:
    await start(platform)
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), "M-1", "M-2")
    await push(
        platform,
        [
            reading("M-1", NOW - 1800, voltage_v=231.0),
            reading("M-1", NOW - 900, voltage_v=295.0),
            reading("M-2", NOW - 900, voltage_v=229.5),
        ],
    )
    events = await wait_for(
        lambda: anomaly_events(platform), lambda ev: len(ev) >= 1, timeout=30, what="an anomaly event"
    )
    assert len(events) == 1, events
    e = events[0]
    assert (e.meter_id, e.kind, e.detector) == (
        "M-1",
        anomaly_pb2.ANOMALY_KIND_VOLTAGE_SURGE,
        anomaly_pb2.DETECTOR_RULES,
    )
    assert e.start_time.seconds == NOW - 900 and e.severity >= anomaly_pb2.SEVERITY_MAJOR
    assert e.model_version == "rules-1" and "253" in e.explanation and "295" in e.explanation
    assert (
        e.features[0].name == "voltage_v"
        and e.features[0].value == 295.0
        and e.features[0].expected_value == 253.0
    )
    # The event carries the trace of the push that brought the reading.
    assert len(e.trace_id) == 32 and e.trace_id != "0" * 32


async def test_detect_anomalies_explains_and_reports_the_detectors_that_ran(platform: Platform) -> None:
    await start(platform)
    async with platform.channel_to(platform.anomaly_addr) as ch:
        stub = anomaly_pb2_grpc.AnomalyServiceStub(ch)
        # Unregistered meters are scored by the rules with the defaults (230 V nominal).
        resp = await stub.DetectAnomalies(
            anomaly_pb2.DetectAnomaliesRequest(
                inline_readings=anomaly_pb2.InlineReadings(
                    readings=[
                        reading("X-1", NOW - 900, voltage_v=200.0),
                        reading("X-2", NOW - 900, voltage_v=230.0),
                        reading("X-3", NOW - 900, voltage_v=1.0),
                    ]
                )
            ),
            timeout=10,
        )
        kinds = {(e.meter_id, e.kind) for e in resp.events}
        assert kinds == {
            ("X-1", anomaly_pb2.ANOMALY_KIND_VOLTAGE_SAG),
            ("X-3", anomaly_pb2.ANOMALY_KIND_OUTAGE),
        }
        assert resp.scored_reading_count == 3
        status = {d.detector: d for d in resp.detectors}
        assert (
            status[anomaly_pb2.DETECTOR_RULES].active
            and status[anomaly_pb2.DETECTOR_RULES].model_version == "rules-1"
        )
        for learned in (anomaly_pb2.DETECTOR_ISOLATION_FOREST, anomaly_pb2.DETECTOR_AUTOENCODER):
            assert not status[learned].active and status[learned].inactive_reason == "no trained model"
        # min_severity filters; nothing is published by on-demand scoring.
        only_critical = await stub.DetectAnomalies(
            anomaly_pb2.DetectAnomaliesRequest(
                inline_readings=anomaly_pb2.InlineReadings(
                    readings=[
                        reading("X-1", NOW - 900, voltage_v=200.0),
                        reading("X-3", NOW - 900, voltage_v=1.0),
                    ]
                ),
                min_severity=anomaly_pb2.SEVERITY_CRITICAL,
            ),
            timeout=10,
        )
        assert [e.kind for e in only_critical.events] == [anomaly_pb2.ANOMALY_KIND_OUTAGE]
    assert await anomaly_events(platform) == []


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (anomaly_pb2.DetectAnomaliesRequest(), grpc.StatusCode.INVALID_ARGUMENT, "source"),
        (
            anomaly_pb2.DetectAnomaliesRequest(inline_readings=anomaly_pb2.InlineReadings()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inline_readings.readings has 0",
        ),
        (
            anomaly_pb2.DetectAnomaliesRequest(
                inline_readings=anomaly_pb2.InlineReadings(
                    readings=[reading("X-1", NOW - 900), reading("X-1", NOW, wh=-5.0)]
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inline_readings.readings[1]",
        ),
        (
            anomaly_pb2.DetectAnomaliesRequest(
                stored_readings=anomaly_pb2.StoredReadings(meter_id="NOPE", time_range=common_pb2.TimeRange())
            ),
            grpc.StatusCode.NOT_FOUND,
            "'NOPE'",
        ),
        (
            anomaly_pb2.DetectAnomaliesRequest(detectors=[7], inline_readings=anomaly_pb2.InlineReadings()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "detectors[0] is 7",
        ),
    ],
)
async def test_detect_anomalies_rejects_bad_requests_precisely(
    platform: Platform, request_: anomaly_pb2.DetectAnomaliesRequest, code: grpc.StatusCode, needle: str
) -> None:
    await platform.start_anomaly()
    async with platform.channel_to(platform.anomaly_addr) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await anomaly_pb2_grpc.AnomalyServiceStub(ch).DetectAnomalies(request_, timeout=10)
    assert err.value.code() == code and needle in (err.value.details() or ""), err.value.details()


async def test_state_survives_a_restart_and_a_sigkill_loses_and_duplicates_nothing(
    platform: Platform,
) -> None:
    quiet = {"METERMESH_ANOMALY_GAP_SWEEP_SECONDS": "3600"}  # gaps here come from readings, not the sweep
    await platform.start_writer()
    detector = await platform.start_anomaly(**quiet)
    await platform.start_ingest()
    meters = [f"K-{i:03d}" for i in range(50)]
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), *meters)
    # 40 pushes of every meter's next interval; every fifth reading of every meter surges.
    start = NOW - 60 * 900
    expected = set()
    for k in range(40):
        t = start + k * 900
        batch = []
        for j, m in enumerate(meters):
            surge = (k + j) % 5 == 0
            batch.append(reading(m, t, voltage_v=270.0 if surge else 230.0))
            if surge:
                expected.add((m, t))
        await push(platform, batch)
        if k == 20:
            detector.kill()  # SIGKILL mid-stream: its unacked batches come back to the restarted one
            detector = await platform.start_anomaly(**quiet)

    def surges(ev: list[anomaly_pb2.AnomalyEvent]) -> list[tuple[str, int]]:
        return [
            (e.meter_id, e.start_time.seconds) for e in ev if e.kind == anomaly_pb2.ANOMALY_KIND_VOLTAGE_SURGE
        ]

    events = await wait_for(
        lambda: anomaly_events(platform),
        lambda ev: len(surges(ev)) >= len(expected),
        timeout=60,
        what=f"{len(expected)} surge events",
    )
    assert sorted(surges(events)) == sorted(expected)  # each once: no loss, no duplicate
    # The state was saved: after a restart a reading 10 intervals later is seen as ending a gap
    # that began at each meter's last reading before the restart.
    assert await detector.stop(30) == 0
    await platform.start_anomaly(**quiet)
    last = start + 39 * 900
    await push(platform, [reading(m, last + 10 * 900, voltage_v=230.0) for m in meters[:3]])
    gaps = await wait_for(
        lambda: anomaly_events(platform),
        lambda ev: sum(e.kind == anomaly_pb2.ANOMALY_KIND_COMMUNICATION_GAP for e in ev) >= 3,
        timeout=30,
        what="gap events after the restart",
    )
    gap = {
        (e.meter_id, e.start_time.seconds, e.end_time.seconds)
        for e in gaps
        if e.kind == anomaly_pb2.ANOMALY_KIND_COMMUNICATION_GAP and e.meter_id in meters[:3]
    }
    assert gap == {(m, last, last + 10 * 900) for m in meters[:3]}


def history(meters: list[str], days: int, end: int) -> list[common_pb2.Reading]:
    """15-minute readings with a daily shape (evening peak), distinct per meter, ending at `end`."""
    out = []
    start = end - days * 86400
    for j, m in enumerate(meters):
        level = 40.0 + 15 * j
        for k in range(days * 96):
            t = start + k * 900
            hour = (t // 3600) % 24
            wh = (
                level * (0.6 + (1.2 if 17 <= hour < 22 else 0.0)) * (1 + 0.05 * ((k * 7919 + j) % 11 - 5) / 5)
            )
            out.append(reading(m, t, wh=wh, voltage_v=230.0 + (k % 5) - 2))
    return out


async def train(
    stub: anomaly_pb2_grpc.AnomalyServiceStub, **kw: object
) -> list[anomaly_pb2.TrainDetectorResponse]:
    return [r async for r in stub.TrainDetector(anomaly_pb2.TrainDetectorRequest(**kw), timeout=300)]


async def test_training_registers_versions_and_only_a_better_one_serves(platform: Platform) -> None:
    await start(platform, METERMESH_ANOMALY_GAP_SWEEP_SECONDS="3600")
    meters = [f"T-{i}" for i in range(5)]
    end = NOW - 86400
    async with platform.channel() as ch:
        await register(ingest_pb2_grpc.IngestServiceStub(ch), *meters)
    rows = history(meters, 21, end)
    for i in range(0, len(rows), 10_000):
        await push(platform, rows[i : i + 10_000])
    await wait_for(platform.count_readings, lambda n: n >= len(rows), timeout=60, what="history stored")
    window = common_pb2.TimeRange()
    window.start_time.seconds, window.end_time.seconds = end - 22 * 86400, end + 1
    async with platform.channel_to(platform.anomaly_addr) as ch:
        stub = anomaly_pb2_grpc.AnomalyServiceStub(ch)
        first = await train(
            stub, detector=anomaly_pb2.DETECTOR_ISOLATION_FOREST, training_range=window, seed=3
        )
        progress = [r.progress for r in first[:-1]]
        assert progress and all(r.HasField("progress") for r in first[:-1]) and first[-1].HasField("result")
        fractions = [p.fraction_done for p in progress]
        assert fractions == sorted(fractions) and {p.stage for p in progress} >= {
            anomaly_pb2.TRAINING_STAGE_LOADING_DATA,
            anomaly_pb2.TRAINING_STAGE_FITTING,
        }
        result = first[-1].result
        assert result.promoted and result.previous_model_version == ""
        assert (
            result.model.model_version == "iforest-1"
            and result.model.state == anomaly_pb2.MODEL_STATE_SERVING
        )
        assert result.model.meter_count == 5 and result.model.metrics.evaluated_count > 0
        assert 0 <= result.model.metrics.f1 <= 1 and 0 <= result.model.metrics.roc_auc <= 1

        # The same data and seed cannot beat the serving version: registered, not promoted.
        again = (
            await train(stub, detector=anomaly_pb2.DETECTOR_ISOLATION_FOREST, training_range=window, seed=3)
        )[-1]
        assert not again.result.promoted and again.result.previous_model_version == "iforest-1"
        assert again.result.model.state == anomaly_pb2.MODEL_STATE_CANDIDATE
        assert again.result.previous_metrics.f1 == result.model.metrics.f1
        skipped = (
            await train(
                stub,
                detector=anomaly_pb2.DETECTOR_AUTOENCODER,
                training_range=window,
                epochs=3,
                skip_promotion=True,
            )
        )[-1]
        assert not skipped.result.promoted and skipped.result.promotion_reason == "promotion skipped"

        listed = await stub.ListDetectorModels(anomaly_pb2.ListDetectorModelsRequest(page_size=2))
        assert [m.model_version for m in listed.models] == [
            "autoencoder-1",
            "iforest-2",
        ] and listed.next_page_token
        rest = await stub.ListDetectorModels(
            anomaly_pb2.ListDetectorModelsRequest(page_size=2, page_token=listed.next_page_token)
        )
        assert [m.model_version for m in rest.models] == ["iforest-1"] and not rest.next_page_token
        serving = await stub.ListDetectorModels(
            anomaly_pb2.ListDetectorModelsRequest(state=anomaly_pb2.MODEL_STATE_SERVING)
        )
        assert [m.model_version for m in serving.models] == ["iforest-1"]

        # The serving forest now scores on demand, and says so; the autoencoder is only a candidate.
        resp = await stub.DetectAnomalies(
            anomaly_pb2.DetectAnomaliesRequest(
                stored_readings=anomaly_pb2.StoredReadings(meter_id="T-0", time_range=window)
            ),
            timeout=60,
        )
        status = {d.detector: d for d in resp.detectors}
        assert status[anomaly_pb2.DETECTOR_ISOLATION_FOREST].active
        assert status[anomaly_pb2.DETECTOR_ISOLATION_FOREST].model_version == "iforest-1"
        assert status[anomaly_pb2.DETECTOR_AUTOENCODER].inactive_reason == "no trained model"

        # A promoted autoencoder scores the complete days of a stored range.
        ae = (await train(stub, detector=anomaly_pb2.DETECTOR_AUTOENCODER, training_range=window, epochs=3))[
            -1
        ]
        assert ae.result.promoted and ae.result.model.model_version == "autoencoder-2"
        week = common_pb2.TimeRange()
        week.start_time.seconds, week.end_time.seconds = end - 7 * 86400, end
        resp = await stub.DetectAnomalies(
            anomaly_pb2.DetectAnomaliesRequest(
                stored_readings=anomaly_pb2.StoredReadings(meter_id="T-1", time_range=week),
                detectors=[anomaly_pb2.DETECTOR_AUTOENCODER],
            ),
            timeout=60,
        )
        status = {d.detector: d for d in resp.detectors}
        assert status[anomaly_pb2.DETECTOR_AUTOENCODER].active, status
        assert status[anomaly_pb2.DETECTOR_RULES].inactive_reason == "not requested"
        assert all(e.detector == anomaly_pb2.DETECTOR_AUTOENCODER for e in resp.events)
        assert resp.scored_reading_count == 7 * 96

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await train(stub, detector=anomaly_pb2.DETECTOR_RULES)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "DETECTOR_RULES" in (
            err.value.details() or ""
        )
        too_little = common_pb2.TimeRange()
        too_little.start_time.seconds, too_little.end_time.seconds = end - 3 * 86400, end
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await train(stub, detector=anomaly_pb2.DETECTOR_ISOLATION_FOREST, training_range=too_little)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "14 days" in (
            err.value.details() or ""
        )
