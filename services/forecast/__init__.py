"""Forecasting: hourly consumption forecasts with a global LSTM and persistence baselines (issue 5).

Domain modules (numpy/torch only; no gRPC, NATS or database):
- series: `HourlySeries`, `to_hourly` (15/30/60-minute readings -> hours), `fill_gaps`, `GapTooLong`.
- calendar: `HolidayCalendar` (`from_env_value("2026-01-26,...")`), `calendar_features` (local time).
- baselines: `previous_day`, `previous_week`, `ensemble`, `baseline_quantiles`, `best_baseline_name`.
- lstm: `Forecaster` (p10/p50/p90 for up to 168 h, batched; `to_bytes`/`from_bytes`, pickle-free).
- backtest: the BuildingsBench protocol, `backtest`, `Metrics`.
- training: `train_forecaster`, `evaluate`, `evaluate_baseline`, `Progress`, `TrainingOutcome`.
- analysis: `analyze` (base load, peaks, trend, efficiency score, recommendations).
The gRPC service (config, store, models, servicer, server) is built on these.
"""
