"""First contact with ``logvm``: global options before the subcommand,
--version, setup-keys output that can be saved, and one-line errors."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qubes_logvm import __version__
from qubes_logvm.cli import main
from support.programs import program

LOGVM = Path(sys.executable).parent / "logvm"
WITNESS = Path(sys.executable).parent / "logvm-witness"


def _run(*argv: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOGVM), *argv], capture_output=True, text=True, timeout=60, check=False,
        user=user, env={**os.environ, "LOGVM_PAGER": "cat"},
    )  # fmt: skip


def test_global_options_before_the_subcommand(tmp_path: Path) -> None:
    store = tmp_path / "store"
    out, err = io.BytesIO(), io.StringIO()
    assert main(["--store", str(store), "setup-keys"], stdout=out, stderr=err) == 0
    key = out.getvalue().decode().strip()
    assert key.startswith("logvm-vk1:") and "\n" not in key  # not a terminal: the key only
    assert "keep it OUTSIDE this qube" in err.getvalue()
    (tmp_path / "vk.txt").write_text(key + "\n")
    vk = str(tmp_path / "vk.txt")
    for argv in (["--store", str(store), "verify", "--key", vk],
                 ["verify", "--store", str(store), "--key", vk]):  # fmt: skip
        out = io.BytesIO()
        assert main(argv, stdout=out, stderr=io.StringIO()) == 0, argv
        assert b"\nOK: intact" in b"\n" + out.getvalue()


def test_key_file_with_the_explanations_is_accepted(tmp_path: Path) -> None:
    store = tmp_path / "store"
    out = io.BytesIO()
    main(["--store", str(store), "setup-keys"], stdout=out, stderr=io.StringIO())
    key = out.getvalue().decode().strip()
    saved = tmp_path / "screen.txt"  # what was on the terminal, pasted into a file
    saved.write_text(f"Sealing state created.\nThe verification key:\n\n    {key}\n\nKeep it.\n")
    out = io.BytesIO()
    code = main(["verify", "--store", str(store), "--key", str(saved)], stdout=out)
    assert code == 0 and b"\nOK: intact" in b"\n" + out.getvalue()


def test_version_and_help_name_defaults_and_examples() -> None:
    version = _run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"logvm {__version__}"
    help_text = _run("--help").stdout
    assert "examples:" in help_text and "default: /var/lib/qubes-logvm" in help_text
    assert "Who can read" in help_text
    assert "default: 10" in _run("setup-keys", "--help").stdout
    witness = subprocess.run([str(WITNESS), "--version"], capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
    assert witness.returncode == 0 and witness.stdout.strip() == f"logvm-witness {__version__}"


@pytest.mark.root
@pytest.mark.timeout(60)
def test_unreadable_store_gives_one_line_saying_who_can_read(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run as another user")
    store = tmp_path / "store"
    main(["--store", str(store), "setup-keys"], stdout=io.BytesIO(), stderr=io.StringIO())
    tmp_path.chmod(0o755)
    store.chmod(0o700)
    proc = _run("--store", str(store), "list", user=61000)  # the default user, without sudo
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert "permission denied" in proc.stderr and "sudo" in proc.stderr


@pytest.mark.root
def test_setup_keys_as_root_on_a_store_of_another_user_refuses(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    store = tmp_path / "store"
    store.mkdir()
    os.chown(store, 61000, 61000)
    err = io.StringIO()
    assert main(["--store", str(store), "setup-keys"], stdout=io.BytesIO(), stderr=err) == 2
    assert "run: sudo -u 61000 logvm setup-keys" in err.getvalue()
    assert list(store.iterdir()) == []


# Every program of the product: --version prints "<prog> <version>" and exits
# 0; --help states defaults and gives an example (issue 12, "first contact").
PROGRAMS = [
    "logvm-collector", "logvm-exporter", "logvm-send", "logvm-rotate",
    "logvm-forward", "logvm-browser", "logvm-witness", "logvm",
]  # fmt: skip


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_program_has_version_and_a_help_with_defaults_and_an_example(name: str) -> None:
    path = program(name)
    version = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"{name} {__version__}"
    helped = subprocess.run([str(path), "--help"], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    assert "--version" in text and "default" in text.lower(), text
    assert "example" in text.lower(), text
