"""The offline evaluation command (bench.eval_anomaly): event-level matching, interval helpers, the
data-root fallback, and a smoke test of the UCI loader when the shared data is present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bench.eval_anomaly import data_root, event_counts, main, merge_intervals, prf, runs

H = 3_600_000_000
TOL = 24 * H
DATA = Path(os.environ.get("METERMESH_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_runs_and_merge() -> None:
    s, e = runs(np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=bool))
    assert s.tolist() == [1, 4, 7] and e.tolist() == [2, 4, 7]
    s, e = merge_intervals(np.array([10, 0, 5, 30]), np.array([20, 6, 8, 31]))
    assert s.tolist() == [0, 10, 30] and e.tolist() == [8, 20, 31]


def test_event_matching_with_tolerance() -> None:
    labels_s = np.array([100 * H, 500 * H])
    labels_e = np.array([105 * H, 500 * H])
    alarms_s = np.array([20 * H, 128 * H, 300 * H, 476 * H])
    alarms_e = np.array([21 * H, 129 * H, 301 * H, 476 * H])
    # 128 h is 23 h after the first event ends: within 24 h; 476 h is 24 h before the second one.
    tp, na, hit, nl = event_counts(alarms_s, alarms_e, labels_s, labels_e, TOL)
    assert (tp, na, hit, nl) == (2, 4, 2, 2)
    p, r, f1 = prf(tp, na, hit, nl)
    assert (p, r) == (0.5, 1.0) and abs(f1 - 2 / 3) < 1e-12
    # A long alarm spanning an event counts once and detects it.
    assert event_counts(np.array([90 * H]), np.array([110 * H]), labels_s, labels_e, TOL) == (1, 1, 1, 2)
    assert event_counts(np.zeros(0, np.int64), np.zeros(0, np.int64), labels_s, labels_e, TOL) == (0, 0, 0, 2)


def test_missing_data_root_skips_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert data_root(str(tmp_path)) == tmp_path
    assert main(["--data", str(tmp_path / "absent")]) == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.skipif(
    not (DATA / "uci-household-hourly").is_dir(),
    reason=f"UCI household data not found at {DATA} (METERMESH_DATA_DIR)",
)
def test_uci_loader_smoke() -> None:
    from bench.eval_anomaly import load_uci

    uci = load_uci(DATA)
    assert uci.total == 34_589
    assert uci.dropped >= 421  # the all-zero logging outages, plus partially logged hours
    assert len(uci.read_us) == uci.total - uci.dropped
    assert np.all(np.diff(uci.read_us) > 0)
    assert 200 <= uci.voltage.min() and uci.voltage.max() < 260
    assert np.all((uci.pf > 0) & (uci.pf <= 1))
    assert 300 < np.median(uci.energy_wh) < 1500  # Wh per hour of a household
