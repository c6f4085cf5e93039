"""Who may call what: the gateway's explicit per-method policy table, and the checks it drives.

`operator` tokens may call every method. `consumer` tokens may call only the READ methods of the table,
and only about the meters their `meters` claim lists: every meter id in the request is checked, and
where a method can also be called without naming a meter, the table says what happens (the filter is
narrowed to the token's meters, or the call is refused, or the method touches no meter's data). Where
the meter is only known from the answer (GetBill, GetAlert), the answer is checked. A method missing
from the table is operator-only, so a new RPC is closed to consumers until someone decides otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from gateway.auth import Principal
from gateway.grpcweb import GrpcError


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"


class Unnamed(enum.Enum):
    """What a consumer's request that names no meter gets."""

    DENY = "deny"  # PERMISSION_DENIED: the method is about one meter
    NARROW = "narrow"  # the request's meter filter is set to the token's meters
    ALLOW = "allow"  # the method reads no meter's stored data (tariffs, a quote, an inline history)
    OPERATORS = "operators"  # fleet-wide reads (model registries): operators only
    OWN_LISTING = "own-listing"  # ListMeters: answered with the token's meters (see proxy)


@dataclass(frozen=True)
class Rule:
    access: Access
    # Dotted paths of the request fields holding meter ids; repeated fields along a path are walked.
    meters: tuple[str, ...] = ()
    unnamed: Unnamed = Unnamed.DENY
    # The repeated field set to the token's meters under Unnamed.NARROW.
    narrow: str | None = None
    # Dotted paths of meter ids in the response, checked for consumers: a foreign meter in a single
    # answer is PERMISSION_DENIED, a foreign item of a repeated field (or a stream message) is dropped.
    response_meters: str | None = None
    # A request field the gateway sets to the token's subject (who acknowledged / resolved).
    subject_field: str | None = None


def _read(*meters: str, **kw: object) -> Rule:
    return Rule(Access.READ, meters=meters, **kw)  # type: ignore[arg-type]


WRITE = Rule(Access.WRITE)

ING, ANO, FOR, BIL, ALR = (
    "metermesh.ingest.v1.IngestService",
    "metermesh.anomaly.v1.AnomalyService",
    "metermesh.forecast.v1.ForecastService",
    "metermesh.billing.v1.BillingService",
    "metermesh.alerts.v1.AlertService",
)

POLICY: dict[str, Rule] = {
    f"{ING}/PushReadings": WRITE,
    f"{ING}/StreamReadings": WRITE,
    f"{ING}/RegisterMeter": WRITE,
    f"{ING}/GetMeter": _read("meter_id"),
    f"{ING}/ListMeters": _read(unnamed=Unnamed.OWN_LISTING),
    f"{ING}/GetReadings": _read("meter_id"),
    # Inline readings are scored with their meters' own baselines: they must be the consumer's too.
    f"{ANO}/DetectAnomalies": _read("inline_readings.readings.meter_id", "stored_readings.meter_id"),
    f"{ANO}/TrainDetector": WRITE,
    f"{ANO}/ListDetectorModels": _read(unnamed=Unnamed.OPERATORS),
    # A forecast from an inline history reads no stored data.
    f"{FOR}/GetForecast": _read("meter_id", unnamed=Unnamed.ALLOW),
    f"{FOR}/ProjectMonthlyUsage": _read("meter_id"),
    f"{FOR}/AnalyzeConsumption": _read("meter_id"),
    f"{FOR}/TrainForecaster": WRITE,
    f"{FOR}/ListForecastModels": _read(unnamed=Unnamed.OPERATORS),
    f"{BIL}/ListTariffs": _read(unnamed=Unnamed.ALLOW),
    f"{BIL}/GetTariff": _read(unnamed=Unnamed.ALLOW),
    f"{BIL}/QuoteBill": _read(unnamed=Unnamed.ALLOW),
    f"{BIL}/ComputeBill": WRITE,  # stores (and may supersede) a bill
    f"{BIL}/RunBillingCycle": WRITE,
    f"{BIL}/GetBill": _read(unnamed=Unnamed.ALLOW, response_meters="bill.meter_id"),
    f"{BIL}/ListBills": _read("meter_id"),
    f"{ALR}/ListAlerts": _read(
        "filter.meter_ids",
        unnamed=Unnamed.NARROW,
        narrow="filter.meter_ids",
        response_meters="alerts.meter_id",
    ),
    f"{ALR}/GetAlert": _read(unnamed=Unnamed.ALLOW, response_meters="alert.meter_id"),
    f"{ALR}/AcknowledgeAlert": Rule(Access.WRITE, subject_field="acknowledged_by"),
    f"{ALR}/ResolveAlert": Rule(Access.WRITE, subject_field="resolved_by"),
    f"{ALR}/WatchAlerts": _read(
        "filter.meter_ids",
        unnamed=Unnamed.NARROW,
        narrow="filter.meter_ids",
        response_meters="update.alert.meter_id",
    ),
}


def _denied(message: str) -> GrpcError:
    return GrpcError(grpc.StatusCode.PERMISSION_DENIED, message)


def meter_ids(msg: Message, path: str) -> Iterator[str]:
    """The non-empty strings at a dotted path, walking repeated and set singular message fields."""
    head, _, rest = path.partition(".")
    field = msg.DESCRIPTOR.fields_by_name[head]
    repeated = field.is_repeated
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if repeated:
            children: Iterable[Message] = getattr(msg, head)
        elif msg.HasField(head):
            children = (getattr(msg, head),)
        else:
            children = ()
        for child in children:
            yield from meter_ids(child, rest)
        return
    values = getattr(msg, head) if repeated else (getattr(msg, head),)
    yield from (v for v in values if v)


def _narrow(msg: Message, path: str, meters: Iterable[str]) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        msg = getattr(msg, name)  # creates the sub-message on write
    getattr(msg, leaf).extend(sorted(meters))


def keep_own(msg: Message, path: str, own: frozenset[str]) -> bool:
    """Drops the items of repeated fields along path that concern other meters; False when a single
    (non-repeated) meter id on the path is foreign. Empty ids (a quote's bill) concern no meter."""
    head, _, rest = path.partition(".")
    field = msg.DESCRIPTOR.fields_by_name[head]
    repeated = field.is_repeated
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        value = getattr(msg, head)
        return not value or value in own
    if not repeated:
        return not msg.HasField(head) or keep_own(getattr(msg, head), rest, own)
    items = getattr(msg, head)
    for i in reversed(range(len(items))):
        if not keep_own(items[i], rest, own):
            del items[i]
    return True


@dataclass(frozen=True)
class Decision:
    """What to send upstream, and how to treat the answer."""

    request: bytes
    # For consumers: the response path to check (see Rule.response_meters), else None.
    response_meters: str | None = None
    own_listing: bool = False


def authorize(
    method: str, rule: Rule | None, request_cls: type[Message], principal: Principal, body: bytes
) -> Decision:
    """Checks a call against the table; returns the (possibly rewritten) request. Operators' requests
    are decoded only when the gateway rewrites them, so their calls cost no parsing."""
    if principal.is_operator:
        if rule is not None and rule.subject_field:
            request = _decode(request_cls, body)
            setattr(request, rule.subject_field, principal.subject)
            return Decision(request.SerializeToString())
        return Decision(body)

    who = f"consumer {principal.subject!r}"
    if rule is None:
        raise _denied(f"{who} may not call {method}: it is not open to consumers (operators only)")
    if rule.access is Access.WRITE:
        raise _denied(f"{who} may not call {method}: consumers may only read (operators only)")
    if rule.unnamed is Unnamed.OPERATORS:
        raise _denied(f"{who} may not call {method}: it reads fleet-wide data (operators only)")
    if rule.unnamed is Unnamed.OWN_LISTING:
        return Decision(body, own_listing=True)

    request = _decode(request_cls, body)
    named = {m for path in rule.meters for m in meter_ids(request, path)}
    foreign = sorted(named - principal.meters)
    if foreign:
        listed = ", ".join(repr(m) for m in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise _denied(f"{who} may not read meter {listed}: the token covers only its own meters")
    rewritten = body
    if not named:
        if rule.unnamed is Unnamed.DENY:
            raise _denied(f"{who} must name one of its meters to call {method}")
        if rule.unnamed is Unnamed.NARROW:
            if not principal.meters:
                raise _denied(f"{who} has no meters in its token, so there is nothing it may read")
            assert rule.narrow is not None
            _narrow(request, rule.narrow, principal.meters)
            rewritten = request.SerializeToString()
    return Decision(rewritten, response_meters=rule.response_meters)


def _decode(request_cls: type[Message], body: bytes) -> Message:
    try:
        return request_cls.FromString(body)
    except DecodeError as exc:
        raise GrpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {request_cls.DESCRIPTOR.full_name}: {exc}",
        ) from None


def check_response(
    response_cls: type[Message], body: bytes, path: str, principal: Principal, *, stream: bool
) -> bytes | None:
    """A consumer's response with other meters' items dropped; None for a stream message to skip.
    PERMISSION_DENIED when a single answer concerns another meter."""
    msg = response_cls.FromString(body)
    before = msg.ByteSize()
    if not keep_own(msg, path, principal.meters):
        if stream:
            return None
        raise _denied(f"consumer {principal.subject!r} may not read this: it concerns another meter")
    return body if msg.ByteSize() == before else msg.SerializeToString()
