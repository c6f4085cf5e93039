"""What can go wrong when pricing a bill, as exceptions the servicer maps to gRPC codes: an unknown
tariff is NOT_FOUND, bad usage or a bad billing period is INVALID_ARGUMENT naming the field, a period
no tariff version covers is FAILED_PRECONDITION."""

from __future__ import annotations


class BillingError(ValueError):
    """Base of the billing domain's errors; `field` names the request field at fault (dotted path,
    e.g. "usage.time_of_use['shoulder']"), or "" when no single field is."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class InvalidUsage(BillingError):
    """The usage, the load or the billing period given cannot be priced as it stands."""


class UnknownTariff(BillingError):
    """No tariff (or no such version of it) is loaded."""


class TariffNotInForce(BillingError):
    """The tariff exists but no version of it is in effect for (part of) the billing period."""


class TariffFileError(ValueError):
    """A tariff file (or a set of them) failed validation; each problem names the file, the field path
    and the value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
