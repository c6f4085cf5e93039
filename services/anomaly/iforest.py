"""Isolation Forest over per-meter-normalised reading features (point anomalies).

Fitting uses scikit-learn; scoring does not. The fitted trees are exported into flat numpy arrays in
a complete-binary-tree (heap) layout of the forest's maximum depth D: node h has children 2h and 2h+1
(1-based), a leaf above depth D is padded with always-left nodes (threshold +inf) down to depth D, and
every padded leaf carries the path length sklearn would add for the original leaf (its depth plus the
average path length of its training samples). Scoring then walks all rows through all trees at once,
one level per step: D vectorised gathers and compares over a (rows x trees) index array, no Python
per row or per tree. Thresholds are rounded down to float32 and features cast to float32, which is
exactly sklearn's comparison (it casts X to float32 and compares against float64 thresholds), so the
scores equal sklearn's score_samples up to float summation order.

Persistence (no pickle): `to_bytes()` is an np.savez_compressed archive (read back with
allow_pickle=False) holding a JSON header (format, version, threshold, feature and input names,
normalisation constants) as a uint8 array and the heap arrays feature (int8), threshold (float64) and
leaf_value (float64), each (trees, 2^D); loading needs numpy only.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.anomaly.features import (
    FEATURE_NAMES,
    INPUT_NAMES,
    MIN_ENERGY_COUNT,
    N_FEATURES,
    N_INPUTS,
    BaselineLike,
    PointFeatures,
    point_features,
)
from services.anomaly.model import DetectorKind, Event, Feature, Kind, MeterInfo, Severity
from services.ingest.columns import ReadingColumns

FORMAT = "metermesh-iforest"
FORMAT_VERSION = 1
_CHUNK = 1024  # rows per traversal block: the (rows x trees) work arrays stay in the CPU cache
# Explanation groups: (name, unit, input columns of PointFeatures.Z)
_GROUPS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("import_energy_wh", "Wh", (0, 1)),
    ("voltage_v", "V", (2,)),
    ("current_a", "A", (3,)),
    ("active_power_w", "W", (4,)),
    ("power_factor", "", (5,)),
)
TOP_FEATURES = 3


def average_path_length(n: float) -> float:
    """c(n): average path length of an unsuccessful binary-search-tree search (sklearn's definition)."""
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (math.log(n - 1.0) + np.euler_gamma) - 2.0 * (n - 1.0) / n


def _round_down_f32(t: np.ndarray) -> np.ndarray:
    """Largest float32 <= t (so x32 <= t64 exactly when x32 <= result)."""
    t32 = t.astype(np.float32)
    over = t32.astype(np.float64) > t
    t32[over] = np.nextafter(t32[over], np.float32(-np.inf))
    return t32


@dataclass(frozen=True)
class ForestArrays:
    """The forest in heap layout: per tree, internal nodes 1 .. 2^D - 1 (index 0 unused) and 2^D leaves."""

    feature: np.ndarray  # (T, 2^D) int32, 0 for padding
    threshold: np.ndarray  # (T, 2^D) float64, +inf for padding (always left)
    leaf_value: np.ndarray  # (T, 2^D) float64: depth + c(leaf samples), as sklearn adds per tree
    max_samples: int

    @property
    def depth(self) -> int:
        return int(self.feature.shape[1]).bit_length() - 1

    @property
    def n_trees(self) -> int:
        return int(self.feature.shape[0])

    @staticmethod
    def from_sklearn(model: Any) -> ForestArrays:
        trees = model.estimators_
        depth = max(1, max(int(e.tree_.max_depth) for e in trees))
        width = 2**depth
        T = len(trees)
        feature = np.zeros((T, width), dtype=np.int32)
        threshold = np.full((T, width), np.inf)
        leaf_value = np.zeros((T, width))
        n_features = int(model.n_features_in_)
        subsample = int(model._max_features) != n_features
        for ti, (est, feats) in enumerate(zip(trees, model.estimators_features_, strict=True)):
            tr = est.tree_
            left, right = tr.children_left, tr.children_right
            value = model._decision_path_lengths[ti] + model._average_path_length_per_tree[ti] - 1.0
            stack = [(0, 1, 0)]  # sklearn node, heap index, depth
            while stack:
                nd, h, d = stack.pop()
                if left[nd] == -1:
                    lo = h << (depth - d)  # leftmost and rightmost descendants at depth D
                    hi = ((h + 1) << (depth - d)) - 1
                    leaf_value[ti, lo - width : hi - width + 1] = value[nd]
                    continue
                f = int(tr.feature[nd])
                feature[ti, h] = int(feats[f]) if subsample else f
                threshold[ti, h] = float(tr.threshold[nd])
                stack.append((int(left[nd]), 2 * h, d + 1))
                stack.append((int(right[nd]), 2 * h + 1, d + 1))
        return ForestArrays(feature, threshold, leaf_value, int(model.max_samples_))


class _Traversal:
    """Precomputed flat arrays for the level-by-level walk."""

    def __init__(self, forest: ForestArrays, n_features: int) -> None:
        T = forest.n_trees
        width = forest.feature.shape[1]
        self.T = T
        self.depth = forest.depth
        self.n_features = n_features
        self.feature = np.ascontiguousarray(forest.feature.ravel(), dtype=np.int32)
        self.threshold = np.ascontiguousarray(_round_down_f32(forest.threshold.ravel()))
        self.leaf = np.ascontiguousarray(forest.leaf_value.ravel())
        self.base = (np.arange(T, dtype=np.int32) * width)[None, :]
        self.root = self.base + 1
        self.neg_base = -self.base
        # After D levels node = base + 2^D + leaf; the leaf's flat index is base + leaf.
        self.leaf_shift = np.int32(width)
        self.denominator = T * average_path_length(forest.max_samples)

    def mean_path(self, X: np.ndarray) -> np.ndarray:
        n = X.shape[0]
        Xf = np.ascontiguousarray(X, dtype=np.float32).ravel()
        total = np.empty(n)
        T = self.T
        buf = _CHUNK if n >= _CHUNK else max(n, 1)
        node = np.empty((buf, T), dtype=np.int32)
        f = np.empty((buf, T), dtype=np.int32)
        x = np.empty((buf, T), dtype=np.float32)
        t = np.empty((buf, T), dtype=np.float32)
        c = np.empty((buf, T), dtype=np.int32)
        for s in range(0, n, buf):
            e = min(n, s + buf)
            k = e - s
            nd, ff, xx, tt, cc = node[:k], f[:k], x[:k], t[:k], c[:k]
            rowoff = (np.arange(s, e, dtype=np.int32) * self.n_features)[:, None]
            nd[:] = self.root
            for _ in range(self.depth):
                np.take(self.feature, nd, out=ff, mode="wrap")
                np.add(ff, rowoff, out=ff)
                np.take(Xf, ff, out=xx, mode="wrap")
                np.take(self.threshold, nd, out=tt, mode="wrap")
                np.greater(xx, tt, out=cc)
                np.left_shift(nd, 1, out=nd)
                nd += self.neg_base
                nd += cc
            nd -= self.leaf_shift
            total[s:e] = np.take(self.leaf, nd, mode="wrap").sum(axis=1)
        return total / self.T

    def score(self, X: np.ndarray) -> np.ndarray:
        if X.shape[0] == 0:
            return np.zeros(0)
        if self.denominator == 0:
            return np.ones(X.shape[0])
        return np.exp2(-self.mean_path(X) * self.T / self.denominator)


class IsolationForestDetector:
    """Scores readings 0-1 (higher = more anomalous; sklearn's anomaly score, 2^(-E[h(x)]/c(n))) and
    turns runs of readings at or above `threshold` into POINT_ANOMALY events."""

    def __init__(
        self,
        forest: ForestArrays,
        *,
        version: str,
        threshold: float,
        centre: np.ndarray,  # per input (INPUT_NAMES): training median, for explanations
        spread: np.ndarray,  # per input: training spread (1.4826 MAD, floored)
        power_factor_fill: float = 1.0,
        min_energy_count: int = MIN_ENERGY_COUNT,
        feature_names: tuple[str, ...] = FEATURE_NAMES,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if tuple(feature_names) != FEATURE_NAMES:
            raise ValueError(
                f"model features {list(feature_names)} differ from this code's {list(FEATURE_NAMES)}"
            )
        self.forest = forest
        self.version = version
        self.threshold = float(threshold)
        self.centre = np.asarray(centre, dtype=np.float64)
        self.spread = np.asarray(spread, dtype=np.float64)
        self.power_factor_fill = float(power_factor_fill)
        self.min_energy_count = int(min_energy_count)
        self.info = dict(info or {})
        if self.centre.shape != (N_INPUTS,) or self.spread.shape != (N_INPUTS,):
            raise ValueError(f"centre and spread need {N_INPUTS} values (one per input)")
        self._walk = _Traversal(forest, N_FEATURES)

    # --- scoring -----------------------------------------------------------------------------------

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly scores 0-1 of feature rows (n, N_FEATURES)."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, N_FEATURES)
        return self._walk.score(X)

    def features(
        self, cols: ReadingColumns, baseline: BaselineLike, meters: Mapping[str, MeterInfo] | None
    ) -> PointFeatures:
        return point_features(
            cols,
            baseline,
            meters,
            power_factor_fill=self.power_factor_fill,
            min_energy_count=self.min_energy_count,
        )

    def score_rows(
        self, cols: ReadingColumns, baseline: BaselineLike, meters: Mapping[str, MeterInfo] | None = None
    ) -> np.ndarray:
        """Per reading score, NaN where the reading is not scored (thin baseline, unregistered meter)."""
        feats = self.features(cols, baseline, meters)
        return self._scores(feats)

    def _scores(self, feats: PointFeatures) -> np.ndarray:
        scores = np.full(len(feats.scoreable), np.nan)
        idx = np.flatnonzero(feats.scoreable)
        if len(idx):
            scores[idx] = self.score(feats.X[idx])
        return scores

    def contributions(self, Z: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """(n, groups) share of each explanation group (energy, voltage, current, power, power factor)
        in the rows' deviation from the training centre: |z - centre| / spread per input (0 where the
        meter does not measure it), summed per group, divided by the row total. Rows sum to 1 (0 when
        nothing deviates)."""
        Z = np.atleast_2d(Z)
        d = np.abs(Z - self.centre) / self.spread * np.atleast_2d(measured)
        g = np.stack([d[:, list(cols)].sum(axis=1) for _, _, cols in _GROUPS], axis=1)
        tot = g.sum(axis=1, keepdims=True)
        return np.divide(g, tot, out=np.zeros_like(g), where=tot > 0)

    # --- events ------------------------------------------------------------------------------------

    def detect(
        self, cols: ReadingColumns, baseline: BaselineLike, meters: Mapping[str, MeterInfo]
    ) -> tuple[list[Event], np.ndarray]:
        """POINT_ANOMALY events (one per run of consecutive flagged readings of a meter) and the
        per-row scores (NaN where not scored)."""
        feats = self.features(cols, baseline, meters)
        scores = self._scores(feats)
        with np.errstate(invalid="ignore"):
            flagged = np.flatnonzero(scores >= self.threshold)
        if len(flagged) == 0:
            return [], scores
        m = cols.meter_index[flagged]
        t = cols.read_time_unix_micros[flagged]
        order = np.lexsort((t, m))
        rows = flagged[order]
        m, t = m[order], t[order]
        step = cols.interval_seconds[rows].astype(np.int64) * 1_000_000
        new = np.ones(len(rows), dtype=bool)
        new[1:] = (m[1:] != m[:-1]) | (t[1:] - t[:-1] > step[1:])
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], len(rows))
        events = []
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            run = rows[a:b]
            peak = int(run[np.argmax(scores[run])])
            events.append(self._event(cols, baseline, feats, scores, run, peak))
        return events, scores

    def _event(
        self,
        cols: ReadingColumns,
        baseline: BaselineLike,
        feats: PointFeatures,
        scores: np.ndarray,
        run: np.ndarray,
        peak: int,
    ) -> Event:
        share = self.contributions(feats.Z[peak], feats.measured[peak])[0]
        observed = (
            float(cols.import_energy_wh[peak]),
            float(cols.voltage_v[peak]),
            float(cols.current_a[peak]),
            float(cols.active_power_w[peak]),
            float(cols.power_factor[peak]),
        )
        expected = (
            float(feats.expected_energy_wh[peak]),
            float(np.asarray(baseline.voltage_mean_v)[peak]),
            float(np.asarray(baseline.current_mean_a)[peak]),
            float(np.asarray(baseline.power_mean_w)[peak]),
            float(self.centre[5]),
        )
        order = np.argsort(-share, kind="stable")
        features = []
        for gi in order[:TOP_FEATURES].tolist():
            if share[gi] <= 0 or not math.isfinite(observed[gi]):
                continue
            name, unit, _ = _GROUPS[gi]
            exp = expected[gi] if math.isfinite(expected[gi]) else None
            features.append(Feature(name, observed[gi], exp, unit, float(share[gi])))
        score = float(scores[peak])
        n = len(run)
        what = "Reading" if n == 1 else f"{n} consecutive readings"
        peak_word = "" if n == 1 else "peak "
        head = f"{what} unusual for this meter ({peak_word}score {score:.2f}, threshold {self.threshold:.2f})"
        detail = ", ".join(_describe(f) for f in features[:2])
        if not detail:
            explanation = head + "."
        elif n == 1:
            explanation = f"{head}: {detail}."
        else:
            explanation = f"{head}; at the peak, {detail}."
        severity = Severity.MAJOR if score >= (1.0 + self.threshold) / 2 else Severity.WARNING
        meter = cols.meter_ids[int(cols.meter_index[peak])]
        return Event(
            meter_id=meter,
            kind=Kind.POINT_ANOMALY,
            severity=severity,
            score=score,
            detector=DetectorKind.ISOLATION_FOREST,
            model_version=self.version,
            start_time_us=int(cols.read_time_unix_micros[run[0]]),
            end_time_us=int(cols.read_time_unix_micros[run[-1]]),
            features=tuple(features),
            explanation=explanation,
        )

    # --- persistence -------------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "threshold": self.threshold,
            "feature_names": list(FEATURE_NAMES),
            "input_names": list(INPUT_NAMES),
            "centre": self.centre.tolist(),
            "spread": self.spread.tolist(),
            "power_factor_fill": self.power_factor_fill,
            "min_energy_count": self.min_energy_count,
            "n_trees": self.forest.n_trees,
            "depth": self.forest.depth,
            "max_samples": self.forest.max_samples,
            "info": self.info,
        }

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            header=np.frombuffer(json.dumps(self.header()).encode(), dtype=np.uint8),
            feature=self.forest.feature.astype(np.int8),
            threshold=self.forest.threshold,
            leaf_value=self.forest.leaf_value,
        )
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> IsolationForestDetector:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
                raise ValueError(
                    f"not a {FORMAT} v{FORMAT_VERSION} model: {header.get('format')} v{header.get('format_version')}"
                )
            forest = ForestArrays(
                feature=z["feature"].astype(np.int32),
                threshold=z["threshold"].astype(np.float64),
                leaf_value=z["leaf_value"].astype(np.float64),
                max_samples=int(header["max_samples"]),
            )
        return IsolationForestDetector(
            forest,
            version=header["version"],
            threshold=header["threshold"],
            centre=np.asarray(header["centre"]),
            spread=np.asarray(header["spread"]),
            power_factor_fill=header["power_factor_fill"],
            min_energy_count=header["min_energy_count"],
            feature_names=tuple(header["feature_names"]),
            info=header.get("info"),
        )


def _describe(f: Feature) -> str:
    label = {
        "import_energy_wh": "energy",
        "voltage_v": "voltage",
        "current_a": "current",
        "active_power_w": "active power",
        "power_factor": "power factor",
    }[f.name]
    unit = f" {f.unit}" if f.unit else ""
    if f.expected is None:
        return f"{label} {_num(f.value)}{unit}"
    where = " for this hour of the week" if f.name == "import_energy_wh" else ""
    return f"{label} {_num(f.value)}{unit} against a typical {_num(f.expected)}{unit}{where}"


def _num(v: float) -> str:
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"
