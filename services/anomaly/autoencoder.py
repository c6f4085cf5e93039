"""Autoencoder over daily load profiles (pattern anomalies).

Input: a completed local day of a meter as 24 hourly energies, divided by the meter's scale (its
typical hourly energy before that day) and compressed with log1p: x_h = log1p(E_h / scale). Dividing by
the meter's own scale (rather than by the day's mean) keeps both the shape and the level of the day in
one vector: a day at three times the usual level, a dead day, a shifted or flattened profile and a
night load all move x away from the meter's normal days, and one model serves meters of any size.
log1p keeps a single huge hour from dominating training. Days with more than MAX_MISSING_HOURS
missing hours, or whose meter has no scale yet, are not scored; up to that many missing hours are
interpolated for the input and left out of the error.

The network is a small MLP conditioned on the local weekday: encoder (24 hours + 7 weekday one-hot)
-> 32 (ReLU) -> 8 (linear bottleneck), decoder (8 + 7 weekday one-hot) -> 32 (ReLU) -> 24. Load
profiles depend on the day of the week (a commercial building's Sunday is flat), so the code learns
the shape of the day while the decoder knows which day it should be; a weekday profile on a Sunday
reconstructs badly. On LEAD1.0 this raised the mean within-building day-level ROC-AUC from 0.66 to
0.77. Without day starts (score() called without day_start_us) the weekday input is 1/7 each. It is
trained with PyTorch in services.anomaly.training; scoring runs the same layers in numpy (float32),
so serving needs no torch.
Reconstruction error e = mean squared error over the present hours. How well a day can be reconstructed
differs between meters (a flat building profile is easier than a household with large evening peaks,
by a factor of ten on LEAD1.0), so the error is taken relative to the meter's typical error: r = e / t,
t = the median error of the meter's training days (meters with fewer than MIN_REFERENCE_DAYS training
days, or unseen in training, use the median over all training days). score = r / (r + r_ref), 0-1,
where r_ref is the 99th percentile of r over the training days (a day as unusual, for its meter, as
the worst 1% of the training days scores 0.5). `threshold` is chosen in training on labelled
(injected) days.

Persistence (no pickle): `to_bytes()` is an np.savez_compressed archive (allow_pickle=False on load)
with a JSON header (format, version, threshold, typical_error, relative_ref, layer sizes,
activations and the layers taking the weekday) as a uint8 array, the weights and biases as float32 arrays w0, b0, w1, b1, ..., and the
per-meter typical errors as meter_ids (unicode) and meter_typical_error (float64).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from services.anomaly.features import DAY_US, MAX_MISSING_HOURS, DaysLike, local_weekday, profile_inputs
from services.anomaly.model import DetectorKind, Event, Feature, Kind, Severity

FORMAT = "metermesh-autoencoder"
FORMAT_VERSION = 1
LAYERS: tuple[int, ...] = (24, 32, 8, 32, 24)  # widths, without the weekday inputs
ACTIVATIONS: tuple[str, ...] = ("relu", "none", "relu", "none")
WEEKDAY_LAYERS: tuple[int, ...] = (0, 2)  # layers whose input gets the weekday one-hot appended
TOP_HOURS = 3
MIN_REFERENCE_DAYS = 7


class AutoencoderDetector:
    def __init__(
        self,
        weights: Sequence[tuple[np.ndarray, np.ndarray]],
        *,
        version: str,
        threshold: float,
        typical_error: float,
        relative_ref: float,
        meter_typical_error: Mapping[str, float] | None = None,
        activations: Sequence[str] = ACTIVATIONS,
        weekday_layers: Sequence[int] = WEEKDAY_LAYERS,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if len(weights) != len(activations):
            raise ValueError(f"{len(weights)} layers but {len(activations)} activations")
        self.weights = [
            (np.ascontiguousarray(w, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
            for w, b in weights
        ]
        if self.weights[-1][0].shape[0] != 24:
            raise ValueError("the autoencoder must map a day's 24 hourly values to 24")
        self.activations = tuple(activations)
        self.weekday_layers = tuple(int(i) for i in weekday_layers)
        self.version = version
        self.threshold = float(threshold)
        self.typical_error = float(typical_error)
        self.relative_ref = float(relative_ref)
        self.meter_typical_error = {str(k): float(v) for k, v in (meter_typical_error or {}).items()}
        self.info = dict(info or {})

    # --- scoring -----------------------------------------------------------------------------------

    def reconstruct(self, x: np.ndarray, weekday: np.ndarray | None = None) -> np.ndarray:
        """The network on inputs x (n, 24); weekday: (n,) Monday = 0, or None for unknown (1/7 each)."""
        h = np.asarray(x, dtype=np.float32)
        n = h.shape[0]
        if weekday is None:
            onehot = np.full((n, 7), 1.0 / 7.0, dtype=np.float32)
        else:
            onehot = np.eye(7, dtype=np.float32)[np.asarray(weekday, dtype=np.int64)]
        for i, ((w, b), act) in enumerate(zip(self.weights, self.activations, strict=True)):
            if i in self.weekday_layers:
                h = np.concatenate([h, onehot], axis=1)
            h = h @ w.T + b
            if act == "relu":
                np.maximum(h, 0.0, out=h)
        return h

    def errors(
        self, energy_wh: np.ndarray, scale_wh: np.ndarray, day_start_us: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(error per day, NaN where not scored; squared error per hour, 0 at missing hours; the
        reconstruction as Wh per hour; scoreable mask)."""
        x, present, ok = profile_inputs(energy_wh, scale_wh)
        n = x.shape[0]
        err = np.full(n, np.nan)
        sq = np.zeros((n, 24))
        recon = np.full((n, 24), np.nan)
        idx = np.flatnonzero(ok)
        if len(idx):
            wd = None if day_start_us is None else local_weekday(np.asarray(day_start_us)[idx])
            xh = self.reconstruct(x[idx], wd).astype(np.float64)
            d = np.where(present[idx], (xh - x[idx]) ** 2, 0.0)
            sq[idx] = d
            err[idx] = d.sum(axis=1) / present[idx].sum(axis=1)
            scale = np.asarray(scale_wh, dtype=np.float64)[idx]
            recon[idx] = np.expm1(np.maximum(xh, 0.0)) * scale[:, None]
        return err, sq, recon, ok

    def typical(self, meter_ids: Sequence[str] | None, n: int) -> np.ndarray:
        """Each day's reference error: its meter's typical error, else the global one."""
        if meter_ids is None:
            return np.full(n, self.typical_error)
        get = self.meter_typical_error.get
        return np.fromiter((get(str(m), self.typical_error) for m in meter_ids), np.float64, n)

    def to_score(self, relative: np.ndarray) -> np.ndarray:
        return relative / (relative + self.relative_ref)

    def score(
        self,
        energy_wh: np.ndarray,
        scale_wh: np.ndarray,
        meter_ids: Sequence[str] | None = None,
        day_start_us: np.ndarray | None = None,
    ) -> np.ndarray:
        """Score 0-1 per day (rows of energy_wh (n, 24) with scale_wh (n,)); NaN where not scored. With
        meter_ids, errors are relative to each meter's typical error (as in detect), else to the
        typical error over all training days; with day_start_us the decoder knows the weekday."""
        err, _, _, _ = self.errors(energy_wh, scale_wh, day_start_us)
        return self.to_score(err / self.typical(meter_ids, len(err)))

    def detect(self, days: DaysLike) -> tuple[list[Event], np.ndarray]:
        """PATTERN_ANOMALY events for the days scoring at or above the threshold, and all scores."""
        energy = np.asarray(days.energy_wh, dtype=np.float64).reshape(-1, 24)
        err, sq, recon, _ = self.errors(energy, days.scale_wh, days.day_start_us)
        rel = err / self.typical(days.meter_ids, len(err))
        scores = self.to_score(rel)
        with np.errstate(invalid="ignore"):
            flagged = np.flatnonzero(scores >= self.threshold)
        events = [self._event(days, energy, sq, recon, scores, rel, int(i)) for i in flagged.tolist()]
        return events, scores

    def _event(
        self,
        days: DaysLike,
        energy: np.ndarray,
        sq: np.ndarray,
        recon: np.ndarray,
        scores: np.ndarray,
        rel: np.ndarray,
        i: int,
    ) -> Event:
        total = float(sq[i].sum())
        hours = np.argsort(-sq[i], kind="stable")[:TOP_HOURS]
        features = tuple(
            Feature(
                name=f"profile_hour_{h:02d}",
                value=float(energy[i, h]),
                expected=float(recon[i, h]),
                unit="Wh",
                contribution=float(sq[i, h] / total) if total > 0 else 0.0,
            )
            for h in hours.tolist()
            if np.isfinite(energy[i, h]) and sq[i, h] > 0
        )
        present = np.isfinite(energy[i])
        used = float(energy[i, present].sum()) / 1000.0
        usual = float(recon[i, present].sum()) / 1000.0
        score = float(scores[i])
        at = ", ".join(f"{int(f.name[-2:]):02d}:00" for f in features)
        explanation = (
            f"Daily load profile unusual for this meter (score {score:.2f}, threshold {self.threshold:.2f}): "
            f"{used:,.1f} kWh used against {usual:,.1f} kWh reconstructed from its usual patterns, a "
            f"reconstruction error {rel[i]:.1f}x the meter's typical."
        )
        if at:
            explanation += f" Largest differences at {at} local time."
        start = int(days.day_start_us[i])
        return Event(
            meter_id=str(days.meter_ids[i]),
            kind=Kind.PATTERN_ANOMALY,
            severity=Severity.MAJOR if score >= (1.0 + self.threshold) / 2 else Severity.WARNING,
            score=score,
            detector=DetectorKind.AUTOENCODER,
            model_version=self.version,
            start_time_us=start,
            end_time_us=start + DAY_US - 1,
            features=features,
            explanation=explanation,
        )

    # --- persistence -------------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "threshold": self.threshold,
            "typical_error": self.typical_error,
            "relative_ref": self.relative_ref,
            "layers": [int(w.shape[1]) for w, _ in self.weights[:1]]
            + [int(w.shape[0]) for w, _ in self.weights],
            "activations": list(self.activations),
            "weekday_layers": list(self.weekday_layers),
            "input": "log1p(energy_wh / scale_wh) per local hour",
            "max_missing_hours": MAX_MISSING_HOURS,
            "info": self.info,
        }

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        for i, (w, b) in enumerate(self.weights):
            arrays[f"w{i}"] = w
            arrays[f"b{i}"] = b
        ids = sorted(self.meter_typical_error)
        arrays["meter_ids"] = np.array(ids, dtype=np.str_) if ids else np.zeros(0, dtype="<U1")
        arrays["meter_typical_error"] = np.array([self.meter_typical_error[m] for m in ids], dtype=np.float64)
        buf = io.BytesIO()
        header = json.dumps(self.header()).encode()
        np.savez_compressed(buf, header=np.frombuffer(header, dtype=np.uint8), **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> AutoencoderDetector:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
                raise ValueError(
                    f"not a {FORMAT} v{FORMAT_VERSION} model: {header.get('format')} v{header.get('format_version')}"
                )
            n = len(header["activations"])
            weights = [(z[f"w{i}"], z[f"b{i}"]) for i in range(n)]
            typical = dict(zip(z["meter_ids"].tolist(), z["meter_typical_error"].tolist(), strict=True))
        return AutoencoderDetector(
            weights,
            version=header["version"],
            threshold=header["threshold"],
            typical_error=header["typical_error"],
            relative_ref=header["relative_ref"],
            meter_typical_error=typical,
            activations=header["activations"],
            weekday_layers=header["weekday_layers"],
            info=header.get("info"),
        )
