"""The .deb installed on this machine: a real ``dpkg -i``, checked with
pytest-testinfra, an end-to-end run through the installed files, then
``dpkg --purge``.

One module so that the order is plain. It refuses to run where qubes-logvm
is already installed or has state, and undoes itself (purge, then the
test's own logs and the system user) whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra
import yaml

from support.packages import (
    COMMANDS,
    DEB_SITELIB,
    SOCKET_PATH,
    STATE_PATHS,
    UNITS,
    VERSION,
    check_vm_files,
    run,
)

pytestmark = [pytest.mark.slow, pytest.mark.root]


def _dpkg_status(package: str) -> str:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _user_exists(name: str) -> bool:
    proc = subprocess.run(["getent", "passwd", name], capture_output=True, check=False)
    return proc.returncode == 0


AGENT_STANDIN = "0.0-logvm-test-standin"


def _agent_standin(base: Path) -> Path:
    """A stand-in for Qubes' ``qubes-core-agent`` (the .deb depends on it):
    a package that provides only the name, as no Qubes repository is here."""
    root = base / "qubes-core-agent"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: qubes-core-agent\n"
        f"Version: {AGENT_STANDIN}\n"
        "Architecture: all\n"
        "Maintainer: qubes-logvm tests <qubes-logvm@example.org>\n"
        "Description: test stand-in for the Qubes agent (name only)\n"
    )
    run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(base / "agent.deb")])
    return base / "agent.deb"


def _undo_install() -> None:
    """Leave the machine as before: purge, then our test data and user."""
    if _dpkg_status("qubes-logvm"):
        subprocess.run(["dpkg", "--purge", "qubes-logvm"], capture_output=True, check=False)
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "qubes-core-agent"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    if version == AGENT_STANDIN:
        subprocess.run(["dpkg", "--purge", "qubes-core-agent"], capture_output=True, check=False)
    for path in (*STATE_PATHS, Path("/run/qubes-logvm")):
        shutil.rmtree(path, ignore_errors=True)
    if _user_exists("qubes-logvm"):
        subprocess.run(["userdel", "qubes-logvm"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The .deb installed with dpkg -i (after the agent's stand-in, which
    dpkg requires: Depends); undone at the end of the module."""
    if os.geteuid() != 0:
        pytest.skip("dpkg -i needs root (CI runs as root)")
    busy = [str(p) for p in STATE_PATHS if p.exists()]
    if _dpkg_status("qubes-logvm") or _user_exists("qubes-logvm") or busy:
        pytest.skip(f"qubes-logvm already installed or has state here ({busy}); not touching it")
    try:
        if not _dpkg_status("qubes-core-agent"):
            run(["dpkg", "-i", str(_agent_standin(tmp_path_factory.mktemp("agent")))])
        run(["dpkg", "-i", str(deb)], timeout=120)
        yield deb
    finally:
        _undo_install()


@pytest.mark.timeout(120)
def test_deb_installed_files(installed: Path, local: testinfra.host.Host) -> None:
    assert local.package("qubes-logvm").is_installed
    assert local.package("qubes-logvm").version == VERSION
    check_vm_files(local, "", "/lib/systemd/system", DEB_SITELIB)
    for name in ("collector.yaml", "exporter.yaml", "rpc-config/logvm.Send"):
        path = f"/etc/qubes-logvm/{name}" if name.endswith(".yaml") else f"/etc/qubes/{name}"
        assert path in local.file("/var/lib/dpkg/info/qubes-logvm.conffiles").content_string


@pytest.mark.timeout(120)
def test_deb_installed_user_and_state(installed: Path, local: testinfra.host.Host) -> None:
    user = local.user("qubes-logvm")
    assert user.exists and 0 < user.uid < 1000 and user.gid < 1000
    assert user.home == "/var/lib/qubes-logvm"
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin")
    assert not user.password or user.password in ("!", "!*", "*")
    store = local.file("/var/lib/qubes-logvm")
    assert store.is_directory and (store.user, store.group, store.mode) == (
        "qubes-logvm",
        "qubes-logvm",
        0o750,
    )
    exporter = local.file("/var/lib/qubes-logvm-exporter")
    assert exporter.is_directory and (exporter.user, exporter.mode) == ("root", 0o700)


@pytest.mark.timeout(120)
def test_deb_installed_units(installed: Path, local: testinfra.host.Host) -> None:
    # Enabled by the package (deb-systemd-helper): each starts only where
    # its qvm-service flag exists, so enabling everywhere is harmless.
    wants = {
        "logvm-collector.socket": "sockets.target.wants",
        "logvm-collector.service": "multi-user.target.wants",
        "logvm-rotate.service": "multi-user.target.wants",
        "logvm-exporter.service": "multi-user.target.wants",
        "logvm-forward.service": "multi-user.target.wants",
    }
    for unit, target in wants.items():
        link = local.file(f"/etc/systemd/system/{target}/{unit}")
        assert link.is_symlink and os.readlink(link.path) == f"/lib/systemd/system/{unit}"
    # systemd's own checker, on the installed units with the installed
    # commands and user present (no systemd as PID 1 needed).
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(f"/lib/systemd/system/{u}" for u in UNITS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    problems = [line for line in proc.stderr.splitlines() if "logvm" in line]
    assert not problems, proc.stderr


@pytest.mark.timeout(120)
def test_deb_installed_python_is_the_systems(installed: Path) -> None:
    # The console scripts run Debian's /usr/bin/python3 on the installed
    # package and the distro's yaml/systemd/zstandard, nothing else.
    code = (
        "import qubes_logvm, yaml, zstandard, systemd.journal; "
        f"assert qubes_logvm.__file__.startswith({DEB_SITELIB!r}), qubes_logvm.__file__; "
        f"assert qubes_logvm.__version__ == {VERSION!r}"
    )
    run(["/usr/bin/python3", "-I", "-c", code], cwd="/")
    clean_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    for command in COMMANDS:
        out = run([f"/usr/bin/{command}", "--help"], env=clean_env, cwd="/")
        assert "usage" in out.lower()


@pytest.mark.timeout(120)
def test_deb_installed_default_configs_are_valid(installed: Path) -> None:
    # The shipped (all-commented) configs load with the installed loaders.
    code = (
        "from pathlib import Path\n"
        "from qubes_logvm.exporter.config import load_exporter_config\n"
        "load_exporter_config(Path('/etc/qubes-logvm/exporter.yaml'))\n"
        "from qubes_logvm.config.collector import load_collector_config\n"
        "load_collector_config(Path('/etc/qubes-logvm/collector.yaml'))\n"
    )
    run(["/usr/bin/python3", "-I", "-c", code], cwd="/")


# --------------------------------------------------------------------------
# End to end through the installed files
# --------------------------------------------------------------------------


@contextlib.contextmanager
def collector_as_systemd_would() -> Iterator[subprocess.Popen[bytes]]:
    """The installed collector, started the way logvm-collector.socket/.service do.

    Root creates the listening socket (0600 here: this machine has no group
    qubes, so the daemon warns that allowed_group is missing) and
    hands it over as fd 3 with LISTEN_FDS/LISTEN_PID; the daemon runs as the
    package's system user with the installed defaults (store, config).
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    Path(SOCKET_PATH).parent.mkdir(mode=0o755, exist_ok=True)
    Path(SOCKET_PATH).unlink(missing_ok=True)
    listener.bind(SOCKET_PATH)
    os.chmod(SOCKET_PATH, 0o600)
    listener.listen(64)
    fd = listener.fileno()
    # A tiny exec wrapper moves the socket to fd 3 and sets LISTEN_PID to
    # its own pid, which exec hands on to the daemon (as systemd does).
    wrapper = (
        "import os, sys; fd = int(sys.argv[1]); "
        "fd == 3 or (os.dup2(fd, 3), os.close(fd)); "
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
        "os.execv('/usr/bin/logvm-collector', ['/usr/bin/logvm-collector'])"
    )
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-I", "-c", wrapper, str(fd)],
        pass_fds=(fd,),
        user="qubes-logvm",
        group="qubes-logvm",
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd="/",
        stderr=subprocess.PIPE,
    )
    listener.close()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        Path(SOCKET_PATH).unlink(missing_ok=True)


def _as_logvm_user(*args: str, stdin: str | None = None) -> str:
    return run(["runuser", "-u", "qubes-logvm", "--", *args], cwd="/", input=stdin)


@pytest.mark.timeout(180)
def test_deb_end_to_end_through_installed_files(
    installed: Path,
    rpm_roots: dict[str, Path],
    tmp_path: Path,
) -> None:
    from support.qrexec import CLIENT_SCRIPT, Qube, World

    # The LogVM's one-time key setup, as its docs say: as the system user.
    out = _as_logvm_user("/usr/bin/logvm", "setup-keys")
    key = next(w for w in out.split() if w.startswith("logvm-vk1:"))
    # A world whose policy is the one the dom0 RPM installed, and whose
    # LogVM is this machine: the qrexec stand-in resolves the installed
    # /etc/qubes-rpc/logvm.Send (symlink) and /etc/qubes/rpc-config.
    world = World(tmp_path / "world", policy_dirs=[rpm_roots["dom0"] / "etc/qubes/policy.d"])
    world.qubes["sys-log"] = Qube(name="sys-log", root=Path("/"))
    world.add_qube("work")
    override = tmp_path / "exporter.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "qrexec_command": [str(CLIENT_SCRIPT), "@default", "logvm.Send"],
                "state_dir": str(tmp_path / "exporter-state"),
                "sources": {"journal": {"enabled": False}},
            }
        ),
        encoding="utf-8",
    )
    lines = ["hello from work", "second line", "escape \x1b[31m stays inert"]
    exporter_cmd = ["/usr/bin/logvm-exporter", "--config", "/etc/qubes-logvm/exporter.yaml"]
    with collector_as_systemd_would() as collector:
        exporter = subprocess.run(
            [*exporter_cmd, "--config", str(override), "--stdin", "-t", "e2e"],
            input="\n".join(lines) + "\n",
            env=world.client_env("work"),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        collector.send_signal(signal.SIGTERM)
        _, collector_err = collector.communicate(timeout=60)
        assert exporter.returncode == 0, f"{exporter.stderr}\ncollector: {collector_err!r}"
        assert collector.returncode == 0, collector_err
    decisions = world.calls()
    # dom0's policy (the installed one) sent @default to the LogVM.
    assert decisions and decisions[-1]["resolved_target"] == "sys-log", decisions
    shown = _as_logvm_user("/usr/bin/logvm", "show", "work")
    for line in lines[:2]:
        assert line in shown
    assert "\x1b" not in shown
    _as_logvm_user("/usr/bin/logvm", "verify", "--key", "-", stdin=key + "\n")
    # Everything in the store belongs to the system user, nothing to root.
    for path in Path("/var/lib/qubes-logvm").rglob("*"):
        assert path.owner() == "qubes-logvm", path


@pytest.mark.timeout(120)
def test_deb_purge_keeps_logs_removes_the_rest(
    installed: Path, local: testinfra.host.Host
) -> None:
    store = Path("/var/lib/qubes-logvm")
    marker = store / "qubes" / "work" / "00000001.log"
    if not marker.exists():
        # Stands for the logs the end-to-end run stored (data the user owns).
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("2026-01-01T00:00:00.000000Z L kept\n", encoding="utf-8")
    before = sorted(str(p) for p in store.rglob("*"))
    run(["dpkg", "--purge", "qubes-logvm"], timeout=120)
    assert not _dpkg_status("qubes-logvm")
    assert sorted(str(p) for p in store.rglob("*")) == before
    for path in (
        "/etc/qubes-rpc/logvm.Send",
        "/etc/qubes-logvm",
        "/etc/qubes/rpc-config/logvm.Send",
        "/lib/systemd/system/logvm-collector.service",
        "/etc/systemd/system/multi-user.target.wants/logvm-exporter.service",
        "/etc/systemd/system/sockets.target.wants/logvm-collector.socket",
        "/usr/lib/qubes-bind-dirs.d/40_qubes-logvm.conf",
        "/usr/bin/logvm",
        f"{DEB_SITELIB}/qubes_logvm",
        "/var/lib/qubes-logvm-exporter",
    ):
        assert not local.file(path).exists, path
