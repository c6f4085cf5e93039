"""The operator CLI against the running platform (real services, NATS JetStream and PostgreSQL): status,
meters import, readings replay of a real CSV with resume after an interruption, training, a billing
cycle and alerts watch. Commands run as `python -m services.operator ...` subprocesses, as an operator
runs them, and every `--output json` is parsed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from metermesh.common.v1 import common_pb2
from typer.testing import CliRunner

from services.common.jetstream import Topology
from services.operator import datasets
from services.operator.app import app
from services.operator.bill import PeriodError, parse_period
from services.operator.readings import Clock
from tests.support import Platform, wait_for

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("METERMESH_DATA_DIR", ROOT.parent / "shared" / "data"))
UCI = DATA / "uci-household-hourly" / "household_power_consumption_hourly.csv"

METERS_CSV = """\
meter_id,category,tariff_id,sanctioned_load_kw,rated_current_a,nominal_voltage_v,interval_seconds,time_zone,labels
GJ-1,residential,in-gj-rgp-urban,3,60,230,3600,Asia/Kolkata,feeder=F12;substation=S3
GJ-2,residential,in-gj-rgp-urban,2,40,,3600,Asia/Kolkata,
GJ-3,spaceship,in-gj-rgp-urban,2,40,,3600,Asia/Kolkata,
GJ-4,commercial,,abc,40,,3600,Asia/Kolkata,
GJ-5,residential,,2,40,,3600,Mars/Olympus,
GJ-1,residential,,2,40,,3600,UTC,
GJ-6,residential,in-gj-rgp-urban,3,60,230,3600,Asia/Kolkata,feeder=F12
"""


@pytest.fixture
def platform(platform: Platform) -> Platform:
    """The shared platform fixture with a small READINGS stream: many test and benchmark platforms
    share one NATS server, and each stream reserves its max_bytes of JetStream storage up front."""
    platform.extra_env["METERMESH_READINGS_MAX_BYTES"] = str(64 * 1024**2)
    return platform


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        try:
            return json.loads(self.out)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not JSON ({exc}): {self.out!r}\nstderr: {self.err}") from None


def cli_env(platform: Platform, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "METERMESH_GATEWAY_ADDR"}
    return {**env, **platform.env, "COLUMNS": "200", **extra}


async def spawn(platform: Platform, *args: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.operator",
        *args,
        cwd=ROOT,
        env=cli_env(platform, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def cli(platform: Platform, *args: str, timeout: float = 90.0) -> Result:
    proc = await spawn(platform, *args)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"metermesh {' '.join(args)} did not finish in {timeout:g} s: {err.decode()}"
        ) from None
    return Result(proc.returncode or 0, out.decode(), err.decode())


async def import_meters(platform: Platform, tmp_path: Path, text: str) -> Result:
    path = tmp_path / f"meters-{abs(hash(text))}.csv"
    path.write_text(text)
    return await cli(platform, "meters", "import", str(path), "--output", "json")


async def stored(platform: Platform, sql: str, *args: Any) -> Any:
    conn = await platform.db()
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


def hourly_csv(
    path: Path, meters: list[str], start: dt.datetime, end: dt.datetime, *, voltage: float = 231.0
) -> int:
    """A generic-format file: hourly readings of each meter ending in (start, end], varying kWh."""
    n = 0
    with path.open("w") as f:
        f.write("meter_id,read_time,import_kwh,voltage_v,interval_seconds\n")
        t = start + dt.timedelta(hours=1)
        while t <= end:
            for j, m in enumerate(meters):
                f.write(f"{m},{t.isoformat()},{0.3 + ((t.hour * 7 + j) % 11) / 10:.2f},{voltage},3600\n")
                n += 1
            t += dt.timedelta(hours=1)
    return n


async def dead_letter(platform: Platform, meter_id: str, read_time: dt.datetime, *, reason: str) -> None:
    """Publishes a READINGS batch to the dead-letter subject as the storage writer would."""
    nan = float("nan")
    batch = common_pb2.ReadingBatch(
        meter_ids=[meter_id],
        meter_index=[0],
        read_time_unix_micros=[int(read_time.timestamp() * 1_000_000)],
        interval_seconds=[60],
        import_energy_wh=[12.0],
        export_energy_wh=[0.0],
        voltage_v=[230.0],
        current_a=[nan],
        active_power_w=[nan],
        power_factor=[nan],
        frequency_hz=[nan],
    )
    topo = Topology(prefix=platform.prefix)
    nc = await nats.connect(platform.nats_url)
    try:
        await nc.jetstream().publish(
            topo.dead_letter_subject(topo.readings_stream, "readings-writer"),
            batch.SerializeToString(),
            headers={
                "Metermesh-Dead-Reason": reason,
                "Metermesh-Source-Subject": topo.readings_subject(3),
                "Metermesh-Source-Sequence": "7",
                "Metermesh-Delivered": "10",
                "Nats-Msg-Id": f"{topo.readings_stream}:7",
            },
        )
    finally:
        await nc.close()


# --- no services needed -------------------------------------------------------------------------


def test_every_command_has_help_with_examples_and_bad_input_is_a_usage_error() -> None:
    runner = CliRunner()
    for cmd in (
        ["status"],
        ["meters", "import"],
        ["meters", "list"],
        ["readings", "replay"],
        ["train", "anomaly"],
        ["train", "forecast"],
        ["bill", "cycle"],
        ["alerts", "watch"],
        ["alerts", "list"],
        ["deadletters", "list"],
        ["deadletters", "redrive"],
    ):
        res = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (cmd, res.output)
        assert "Examples" in res.output and "metermesh " + " ".join(cmd) in res.output, (cmd, res.output)
        assert "--output" in res.output

    res = runner.invoke(app, ["bill", "cycle", "--period", "2026-13", "--output", "json"])
    assert res.exit_code == 2
    assert "month 13" in json.loads(res.stdout)["error"]["message"]
    res = runner.invoke(app, ["alerts", "watch", "--severity", "dire", "--output", "json"])
    assert res.exit_code == 2 and "critical" in json.loads(res.stdout)["error"]["message"]


def test_periods_time_zones_and_formats() -> None:
    assert parse_period("2026-10") == (dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    assert parse_period("2026-12") == (dt.date(2026, 12, 1), dt.date(2027, 1, 1))
    assert parse_period("2026-10-01..2026-10-16") == (dt.date(2026, 10, 1), dt.date(2026, 10, 16))
    for bad in ("2026-13", "2026-10-16..2026-10-01", "October"):
        with pytest.raises(PeriodError):
            parse_period(bad)

    # Clocks going back in London (2026-10-25): the repeated local hour keeps both of its readings.
    clock = Clock(datasets.parse_zone("Europe/London"), "end", 0)
    stamps = ["00:30", "01:00", "01:30", "01:00", "01:30", "02:00"]
    ends = [clock.end_utc(dt.datetime.fromisoformat(f"2026-10-25 {s}"), 1800) for s in stamps]
    assert [e.strftime("%H:%M") for e in ends] == ["23:30", "00:00", "00:30", "01:00", "01:30", "02:00"]
    # A row stamped with its interval's start ends one interval later; a shift moves it by whole weeks.
    clock = Clock(datasets.parse_zone("+01:00"), "start", 7 * 86400)
    end = clock.end_utc(dt.datetime(2006, 12, 16, 18), 3600)
    assert end == dt.datetime(2006, 12, 23, 18, tzinfo=dt.UTC)

    assert datasets.detect(["LCLid", "DateTime", "KWH/hh (per half hour)"]).name == "lcl"
    assert datasets.detect(["customer_id", "reading_datetime", "general_supply_kwh"]).name == "sgsc"
    assert datasets.detect(["timestamp", "building_id", "meter_reading", "anomaly"]).name == "lead"
    assert datasets.detect(["read_time", "meter_id", "import_kwh"]).name == "generic"
    assert datasets.detect(["when", "kwh"]) is None
    lcl = datasets.FORMATS["lcl"]
    row = {
        "LCLid": "MAC000002",
        "DateTime": "2012-10-12 00:30:00.0000000",
        "KWH/hh (per half hour)": " 0.25 ",
    }
    parsed = lcl.parse(row, datasets.Options())
    assert parsed.fields == {"import_energy_wh": 250.0} and parsed.stamp == dt.datetime(2012, 10, 12, 0, 30)
    with pytest.raises(datasets.Skip, match="Null"):
        lcl.parse({**row, "KWH/hh (per half hour)": "Null"}, datasets.Options())


async def test_a_service_that_cannot_be_reached_is_exit_3_with_a_json_error(platform: Platform) -> None:
    from services.common.embedded import free_port

    addr = f"127.0.0.1:{free_port()}"
    res = await cli(platform, "train", "forecast", "--forecast", addr, "--output", "json")
    assert res.code == 3, res
    err = res.json()["error"]
    assert (err["service"], err["addr"], err["code"]) == ("forecast", addr, "UNAVAILABLE")
    res = await cli(platform, "alerts", "watch", "--alerts", addr, "--timeout", "1", "--output", "json")
    assert res.code == 3 and res.json()["error"]["code"] == "UNAVAILABLE", res


# --- against the platform -----------------------------------------------------------------------


async def test_status_all_up_then_a_service_down(platform: Platform, tmp_path: Path) -> None:
    names = ["writer", "ingest", "alerts", "anomaly", "billing", "forecast"]
    await asyncio.gather(*(getattr(platform, f"start_{n}")() for n in names))
    assert (
        await import_meters(platform, tmp_path, "meter_id,category,interval_seconds\nST-1,residential,60\n")
    ).code == 0

    # Readings flowing while status samples: 600 one-minute readings at 6,000 x real time (100/s).
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    feed = tmp_path / "feed.csv"
    with feed.open("w") as f:
        f.write("read_time,import_energy_wh,voltage_v,interval_seconds\n")
        for k in range(600):
            f.write(f"{(now - dt.timedelta(minutes=600 - k)).isoformat()},{5 + k % 7},230,60\n")
    replay = await spawn(
        platform, "readings", "replay", str(feed), "--meter", "ST-1", "--speed-up", "6000",
        "--state", str(tmp_path / "feed.json"), "--output", "json",
    )  # fmt: skip
    await asyncio.sleep(1.0)
    res = await cli(platform, "status", "--output", "json", "--sample", "2", "--skip", "gateway")
    await asyncio.wait_for(replay.communicate(), 60)
    assert replay.returncode == 0
    assert res.code == 0, res
    st = res.json()
    assert st["ok"] and st["down"] == []
    assert {s["name"]: s["status"] for s in st["services"]} == dict.fromkeys(names, "SERVING")
    apis = {s["name"]: s["api"] for s in st["services"]}
    assert apis["ingest"] == ["metermesh.ingest.v1.IngestService"]
    assert apis["billing"] == ["metermesh.billing.v1.BillingService"]
    assert {c["durable"] for c in st["consumers"]} == {"readings-writer", "anomaly-detector", "alerts"}
    assert all(c["lag"] >= 0 and "lag_change" in c for c in st["consumers"])
    assert st["readings_per_second"] > 10, st
    assert {s["name"] for s in st["streams"]} == {
        platform.prefix + s for s in ("READINGS", "ANOMALIES", "DEADLETTER")
    }
    assert st["dead_letters"] == 0
    assert set(st["alerts"]["open"]) == {"critical", "major", "warning", "info"}

    # A batch the writer gave up on: seen in status, listed with its reason, sent back once "fixed".
    read_time = now - dt.timedelta(days=1)
    await dead_letter(platform, "ST-1", read_time, reason="failed 10 times; last error: DiskFull()")
    res = await cli(platform, "status", "--output", "json", "--sample", "0", "--skip", "gateway")
    assert res.json()["dead_letters"] == 1
    res = await cli(platform, "deadletters", "list", "--durable", "readings-writer", "--output", "json")
    assert res.code == 0, res
    listed = res.json()
    assert listed["total"] == 1 and listed["by_consumer"][0]["durable"] == "readings-writer"
    assert listed["newest"][0]["reason"] == "failed 10 times; last error: DiskFull()"
    res = await cli(platform, "deadletters", "redrive", "--output", "json")
    assert res.code == 0 and res.json()["redriven"] == 1, res
    await wait_for(
        lambda: stored(platform, "SELECT count(*) AS n FROM readings WHERE read_time = $1", read_time),
        lambda r: r["n"] == 1,
        timeout=30,
        what="the re-driven reading stored",
    )
    assert (await cli(platform, "deadletters", "list", "--output", "json")).json()["total"] == 0

    billing = next(p for p in platform.procs if p.name == "billing")
    billing.kill()
    res = await cli(platform, "status", "--sample", "0", "--skip", "gateway")
    assert res.code == 1, res
    assert "DOWN: billing" in res.out
    assert any(
        "billing" in line and "DOWN" in line and platform.billing_addr in line
        for line in res.out.splitlines()
    )
    res = await cli(platform, "status", "--sample", "0", "--skip", "gateway", "--output", "json")
    assert res.code == 1
    st = res.json()
    assert st["down"] == ["billing"] and not st["ok"]
    assert "UNAVAILABLE" in next(s for s in st["services"] if s["name"] == "billing")["error"]


async def test_meters_import_registers_good_rows_and_reports_bad_ones_by_line(
    platform: Platform, tmp_path: Path
) -> None:
    await platform.start_ingest()
    res = await import_meters(platform, tmp_path, METERS_CSV)
    assert res.code == 1, res
    doc = res.json()
    assert (doc["rows"], doc["created"], doc["updated"], doc["failed"]) == (7, 3, 0, 4)
    errors = {e["line"]: e for e in doc["errors"]}
    assert sorted(errors) == [4, 5, 6, 7]
    assert "spaceship" in errors[4]["error"]
    assert "sanctioned_load_kw 'abc'" in errors[5]["error"]
    # The server's own message for what only it checks.
    assert errors[6]["code"] == "INVALID_ARGUMENT" and "Mars/Olympus" in errors[6]["error"]
    assert "repeats line 2" in errors[7]["error"]

    res = await cli(platform, "meters", "list", "--output", "json")
    assert res.code == 0
    meters = {m["meter_id"]: m for m in res.json()["meters"]}
    assert sorted(meters) == ["GJ-1", "GJ-2", "GJ-6"]
    assert meters["GJ-1"]["labels"] == {"feeder": "F12", "substation": "S3"}
    assert meters["GJ-1"]["tariff_id"] == "in-gj-rgp-urban" and meters["GJ-1"]["sanctioned_load_kw"] == 3
    assert meters["GJ-2"]["nominal_voltage_v"] == 230  # empty cell: the server's default

    # Again, as a table: the same rows updated, the same errors by line.
    path = tmp_path / "again.csv"
    path.write_text(METERS_CSV)
    res = await cli(platform, "meters", "import", str(path))
    assert res.code == 1
    assert "registered 3 of 7 meters (0 created, 3 updated); 4 failed" in res.out
    assert "Mars/Olympus" in res.out


@pytest.mark.skipif(not UCI.exists(), reason=f"real data not found at {UCI} (set METERMESH_DATA_DIR)")
async def test_replay_of_real_uci_data_resumes_after_an_interruption_then_trains_the_autoencoder(
    platform: Platform, tmp_path: Path
) -> None:
    await asyncio.gather(platform.start_ingest(), platform.start_writer(), platform.start_anomaly())
    meters = "meter_id,category,sanctioned_load_kw,rated_current_a,interval_seconds,time_zone\n"
    res = await import_meters(platform, tmp_path, meters + "UCI-1,residential,9,45,3600,Europe/Paris\n")
    assert res.code == 0, res
    state_path = tmp_path / "uci.json"
    replay = [
        "readings",
        "replay",
        str(UCI),
        "--meter",
        "UCI-1",
        "--shift-to-now",
        "--state",
        str(state_path),
    ]

    # 1. Slowly (an hour of data every 0.1 s), interrupted by Ctrl-C once some batches are acknowledged.
    proc = await spawn(platform, *replay, "--speed-up", "36000", "--output", "json")

    async def state_line() -> int:
        return json.loads(state_path.read_text())["line"] if state_path.exists() else 0

    await wait_for(state_line, lambda n: n >= 15, timeout=30, what="the replay to acknowledge a few rows")
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err.decode()
    first = json.loads(out)
    assert first["interrupted"] and not first["complete"]
    done = first["last_line"]
    assert 15 <= done < 300

    # 2. The same command continues after the last acknowledged row, up to line 501 (500 data rows).
    res = await cli(platform, *replay, "--limit", str(501 - done))
    assert res.code == 0, res
    assert f"resuming after line {done}" in res.err
    st = json.loads(state_path.read_text())
    assert st["line"] == 501 and st["rows"] == 500
    # The first hour (36 minutes logged) is incomplete and skipped; every other row is one reading.
    assert st["skipped"] == {"incomplete hour (minutes missing)": 1} and st["accepted"] == 499
    row = await wait_for(
        lambda: stored(
            platform,
            "SELECT count(*) AS n, count(DISTINCT read_time) AS d, min(read_time) AS lo, max(read_time) AS hi "
            "FROM readings WHERE meter_id = 'UCI-1'",
        ),
        lambda r: r["n"] >= 499,
        timeout=30,
        what="the writer to store the replayed readings",
    )
    # No duplicates and no holes: 499 consecutive hours.
    assert row["n"] == row["d"] == 499
    assert row["hi"] - row["lo"] == dt.timedelta(hours=498)
    # Shifted by whole weeks: 2006-12-16 18:00 +01:00 (the hour's start) ends at 17:00 UTC + 1 h.
    shift = dt.timedelta(seconds=st["shift_seconds"])
    assert shift.total_seconds() % (7 * 86400) == 0
    assert row["lo"] == dt.datetime(2006, 12, 16, 18, tzinfo=dt.UTC) + shift
    first_reading = await stored(
        platform, "SELECT * FROM readings WHERE meter_id = 'UCI-1' AND read_time = $1", row["lo"]
    )
    # CSV: 2006-12-16 18:00:00,217.932,4.802,14074.81,936.0 (sums of the hour's minutes)
    assert first_reading["import_energy_wh"] == pytest.approx(217.932 * 1000 / 60)
    assert first_reading["voltage_v"] == pytest.approx(14074.81 / 60)
    assert first_reading["current_a"] == pytest.approx(936.0 / 60)
    assert first_reading["power_factor"] == pytest.approx(217.932 / (217.932**2 + 4.802**2) ** 0.5)

    # 3. Three weeks of history are too little for the autoencoder: the service says what is missing.
    train = [
        "train",
        "anomaly",
        "--detector",
        "autoencoder",
        "--epochs",
        "2",
        "--days",
        "6000",
        "--meter",
        "UCI-1",
    ]
    res = await cli(platform, *train, "--output", "json")
    assert res.code == 3, res
    err_doc = res.json()["error"]
    assert err_doc["code"] == "FAILED_PRECONDITION" and "needs more history" in err_doc["details"]

    # 4. Eight more weeks, then the first autoencoder version is trained and promoted.
    res = await cli(platform, *replay, "--limit", "1350", "--output", "json")
    assert res.code == 0, res
    total = res.json()["total"]["accepted"]
    await wait_for(
        lambda: stored(platform, "SELECT count(*) AS n FROM readings WHERE meter_id = 'UCI-1'"),
        lambda r: r["n"] >= total,
        timeout=30,
        what="the writer to store the rest",
    )
    res = await cli(platform, *train, "--output", "json")
    assert res.code == 0, res
    doc = res.json()
    assert doc["model_version"] == "autoencoder-1" and doc["promoted"], doc
    assert doc["promotion_reason"] and doc["metrics"]["evaluated_count"] > 0
    assert 0 <= doc["metrics"]["f1"] <= 1


async def test_billing_cycle_bills_meters_with_readings_and_reports_the_rest(
    platform: Platform, tmp_path: Path
) -> None:
    await asyncio.gather(platform.start_ingest(), platform.start_writer(), platform.start_billing())
    meters = "meter_id,category,tariff_id,sanctioned_load_kw,interval_seconds,time_zone\n" + "".join(
        f"BILL-{k},residential,in-gj-rgp-urban,3,3600,Asia/Kolkata\n" for k in (1, 2, 3)
    )
    assert (await import_meters(platform, tmp_path, meters)).code == 0
    # Last calendar month, with a day either side (India is UTC+05:30).
    today = dt.datetime.now(dt.UTC).date()
    end = dt.date(today.year, today.month, 1)
    start = (end - dt.timedelta(days=1)).replace(day=1)
    period = f"{start:%Y-%m}"
    csv_path = tmp_path / "usage.csv"
    n = hourly_csv(
        csv_path,
        ["BILL-1", "BILL-2"],
        dt.datetime.combine(start - dt.timedelta(days=1), dt.time(), dt.UTC),
        dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC),
    )
    res = await cli(
        platform, "readings", "replay", str(csv_path), "--state", str(tmp_path / "u.json"), "--output", "json"
    )
    assert res.code == 0 and res.json()["this_run"]["accepted"] == n, res
    await wait_for(
        lambda: stored(platform, "SELECT count(*) AS n FROM readings"),
        lambda r: r["n"] >= n,
        timeout=30,
        what="the readings stored",
    )

    res = await cli(
        platform, "bill", "cycle", "--period", period, "--tariff", "in-gj-rgp-urban", "--output", "json"
    )
    assert res.code == 1, res  # a meter failed
    doc = res.json()
    assert (doc["total"], doc["billed"], doc["skipped"], doc["failed"]) == (3, 2, 0, 1), doc
    assert doc["failures"] == [{"meter_id": "BILL-3", "reason": "no readings in the billing period"}]
    assert doc["period"] == {"start": start.isoformat(), "end": end.isoformat()}
    assert [t["currency_code"] for t in doc["billed_totals"]] == ["INR"] and float(
        doc["billed_totals"][0]["amount"]
    ) > 0

    # Run again: the billed meters are skipped (a cycle is safe to repeat), the failure is shown again.
    res = await cli(platform, "bill", "cycle", "--period", period)
    assert res.code == 1
    assert "BILL-3" in res.out and "no readings in the billing period" in res.out
    res = await cli(platform, "bill", "cycle", "--period", period, "--meter", "BILL-1", "--output", "json")
    assert res.code == 0 and (res.json()["skipped"], res.json()["failed"]) == (1, 0)


async def test_alerts_watch_prints_a_surge_as_a_json_line(platform: Platform, tmp_path: Path) -> None:
    await asyncio.gather(
        platform.start_ingest(), platform.start_writer(), platform.start_anomaly(), platform.start_alerts()
    )
    meters = "meter_id,category,nominal_voltage_v,interval_seconds\nGJ-W,residential,230,900\nGJ-Q,residential,230,900\n"
    assert (await import_meters(platform, tmp_path, meters)).code == 0
    watch = await spawn(
        platform, "alerts", "watch", "--severity", "major", "--meter", "GJ-W", "--output", "json"
    )
    try:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        surge = tmp_path / "surge.csv"
        surge.write_text(
            "meter_id,read_time,import_energy_wh,voltage_v,interval_seconds\n"
            f"GJ-Q,{(now - dt.timedelta(minutes=3)).isoformat()},50,291,900\n"  # another meter: filtered out
            f"GJ-W,{(now - dt.timedelta(minutes=2)).isoformat()},50,290,900\n"
        )
        res = await cli(platform, "readings", "replay", str(surge), "--state", str(tmp_path / "s.json"))
        assert res.code == 0, res
        assert watch.stdout is not None
        line = await asyncio.wait_for(watch.stdout.readline(), 30)
        update = json.loads(line)
        assert update["change_kind"] == "created" and update["sequence"] > 0
        assert (update["meter_id"], update["kind"], update["state"]) == ("GJ-W", "voltage_surge", "open")
        assert update["severity"] in ("major", "critical") and update["event_count"] == 1
        assert "290" in update["explanation"]
        assert update["alert"]["kind"] == "ANOMALY_KIND_VOLTAGE_SURGE"
    finally:
        if watch.returncode is None:
            watch.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(watch.communicate(), 30)
    assert watch.returncode == 0, err.decode()  # Ctrl-C is how a watch ends

    res = await cli(platform, "alerts", "list", "--state", "open", "--output", "json")
    assert res.code == 0
    listed = res.json()
    assert {(a["meter_id"], a["kind"]) for a in listed["alerts"]} >= {
        ("GJ-W", "voltage_surge"),
        ("GJ-Q", "voltage_surge"),
    }
    assert listed["sequence"] >= update["sequence"]
    # Resuming from a sequence replays what came after it, then stops after --max-updates.
    res = await cli(
        platform, "alerts", "watch", "--after-sequence", "0", "--max-updates", "1", "--output", "json"
    )
    assert res.code == 0 and len(res.out.splitlines()) == 1 and json.loads(res.out)["sequence"] > 0


async def test_train_forecast_shows_the_backtest_and_the_promotion_decision(
    platform: Platform, tmp_path: Path
) -> None:
    await asyncio.gather(platform.start_ingest(), platform.start_writer(), platform.start_forecast())
    meters = "meter_id,category,interval_seconds,time_zone\nFC-1,residential,3600,UTC\n"
    assert (await import_meters(platform, tmp_path, meters)).code == 0
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    csv_path = tmp_path / "history.csv"
    n = hourly_csv(csv_path, ["FC-1"], now - dt.timedelta(days=42), now - dt.timedelta(hours=1))
    res = await cli(
        platform, "readings", "replay", str(csv_path), "--state", str(tmp_path / "h.json"), "--output", "json"
    )
    assert res.code == 0, res
    await wait_for(
        lambda: stored(platform, "SELECT count(*) AS n FROM readings_hourly"),
        lambda r: r["n"] >= n,
        timeout=30,
        what="the hourly rollups",
    )
    res = await cli(
        platform, "train", "forecast", "--epochs", "1", "--days", "60", "--output", "json", timeout=120
    )
    assert res.code == 0, res
    doc = res.json()
    assert doc["model_version"].startswith("lstm-") and isinstance(doc["promoted"], bool)
    assert doc["promotion_reason"]
    assert set(doc["baseline_metrics"]) >= {"baseline-previous-day", "baseline-previous-week"}
    assert doc["metrics"]["window_count"] > 0
