"""Settings every metermesh service reads from its environment, frozen and validated at start-up."""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """What every service needs. Service settings subclass this and add their own fields.

    Names are `METERMESH_<FIELD>` except the two connection URLs, which keep the names operators
    and other tools already use.
    """

    model_config = SettingsConfigDict(env_prefix="METERMESH_", frozen=True, extra="ignore")

    nats_url: str = Field(validation_alias="NATS_URL", min_length=1)
    database_url: str = Field(validation_alias="DATABASE_URL", min_length=1)
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    # Prefix for JetStream stream names and subjects, so several platforms (or test runs) can share one
    # NATS server without seeing each other's messages. Empty in production.
    stream_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_]*$")
    # Partitions of the READINGS subjects (readings.v1.p00..): per-meter order within a partition.
    reading_partitions: int = Field(default=8, ge=1, le=256)
    # Replicas of every JetStream stream: 1 on one machine, 3 on a clustered NATS (Kubernetes prod).
    stream_replicas: int = Field(default=1, ge=1, le=5)
    # Size limit of the READINGS stream: when the writer falls this far behind, ingest answers
    # UNAVAILABLE (retry later) instead of accepting what it could not keep.
    readings_max_bytes: int = Field(default=4 * 1024**3, ge=1024)
    # How long the storage writer may hold a READINGS message unacked before JetStream hands it to
    # another writer: also how long a killed writer's batch waits before it is retried. Long work
    # extends it with in_progress(), so it only needs to cover one fetch-and-commit.
    writer_ack_wait_seconds: float = Field(default=30.0, ge=1.0)
    # The same for the streaming anomaly detector (READINGS) and the alert service (ANOMALIES).
    anomaly_ack_wait_seconds: float = Field(default=30.0, ge=1.0)
    alerts_ack_wait_seconds: float = Field(default=30.0, ge=1.0)
    # How long a stopping service keeps answering NOT_SERVING before it stops accepting calls, so
    # load balancers and Kubernetes readiness probes move traffic away first.
    shutdown_readiness_seconds: float = Field(default=1.0, ge=0)
    # How long in-flight calls may take to finish after a stop begins.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # Largest gRPC message, both directions: a full 10,000-reading batch is about 0.8 MB.
    grpc_max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=8, ge=1)
    # Where Prometheus scrapes /metrics (host:port; ":9464" = all interfaces). Empty: not served, so
    # several services on one machine do not collide; Kubernetes sets 0.0.0.0:9464 in every pod.
    metrics_addr: str = Field(default="", pattern=r"^(|(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5})$")
    # How often the lag of the JetStream consumers a service runs is read (when metrics are served).
    metrics_lag_poll_seconds: float = Field(default=5.0, gt=0, le=300)


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Reads settings or exits at once with one line per bad or missing variable, naming it."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        # pydantic reports a field by its alias when it has one (NATS_URL), else by its name.
        env_of = {}
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            env = alias if isinstance(alias, str) else f"{prefix}{name}".upper()
            env_of[name] = env_of[env] = env
        lines = []
        for err in exc.errors():
            loc = str(err["loc"][0]) if err["loc"] else "?"
            env = env_of.get(loc, loc)
            got = "unset" if err["type"] == "missing" else repr(err.get("input"))
            lines.append(f"  {env}: {err['msg']} (got {got})")
        print(f"{cls.__name__}: invalid configuration:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
