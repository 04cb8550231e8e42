"""The reading examples of docs/reading.md and man/logvm.1 run, on a collector-written store."""

import io
import re
import shlex
from pathlib import Path

import pytest

from qubes_logvm.cli import main
from support.collected import Collected, build_collected

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Collected:
    return build_collected(tmp_path_factory.mktemp("collected"))


def doc_examples() -> list[str]:
    text = (REPO / "docs" / "reading.md").read_text()
    blocks = re.findall(r"```console\n(.*?)```", text, re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def man_examples() -> list[str]:
    text = (REPO / "man" / "logvm.1").read_text()
    [block] = re.findall(r"^\.SH EXAMPLES\n\.nf\n(.*?)^\.fi", text, re.S | re.M)
    lines = block.replace("\\-", "-").splitlines()
    return [x for x in lines if re.match(r"logvm (show|follow|list) ", x + " ")]


EXAMPLES = doc_examples() + man_examples()


def test_there_are_examples() -> None:
    assert len(doc_examples()) >= 10 and len(man_examples()) >= 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs(collected: Collected, example: str) -> None:
    words = shlex.split(example, comments=True)
    assert words[0] == "logvm"

    def stop(_: float) -> None:
        raise KeyboardInterrupt

    out, err = io.BytesIO(), io.StringIO()
    argv = [*words[1:], "--store", str(collected.root)]
    code = main(argv, stdout=out, stderr=err, sleep=stop)
    assert code == 0, err.getvalue()
    waiting = re.fullmatch(
        r"logvm follow: no qube '[a-z0-9-]+' in \S+ yet; waiting for it\n", err.getvalue()
    )
    assert err.getvalue() == "" or waiting, err.getvalue()
    # A time of day (`--since 18:34`) selects by the clock at the time the
    # test runs, so before 18:34 nothing of today's store is in the window.
    clock_bound = re.search(r"--(since|until) [0-9]{1,2}:[0-9]{2}\b", example)
    if not {"-g", "--grep", "-t", "-u"} & set(words) and not waiting and not clock_bound:
        assert out.getvalue(), example
