"""logvm verify keeps each qube's last result for the browser (store/verify_results.py)."""

import json
from pathlib import Path

import pytest

from qubes_logvm.store.verify.findings import Finding, Report
from qubes_logvm.store.verify_results import (
    QubeResult,
    describe,
    load_results,
    outcome,
    results_path,
    save_results,
)


def test_outcome_per_qube_store_wide_errors_count_for_all() -> None:
    report = Report(
        findings=[
            Finding("error", "work", 1, 3, 3, "seal mismatch"),
            Finding("warning", "personal", 2, None, None, "unsealed tail"),
        ]
    )
    got = outcome(report, ["work", "personal"], 100.0)
    assert got == {
        "work": QubeResult(100.0, False, 1, 0),
        "personal": QubeResult(100.0, True, 0, 1),
    }
    report.findings.append(Finding("error", None, None, None, None, "state file rewritten"))
    assert not outcome(report, ["personal"], 100.0)["personal"].ok


def test_saved_results_merge_per_store(tmp_path: Path) -> None:
    path = tmp_path / "state" / "verify-results.json"
    one, two = tmp_path / "one", tmp_path / "two"
    save_results(path, one, {"work": QubeResult(1.0, True, 0, 0)})
    save_results(path, two, {"work": QubeResult(2.0, False, 3, 0)})
    save_results(path, one, {"personal": QubeResult(3.0, True, 0, 2)})
    assert load_results(path, one) == {
        "work": QubeResult(1.0, True, 0, 0),
        "personal": QubeResult(3.0, True, 0, 2),
    }
    assert load_results(path, two) == {"work": QubeResult(2.0, False, 3, 0)}
    assert describe(load_results(path, two)["work"]).startswith("FAILED (3) ")
    assert describe(None) == "unknown"


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"STORE": {"work": ["x", True, 0, 0]}}).encode(),  # a bad entry
        b" " * (2 << 20),  # over the bound
    ],
)
def test_a_bad_file_reads_as_nothing_known(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "verify-results.json"
    path.write_bytes(content.replace(b"STORE", str(tmp_path.resolve()).encode()))
    assert load_results(path, tmp_path) == {}


def test_path_follows_xdg_state_home() -> None:
    assert results_path({"XDG_STATE_HOME": "/s", "HOME": "/h"}) == Path(
        "/s/qubes-logvm/verify-results.json"
    )
    assert results_path({"HOME": "/h"}) == Path("/h/.local/state/qubes-logvm/verify-results.json")
