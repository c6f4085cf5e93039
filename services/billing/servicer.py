"""BillingService: translates protobuf calls to the tariff catalog, the engine, the biller and billing
cycles, and their results and errors back. Status codes: an unknown tariff, meter or bill is NOT_FOUND;
a bad request (negative usage, an empty or reversed period, a time-of-use period the tariff lacks) is
INVALID_ARGUMENT naming the field and the value; a meter that cannot be billed as registered (no
tariff, no load where the tariff charges by load, no readings, no tariff version in force) is
FAILED_PRECONDITION; a cycle overlapping a running one is ABORTED."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import math
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import Any, NoReturn

import grpc
import numpy as np
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from metermesh.billing.v1 import billing_pb2, billing_pb2_grpc
from metermesh.common.v1 import common_pb2

from services.billing import store
from services.billing.biller import Biller, Conflict, FailedPrecondition, NotFound
from services.billing.bills import StoredBill, lines_of, money
from services.billing.catalog import TariffSet, TariffVersion
from services.billing.config import BillingSettings
from services.billing.cycle import CycleBusy, CycleRequest, CycleRunner, CycleState
from services.billing.engine import HourlyProfile, Usage, quote
from services.billing.errors import BillingError, InvalidUsage, TariffNotInForce, UnknownTariff
from services.billing.metering import billing_period
from services.common.server import Runtime

log = structlog.get_logger(__name__)

CATEGORIES = ("residential", "commercial", "industrial", "agricultural", "feeder")
_CATEGORY = {name: getattr(common_pb2, f"METER_CATEGORY_{name.upper()}") for name in CATEGORIES}
_CATEGORY_NAME = {v: k for k, v in _CATEGORY.items()}
_STATUS = {"issued": billing_pb2.BILL_STATUS_ISSUED, "superseded": billing_pb2.BILL_STATUS_SUPERSEDED}

# The engine names usage fields after its own Usage; the request's fields are named as in the proto.
_FIELD_NAMES = (
    ("usage.hourly.import_kwh", "usage.hourly.import_energy_kwh"),
    ("usage.hourly.export_kwh", "usage.hourly.export_energy_kwh"),
    ("usage.hourly.start", "usage.hourly.start_time"),
    ("usage.import_kwh", "usage.import_energy_kwh"),
    ("usage.export_kwh", "usage.export_energy_kwh"),
)


def proto_field(engine_field: str) -> str:
    for ours, theirs in _FIELD_NAMES:
        if engine_field.startswith(ours):
            return theirs + engine_field[len(ours) :]
    return engine_field


def _error_text(exc: BillingError) -> str:
    f = proto_field(exc.field)
    return f"{f}: {exc.message}" if f else exc.message


def _ts(value: dt.datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(value.astimezone(dt.UTC))
    return t


def _instant(ts: Timestamp) -> dt.datetime:
    return ts.ToDatetime(dt.UTC)


def _date(text: str, field: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidUsage(field, f"{text!r} is not a date YYYY-MM-DD") from None


def _token(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode()


def _untoken(token: str, n: int) -> list[str]:
    try:
        parts = base64.urlsafe_b64decode(token.encode()).decode().split("|")
    except Exception:
        parts = []
    if len(parts) != n:
        raise InvalidUsage("page_token", f"{token!r} is not a token this call returned")
    return parts


def _page_size(size: int) -> int:
    size = size or 100
    if not 1 <= size <= 1000:
        raise InvalidUsage("page_size", f"is {size}; must be within 1-1000 (0 means 100)")
    return size


def _money(currency: str, amount: str | Decimal) -> common_pb2.Money:
    return common_pb2.Money(
        currency_code=currency, amount=amount if isinstance(amount, str) else money(amount)
    )


def line_to_proto(line: Mapping[str, Any], currency: str) -> billing_pb2.BillLine:
    out = billing_pb2.BillLine(
        kind=billing_pb2.BillLineKind.Value(f"BILL_LINE_KIND_{line['kind']}"),
        description=line["description"],
        quantity=line["quantity"],
        unit=line["unit"],
        rate_percent=line["rate_percent"] or "",
        applies_to=line["applies_to"] or "",
        amount=_money(currency, line["amount"]),
    )
    if line["rate"] is not None:
        out.rate.CopyFrom(_money(currency, line["rate"]))
    return out


def stored_to_proto(b: StoredBill) -> billing_pb2.Bill:
    out = billing_pb2.Bill(
        bill_id=b.bill_id,
        meter_id=b.meter_id,
        tariff_id=b.tariff_id,
        tariff_versions=b.tariff_versions,
        billing_period=common_pb2.TimeRange(start_time=_ts(b.start_time), end_time=_ts(b.end_time)),
        import_energy_kwh=money(b.import_energy_kwh),
        export_energy_kwh=money(b.export_energy_kwh),
        lines=[line_to_proto(line, b.currency_code) for line in b.lines],
        subtotal=_money(b.currency_code, b.subtotal),
        total=_money(b.currency_code, b.total),
        status=_STATUS[b.status],
        issue_time=_ts(b.issue_time),
        data_coverage_percent=b.data_coverage_percent,
        billing_cycle_id=b.billing_cycle_id or "",
        superseded_by_bill_id=b.superseded_by_bill_id or "",
    )
    return out


def tariff_to_proto(v: TariffVersion) -> billing_pb2.Tariff:
    s = v.spec
    return billing_pb2.Tariff(
        tariff_id=s.id,
        version=s.version,
        name=s.name,
        utility=s.utility,
        category=_CATEGORY[s.category],
        currency_code=s.currency,
        time_zone=s.time_zone,
        effective_start_date=s.effective_start.isoformat(),
        effective_end_date=s.effective_end.isoformat() if s.effective_end else "",
        source_citation=s.source.citation,
        source_url=s.source.url,
        description=s.description,
        components=[
            billing_pb2.TariffComponent(
                kind=billing_pb2.BillLineKind.Value(f"BILL_LINE_KIND_{c.kind}"),
                name=c.name,
                description=c.description,
            )
            for c in v.describe()
        ],
        time_of_use_periods=v.period_names,
    )


def _kwh(value: float, field: str) -> Decimal:
    if not math.isfinite(value):
        raise InvalidUsage(field, f"is {value!r}; must be a finite number of kWh")
    if value < 0:
        raise InvalidUsage(field, f"is {value!r}; energy is never negative")
    return Decimal(repr(value))


def _load(value: float, field: str) -> Decimal | None:
    if not math.isfinite(value) or value < 0:
        raise InvalidUsage(field, f"is {value!r}; a load is a finite number >= 0 (0 means not given)")
    return Decimal(repr(value)) if value > 0 else None


def usage_from_proto(u: billing_pb2.Usage, period_start: dt.datetime, engine_start: dt.datetime) -> Usage:
    """The engine's Usage from the request's; period_start is billing_period.start_time as sent,
    engine_start the local midnight the engine's hourly profiles begin at."""
    sanctioned = _load(u.sanctioned_load_kw, "usage.sanctioned_load_kw")
    connected = _load(u.connected_load_hp, "usage.connected_load_hp")
    if u.HasField("hourly"):
        for name in ("import_energy_kwh", "export_energy_kwh"):
            if getattr(u, name):
                raise InvalidUsage(
                    f"usage.{name}", f"is {getattr(u, name)!r}; leave it 0 when usage.hourly is given"
                )
        if u.time_of_use:
            raise InvalidUsage("usage.time_of_use", "give either time_of_use or hourly, not both")
        h = u.hourly
        start = _instant(h.start_time)
        if start != period_start and start != engine_start:
            raise InvalidUsage(
                "usage.hourly.start_time",
                f"is {start.isoformat()}; it must equal billing_period.start_time ({period_start.isoformat()})",
            )
        imp = np.array(h.import_energy_kwh, dtype=np.float64)
        exp = None
        if len(h.export_energy_kwh):
            exp = np.array(h.export_energy_kwh, dtype=np.float64)
            if len(exp) != len(imp):
                raise InvalidUsage(
                    "usage.hourly.export_energy_kwh",
                    f"has {len(exp)} values but import_energy_kwh has {len(imp)}; give one per hour or none",
                )
        return Usage(
            hourly=HourlyProfile(engine_start, imp, exp),
            sanctioned_load_kw=sanctioned,
            connected_load_hp=connected,
        )
    tou: dict[str, Decimal] | None = None
    if u.time_of_use:
        tou = {}
        for i, p in enumerate(u.time_of_use):
            if not p.period:
                raise InvalidUsage(
                    f"usage.time_of_use[{i}].period", "is empty; name one of the tariff's periods"
                )
            if p.period in tou:
                raise InvalidUsage(f"usage.time_of_use[{i}].period", f"{p.period!r} is given twice")
            tou[p.period] = _kwh(p.import_energy_kwh, f"usage.time_of_use[{p.period!r}]")
    total = _kwh(u.import_energy_kwh, "usage.import_energy_kwh")
    return Usage(
        import_kwh=None if tou is not None and total == 0 else total,
        export_kwh=_kwh(u.export_energy_kwh, "usage.export_energy_kwh"),
        time_of_use_kwh=tou,
        sanctioned_load_kw=sanctioned,
        connected_load_hp=connected,
    )


def _period_instants(
    tr: common_pb2.TimeRange, field: str = "billing_period"
) -> tuple[dt.datetime, dt.datetime]:
    if not tr.HasField("start_time"):
        raise InvalidUsage(f"{field}.start_time", "is unset; give the first day's midnight")
    if not tr.HasField("end_time"):
        raise InvalidUsage(f"{field}.end_time", "is unset; give the midnight after the last day")
    start, end = _instant(tr.start_time), _instant(tr.end_time)
    if end <= start:
        raise InvalidUsage(
            f"{field}.end_time",
            f"{end.isoformat()} is not after start_time {start.isoformat()}; the period is [start_time, end_time)",
        )
    return start, end


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, rt: Runtime, settings: BillingSettings, tariffs: TariffSet) -> None:
        self.rt = rt
        self.settings = settings
        self.tariffs = tariffs
        self.biller = Biller(tariffs)
        self.cycles: CycleRunner | None = None

    async def start(self, rt: Runtime) -> None:
        assert rt.pool is not None
        self.cycles = CycleRunner(
            rt.pool,
            self.biller,
            chunk_meters=self.settings.cycle_chunk_meters,
            scan_min_percent=self.settings.cycle_scan_min_percent,
        )

    async def _abort(self, context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
        if isinstance(exc, UnknownTariff):
            await context.abort(grpc.StatusCode.NOT_FOUND, _error_text(exc))
        if isinstance(exc, NotFound):
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if isinstance(exc, FailedPrecondition | TariffNotInForce):
            text = _error_text(exc) if isinstance(exc, BillingError) else str(exc)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, text)
        if isinstance(exc, BillingError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _error_text(exc))
        if isinstance(exc, CycleBusy | Conflict):
            await context.abort(grpc.StatusCode.ABORTED, str(exc))
        raise exc

    async def _require_db(self, context: grpc.aio.ServicerContext) -> None:
        if not self.rt.ready.is_set() or self.rt.pool is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "billing is starting: waiting for PostgreSQL")

    # --- tariffs -------------------------------------------------------------------------------------

    async def ListTariffs(
        self, request: billing_pb2.ListTariffsRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListTariffsResponse:
        try:
            size = _page_size(request.page_size)
            after = tuple(_untoken(request.page_token, 2)) if request.page_token else ("", "")
            category = _CATEGORY_NAME.get(request.category) if request.category else None
            if request.category and category is None:
                raise InvalidUsage("category", f"{request.category} is not a MeterCategory")
            day = _date(request.effective_date, "effective_date") if request.effective_date else None
        except BillingError as exc:
            await self._abort(context, exc)
        chosen: list[TariffVersion] = []
        for tariff_id in self.tariffs.tariff_ids():
            versions = self.tariffs.versions(tariff_id)
            if category is not None and versions[0].spec.category != category:
                continue
            if request.all_versions:
                chosen.extend(sorted(versions, key=lambda v: v.version))
            else:
                today = day or dt.datetime.now(versions[0].tz).date()
                v = self.tariffs.in_effect(tariff_id, today)
                if v is not None:
                    chosen.append(v)
        chosen = [v for v in chosen if (v.tariff_id, v.version) > after]
        page = chosen[:size]
        token = _token(page[-1].tariff_id, page[-1].version) if len(chosen) > size else ""
        return billing_pb2.ListTariffsResponse(
            tariffs=[tariff_to_proto(v) for v in page], next_page_token=token
        )

    async def GetTariff(
        self, request: billing_pb2.GetTariffRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.GetTariffResponse:
        try:
            versions = self.tariffs.versions(request.tariff_id)
            which = request.WhichOneof("selector")
            if which == "version":
                v = self.tariffs.get(request.tariff_id, request.version)
            else:
                day = (
                    _date(request.effective_date, "effective_date")
                    if which == "effective_date"
                    else dt.datetime.now(versions[0].tz).date()
                )
                found = self.tariffs.in_effect(request.tariff_id, day)
                if found is None:
                    raise UnknownTariff(
                        "effective_date",
                        f"{request.tariff_id} has no version in effect on {day} (versions: "
                        + ", ".join(f"{x.version} from {x.effective_start}" for x in versions)
                        + ")",
                    )
                v = found
        except BillingError as exc:
            await self._abort(context, exc)
        return billing_pb2.GetTariffResponse(tariff=tariff_to_proto(v))

    # --- bills ---------------------------------------------------------------------------------------

    async def QuoteBill(
        self, request: billing_pb2.QuoteBillRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.QuoteBillResponse:
        try:
            start, end = _period_instants(request.billing_period)
            period = self.biller.period_for(request.tariff_id, start, end)
            tz = self.tariffs.versions(request.tariff_id)[0].tz
            engine_start = dt.datetime.combine(period.start, dt.time(0), tzinfo=tz).astimezone(dt.UTC)
            engine_end = dt.datetime.combine(period.end, dt.time(0), tzinfo=tz).astimezone(dt.UTC)
            usage = usage_from_proto(request.usage, start, engine_start)
            try:
                bill = quote(
                    self.tariffs, request.tariff_id, usage, period, version=request.tariff_version or None
                )
            except TariffNotInForce as exc:
                # The request's period is what is wrong here, not anything stored.
                raise InvalidUsage(exc.field, exc.message) from None
        except BillingError as exc:
            await self._abort(context, exc)
        lines = lines_of(bill)
        return billing_pb2.QuoteBillResponse(
            bill=billing_pb2.Bill(
                tariff_id=bill.tariff_id,
                tariff_versions=bill.tariff_versions,
                billing_period=common_pb2.TimeRange(start_time=_ts(engine_start), end_time=_ts(engine_end)),
                import_energy_kwh=money(bill.import_kwh),
                export_energy_kwh=money(bill.export_kwh),
                lines=[line_to_proto(line, bill.currency) for line in lines],
                subtotal=_money(bill.currency, bill.subtotal),
                total=_money(bill.currency, bill.total),
                status=billing_pb2.BILL_STATUS_QUOTE,
                data_coverage_percent=100.0,
            )
        )

    async def ComputeBill(
        self, request: billing_pb2.ComputeBillRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ComputeBillResponse:
        await self._require_db(context)
        assert self.rt.pool is not None
        try:
            if not request.meter_id:
                raise InvalidUsage("meter_id", "is empty; give a registered meter's id")
            start, end = _period_instants(request.billing_period)
            bill, created = await self.biller.compute(
                self.rt.pool, request.meter_id, start, end, recompute=request.recompute
            )
        except (BillingError, NotFound, FailedPrecondition, Conflict) as exc:
            await self._abort(context, exc)
        if created:
            log.info(
                "bill issued",
                meter_id=bill.meter_id,
                bill_id=bill.bill_id,
                version=bill.version,
                total=money(bill.total),
                difference=None if bill.total_difference is None else money(bill.total_difference),
            )
        return billing_pb2.ComputeBillResponse(bill=stored_to_proto(bill), created=created)

    async def GetBill(
        self, request: billing_pb2.GetBillRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.GetBillResponse:
        await self._require_db(context)
        assert self.rt.pool is not None
        bill = await store.get_bill(self.rt.pool, request.bill_id) if request.bill_id else None
        if bill is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"bill_id {request.bill_id!r} does not exist")
        return billing_pb2.GetBillResponse(bill=stored_to_proto(bill))  # type: ignore[arg-type]

    async def ListBills(
        self, request: billing_pb2.ListBillsRequest, context: grpc.aio.ServicerContext
    ) -> billing_pb2.ListBillsResponse:
        await self._require_db(context)
        assert self.rt.pool is not None
        try:
            if not request.meter_id:
                raise InvalidUsage("meter_id", "is empty; bills are listed per meter")
            size = _page_size(request.page_size)
            after = None
            if request.page_token:
                meter, s, e, v = _untoken(request.page_token, 4)
                if meter != request.meter_id:
                    raise InvalidUsage("page_token", "belongs to another meter's listing")
                after = (dt.date.fromisoformat(s), dt.date.fromisoformat(e), int(v))
            tr = request.time_range
            lo = _instant(tr.start_time) if tr.HasField("start_time") else None
            hi = _instant(tr.end_time) if tr.HasField("end_time") else None
        except BillingError as exc:
            await self._abort(context, exc)
        if await store.get_meter(self.rt.pool, request.meter_id) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"meter_id {request.meter_id!r} is not registered")
        bills = await store.list_bills(
            self.rt.pool,
            request.meter_id,
            overlapping=(lo, hi),
            include_superseded=request.include_superseded,
            after=after,
            limit=size + 1,
        )
        page = bills[:size]
        token = ""
        if len(bills) > size:
            last = page[-1]
            token = _token(
                last.meter_id, last.period.start.isoformat(), last.period.end.isoformat(), str(last.version)
            )
        return billing_pb2.ListBillsResponse(bills=[stored_to_proto(b) for b in page], next_page_token=token)

    # --- cycles --------------------------------------------------------------------------------------

    async def RunBillingCycle(
        self, request: billing_pb2.RunBillingCycleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[billing_pb2.RunBillingCycleResponse]:
        await self._require_db(context)
        assert self.rt.pool is not None and self.cycles is not None
        try:
            start, end = _period_instants(request.billing_period)
            if (end - start) > dt.timedelta(days=367):
                raise InvalidUsage("billing_period", f"is {(end - start).days} days long; at most 366 days")
            category = None
            if request.category:
                category = _CATEGORY_NAME.get(request.category)
                if category is None:
                    raise InvalidUsage("category", f"{request.category} is not a MeterCategory")
            tariff_id = request.tariff_id or None
            if tariff_id is not None:
                self.tariffs.versions(tariff_id)  # NOT_FOUND when not loaded
                self.biller.period_for(tariff_id, start, end)
            else:
                self._check_some_zone_fits(start, end)
            meter_ids = tuple(dict.fromkeys(request.meter_ids)) if request.meter_ids else None
        except BillingError as exc:
            await self._abort(context, exc)
        req = CycleRequest(start, end, category, tariff_id, meter_ids, request.recompute)
        period_proto = common_pb2.TimeRange(start_time=_ts(start), end_time=_ts(end))

        lock_conn = await self.rt.pool.acquire()
        try:
            try:
                state = await self.cycles.admit(lock_conn, req)
            except CycleBusy as exc:
                await self._abort(context, exc)
            run = asyncio.ensure_future(self.cycles.run(req, state, lock_conn))
            try:
                while True:
                    done, _ = await asyncio.wait({run}, timeout=self.settings.cycle_progress_seconds)
                    if done:
                        break
                    yield _progress(state, period_proto)
                run.result()  # raises what the run raised
            except BaseException:
                if not run.done():
                    run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                await self.cycles.interrupted(state)
                raise
            yield _progress(state, period_proto)
            yield billing_pb2.RunBillingCycleResponse(summary=_summary(state, period_proto))
        finally:
            await self.rt.pool.release(lock_conn)

    def _check_some_zone_fits(self, start: dt.datetime, end: dt.datetime) -> None:
        """Refuses at once a period that names whole days in no loaded tariff's time zone."""
        problem: InvalidUsage | None = None
        for tariff_id in self.tariffs.tariff_ids():
            try:
                billing_period(start, end, self.tariffs.versions(tariff_id)[0].tz)
                return
            except InvalidUsage as exc:
                problem = problem or exc
        if problem is not None:
            raise problem


def _progress(state: CycleState, period: common_pb2.TimeRange) -> billing_pb2.RunBillingCycleResponse:
    return billing_pb2.RunBillingCycleResponse(
        progress=billing_pb2.BillingCycleProgress(
            cycle_id=state.cycle_id,
            billing_period=period,
            total_count=state.total,
            done_count=state.done,
            billed_count=state.billed,
            skipped_count=state.skipped,
            failed_count=state.failed,
        )
    )


def _summary(state: CycleState, period: common_pb2.TimeRange) -> billing_pb2.BillingCycleSummary:
    return billing_pb2.BillingCycleSummary(
        cycle_id=state.cycle_id,
        billing_period=period,
        total_count=state.total,
        billed_count=state.billed,
        skipped_count=state.skipped,
        failed_count=state.failed,
        failures=[billing_pb2.BillingFailure(meter_id=m, reason=r) for m, r in state.sorted_failures()],
        billed_totals=[_money(cur, amount) for cur, amount in sorted(state.billed_totals.items())],
        start_time=_ts(state.start_time),
        end_time=_ts(state.end_time or dt.datetime.now(dt.UTC)),
    )
