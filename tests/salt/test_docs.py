"""One install path: the same ordered steps in the four places a user reads,
naming only files and states that exist."""

import re

from support.fake_qvm.saltenv import FORMULA, REPO

PLACES = ("README.md", "docs/install.md", "docs/salt.md", "salt/logvm/README.md")
BLOCK = re.compile(r"<!-- install-steps.*?-->\n(.*?)<!-- /install-steps -->", re.DOTALL)


def steps(place: str) -> str:
    found = BLOCK.findall((REPO / place).read_text(encoding="utf-8"))
    assert len(found) == 1, place
    return str(found[0])


def test_the_same_steps_everywhere() -> None:
    first = steps(PLACES[0])
    for place in PLACES[1:]:
        assert steps(place) == first, place


def test_the_steps_name_what_exists_in_the_right_order() -> None:
    text = steps(PLACES[0])
    # installed as /srv/formulas/base/logvm-formula/ + the path under salt/
    for path in re.findall(r"/srv/formulas/base/logvm-formula/(\S+)", text):
        assert (FORMULA / path).exists(), path
    for sls in set(re.findall(r"state\.apply (logvm[.\w]*)", text)):
        name = sls.replace(".", "/")
        assert (FORMULA / f"{name}.sls").exists() or (FORMULA / name / "init.sls").exists()
    order = ["qubes-dom0-update", "saltutil.sync_all", "/srv/pillar/base/logvm.sls",
             "/srv/pillar/base/logvm.top", "top.enable logvm pillar=true", "state.apply logvm\n",
             "state.apply logvm.template", "state.apply logvm.collector", "qvm-start"]  # fmt: skip
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert "host-fc37" in text and "host-fc41" in text


def test_no_place_names_files_that_do_not_exist() -> None:
    for place in (*PLACES, "docs/policy.md"):
        text = (REPO / place).read_text(encoding="utf-8")
        assert "60-logvm-deny" not in text, place
        assert "template.top" not in text and "collector.top" not in text, place
