"""Bearer JWTs (HS256): verifying them into a Principal, issuing development tokens, and the
per-data-directory secret `metermesh up` uses when none is configured."""

from __future__ import annotations

import datetime as dt
import enum
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt

from gateway.grpcweb import GrpcError

ALGORITHM = "HS256"
SECRET_FILE = "gateway-jwt-secret"


class Role(enum.StrEnum):
    OPERATOR = "operator"
    CONSUMER = "consumer"


@dataclass(frozen=True)
class Principal:
    """Who is calling, from a verified token."""

    subject: str
    role: Role
    meters: frozenset[str]
    expires: float  # unix seconds

    @property
    def is_operator(self) -> bool:
        return self.role is Role.OPERATOR


def _unauthenticated(message: str) -> GrpcError:
    return GrpcError(grpc.StatusCode.UNAUTHENTICATED, message)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Authenticator:
    """Verifies `authorization: Bearer <jwt>`. Verified tokens are cached (by their exact text) until
    they expire, so a busy client costs one signature check, not one per call."""

    def __init__(self, secret: str, *, leeway_seconds: float = 5.0, cache_size: int = 10_000) -> None:
        self._secret = secret
        self._leeway = leeway_seconds
        self._cache: dict[str, Principal] = {}
        self._cache_size = cache_size

    def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise _unauthenticated(
                "missing bearer token: send 'authorization: Bearer <JWT>' (`metermesh token` issues one)"
            )
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthenticated("the authorization header must be 'Bearer <JWT>'")
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires + self._leeway >= time.time():
                return cached
            del self._cache[token]
        principal = self._verify(token)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[token] = principal
        return principal

    def _verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                leeway=self._leeway,
                options={"require": ["exp", "sub", "role"]},
            )
        except jwt.ExpiredSignatureError:
            exp = _unverified_exp(token)
            when = f" at {_iso(exp)}" if exp is not None else ""
            raise _unauthenticated(f"the bearer token expired{when}; get a new one") from None
        except jwt.InvalidSignatureError:
            raise _unauthenticated(
                "the bearer token's signature does not verify: it was not issued for this gateway"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthenticated(f"the bearer token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise _unauthenticated(f"the bearer token must be signed with {ALGORITHM}") from None
        except jwt.DecodeError as exc:
            raise _unauthenticated(f"the bearer token is not a valid JWT ({exc})") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthenticated(f"the bearer token is invalid: {exc}") from None
        role = claims["role"]
        if role not in (Role.OPERATOR.value, Role.CONSUMER.value):
            raise _unauthenticated(f"the bearer token's role {role!r} is neither 'operator' nor 'consumer'")
        meters = claims.get("meters", [])
        if not isinstance(meters, list) or not all(isinstance(m, str) and m for m in meters):
            raise _unauthenticated("the bearer token's 'meters' claim must be a list of meter ids")
        subject = claims["sub"]
        if not subject:
            raise _unauthenticated("the bearer token's 'sub' claim is empty")
        return Principal(
            subject=subject, role=Role(role), meters=frozenset(meters), expires=float(claims["exp"])
        )


def _unverified_exp(token: str) -> float | None:
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.InvalidTokenError:
        return None
    return float(exp) if isinstance(exp, (int, float)) else None


def issue_token(
    secret: str,
    *,
    role: Role | str,
    subject: str,
    meters: Iterable[str] = (),
    ttl_seconds: float = 24 * 3600,
    now: float | None = None,
) -> str:
    """A signed token with the claims the gateway reads: sub, role, meters (consumers), iat, exp."""
    role = Role(role)
    issued = time.time() if now is None else now
    claims: dict[str, object] = {
        "sub": subject,
        "role": role.value,
        "iat": int(issued),
        "exp": int(issued + ttl_seconds),
    }
    if role is Role.CONSUMER:
        claims["meters"] = sorted(set(meters))
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def stack_secret(data_dir: Path) -> str:
    """The secret of a `metermesh up` platform: METERMESH_GATEWAY_JWT_SECRET when set, otherwise a
    random one generated on first use and kept (mode 0600) in the data directory, which is not part of
    the repository. So no secret is ever written in the code, and tokens survive a restart."""
    secret = os.environ.get("METERMESH_GATEWAY_JWT_SECRET")
    if secret:
        return secret
    path = data_dir / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def existing_stack_secret(data_dir: Path) -> str | None:
    """The secret `metermesh token` signs with: the env's, else the data directory's; never creates one."""
    secret = os.environ.get("METERMESH_GATEWAY_JWT_SECRET")
    if secret:
        return secret
    try:
        return (data_dir / SECRET_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None
