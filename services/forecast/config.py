"""Settings of the forecast service (env METERMESH_*)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, field_validator

from services.common.config import CommonSettings
from services.forecast.calendar import HolidayCalendar


class ForecastSettings(CommonSettings):
    forecast_addr: str = "127.0.0.1:50053"
    # Forecasting reads PostgreSQL only: NATS_URL may be left unset.
    nats_url: str = Field(default="", validation_alias="NATS_URL")
    # BillingService, called by ProjectMonthlyUsage to price the projected month.
    billing_addr: str = "127.0.0.1:50054"
    # Deadline of each call to BillingService (GetTariff, QuoteBill); past it the projection is
    # returned without a bill ("billing unavailable").
    forecast_billing_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    # Public holidays for the calendar features, as a comma-separated list of dates
    # (YYYY-MM-DD), e.g. "2026-01-26,2026-08-15"; empty means none.
    forecast_holidays: str = ""
    # How often the service looks for a version promoted by another replica.
    forecast_model_poll_seconds: float = Field(default=30.0, gt=0)
    # Training caps: at most this many meters (the ones with the most history first) ...
    forecast_train_max_meters: int = Field(default=2000, ge=1, le=1_000_000)
    # ... and at most this many hours of history per meter (the latest ones).
    forecast_train_max_hours_per_meter: int = Field(default=8760, ge=384, le=87_600)
    # Default epochs when TrainForecaster leaves epochs 0.
    forecast_train_default_epochs: int = Field(default=12, ge=1, le=1000)
    # Overrides of the LSTM's training hyper-parameters, a JSON object over the names in
    # services.forecast.lstm.DEFAULT_HYPERPARAMETERS, e.g. {"samples_per_epoch": 4096, "lstm_hidden": 32};
    # empty means the defaults. Recorded with every version in the registry.
    forecast_train_hyperparameters: str = ""
    # Days at the end of each meter's history held out for the backtest (and the promotion decision).
    forecast_train_holdout_days: int = Field(default=21, ge=2, le=365)
    # AnalyzeConsumption: at most this many peer meters (same category and tariff) are sampled.
    forecast_peer_sample: int = Field(default=200, ge=10, le=100_000)
    # How often a running training reports progress (the contract asks for at least every 5 s).
    forecast_progress_seconds: float = Field(default=2.0, gt=0, le=5.0)

    @field_validator("forecast_train_hyperparameters")
    @classmethod
    def _hyperparameters(cls, value: str) -> str:
        hyperparameter_overrides(value)
        return value

    @field_validator("forecast_holidays")
    @classmethod
    def _dates(cls, value: str) -> str:
        HolidayCalendar.from_env_value(value)  # a bad date fails at start, naming it
        return value


# Hyper-parameters that describe the network's inputs and outputs rather than how it is trained.
# (epochs: TrainForecaster's epochs, else METERMESH_FORECAST_TRAIN_DEFAULT_EPOCHS.)
_FIXED = ("context_hours", "max_horizon", "quantiles", "calendar_features", "scaling", "loss", "epochs")


def hyperparameter_overrides(value: str) -> dict[str, Any]:
    """The overrides in METERMESH_FORECAST_TRAIN_HYPERPARAMETERS (ValueError naming what is wrong)."""
    from services.forecast.lstm import DEFAULT_HYPERPARAMETERS

    if not value.strip():
        return {}
    try:
        got = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(got, dict):
        raise ValueError('give a JSON object, e.g. {"samples_per_epoch": 4096}')
    for key, v in got.items():
        if key not in DEFAULT_HYPERPARAMETERS or key in _FIXED:
            allowed = ", ".join(k for k in DEFAULT_HYPERPARAMETERS if k not in _FIXED)
            raise ValueError(f"{key!r} is not a training hyper-parameter; use {allowed}")
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or v < 0
            or (v == 0 and key != "weight_decay")
        ):
            raise ValueError(f"{key} is {v!r}; give a positive number")
    return got
