"""One set of defaults: the formula's, the shipped config files' and the code's.

- ``salt/logvm/defaults.yaml`` rendered by ``logvm.template`` with no pillar
  gives exactly the built-in defaults of ``qubes_logvm.config``, key by key
  (the formula adds only the witness target, from ``logvm:witness``);
- every commented-out setting in ``etc/qubes-logvm/*.yaml`` (the files say
  "the values shown are the built-in defaults") is the built-in default.
"""

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from qubes_logvm.config.collector import parse_collector_config
from qubes_logvm.exporter.config import parse_exporter_config
from support.fake_qvm.saltenv import REPO, SaltEnv

PARSERS = {"collector.yaml": parse_collector_config, "exporter.yaml": parse_exporter_config}


def fields(config: Any, prefix: str = "") -> dict[str, Any]:
    """A parsed config as ``{dotted.key: value}``, nested dataclasses flattened."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out.update(fields(value, f"{prefix}{field.name}."))
        else:
            out[f"{prefix}{field.name}"] = value
    return out


def differences(got: Any, want: Any) -> dict[str, tuple[Any, Any]]:
    a, b = fields(got), fields(want)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


@pytest.mark.timeout(90)
def test_formula_defaults_are_the_products_defaults(salt_env: SaltEnv) -> None:
    salt_env.configure("debian-12-xfce")
    salt_env.pillar({"logvm": {}})
    run = salt_env.apply("logvm.template")
    assert run.returncode == 0, run.failed or run.output
    for name, parse in PARSERS.items():
        rendered = yaml.safe_load((salt_env.root / "etc/qubes-logvm" / name).read_text())
        diff = differences(parse(rendered), parse({}))
        if name == "collector.yaml":
            assert diff.pop("witness.target") == ("dom0", None)  # logvm:witness
        assert diff == {}, name


def uncommented(path: Path) -> dict[str, Any]:
    """The commented-out settings of a shipped file (``#key:`` lines, no space
    after the ``#``; prose comments have one), as YAML."""
    lines = [line[1:] for line in path.read_text().splitlines() if re.match(r"#(  )*[a-z_]", line)]
    data = yaml.safe_load("\n".join(lines))
    assert isinstance(data, dict) and data, path
    return data


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_shipped_files_show_only_true_defaults(name: str) -> None:
    parse = PARSERS[name]
    assert differences(parse(uncommented(REPO / "etc/qubes-logvm" / name)), parse({})) == {}


def test_dom0_defaults_are_the_dom0_exporters() -> None:
    # logvm.dom0 renders logvm:dom0 into exporter-dom0.yaml (tests/salt/test_dom0.py):
    # with only `enabled: true`, the dom0 exporter runs on its built-in defaults.
    dom0 = yaml.safe_load((REPO / "salt/logvm/defaults.yaml").read_text())["logvm"]["dom0"]
    journal = {"enabled": dom0["journal"], **dom0["filters"]}
    rendered = {
        "sources": {"journal": journal},
        "dom0": {k: dom0[k] for k in ("consoles", "qubes_logs", "remove_dispvm_consoles")},
    }
    assert dom0["enabled"] is False
    assert differences(parse_exporter_config(rendered), parse_exporter_config({})) == {}
