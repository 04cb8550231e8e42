"""``logvm-witness verify`` end to end: real processes, the qvm-run and qrexec stand-ins.

dom0 is the test process's ``logvm-witness``; the LogVM's ``logvm.Export``
and the DispVM's ``logvm.VerifySnapshot`` are the shipped service scripts,
run by the ``qvm-run`` stand-in in their simulated qubes' roots.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qubes_logvm.core.seal import parse_verification_key
from support import tamper
from support.peak import wrapped
from support.programs import program
from support.qrexec import REPO_ROOT, World
from support.storebuilder import Built

WITNESS = program("logvm-witness")
LOGVM, DVM = "sys-log", "sys-log-dvm"


def shipped_service(name: str) -> str:
    """The packaged qubes-rpc script, run by this interpreter (the venv has the package)."""
    text = (REPO_ROOT / "qubes-rpc" / name).read_text(encoding="utf-8")
    return text.replace("/usr/bin/python3", sys.executable)


class Outside:
    """A world with dom0, the LogVM (serving ``store``) and an offline disposable template."""

    def __init__(self, base: Path, store: Built) -> None:
        self.store = store
        self.world = World(base / "world")
        self.world.add_qube(LOGVM, env={"LOGVM_STORE": str(store.root)})
        self.world.add_executable_service(LOGVM, "logvm.Export", shipped_service("logvm.Export"))
        self.world.add_qube(DVM, template_for_dispvms=True, running=False)
        self.world.add_executable_service(
            DVM, "logvm.VerifySnapshot", shipped_service("logvm.VerifySnapshot")
        )
        self.witness = base / "witness"
        (self.witness / LOGVM).mkdir(parents=True)
        (self.witness / LOGVM / "key").write_text(store.key + "\n", encoding="ascii")
        self.notes = base / "notify.jsonl"
        self.tools = base / "tools"
        self.tools.mkdir()
        fake = self.tools / "notify-send"
        fake.write_text(
            f"#!{sys.executable}\nimport json, sys\n"
            f"open({str(self.notes)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n",
            encoding="utf-8",
        )
        fake.chmod(0o755)

    def run(
        self, *args: str, timeout: float = 300, prefix: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[bytes]:
        env = self.world.client_env("dom0")
        env["PATH"] = f"{self.tools}:{env['PATH']}"
        cmd = [*prefix, str(WITNESS), "--dir", str(self.witness), *args]
        return subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, check=False)

    def verify(
        self, *args: str, timeout: float = 300, prefix: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[bytes]:
        return self.run(
            "verify", LOGVM, *args, "--dispvm-template", DVM, timeout=timeout, prefix=prefix
        )

    def notifications(self) -> list[list[str]]:
        if not self.notes.exists():
            return []
        return [json.loads(line) for line in self.notes.read_text().splitlines()]

    def hostile_export(self, script: str) -> None:
        """Replace the LogVM's logvm.Export (a compromised LogVM)."""
        self.world.add_executable_service(LOGVM, "logvm.Export", f"#!{sys.executable}\n{script}")


@pytest.fixture
def outside(tmp_path: Path, store: Built) -> Outside:
    return Outside(tmp_path, store)


def test_intact_store_verifies_ok_and_the_dispvm_is_gone(outside: Outside) -> None:
    result = outside.verify("--notify")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "OK: sys-log (outside the LogVM): errors=0" in out
    assert "qubes=3" in out
    events = outside.world.dispvm_events()
    assert [e["event"] for e in events] == ["created", "removed"]
    assert events[0]["template"] == DVM
    assert outside.world.live_dispvms() == set()
    assert outside.notifications() == []
    listing = outside.run("list").stdout.decode()
    assert "last verification: " in listing and " ok errors=0" in listing


def _forged_tombstone(b: Built) -> tamper.Expect:
    path = b.layout.tombstones("work")
    line = path.read_bytes()
    mac_at = line.rstrip(b"\n").rfind(b" ") + 1
    flipped = b"0" if line[mac_at : mac_at + 1] != b"0" else b"1"
    path.write_bytes(line[:mac_at] + flipped + line[mac_at + 1 :])
    return tamper.Expect("work", words="tombstones.seal")


@pytest.mark.parametrize(
    "attack",
    [tamper.changed_byte, tamper.removed_middle_segment, tamper.truncated_tail, _forged_tombstone],
    ids=["one-byte-edit", "removed-segment", "truncation", "forged-tombstone"],
)
def test_tampering_exits_1_with_the_place_named(outside: Outside, attack: object) -> None:
    expect = attack(outside.store)  # type: ignore[operator]
    result = outside.verify("--notify")
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    assert "FAILED: sys-log" in out
    assert any(expect.place in line and "error" in line for line in out.splitlines()), out
    if expect.words:
        assert expect.words in out
    assert outside.world.live_dispvms() == set()
    [note] = outside.notifications()
    assert "FAILED" in note[-2] and "--urgency=critical" in note


def test_named_qubes_only(outside: Outside) -> None:
    tamper.changed_byte(outside.store)  # in work
    result = outside.verify("personal")
    assert result.returncode == 0, result.stdout.decode()
    assert "qubes=1" in result.stdout.decode()
    [call] = [c for c in outside.world.calls() if c.get("target") == LOGVM]
    assert call["service"] == "logvm.Export+personal"


def _peak_rss_kib(outside: Outside, *args: str) -> tuple[subprocess.CompletedProcess[bytes], int]:
    report = outside.witness.parent / "peak-rss"
    result = outside.verify(*args, prefix=tuple(wrapped(report, [])))
    return result, int(report.read_text())


_TEN_GIB_ONE_FILE = """
import sys
import time
out = sys.stdout.buffer
out.write(b"logvm-snapshot-v1\\nstore 0\\nqube work\\nfile 00000001.log %d\\n" % (10 << 30))
zeros = bytes(1 << 20)
for _ in range(10 << 10):
    out.write(zeros)
"""

_TEN_GIB_SMALL_FILES = """
import sys
import time
out = sys.stdout.buffer
out.write(b"logvm-snapshot-v1\\nstore 0\\nqube work\\n")
chunk = bytes(1 << 20)
for n in range(10 << 10):
    out.write(b"file %08d.log %d\\n" % (n + 1, len(chunk)) + chunk)
"""


@pytest.mark.parametrize(
    ("script", "args", "words"),
    [
        ("import os\nos.write(1, os.urandom(1 << 20))\n", (), "not a snapshot"),
        ("import time\ntime.sleep(3600)\n", ("--timeout", "5"), "timed out"),
        (_TEN_GIB_ONE_FILE, ("--max-bytes", str(64 << 20)), "larger than the limit"),
        (_TEN_GIB_SMALL_FILES, ("--max-bytes", str(64 << 20)), "64"),
        ("import sys\nsys.exit(3)\n", (), "ends early"),
    ],
    ids=["garbage", "never-ends", "10GiB-one-file", "10GiB-many-files", "nothing"],
)
def test_hostile_export_gets_a_bounded_error(
    outside: Outside, script: str, args: tuple[str, ...], words: str
) -> None:
    outside.hostile_export(script)
    result, peak_kib = _peak_rss_kib(outside, "--notify", *args)
    out = result.stdout.decode()
    assert result.returncode == 2, out + result.stderr.decode()
    assert "CANNOT VERIFY: sys-log" in out and words in out, out
    assert peak_kib < 200 * 1024  # dom0 and the DispVM's verifier never hold the stream
    assert outside.world.live_dispvms() == set()
    [note] = outside.notifications()
    assert "could not run" in note[-2]
    assert "error" in outside.run("list").stdout.decode()


def test_verdict_with_escape_sequences_is_refused(outside: Outside) -> None:
    verdict = (
        b"logvm-verdict-v1 ok errors=0 warnings=0 qubes=1 segments=1 bytes=1\n"
        b"\x1b]0;owned\x07\x1b[2J\nend 0\n"
    )
    script = (
        f"#!{sys.executable}\nimport sys\nsys.stdin.buffer.read()\n"
        f"sys.stdout.buffer.write({verdict!r})\n"
    )
    outside.world.add_executable_service(DVM, "logvm.VerifySnapshot", script)
    result = outside.verify()
    assert result.returncode == 2
    assert b"\x1b" not in result.stdout and b"\x07" not in result.stdout
    assert b"not printable ASCII" in result.stdout
    assert outside.world.live_dispvms() == set()


def test_hostile_bytes_in_the_store_reach_dom0_as_ascii(outside: Outside) -> None:
    tamper.hostile_escape(outside.store)  # an unsealed tail: a warning
    result = outside.verify()
    assert result.returncode == 0, result.stdout
    assert b"unsealed tail" in result.stdout
    assert all(0x20 <= b < 0x7F or b == 0x0A for b in result.stdout)


def test_the_key_never_reaches_the_logvm(outside: Outside) -> None:
    key_hex = parse_verification_key(outside.store.key)[1].hex().encode()
    assert outside.verify().returncode == 0
    received = sorted((outside.world.base / "received").glob(f"{LOGVM}.*"))
    assert received and all(p.read_bytes() == b"" for p in received)
    for call in outside.world.calls():
        assert key_hex.decode() not in json.dumps(call)
    for path in outside.world.qubes[LOGVM].root.rglob("*"):
        if path.is_file():
            assert key_hex not in path.read_bytes(), path
    for path in outside.store.root.rglob("*"):
        if path.is_file():
            assert key_hex not in path.read_bytes(), path


def test_no_template_configured_cannot_run_and_notifies(outside: Outside) -> None:
    result = outside.run("verify", "--all", "--notify")
    assert result.returncode == 2
    assert b"--dispvm-template" in result.stderr
    [note] = outside.notifications()
    assert "could not run" in note[-2]


def test_qvm_run_stand_in_refuses_what_the_real_tool_lacks(outside: Outside) -> None:
    env = outside.world.client_env("dom0")
    for bad in (["--dispvm-name", "x"], ["--timeout", "5"]):
        result = subprocess.run(
            ["qvm-run", "--pass-io", *bad, "--service", "--", LOGVM, "logvm.Export"],
            env=env,
            capture_output=True,
            check=False,
        )
        assert result.returncode == 2 and b"unrecognized arguments" in result.stderr


def test_dispvm_gets_a_fresh_root_each_call(outside: Outside) -> None:
    probe = (
        f"#!{sys.executable}\nimport os, pathlib\n"
        "root = pathlib.Path(os.environ['QREXEC_FAKE_ROOT'])\n"
        "print((root / 'marker').exists(), os.environ['QREXEC_REMOTE_DOMAIN'])\n"
        "(root / 'marker').write_text('x')\n"
    )
    outside.world.add_executable_service(DVM, "test.Probe", probe)
    env = outside.world.client_env("dom0")
    argv = ["qvm-run", "--pass-io", "--no-gui", f"--dispvm={DVM}", "--service", "--", "test.Probe"]
    for _ in range(2):
        result = subprocess.run(argv, env=env, capture_output=True, check=True)
        assert result.stdout == b"False dom0\n"
    assert len(outside.world.dispvm_events()) == 4
    assert outside.world.live_dispvms() == set()
    assert not (outside.world.qubes[DVM].root / "marker").exists()
    mode = outside.world.qubes[DVM].root.stat().st_mode
    assert stat.S_ISDIR(mode) and os.access(outside.world.qubes[DVM].root, os.R_OK)


def test_qube_cannot_call_export(outside: Outside) -> None:
    outside.world.add_qube("work")
    cmd, env = outside.world.client_command("work", LOGVM, "logvm.Export")
    result = subprocess.run(cmd, env=env, capture_output=True, check=False)
    assert result.returncode == 126


def _unit_command(outside: Outside) -> list[str]:
    """The timer's service ExecStart, as systemd would run it here."""
    unit = (REPO_ROOT / "systemd/user/logvm-witness-verify.service").read_text(encoding="utf-8")
    [line] = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    argv = line.removeprefix("ExecStart=").replace("${LOGVM_VERIFY_DISPVM}", DVM).split()
    assert argv[0] == "/usr/bin/logvm-witness"
    return argv[1:]


def test_the_timer_command_notifies_on_failure_only(outside: Outside) -> None:
    args = _unit_command(outside)
    assert outside.run(*args).returncode == 0
    assert outside.notifications() == []
    tamper.removed_middle_segment(outside.store)
    result = outside.run(*args)
    assert result.returncode == 1
    [note] = outside.notifications()
    assert note[:3] == ["--urgency=critical", "--app-name=logvm-witness", "--icon=dialog-warning"]
    assert note[3] == "Log verification of sys-log FAILED"
    assert "logvm-witness verify sys-log" in note[4]


def test_a_networked_template_is_refused_before_a_byte_reaches_the_dispvm(
    outside: Outside,
) -> None:
    # The netvm is asked while the DispVM and the export start; nothing goes
    # into the DispVM (the key least of all) until the answer is "none". A
    # slow qvm-prefs lets the DispVM's service run and read before it comes.
    outside.world.qubes[DVM].netvm = "sys-firewall"
    got = outside.tools / "dispvm-input"
    recorder = (
        "import os\n"
        f"with open({str(got)!r}, 'ab', buffering=0) as out:\n"
        "    while data := os.read(0, 65536):\n"
        "        out.write(data)\n"
    )
    outside.world.add_executable_service(
        DVM, "logvm.VerifySnapshot", f"#!{sys.executable}\n{recorder}"
    )
    slow = outside.tools / "qvm-prefs"
    slow.write_text(f'#!/bin/sh\nsleep 1\nexec {outside.world.bin_dir() / "qvm-prefs"} "$@"\n')
    slow.chmod(0o755)
    result = outside.verify("--notify")
    assert result.returncode == 2
    assert b"sys-log-dvm has a netvm ('sys-firewall')" in result.stdout
    assert not got.exists() or got.read_bytes() == b""
    assert [e["event"] for e in outside.world.dispvm_events()] in ([], ["created", "removed"])
    assert outside.world.live_dispvms() == set()
    [note] = outside.notifications()
    assert "could not run" in note[-2]


def test_qvm_prefs_stand_in_reads_only(outside: Outside) -> None:
    env = outside.world.client_env("dom0")
    run = [
        subprocess.run(["qvm-prefs", *a], env=env, capture_output=True, check=False)
        for a in (["--", DVM, "netvm"], [DVM, "netvm", "sys-net"], ["nosuch", "netvm"])
    ]
    assert run[0].returncode == 0 and run[0].stdout == b""
    assert run[1].returncode == 2 and b"only reads" in run[1].stderr
    assert run[2].returncode == 2 and b"no such domain" in run[2].stderr


def test_interrupted_verification_leaves_no_dispvm(outside: Outside) -> None:
    outside.hostile_export("import time\ntime.sleep(3600)\n")
    env = outside.world.client_env("dom0")
    cmd = [str(WITNESS), "--dir", str(outside.witness), "verify", LOGVM]
    proc = subprocess.Popen(
        [*cmd, "--dispvm-template", DVM], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while not outside.world.dispvm_events() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # what the unit's KillSignal sends
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and b"interrupted" in err
    assert [e["event"] for e in outside.world.dispvm_events()] == ["created", "removed"]
    assert outside.world.live_dispvms() == set()


def test_every_logvm_verified_on_its_own(outside: Outside, tmp_path: Path) -> None:
    # Two LogVMs (pillar logvm:logvms): each registered its own key with the
    # witness and is verified from its own export; tampering in one is named
    # for that one, the other stays OK.
    second = "sys-log-net"
    copy = Built(tmp_path / "second-store", outside.store.key)
    shutil.copytree(outside.store.root, copy.root, symlinks=True)
    outside.world.add_qube(second, env={"LOGVM_STORE": str(copy.root)})
    outside.world.add_executable_service(second, "logvm.Export", shipped_service("logvm.Export"))
    (outside.witness / second).mkdir()
    (outside.witness / second / "key").write_text(copy.key + "\n", encoding="ascii")
    tamper.changed_byte(copy)
    result = outside.run("verify", "--all", "--dispvm-template", DVM)
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    assert "OK: sys-log (outside the LogVM): errors=0" in out
    assert "sys-log-net" in out and "work/00000002" in out
    assert outside.world.live_dispvms() == set()
