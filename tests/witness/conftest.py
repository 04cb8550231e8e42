"""Fixtures for the witness: a real ``logvm-witness serve`` process on pipes."""

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qubes_logvm.core.seal import ZERO, Seal, genesis
from support.keys import key_for_epoch
from support.programs import program

WITNESS = program("logvm-witness")
LOGVM = "sys-log"
STORE_ID = "0123456789abcdef0123456789abcdef"
KEY0 = bytes(range(32))


class WitnessCall:
    """One qrexec call to the witness: ``logvm-witness serve`` as qrexec runs it."""

    def __init__(self, root: Path, *extra: str, logvm: str = LOGVM) -> None:
        env = dict(os.environ, QREXEC_REMOTE_DOMAIN=logvm)
        self.proc = subprocess.Popen(
            [str(WITNESS), "--dir", str(root), "serve", *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )

    def send(self, line: bytes) -> str:
        """Write one message, read its answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode("ascii").rstrip("\n")

    def send_raw(self, data: bytes) -> list[str]:
        """Write raw bytes, close, and collect every answer until the witness exits."""
        out, _ = self.proc.communicate(data, timeout=30)
        return out.decode("ascii").splitlines()

    def close(self) -> int:
        """End the call (EOF), wait for the service to exit."""
        if self.proc.poll() is None:
            self.proc.communicate(timeout=30)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def witness_dir(tmp_path: Path) -> Path:
    return tmp_path / "witness"


@pytest.fixture
def open_call(witness_dir: Path) -> Iterator[Callable[..., WitnessCall]]:
    """Factory of calls; every process is killed at teardown."""
    calls: list[WitnessCall] = []

    def factory(*extra: str, logvm: str = LOGVM, root: Path | None = None) -> WitnessCall:
        call = WitnessCall(root or witness_dir, *extra, logvm=logvm)
        calls.append(call)
        return call

    yield factory
    for call in calls:
        call.kill()


def register_line(store_id: str = STORE_ID, key0: bytes = KEY0) -> bytes:
    return f"register {store_id} {key0.hex()}".encode()


def make_seal(
    qube: str = "work",
    seq: int = 1,
    epoch: int = 0,
    lines: int = 0,
    nbytes: int = 0,
    *,
    kind: str | None = None,
    head: bytes | None = None,
    key0: bytes = KEY0,
) -> Seal:
    """A correctly MACed seal (a checkpoint the LogVM would send)."""
    if kind is None:
        kind = "open" if lines == 0 else "batch"
    if head is None:
        head = genesis(STORE_ID, qube) if nbytes == 0 else nbytes.to_bytes(32, "big")
    return Seal(kind, qube, seq, epoch, lines, nbytes, head, ZERO).signed(
        key_for_epoch(key0, epoch)
    )


def line_of(seal: Seal) -> bytes:
    return seal.to_line().rstrip(b"\n")


def dir_bytes(path: Path) -> int:
    """Bytes held in a directory tree."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
