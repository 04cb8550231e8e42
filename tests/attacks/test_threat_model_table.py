"""docs/threat-model.md's attack table names tests that exist, and every matrix case has a row."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = {
    "M": ROOT / "tests/attacks/test_matrix.py",
    "W": ROOT / "tests/attacks/test_witness_scene.py",
    "S": ROOT / "tests/witness/test_witness_service.py",
    "T": ROOT / "tests/support/tamper.py",
    "F": ROOT / "tests/store/test_format2.py",
    "B": ROOT / "tests/witness/test_witness_bounds.py",
    "E": ROOT / "tests/attacks/test_witness_epochs.py",
    "C": ROOT / "tests/attacks/test_witness_settings.py",
    "Q": ROOT / "tests/attacks/test_witness_quota.py",
}


def _rows() -> list[str]:
    text = (ROOT / "docs/threat-model.md").read_text()
    table = text.split("| the intruder... | verify | verify --witness | test |", 1)[1]
    lines = table.split("\n\n", 1)[0].strip().splitlines()[1:]  # after the |---| line
    return [line for line in lines if line.startswith("|")]


def _tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    if path.name == "tamper.py":  # the ATTACKS keys
        names |= set(re.findall(r'^    "([a-z-]+)": ', path.read_text(), re.M))
    return names


def test_every_row_names_existing_tests() -> None:
    rows = _rows()
    assert len(rows) >= 25
    known = {tag: _tests(path) for tag, path in FILES.items()}
    known["T"] |= _tests(ROOT / "tests/store/test_verify.py")
    for row in rows:
        cell = row.rstrip("|").rsplit("|", 1)[1]
        named = 0
        for part in re.split(r",? (?=[BCEMQWSTF] `)", cell.strip()):
            tag, names = part[0], re.findall(r"`([a-z_0-9-]+)`", part)
            for name in names:
                assert name in known[tag], f"{row}: {tag} {name} does not exist"
                named += 1
        assert named, row


def test_every_matrix_case_has_a_row() -> None:
    table = "\n".join(_rows())
    for name in _tests(FILES["M"]):
        if name.startswith("test_"):
            assert f"`{name}`" in table, f"{name} has no row in docs/threat-model.md"
