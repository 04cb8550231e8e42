"""The collector-made store is what the attack matrix assumes, and it verifies."""

import pytest
from attacks.conftest import Made

from qubes_logvm.store.verify.policy import QUOTA_NOT_JUDGED

pytestmark = pytest.mark.timeout(120)


def test_made_store_verifies_with_and_without_witness(made: Made) -> None:
    code, out = made.verify()
    assert code == 0, out
    assert "limit: without the witness" in out
    code, out = made.verify(witness=True)
    assert code == 0, out  # work's quota deletions judged by the policy dom0 deployed
    limits = [line for line in out.splitlines() if line.startswith("limit:")]
    assert limits == [f"limit: {QUOTA_NOT_JUDGED}"], out
    names = sorted(p.name for p in made.qube("work").iterdir())
    assert "tombstones.seal" in names, names
    print(out)
