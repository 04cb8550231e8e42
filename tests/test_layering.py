"""The floors at run time: each program, imported in a fresh interpreter, loads only its floors.

Every module of a program's package is imported (lazy imports inside
functions included, e.g. the exporter's runner), then ``sys.modules`` is
read. The table of what may import what is in ``qubes_logvm/__init__.py``.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.storebuilder import Built

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "python"
PROGRAMS = ("collector", "exporter", "rotate", "cli", "snapshot", "forward", "witness", "browser")

_IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
        importlib.import_module(info.name)
print(json.dumps({n: getattr(m, "__file__", None) for n, m in sys.modules.items()}))
"""


def fresh(code: str, *args: str) -> Any:
    """What ``code`` prints as JSON, run in a fresh interpreter on the package alone."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd="/",
        env={"PYTHONPATH": str(PACKAGE), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def loaded(*modules: str) -> dict[str, str | None]:
    """Module name -> file, after importing ``modules`` (and their submodules) afresh."""
    result: dict[str, str | None] = fresh(_IMPORT_ALL, *modules)
    return result


def project(modules: dict[str, str | None]) -> set[str]:
    return {name for name in modules if name.split(".")[0] == "qubes_logvm"}


def program_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PROGRAMS else None


def test_exporter_loads_no_store_collector_or_zstandard() -> None:
    modules = loaded("qubes_logvm.exporter")
    assert "qubes_logvm.exporter.dom0" in modules  # dom0's exporter: the same rules
    assert "zstandard" not in modules
    assert not {n for n in project(modules) if n.startswith("qubes_logvm.store")}
    assert {program_of(n) for n in project(modules)} <= {None, "exporter"}


def test_witness_loads_only_the_core_and_the_stdlib() -> None:
    modules = loaded("qubes_logvm.witness")
    ours = project(modules)
    allowed = ("qubes_logvm.core", "qubes_logvm.witness")
    assert {n for n in ours if n != "qubes_logvm" and not n.startswith(allowed)} == set()
    startup = loaded()  # what the interpreter itself loads (site, the venv's hooks)
    others = {n.split(".")[0] for n in set(modules) - set(startup)} - {"qubes_logvm"}
    assert others - set(sys.stdlib_module_names) - set(sys.builtin_module_names) == set()


def test_the_dispvm_verifier_starts_light() -> None:
    # logvm.VerifySnapshot starts in every outside verification: the storage
    # policy check it imports reads no YAML (config.schema imports it lazily),
    # and the program imports no store module before it runs: its verify
    # thread imports the verifier while the input's first bytes arrive.
    modules = loaded("qubes_logvm.snapshot.check")
    assert not {n for n in modules if n.startswith("qubes_logvm.store")}
    assert "yaml" not in loaded("qubes_logvm.snapshot.check", "qubes_logvm.store.verify")


def test_the_export_reads_the_key_state_without_the_daemon_support() -> None:
    # logvm.Export reads the key state's epoch number (store.keystate): the
    # modules only creating a store needs (secrets, daemon_support's logging
    # and socket) are not part of its start-up.
    modules = loaded("qubes_logvm.snapshot.export")
    assert "qubes_logvm.store.keystate" in modules
    assert {"qubes_logvm.daemon_support", "secrets"} & set(modules) == set()


def test_store_loads_no_program() -> None:
    modules = loaded("qubes_logvm.store", "qubes_logvm.config", "qubes_logvm.core")
    assert {n for n in project(modules) if program_of(n)} == set()


@pytest.mark.parametrize("program", PROGRAMS)
def test_no_program_loads_another_or_the_tests(program: str) -> None:
    modules = loaded(f"qubes_logvm.{program}")
    assert {program_of(n) for n in project(modules)} <= {None, program}
    tests = str(REPO / "tests")
    assert [n for n, path in modules.items() if path and path.startswith(tests)] == []


_SHOW = r"""
import json, sys
from qubes_logvm.cli import main
out = open("/dev/null", "wb")
code = main(["show", "--all", "-n", "10", "--no-pager", "--store", sys.argv[1]], stdout=out)
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_show_loads_no_cryptography_dataclasses_or_strptime(store: Built) -> None:
    # Start-up is most of `logvm show -n 10` (issue 13's bench). show reads
    # seal files only for how far a segment is sealed (core.seal_line), so it
    # never pays for hashlib, hmac or the seal classes; the classes it reads
    # with are NamedTuples or plain (dataclasses imports inspect, ast, dis);
    # receive times are read by their columns (no _strptime, calendar).
    result = fresh(_SHOW, str(store.root))
    assert result["code"] == 0
    modules = set(result["modules"])
    assert "qubes_logvm.store.tail" in modules  # the seal files were read
    assert modules & {"hashlib", "hmac", "_hashlib", "qubes_logvm.core.seal"} == set()
    assert modules & {"dataclasses", "inspect", "_strptime"} == set()
    assert "qubes_logvm.store.grep" not in modules  # only --grep needs the matcher
