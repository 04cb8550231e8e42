"""Manual pages (man/): render without warnings and document exactly the
options and subcommands each command's argparse parser has.

The options are read from each command's own ``--help`` output, so a new
option without its line in the page (or a page option the code dropped)
fails here.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from support.packages import COMMANDS, MAN_PAGES, REPO

_OPTION = re.compile(r"(?<![\w\\-])(--?[A-Za-z][\w-]*)")
_SUBCOMMANDS = re.compile(r"\{([a-z,-]+)\} \.\.\.")  # not an option's {choices}


def _help(
    capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], object], argv: list[str]
) -> str:
    try:
        main(argv)
    except SystemExit as exit_:
        assert exit_.code == 0
    return capsys.readouterr().out


def _entry(command: str) -> Callable[[list[str]], object]:
    """The console script's function, as python/pyproject.toml names it."""
    with (REPO / "python/pyproject.toml").open("rb") as stream:
        target = tomllib.load(stream)["project"]["scripts"][command]
    module, _, name = target.partition(":")
    main: Callable[[list[str]], object] = getattr(importlib.import_module(module), name)
    return main


def _options(help_text: str) -> set[str]:
    """The options argparse lists (its "options:" section, help strings included)."""
    _, found, listed = help_text.partition("\noptions:\n")
    assert found, help_text
    return set(_OPTION.findall(listed))


def _code_interface(capsys: pytest.CaptureFixture[str], command: str) -> tuple[set[str], set[str]]:
    """(options, subcommands) as the command's --help shows them."""
    main = _entry(command)
    top = _help(capsys, main, ["--help"])
    match = _SUBCOMMANDS.search(top)
    subcommands = set(match.group(1).split(",")) if match else set()
    options = _options(top)
    for sub in sorted(subcommands):
        options |= _options(_help(capsys, main, [sub, "--help"]))
    if command == "logvm-send":
        options.discard("--stdin")  # send_main passes it itself
    return options, subcommands


def _section(text: str, name: str) -> str:
    match = re.search(rf"^\.SH {name}\n(.*?)(?=^\.SH |\Z)", text, re.M | re.S)
    assert match, f"no {name} section"
    return match.group(1)


def _plain(roff: str) -> str:
    return re.sub(r"\\f[BIRP]|\\&", "", roff).replace("\\-", "-")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", sorted(MAN_PAGES))
def test_page_matches_the_parser(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "man" / Path(MAN_PAGES[command]).name).read_text(encoding="utf-8")
    section = MAN_PAGES[command].rsplit(".", 1)[1]
    assert text.startswith(f".TH {command.upper().replace('-', chr(92) + '-')} {section} ")
    assert f"\n.SH NAME\n{command.replace('-', chr(92) + '-')} \\- " in text
    for name in ("SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "FILES", "SEE ALSO"):
        _section(text, name)
    options, subcommands = _code_interface(capsys, command)
    documented = set(_OPTION.findall(_plain(_section(text, "OPTIONS"))))
    assert documented == options
    if subcommands:
        commands = _plain(_section(text, "COMMANDS"))
        listed = set(re.findall(r"^\.TP\n\.BI? ([a-z-]+)", commands, re.M))
        assert listed == subcommands


@pytest.mark.timeout(60)
@pytest.mark.parametrize("page", sorted(MAN_PAGES.values()))
def test_page_renders_without_warnings(page: str) -> None:
    path = REPO / "man" / Path(page).name
    groff = subprocess.run(
        ["groff", "-wall", "-man", "-Tutf8", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert groff.returncode == 0 and groff.stderr == "", groff.stderr
    assert "qubes-logvm manual" in groff.stdout
    if shutil.which("mandoc"):  # a second, stricter parser where installed
        lint = subprocess.run(
            ["mandoc", "-Tlint", "-Wwarning", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert lint.returncode == 0 and lint.stdout + lint.stderr == "", lint.stdout


@pytest.mark.timeout(30)
def test_every_command_has_a_page() -> None:
    with (REPO / "python/pyproject.toml").open("rb") as stream:
        scripts = tomllib.load(stream)["project"]["scripts"]
    assert set(MAN_PAGES) == set(scripts) == set(COMMANDS)
    shipped = {f"man{page.suffix[1:]}/{page.name}" for page in (REPO / "man").iterdir()}
    assert shipped == set(MAN_PAGES.values())
