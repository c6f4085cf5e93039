"""Bootstrap of the forecast service (metermesh.forecast.v1.ForecastService): the gRPC servicer, the
serving forecaster loaded from the registry before health says SERVING, and the poller that picks up
versions promoted by another replica. PostgreSQL is its only dependency (no NATS); BillingService is
called per request and its absence only costs the projected bill."""

from __future__ import annotations

import asyncio

from metermesh.forecast.v1 import forecast_pb2

from services.common.config import load_settings
from services.common.server import Runtime, add_servicer, run_service
from services.forecast.calendar import HolidayCalendar
from services.forecast.config import ForecastSettings, hyperparameter_overrides
from services.forecast.models import ForecastEngine
from services.forecast.servicer import ForecastServicer

SERVICE = forecast_pb2.DESCRIPTOR.services_by_name["ForecastService"]
SERVICE_NAME = SERVICE.full_name


async def serve(settings: ForecastSettings) -> None:
    holidays = HolidayCalendar.from_env_value(settings.forecast_holidays)
    servicer: ForecastServicer | None = None

    def register(rt: Runtime) -> None:
        nonlocal servicer
        servicer = ForecastServicer(rt, settings)
        add_servicer(rt.server, SERVICE, servicer)

    async def on_ready(rt: Runtime) -> None:
        assert servicer is not None and rt.pool is not None
        engine = ForecastEngine(
            rt.pool,
            holidays,
            max_meters=settings.forecast_train_max_meters,
            max_hours_per_meter=settings.forecast_train_max_hours_per_meter,
            default_epochs=settings.forecast_train_default_epochs,
            hyperparameters=hyperparameter_overrides(settings.forecast_train_hyperparameters),
            holdout_days=settings.forecast_train_holdout_days,
        )
        await engine.refresh()
        servicer.attach(engine)
        rt.spawn(engine.poll(settings.forecast_model_poll_seconds), "model-poll")

        async def stop() -> None:
            engine.stop()  # a training run stops at its next progress report instead of holding the exit
            await servicer.close()

        rt.stop_hooks.append(stop)

    await run_service(
        name="forecast",
        settings=settings,
        listen_addr=settings.forecast_addr,
        service_names=[SERVICE_NAME],
        reflection_names=[SERVICE_NAME],
        register=register,
        on_ready=on_ready,
        needs_nats=False,
    )


def main() -> None:
    asyncio.run(serve(load_settings(ForecastSettings)))
