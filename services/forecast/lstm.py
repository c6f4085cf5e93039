"""The global LSTM forecaster: p10/p50/p90 of hourly consumption for up to 168 hours, batched across meters.

API:
- `Forecaster(state: dict[str, np.ndarray], *, version, hyperparameters=None, info=None)`:
  `version` (settable), `context_hours = 168`, `max_horizon = 168`, `hyperparameters` (dict),
  `info` (dict: training facts), `predict(contexts (n, >=168) kWh, start_us (n,) UTC start of the first
  forecast hour, time_zones, horizon, holidays) -> (n, horizon, 3)` kWh (p10 <= p50 <= p90, >= 0),
  `to_bytes()` / `Forecaster.from_bytes(data)` (pickle-free), `parameter_count`.
- `Forecaster.initial(hyperparameters, *, version, seed)`: an untrained model (for training).
- `DEFAULT_HYPERPARAMETERS`, `FORMAT`, `FORMAT_VERSION`; `pinball_loss(pred, target, weight)`.
- `make_inputs(contexts, cal_context, cal_future)` / `make_net(hp)`: the feature builder and the
  network, shared by training (services.forecast.training) and inference so both see the same inputs.

Model (an MQ-RNN-style direct multi-horizon quantile forecaster, Wen et al. 2017):
- Each window is scaled by its own statistics: scale = the trimmed mean of its 7 daily mean levels
  (without the lowest and the highest day, so one dead day, an outage reading zero, does not drag a
  week of forecasts down; at least MIN_SCALE_KWH), so one network serves a 0.3 kWh/h flat and a
  300 kWh/h office. log10(scale) is an input too, so the network can still tell a household from a
  building. Scaled inputs are capped at INPUT_CAP.
- Encoder: one LSTM over the 168 context hours; input per hour = scaled kWh + the 7 calendar features
  (services.forecast.calendar, the meter's local time, holidays). Its last hidden state summarises
  the week.
- Decoder: the same MLP for every forecast hour h (0..horizon-1), from the encoder state and that
  hour's known inputs: its calendar features, the scaled kWh at the same hour of the day on each of
  the 7 context days, the context's mean profile at that hour (plain, trimmed, and smoothed over the
  neighbouring hours), the mean of the last 24 hours, log10(scale) and h / 168. It outputs three
  numbers: p50 = trimmed profile + o1 (a correction of the weekly profile), p10 = p50 - softplus(o0),
  p90 = p50 + softplus(o2), so the quantiles never cross. The result is multiplied back by the scale
  and clipped at 0 (clipping keeps the order).
- Loss (services.forecast.training): pinball loss at 0.1/0.5/0.9 on the scaled values, plus
  `center_mse_weight` x the squared error of p50. p50 is the point forecast the backtests score with
  RMSE; hourly household loads are right-skewed, so their median is a poor RMSE forecast (pure
  pinball: 94.6% household NRMSE on eval-forecast against 91.8% with the squared-error term). With the
  term, p50 sits between the conditional median and the mean (above the median for skewed loads);
  p10 and p90 remain pinball-trained quantiles. Set center_mse_weight to 0 for a strict median.
- Training windows are sampled evenly over meters, scaled targets capped at `target_cap`, and with
  probability `outage_augment` one context day is set to (nearly) zero (a simulated outage, targets
  untouched), so an outage in the history does not ruin the next days' forecasts.
Inference runs in torch (one forward pass per chunk of up to 8,192 meters) with at most 2 threads.
Missing hours (NaN) in a context should be filled first (series.fill_gaps); any left are replaced by
the context's mean at that hour of the day (else its mean), and an all-missing context forecasts 0.

Artifact (no pickle): `to_bytes()` is an np.savez_compressed archive read with allow_pickle=False: a
JSON header (format "metermesh-lstm-forecaster", format_version, version, hyperparameters, info,
parameter names and shapes) stored as a uint8 array, and each network parameter as a float32 array
named p0, p1, ... in the header's order.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from services.forecast.calendar import FEATURE_COUNT, HolidayCalendar, calendar_features_batch

FORMAT = "metermesh-lstm-forecaster"
FORMAT_VERSION = 1
CONTEXT_HOURS = 168
MAX_HORIZON = 168
QUANTILES = (0.1, 0.5, 0.9)
MIN_SCALE_KWH = 1e-3
DAYS = CONTEXT_HOURS // 24
# Decoder inputs besides the calendar: 7 daily lags, the profile, its trimmed and smoothed versions,
# the last-24 h mean, log10(scale) and the horizon position.
DECODER_EXTRA = DAYS + 6
INPUT_CAP = 50.0  # scaled inputs above this (a context mostly near zero) carry no more information
PREDICT_CHUNK = 8192
MAX_THREADS = 2
HOUR_US = 3_600_000_000

DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "context_hours": CONTEXT_HOURS,
    "max_horizon": MAX_HORIZON,
    "quantiles": list(QUANTILES),
    "calendar_features": FEATURE_COUNT,
    "lstm_hidden": 48,
    "lstm_layers": 1,
    "head_hidden": 64,
    "epochs": 20,
    "batch_size": 256,
    "learning_rate": 3e-3,
    "weight_decay": 0.0,
    "samples_per_epoch": 16384,
    "train_horizon": MAX_HORIZON,
    "day_ahead_weight": 3.0,
    "balance_meters": True,
    "center_mse_weight": 1.0,
    "target_cap": 20.0,
    "outage_augment": 0.05,
    "scaling": "trimmed mean daily level of the 168-hour context",
    "loss": "pinball at 0.1/0.5/0.9 + center_mse_weight x squared error of p50, on scaled kWh",
}


def _torch() -> Any:
    import torch

    return torch


def _thread_limit() -> int:
    return max(1, min(MAX_THREADS, os.cpu_count() or 1))


def make_net(hp: Mapping[str, Any]) -> Any:
    """The network as a torch module (see the module docstring)."""
    torch = _torch()
    nn = torch.nn

    class Net(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            cal = int(hp["calendar_features"])
            hidden = int(hp["lstm_hidden"])
            head = int(hp["head_hidden"])
            self.lstm = nn.LSTM(1 + cal, hidden, num_layers=int(hp["lstm_layers"]), batch_first=True)
            self.head = nn.Sequential(
                nn.Linear(hidden + cal + DECODER_EXTRA, head),
                nn.ReLU(),
                nn.Linear(head, head),
                nn.ReLU(),
                nn.Linear(head, 3),
            )

        def forward(self, x_enc: Any, x_dec: Any, base: Any) -> Any:
            _, (h, _) = self.lstm(x_enc)
            state = h[-1]
            steps = x_dec.shape[1]
            z = torch.cat([state.unsqueeze(1).expand(-1, steps, -1), x_dec], dim=2)
            o = self.head(z)
            p50 = base + o[..., 1]
            p10 = p50 - torch.nn.functional.softplus(o[..., 0])
            p90 = p50 + torch.nn.functional.softplus(o[..., 2])
            return torch.stack([p10, p50, p90], dim=-1)

    return Net()


def make_inputs(contexts: Any, cal_context: Any, cal_future: Any) -> tuple[Any, Any, Any, Any]:
    """Network inputs from NaN-free contexts (B, 168) kWh and calendar features of the context hours
    (B, 168, F) and of the forecast hours (B, H, F), all torch float32: (x_enc, x_dec, base, scale),
    where the network's output times scale is kWh."""
    torch = _torch()
    b = contexts.shape[0]
    steps = cal_future.shape[1]
    # Trimmed means (without the lowest and the highest of the 7 days) keep one odd day, such as a
    # meter outage reading zero all day, from dragging the scale and the profile down for a week.
    daily = contexts.view(b, DAYS, 24).mean(dim=2).sort(dim=1).values
    scale = daily[:, 1:-1].mean(dim=1, keepdim=True).clamp_min(MIN_SCALE_KWH)
    xs = (contexts / scale).clamp(max=INPUT_CAP)
    x_enc = torch.cat([xs.unsqueeze(-1), cal_context], dim=2)
    h = torch.arange(steps)
    days = xs.view(b, DAYS, 24)
    # The same hour of the day on each of the 7 context days (oldest first), their mean (the weekly
    # profile), its trimmed version and the profile smoothed over the neighbouring hours (peaks move
    # by an hour).
    lags = days[:, :, h % 24].transpose(1, 2)
    prof_all = days.mean(dim=1)
    trim_all = days.sort(dim=1).values[:, 1:-1].mean(dim=1)
    smooth_all = (prof_all + prof_all.roll(1, dims=1) + prof_all.roll(-1, dims=1)) / 3.0
    prof = prof_all[:, h % 24]
    trim = trim_all[:, h % 24]
    smooth = smooth_all[:, h % 24]
    last24 = xs[:, CONTEXT_HOURS - 24 :].mean(dim=1, keepdim=True).expand(-1, steps)
    log_scale = (torch.log10(scale) / 2.0).clamp(-2.0, 3.0).expand(-1, steps)
    pos = (h.to(torch.float32) / MAX_HORIZON).unsqueeze(0).expand(b, -1)
    extra = torch.stack([prof, trim, smooth, last24, log_scale, pos], dim=2)
    x_dec = torch.cat([cal_future, lags, extra], dim=2)
    return x_enc, x_dec, trim, scale


def pinball_loss(pred: Any, target: Any, weight: Any) -> Any:
    """Mean pinball loss of pred (B, H, 3) against target (B, H) (NaN = masked) with weights (B, H)."""
    torch = _torch()
    q = torch.tensor(QUANTILES, dtype=pred.dtype)
    ok = torch.isfinite(target)
    t = torch.where(ok, target, torch.zeros_like(target)).unsqueeze(-1)
    diff = t - pred
    loss = torch.maximum(q * diff, (q - 1.0) * diff).sum(dim=-1)
    w = weight * ok.to(pred.dtype)
    return (loss * w).sum() / w.sum().clamp_min(1.0)


def fill_contexts(contexts: np.ndarray) -> np.ndarray:
    """NaN hours replaced by the context's mean at that hour of the day (else its mean, else 0)."""
    c = np.asarray(contexts, dtype=np.float64)
    miss = ~np.isfinite(c)
    if not miss.any():
        return c
    c = c.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        prof = np.nanmean(c.reshape(len(c), -1, 24), axis=1)
        mean = np.nanmean(c, axis=1, keepdims=True)
    prof = np.where(np.isfinite(prof), prof, mean)
    prof = np.where(np.isfinite(prof), prof, 0.0)
    full = np.tile(prof, (1, c.shape[1] // 24))
    c[miss] = full[miss]
    return c


class Forecaster:
    context_hours = CONTEXT_HOURS
    max_horizon = MAX_HORIZON

    def __init__(
        self,
        state: Mapping[str, np.ndarray],
        *,
        version: str,
        hyperparameters: Mapping[str, Any] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.hyperparameters: dict[str, Any] = {**DEFAULT_HYPERPARAMETERS, **dict(hyperparameters or {})}
        self.version = version
        self.info: dict[str, Any] = dict(info or {})
        self.state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
        self._net: Any = None

    @classmethod
    def initial(
        cls, hyperparameters: Mapping[str, Any] | None = None, *, version: str, seed: int
    ) -> Forecaster:
        """An untrained forecaster with the network's initial weights for the seed."""
        torch = _torch()
        hp = {**DEFAULT_HYPERPARAMETERS, **dict(hyperparameters or {})}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = make_net(hp)
        state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
        return cls(state, version=version, hyperparameters=hp)

    @property
    def parameter_count(self) -> int:
        return int(sum(v.size for v in self.state.values()))

    def net(self) -> Any:
        """The torch module with this forecaster's weights (built once, reused)."""
        if self._net is None:
            torch = _torch()
            net = make_net(self.hyperparameters)
            net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.state.items()})
            net.eval()
            self._net = net
        return self._net

    def load_net(self, net: Any) -> None:
        """Takes the weights of a trained torch module (training)."""
        self.state = {k: v.detach().numpy().astype(np.float32).copy() for k, v in net.state_dict().items()}
        self._net = None

    def predict(
        self,
        contexts: np.ndarray,
        start_us: np.ndarray,
        time_zones: Sequence[str],
        horizon: int,
        holidays: HolidayCalendar | None = None,
    ) -> np.ndarray:
        """(n, horizon, 3) p10/p50/p90 kWh for n meters, each from its last 168 hours (contexts (n, T),
        T >= 168, the last column the hour just before start_us)."""
        torch = _torch()
        c = np.asarray(contexts, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] < CONTEXT_HOURS:
            raise ValueError(f"contexts must be (n, >= {CONTEXT_HOURS}) hourly kWh, got shape {c.shape}")
        if not 1 <= int(horizon) <= MAX_HORIZON:
            raise ValueError(f"horizon must be 1-{MAX_HORIZON} hours, got {horizon}")
        horizon = int(horizon)
        n = len(c)
        starts = np.asarray(start_us, dtype=np.int64).reshape(-1)
        if len(starts) != n or len(time_zones) != n:
            raise ValueError(f"{n} contexts but {len(starts)} start times and {len(time_zones)} time zones")
        if n == 0:
            return np.zeros((0, horizon, 3))
        c = fill_contexts(c[:, -CONTEXT_HOURS:])
        cal = calendar_features_batch(
            starts - CONTEXT_HOURS * HOUR_US, CONTEXT_HOURS + horizon, time_zones, holidays
        )
        out = np.empty((n, horizon, 3), dtype=np.float64)
        net = self.net()
        threads = torch.get_num_threads()
        torch.set_num_threads(_thread_limit())
        try:
            with torch.inference_mode():
                for s in range(0, n, PREDICT_CHUNK):
                    e = min(n, s + PREDICT_CHUNK)
                    ctx = torch.from_numpy(c[s:e].astype(np.float32))
                    cc = torch.from_numpy(cal[s:e])
                    x_enc, x_dec, base, scale = make_inputs(ctx, cc[:, :CONTEXT_HOURS], cc[:, CONTEXT_HOURS:])
                    y = net(x_enc, x_dec, base) * scale.unsqueeze(-1)
                    out[s:e] = y.numpy()
        finally:
            torch.set_num_threads(threads)
        np.maximum(out, 0.0, out=out)
        return out

    # --- persistence -------------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        names = list(self.state)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "hyperparameters": self.hyperparameters,
            "info": self.info,
            "parameters": [{"name": k, "shape": list(self.state[k].shape)} for k in names],
        }

    def to_bytes(self) -> bytes:
        header = self.header()
        arrays = {f"p{i}": self.state[p["name"]] for i, p in enumerate(header["parameters"])}
        buf = io.BytesIO()
        raw = json.dumps(header).encode()
        np.savez_compressed(buf, header=np.frombuffer(raw, dtype=np.uint8), **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> Forecaster:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
                raise ValueError(
                    f"not a {FORMAT} v{FORMAT_VERSION} model: {header.get('format')} v{header.get('format_version')}"
                )
            state = {}
            for i, p in enumerate(header["parameters"]):
                a = z[f"p{i}"]
                if list(a.shape) != list(p["shape"]):
                    raise ValueError(f"parameter {p['name']}: shape {a.shape}, header says {p['shape']}")
                state[p["name"]] = a
        return Forecaster(
            state,
            version=header["version"],
            hyperparameters=header["hyperparameters"],
            info=header.get("info"),
        )
