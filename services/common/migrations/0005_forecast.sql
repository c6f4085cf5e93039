-- The forecast service: the registry of trained LSTM forecaster versions.
--
-- One row per version (lstm-1, lstm-2, ...). `artifact` is the model as written by
-- services.forecast.lstm.Forecaster.to_bytes (weights and a JSON header; never a pickle). Metrics are
-- the BuildingsBench backtest on the version's held-out window (median across meters); the baselines'
-- metrics on the same windows sit beside them. At most one version serves (partial unique index).
CREATE TABLE forecast_models (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_version         text COLLATE "C" NOT NULL UNIQUE,
    state                 text NOT NULL CHECK (state IN ('candidate', 'serving', 'retired')),
    create_time           timestamptz NOT NULL DEFAULT now(),
    promote_time          timestamptz,
    training_start_time   timestamptz,
    training_end_time     timestamptz,
    backtest_start_time   timestamptz,
    backtest_end_time     timestamptz,
    meter_count           integer NOT NULL DEFAULT 0,
    sample_count          bigint NOT NULL DEFAULT 0,
    epochs                integer NOT NULL DEFAULT 0,
    seed                  bigint NOT NULL DEFAULT 0,
    hyperparameters       jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- {"nrmse_percent", "mae_kwh", "mape_percent", "coverage_percent", "meter_count", "window_count"}
    metrics               jsonb NOT NULL,
    -- {"baseline-previous-day": {...same keys...}, "baseline-previous-week": {...}, ...}
    baseline_metrics      jsonb NOT NULL DEFAULT '{}'::jsonb,
    promotion_reason      text NOT NULL DEFAULT '',
    artifact              bytea NOT NULL
);
CREATE UNIQUE INDEX forecast_models_one_serving ON forecast_models (state) WHERE state = 'serving';
