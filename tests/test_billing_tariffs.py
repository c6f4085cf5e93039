"""Tariff files (services/billing/tariffs, services/billing/schema.py, catalog.py): every shipped file
loads and carries the figures its sources give, and a broken file is refused with an error naming the
file, the field path and the value."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.billing.catalog import (
    DEFAULT_TARIFF_DIR,
    TariffSet,
    load_tariff_file,
    load_tariffs,
    parse_tariff,
)
from services.billing.errors import TariffFileError, TariffNotInForce, UnknownTariff
from services.billing.schema import DatedPerUnit, Fixed, Slabs, TimeOfUseEnergy

SHIPPED = sorted(DEFAULT_TARIFF_DIR.rglob("*.yaml"))
RGP_URBAN = DEFAULT_TARIFF_DIR / "in-gj-rgp-urban" / "2024-01.yaml"
D = Decimal


def shipped(tariff_id: str) -> Any:
    return load_tariffs().versions(tariff_id)


def rates(c: Slabs) -> list[tuple[Decimal | None, Decimal]]:
    return [(b.up_to, b.rate) for b in c.blocks]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_tariff_file_loads_with_its_source_and_a_check_note(path: Path) -> None:
    v = load_tariff_file(path)
    assert v.spec.id == path.parent.name, "tariffs/<id>/<version>.yaml"
    assert v.spec.version == path.stem
    assert v.spec.source.citation and v.spec.source.url.startswith("https://")
    assert "check" in v.spec.note.lower()
    assert v.describe(), "every component describes itself"


def test_shipped_tariffs_load_together_and_cover_their_dates_without_gaps() -> None:
    tariffs = load_tariffs()
    assert set(tariffs.tariff_ids()) == {
        "in-gj-rgp-urban",
        "in-gj-rgp-rural",
        "in-gj-bpl",
        "in-gj-ag-metered",
        "in-gj-ag-unmetered",
        "us-ca-pge-e-tou-c",
        "uk-economy-7",
    }
    for tariff_id in tariffs.tariff_ids():
        first = tariffs.versions(tariff_id)[0]
        assert tariffs.covering(tariff_id, first.effective_start, dt.date(2027, 1, 1))


def test_gujarat_figures_are_the_ones_the_sources_give() -> None:
    (urban,) = shipped("in-gj-rgp-urban")
    slabs, fixed, fpppa, duty, export = urban.spec.components
    assert export.rate == D("2.25") and export.mode == "netting"  # type: ignore[union-attr]
    assert isinstance(slabs, Slabs) and slabs.mode == "telescopic"
    assert rates(slabs) == [(50, D("3.05")), (100, D("3.50")), (250, D("4.15")), (None, D("5.20"))]
    assert isinstance(fixed, Fixed) and fixed.load_step == D("0.5")
    assert [(b.up_to_kw, b.amount) for b in fixed.bands or []] == [(2, 15), (4, 25), (6, 45), (None, 70)]
    assert isinstance(fpppa, DatedPerUnit)
    assert [(r.start, r.rate) for r in fpppa.rates] == [
        (dt.date(2024, 1, 1), D("2.85")),
        (dt.date(2024, 10, 1), D("2.45")),
        (dt.date(2025, 7, 1), D("2.30")),
    ]
    assert all("carried forward" in r.note for r in fpppa.rates), "the file says where values are carried"
    assert duty.percent == 15 and duty.of == ["energy", "fixed", "fuel_surcharge"]  # type: ignore[union-attr]
    assert urban.spec.rounding.total == 1, "Indian bills round the total to the rupee"

    (rural,) = shipped("in-gj-rgp-rural")
    assert rates(rural.spec.components[0]) == [
        (50, D("2.65")),
        (100, D("3.10")),
        (250, D("3.75")),
        (None, D("4.90")),
    ]
    (bpl,) = shipped("in-gj-bpl")
    assert rates(bpl.spec.components[0])[:2] == [(30, D("1.50")), (50, D("3.05"))]
    assert bpl.spec.components[1].amount == 5  # type: ignore[union-attr]
    (ag,) = shipped("in-gj-ag-metered")
    assert [type(c).__name__ for c in ag.spec.components] == ["Slabs"], "no FPPPA, no duty"
    assert rates(ag.spec.components[0]) == [(None, D("0.60"))]
    (unmetered,) = shipped("in-gj-ag-unmetered")
    assert unmetered.spec.components[0].rate == 200  # type: ignore[union-attr]


def test_gujarat_residential_tariffs_share_one_fpppa_schedule() -> None:
    schedules = {
        tariff_id: [(r.start, r.rate) for r in shipped(tariff_id)[0].spec.components[2].rates]
        for tariff_id in ("in-gj-rgp-urban", "in-gj-rgp-rural", "in-gj-bpl")
    }
    assert len({tuple(s) for s in schedules.values()}) == 1, schedules


def test_pge_e_tou_c_peak_is_4_to_9_pm_every_day_and_summer_is_june_to_september() -> None:
    for v in shipped("us-ca-pge-e-tou-c"):
        assert v.season_names == ("summer", "winter")
        assert [v.season_names[v.season_of_month[m]] for m in range(1, 13)] == ["winter"] * 5 + [
            "summer"
        ] * 4 + ["winter"] * 3
        assert v.period_names == ("peak", "off_peak")
        table = v.period_table
        assert table is not None
        peak_hours = {(s, d, h) for s in range(2) for d in range(7) for h in range(24) if table[s, d, h] == 0}
        assert peak_hours == {(s, d, h) for s in range(2) for d in range(7) for h in range(16, 21)}
        energy = v.spec.components[0]
        assert isinstance(energy, TimeOfUseEnergy)
    first, current = shipped("us-ca-pge-e-tou-c")
    assert "PLACEHOLDER" in first.spec.note, "the placeholder energy rates say so"
    assert [c.type for c in first.spec.components] == ["time_of_use", "baseline_credit", "minimum"]
    assert first.spec.components[2].amount == D("0.40317")  # type: ignore[union-attr]
    assert current.spec.components[1].rate == D("0.0814")  # type: ignore[union-attr]


def test_economy_7_has_a_seven_hour_night_window_and_a_daily_standing_charge() -> None:
    (e7,) = shipped("uk-economy-7")
    table = e7.period_table
    assert table is not None
    night = e7.period_names.index("night")
    assert [int((table[0, d] == night).sum()) for d in range(7)] == [7] * 7
    assert e7.spec.components[1].per == "day"  # type: ignore[union-attr]
    assert "PLACEHOLDER" in e7.spec.note


# --- schema errors -------------------------------------------------------------------------------


def base() -> dict[str, Any]:
    return yaml.safe_load(RGP_URBAN.read_text())


def tou_base() -> dict[str, Any]:
    return yaml.safe_load((DEFAULT_TARIFF_DIR / "us-ca-pge-e-tou-c" / "2026-06.yaml").read_text())


def setting(path: str, value: Any, start: Callable[[], dict[str, Any]] = base) -> dict[str, Any]:
    """The base tariff with the value at a dotted path (list indices as numbers) replaced; DELETE
    removes it."""
    data = copy.deepcopy(start())
    *parents, last = path.split(".")
    node: Any = data
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is DELETE:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


DELETE = object()

# (id, tariff data, fragments the error must contain: the path and the value)
BROKEN = [
    (
        "rate not a number",
        setting("components.0.blocks.0.rate", "3,05"),
        ["components[0](slabs).blocks[0].rate", "'3,05'"],
    ),
    (
        "negative rate",
        setting("components.0.blocks.1.rate", "-3.50"),
        ["blocks[1].rate", "-3.50 is negative"],
    ),
    (
        "slabs not ascending",
        setting("components.0.blocks.1.up_to", 40),
        ["blocks[1].up_to", "40 is not above", "50"],
    ),
    (
        "last slab closed",
        setting("components.0.blocks.3.up_to", 400),
        ["blocks[3].up_to", "last block must be open"],
    ),
    ("unknown component", setting("components.0.type", "flat_rate"), ["components[0]", "'flat_rate'"]),
    (
        "misspelt field",
        setting("components.0.mdoe", "telescopic"),
        ["components[0](slabs).mdoe", "Extra inputs"],
    ),
    ("missing note", setting("note", DELETE), ["note", "Field required"]),
    ("unknown subtotal", setting("components.3.of", ["energi"]), ["components[3].of", "'energi'"]),
    ("time zone", setting("time_zone", "Mars/Olympus"), ["time_zone", "'Mars/Olympus'"]),
    ("currency", setting("currency", "rupees"), ["currency", "'rupees'"]),
    ("tariff id", setting("id", "GJ RGP"), ["id", "'GJ RGP'"]),
    (
        "end before start",
        setting("effective_end", dt.date(2023, 12, 31)),
        ["effective_end", "2023-12-31", "before effective_start 2024-01-01"],
    ),
    (
        "dated rate starts late",
        setting("components.2.rates.0.from", dt.date(2024, 2, 1)),
        ["components[2].rates[0].from", "2024-02-01"],
    ),
    (
        "dated rates out of order",
        setting("components.2.rates.2.from", dt.date(2024, 6, 1)),
        ["rates[2].from", "2024-06-01 is not after 2024-10-01"],
    ),
    (
        "load bands missing",
        setting("components.1.bands", DELETE),
        ["components[1](fixed).bands", "load_band"],
    ),
    (
        "load step zero",
        setting("components.1.load_step", "0"),
        ["components[1](fixed).load_step", "0 must be > 0"],
    ),
    (
        "odd rounding step",
        setting("rounding.total", "0.05"),
        ["rounding.total", "0.05 is not a power of ten"],
    ),
    (
        "seasons miss a month",
        setting("seasons.1.months", [10, 11, 12, 1, 2, 3, 4], tou_base),
        ["seasons", "each month 1-12 exactly once"],
    ),
    (
        "windows overlap",
        setting(
            "time_of_use.periods",
            [
                {"name": "peak", "windows": [{"start": "16:00", "end": "21:00"}]},
                {"name": "shoulder", "windows": [{"start": "20:00", "end": "22:00"}]},
                {"name": "off_peak", "default": True},
            ],
            tou_base,
        ),
        ["time_of_use.periods[1].windows[0]", "20:00", "already in period 'peak'"],
    ),
    (
        "window off the hour",
        setting("time_of_use.periods.0.windows.0.start", "16:30", tou_base),
        ["time_of_use.periods[0].windows[0].start", "'16:30'", "whole hour"],
    ),
    (
        "rate for a period missing",
        setting("components.0.rates.winter", {"peak": "0.39757"}, tou_base),
        ["components[0].rates.winter", "off_peak"],
    ),
    (
        "allowance for a season missing",
        setting("components.1.daily_allowance_kwh", {"summer": "13.5"}, tou_base),
        ["components[1].daily_allowance_kwh", "winter"],
    ),
    (
        "netting with time of use",
        setting(
            "components",
            [
                *tou_base()["components"],
                {"type": "export_credit", "name": "NEM", "mode": "netting", "rate": "0.05"},
            ],
            tou_base,
        ),
        ["components[3].mode", "netting is not supported with time-of-use"],
    ),
]


@pytest.mark.parametrize(("data", "fragments"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_broken_tariff_is_refused_naming_the_field_and_the_value(
    data: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(TariffFileError) as err:
        parse_tariff(data, "tariffs/x/1.yaml")
    message = str(err.value)
    assert message.startswith("tariffs/x/1.yaml: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_the_base_tariff_of_the_broken_cases_is_valid() -> None:
    # Without this, every case above could pass for a reason that has nothing to do with its mutation.
    parse_tariff(base(), "base")
    parse_tariff(tou_base(), "tou base")


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("id: in-gj-x\nversion: '1'\ncomponents: [\n  {type: slabs\n")
    with pytest.raises(TariffFileError) as err:
        load_tariff_file(path)
    assert str(path) in str(err.value) and "line " in str(err.value)


def test_loading_a_directory_reports_every_broken_file_at_once(tmp_path: Path) -> None:
    for name, data in [("a", setting("currency", "inr")), ("b", setting("time_zone", "Nowhere"))]:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(TariffFileError) as err:
        load_tariffs(tmp_path)
    assert len(err.value.problems) == 2
    assert "a.yaml: currency" in str(err.value) and "b.yaml: time_zone" in str(err.value)


def test_versions_of_one_tariff_must_not_overlap() -> None:
    first = parse_tariff(setting("effective_end", dt.date(2024, 12, 31)), "v1.yaml")
    overlapping = parse_tariff(
        setting("version", "2024-12", lambda: setting("effective_start", dt.date(2024, 12, 1))), "v2.yaml"
    )
    with pytest.raises(TariffFileError) as err:
        TariffSet([first, overlapping])
    assert "v2.yaml: effective_start" in str(err.value) and "v1.yaml" in str(err.value)

    open_ended = parse_tariff(base(), "open.yaml")
    later = parse_tariff(
        setting("version", "2025-01", lambda: setting("effective_start", dt.date(2025, 1, 1))), "later.yaml"
    )
    with pytest.raises(TariffFileError, match="until further notice"):
        TariffSet([open_ended, later])


def test_the_same_version_twice_is_refused() -> None:
    with pytest.raises(TariffFileError, match=r"version '2024-01' is also in a\.yaml"):
        TariffSet([parse_tariff(base(), "a.yaml"), parse_tariff(base(), "b.yaml")])


def test_lookups_name_what_is_missing() -> None:
    tariffs = TariffSet([parse_tariff(setting("effective_end", dt.date(2024, 12, 31)), "v1.yaml")])
    with pytest.raises(UnknownTariff) as err:
        tariffs.versions("in-gj-nope")
    assert err.value.field == "tariff_id" and "'in-gj-nope'" in str(err.value)
    with pytest.raises(UnknownTariff) as err:
        tariffs.get("in-gj-rgp-urban", "1999")
    assert err.value.field == "tariff_version" and "2024-01" in str(err.value)
    with pytest.raises(TariffNotInForce) as not_in_force:
        tariffs.covering("in-gj-rgp-urban", dt.date(2024, 12, 1), dt.date(2025, 1, 15))
    assert not_in_force.value.field == "billing_period" and "2025-01-01" in str(not_in_force.value)
    assert tariffs.in_effect("in-gj-rgp-urban", dt.date(2024, 6, 1)) is not None
    assert tariffs.in_effect("in-gj-rgp-urban", dt.date(2025, 6, 1)) is None
