"""Shell completion (completion/): real bash runs the function; both files match the parsers."""

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qubes_logvm.cli import build_parser
from support.storebuilder import Built

REPO = Path(__file__).resolve().parents[2]
BASH = REPO / "completion" / "logvm.bash"
ZSH = REPO / "completion" / "_logvm"


def parser_options() -> dict[str, set[str]]:
    """Each subcommand's options, from the real parser."""
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {
        name: {o for action in command._actions for o in action.option_strings}
        for name, command in sub.choices.items()
    }


def complete(*words: str) -> list[str]:
    """COMPREPLY of the bash function for ``logvm WORDS`` (the last word is being typed)."""
    script = (
        f"source {BASH}; COMP_WORDS=(logvm {' '.join(map(repr, words))}); "
        f"COMP_CWORD={len(words)}; _logvm; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    return [line for line in done.stdout.splitlines() if line]


@pytest.mark.timeout(60)
def test_bash_options_equal_the_parsers() -> None:
    for command, options in parser_options().items():
        assert set(complete(command, "-")) == options, command
    assert set(complete("")) >= {"show", "follow", "list", "verify", "stats", "open"}


@pytest.mark.timeout(60)
def test_bash_completes_qubes_from_the_store_and_values(store: Built) -> None:
    root = str(store.root)
    assert complete("show", "--store", root, "") == ["disp12", "personal", "work"]
    assert complete("follow", "--store", root, "p") == ["personal"]
    assert complete("show", "-o", "j") == ["json"]
    assert complete("show", "-p", "w") == ["warning"]
    assert complete("sh") == ["show"]
    assert complete("show", "--no") == ["--no-pager"]


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_file_parses_and_names_every_option() -> None:
    subprocess.run(["zsh", "-n", str(ZSH)], check=True, timeout=30)
    text = "\n".join(line for line in ZSH.read_text().splitlines() if not line.startswith("#"))
    named = set(re.findall(r"(?<![\w-])(--?[A-Za-z][a-z-]*)(?=[\[,}'])", text))
    every = set().union(*parser_options().values())
    assert named == every


def zsh_complete(line: str, tmp_path: Path) -> list[str]:
    """The matches real zsh offers for ``line`` + TAB (support/zsh_complete.zsh)."""
    out = tmp_path / "matches"
    out.unlink(missing_ok=True)
    driver = REPO / "tests" / "support" / "zsh_complete.zsh"
    subprocess.run(["zsh", "-f", str(driver), str(ZSH.parent), line, str(out)],
                   check=True, timeout=60)  # fmt: skip
    return out.read_text().split() if out.exists() else []


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_completes_qubes_from_the_store_and_values(store: Built, tmp_path: Path) -> None:
    root = str(store.root)
    assert zsh_complete(f"logvm show --store {root} ", tmp_path) == ["disp12", "personal", "work"]
    assert zsh_complete(f"logvm --store {root} follow p", tmp_path) == ["personal"]
    assert zsh_complete(f"logvm verify --store={root} --key k w", tmp_path) == ["work"]
    assert zsh_complete("logvm show -o j", tmp_path) == ["json"]
    assert zsh_complete("logvm show -p w", tmp_path) == ["warning"]
    assert zsh_complete("logvm sh", tmp_path) == ["show"]
