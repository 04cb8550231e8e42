"""The formula's ``logvm`` Salt module (salt/_modules/logvm.py) on its own.

It cannot import the product (it runs in qubes before the package is
installed), so its size and duration grammar is checked here against
``qubes_logvm.config.schema``: one grammar, held together by this test.
"""

import importlib.util
from types import ModuleType
from typing import Any

import pytest
import yaml

from qubes_logvm.config.schema import parse_duration, parse_size
from qubes_logvm.core.errors import ConfigError
from support.fake_qvm.saltenv import FORMULA

SIZES: list[Any] = ["512M", "2G", "64K", "1024", 1024, 0, "1.5G", " 3 MiB ", "7kb", "1T", "2B",
                    "512X", "big", "", "-1", -1, True, None, 1.5, "1e3", "M"]  # fmt: skip
DURATIONS: list[Any] = ["30s", "10m", "12h", "7d", "2w", "250ms", "5", 5, 0.5, 0, " 1 d ",
                        "7 days", "", "-1s", -1, True, None, "1y", "s"]  # fmt: skip


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("salt_logvm", FORMULA / "_modules/logvm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULE = _module()
DEFAULTS = yaml.safe_load((FORMULA / "logvm/defaults.yaml").read_text())["logvm"]


def _product(parse: Any, value: Any) -> Any:
    try:
        return parse(value, "k")
    except ConfigError:
        return "error"


def _formula_size(value: Any) -> Any:
    try:
        return MODULE.size_bytes(value)
    except MODULE.Invalid:
        return "error"


def _formula_duration(value: Any) -> Any:
    pillar = {"exporter": {"shutdown_drain": value}}
    try:
        MODULE.check(DEFAULTS, pillar)
    except MODULE.Invalid:
        return "error"
    return "ok"


@pytest.mark.parametrize("value", SIZES)
def test_sizes_read_as_the_product_reads_them(value: Any) -> None:
    assert _formula_size(value) == _product(parse_size, value)


@pytest.mark.parametrize("value", DURATIONS)
def test_durations_accepted_as_the_product_accepts_them(value: Any) -> None:
    expected = "error" if _product(parse_duration, value) == "error" else "ok"
    assert _formula_duration(value) == expected


def test_merge_replaces_lists_and_recurses_into_mappings() -> None:
    merged = MODULE.check(DEFAULTS, {"sources": {"names": ["work"]}, "vm": {"memory": 800}})
    assert merged["sources"]["names"] == ["work"]
    assert merged["sources"]["exclude"] == DEFAULTS["sources"]["exclude"]
    assert merged["vm"]["memory"] == 800 and merged["vm"]["name"] == "sys-log"
    assert DEFAULTS["vm"]["memory"] == 600, "the defaults are not modified"


def test_problems_name_every_place_without_the_package() -> None:
    qubes = {
        "dom0": ("AdminVM", ""), "debian-12-xfce": ("TemplateVM", ""),
        "fedora-40-xfce": ("TemplateVM", ""), "work": ("AppVM", "fedora-40-xfce"),
        "dvm": ("AppVM", "fedora-40-xfce"), "disp9": ("DispVM", "dvm"),
    }  # fmt: skip
    merged = MODULE.check(DEFAULTS, {"sources": {"names": ["work", "gone"]}})
    found = MODULE.problems(merged, ["work", "disp9"], qubes)
    assert found == [
        "logvm:sources:names: no qube named 'gone'",
        "source qube work is based on fedora-40-xfce, which is not in logvm:templates"
        " (it would get no qubes-logvm package): add it, or exclude the qube",
        "source qube disp9 is based on fedora-40-xfce, which is not in logvm:templates"
        " (it would get no qubes-logvm package): add it, or exclude the qube",
    ]
    fixed = MODULE.check(DEFAULTS, {"templates": ["debian-12-xfce", "fedora-40-xfce"]})
    assert MODULE.problems(fixed, ["work", "disp9"], qubes) == []
