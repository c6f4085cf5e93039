"""Settings of the gRPC-web gateway (env METERMESH_GATEWAY_*, plus the services' addresses under the
names the services themselves read), frozen and validated at start-up."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.common.config import load_settings

STATIC_DIR = Path(__file__).resolve().parent / "static"

# HS256 keys shorter than the hash output are brute-forceable (RFC 7518 section 3.2).
MIN_SECRET_LENGTH = 32


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERMESH_GATEWAY_", frozen=True, extra="ignore")

    addr: str = Field(default="127.0.0.1:8080", pattern=r"^[^:\s]+:\d{1,5}$")
    # The HS256 key bearer tokens are signed with. Required: the gateway has no unauthenticated mode.
    # `metermesh up` generates one per data directory when it is unset (see gateway/README.md).
    jwt_secret: SecretStr
    # Browser origins (scheme://host[:port]) allowed to call from another origin; the dashboard served by
    # the gateway itself is same-origin and needs none. Comma-separated.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_max_age_seconds: int = Field(default=3600, ge=0, le=86_400)
    # Largest request message; larger ones get RESOURCE_EXHAUSTED. A 10,000-reading PushReadings is ~0.8 MB.
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Calls per second per token subject (token bucket); 0 turns the limit off.
    rate_per_second: float = Field(default=50.0, ge=0)
    rate_burst: int = Field(default=100, ge=1)
    # Upstream deadline of a unary call without grpc-timeout, and the cap on any grpc-timeout.
    default_timeout_seconds: float = Field(default=30.0, gt=0)
    max_timeout_seconds: float = Field(default=300.0, gt=0)
    # Deadline (default and cap) of server-streaming calls (WatchAlerts, training, billing cycles):
    # a watch ends with DEADLINE_EXCEEDED after this and the client resumes from its last sequence.
    stream_timeout_seconds: float = Field(default=3600.0, gt=0)
    # Tokens valid for a few seconds more than `exp` says, for clock skew between issuer and gateway.
    jwt_leeway_seconds: float = Field(default=5.0, ge=0, le=300)
    static_dir: Path = STATIC_DIR

    ingest_addr: str = Field(default="127.0.0.1:50051", validation_alias="METERMESH_INGEST_ADDR")
    anomaly_addr: str = Field(default="127.0.0.1:50052", validation_alias="METERMESH_ANOMALY_ADDR")
    forecast_addr: str = Field(default="127.0.0.1:50053", validation_alias="METERMESH_FORECAST_ADDR")
    billing_addr: str = Field(default="127.0.0.1:50054", validation_alias="METERMESH_BILLING_ADDR")
    alerts_addr: str = Field(default="127.0.0.1:50055", validation_alias="METERMESH_ALERTS_ADDR")

    log_level: str = Field(
        default="info",
        pattern="^(debug|info|warning|error)$",
        validation_alias=AliasChoices("METERMESH_GATEWAY_LOG_LEVEL", "METERMESH_LOG_LEVEL"),
    )
    grpc_max_message_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, validation_alias="METERMESH_GRPC_MAX_MESSAGE_BYTES"
    )
    # On SIGTERM: open streams end with UNAVAILABLE at once; other calls get this long to finish.
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, validation_alias="METERMESH_SHUTDOWN_GRACE_SECONDS"
    )

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"must be at least {MIN_SECRET_LENGTH} characters (e.g. python -c "
                "'import secrets; print(secrets.token_urlsafe(48))')"
            )
        return v

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, v: object) -> object:
        if isinstance(v, str):
            v = [o.strip() for o in v.split(",") if o.strip()]
        if isinstance(v, list):
            for origin in v:
                if origin == "*":
                    raise ValueError("'*' is not allowed; list the origins")
                if not str(origin).startswith(("http://", "https://")) or str(origin).endswith("/"):
                    raise ValueError(f"{origin!r} is not an origin like https://host[:port]")
        return v

    @property
    def host(self) -> str:
        return self.addr.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def upstream_addr(self, area: str) -> str | None:
        """The address of the service of an area (ingest, anomaly, forecast, billing, alerts)."""
        return getattr(self, f"{area}_addr", None)


SECRET_ENV = "METERMESH_GATEWAY_JWT_SECRET"


def load_gateway_settings() -> GatewaySettings:
    """Reads settings or exits naming what is wrong, never echoing the secret (load_settings prints
    the offending value)."""
    secret = os.environ.get(SECRET_ENV, "")
    if len(secret) < MIN_SECRET_LENGTH:
        what = (
            "is unset" if not secret else f"is {len(secret)} characters; at least {MIN_SECRET_LENGTH} needed"
        )
        print(
            f"GatewaySettings: invalid configuration:\n  {SECRET_ENV} {what}. The gateway verifies bearer "
            "tokens with it and has no unauthenticated mode; `metermesh up` generates one per data "
            "directory. Make one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return load_settings(GatewaySettings)
