"""Packages: build both RPMs and the .deb, lint them, compare them with the
Makefile, install them and check what the install leaves behind.

One module so that the order is plain: build, lint, compare file lists,
RPMs into scratch roots, then a real ``dpkg -i`` on this machine (checked
with pytest-testinfra), an end-to-end run through the installed files, and
``dpkg --purge``. The machine-changing part refuses to run where qubes-logvm
is already installed or has state, and undoes itself (purge, then the test's
own logs and the system user) whatever happens.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
VERSION = (REPO / "version").read_text(encoding="ascii").strip()
SOCKET_PATH = "/run/qubes-logvm/logvm.Send.sock"
# Documentation goes through %doc / dh_installdocs, not the Makefile.
DOC_PREFIXES = ("/usr/share/doc/", "/usr/share/lintian/")

# A file list entry: (kind, mode, symlink target); lists are compared as
# {path: entry}, so a missing file, a wrong mode (a qrexec service without
# its exec bit) or a wrong link shows up as a difference.
Entry = tuple[str, int, str]


def run(
    cmd: list[str],
    *,
    cwd: Path | str | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> str:
    """Run a command, fail with its output when it fails, return stdout."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


def copy_tree(dest: Path) -> Path:
    """A copy of the working tree as the release tarball has it (make srpm-tarball)."""
    run(["make", "--no-print-directory", "srpm-tarball"], cwd=REPO)
    tarball = REPO / "build/pkg/rpmbuild/SOURCES" / f"qubes-logvm-{VERSION}.tar.gz"
    run(["tar", "-xzf", str(tarball), "-C", str(dest)])
    return dest / f"qubes-logvm-{VERSION}"


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "l"
    if stat.S_ISDIR(mode):
        return "d"
    return "f"


def staged_entries(root: Path) -> dict[str, Entry]:
    """Files and symlinks under a DESTDIR (directories left out)."""
    entries: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = "/" + str(path.relative_to(root))
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            entries[rel] = (_kind(st.st_mode), stat.S_IMODE(st.st_mode), target)
    return entries


def deb_entries(deb: Path) -> dict[str, Entry]:
    """Files and symlinks of a .deb (from its data tarball), docs left out."""
    entries: dict[str, Entry] = {}
    proc = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True, timeout=60
    )
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        for member in tar.getmembers():
            path = "/" + member.name.removeprefix("./")
            if member.isdir() or path.startswith(DOC_PREFIXES):
                continue
            kind = "l" if member.issym() else "f"
            entries[path] = (kind, member.mode & 0o7777, member.linkname if member.issym() else "")
    return entries


def rpm_entries(rpm: Path) -> dict[str, tuple[str, int, str, str, str]]:
    """Every entry of an RPM: path -> (kind, mode, link, user, group)."""
    fmt = "[%{FILENAMES}\\t%{FILEMODES}\\t%{FILELINKTOS}\\t%{FILEUSERNAME}\\t%{FILEGROUPNAME}\\n]"
    out = run(["rpm", "-qp", "--qf", fmt, str(rpm)])
    entries = {}
    for line in out.splitlines():
        path, mode, link, user, group = line.split("\t")
        mode_i = int(mode)
        entries[path] = (_kind(mode_i), stat.S_IMODE(mode_i), link, user, group)
    return entries


def without_docs(entries: dict[str, Entry]) -> dict[str, Entry]:
    return {p: e for p, e in entries.items() if not p.startswith(DOC_PREFIXES)}


def rpm_files(rpm: Path) -> dict[str, Entry]:
    """An RPM's files and symlinks (no directories, no docs) as staged entries."""
    return without_docs(
        {p: (k, m, link) for p, (k, m, link, _u, _g) in rpm_entries(rpm).items() if k != "d"}
    )


UNITS = (
    "logvm-collector.socket",
    "logvm-collector.service",
    "logvm-rotate.service",
    "logvm-exporter.service",
)
GATES = {
    "logvm-collector.socket": "logvm-collector",
    "logvm-collector.service": "logvm-collector",
    "logvm-rotate.service": "logvm-collector",
    "logvm-exporter.service": "logvm-exporter",
}
COMMANDS = ("logvm", "logvm-collector", "logvm-exporter", "logvm-rotate", "logvm-witness")
DEB_SITELIB = "/usr/lib/python3/dist-packages"
# The arguments debian/rules gives install-vm (bookworm keeps units in /lib).
DEBIAN_INSTALL_ARGS = (
    "PREFIX=/usr",
    "PYTHON=/usr/bin/python3",
    "UNITDIR=/lib/systemd/system",
    "PRESETDIR=/lib/systemd/system-preset",
)
STATE_PATHS = (Path("/var/lib/qubes-logvm"), Path("/var/lib/qubes-logvm-exporter"))


# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the working tree, so that builds never write into the checkout."""
    return copy_tree(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def deb(tree: Path) -> Path:
    run(["make", "--no-print-directory", "deb"], cwd=tree)
    return tree / "dist" / f"qubes-logvm_{VERSION}_all.deb"


@pytest.fixture(scope="module")
def rpms(tree: Path) -> dict[str, Path]:
    run(["make", "--no-print-directory", "rpm"], cwd=tree)
    return {
        "vm": tree / "dist" / f"qubes-logvm-{VERSION}-1.noarch.rpm",
        "dom0": tree / "dist" / f"qubes-logvm-dom0-{VERSION}-1.noarch.rpm",
    }


def _stage(tree: Path, base: Path, target: str, *args: str) -> Path:
    dest = base / target
    run(["make", "--no-print-directory", target, f"DESTDIR={dest}", *args], cwd=tree)
    return dest


@pytest.mark.timeout(30)
def test_versions_agree() -> None:
    changelog = (REPO / "debian/changelog").read_text(encoding="utf-8").splitlines()[0]
    assert re.match(rf"qubes-logvm \({re.escape(VERSION)}\) ", changelog)
    assert (REPO / "python/qubes_logvm/VERSION").read_text().strip() == VERSION


@pytest.mark.timeout(300)
def test_deb_is_lintian_clean(deb: Path) -> None:
    # Zero errors and warnings; every remaining one is overridden with its
    # reason in debian/qubes-logvm.lintian-overrides.
    out = run(["lintian", "--fail-on", "error,warning", "--info", str(deb)], timeout=240)
    assert not [line for line in out.splitlines() if line[:2] in ("E:", "W:")], out


@pytest.mark.timeout(300)
def test_rpms_are_rpmlint_clean(rpms: dict[str, Path]) -> None:
    # Filters, each with its reason: rpm_spec/qubes-logvm.rpmlintrc.
    rc = REPO / "rpm_spec/qubes-logvm.rpmlintrc"
    out = run(["rpmlint", "-r", str(rc), *map(str, rpms.values())], timeout=240)
    assert "0 errors, 0 warnings" in out, out


# --------------------------------------------------------------------------
# File lists: each package holds exactly what the Makefile installs
# --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_deb_holds_what_install_vm_installs(
    tree: Path, deb: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    staged = _stage(tree, tmp_path_factory.mktemp("deb"), "install-vm", *DEBIAN_INSTALL_ARGS)
    assert deb_entries(deb) == without_docs(staged_entries(staged))


@pytest.mark.timeout(120)
def test_vm_rpm_holds_what_install_vm_installs(
    tree: Path, rpms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    staged = _stage(tree, tmp_path_factory.mktemp("rpmvm"), "install-vm")
    assert rpm_files(rpms["vm"]) == without_docs(staged_entries(staged))


@pytest.mark.timeout(120)
def test_dom0_rpm_holds_what_install_dom0_installs(
    tree: Path, rpms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    staged = _stage(tree, tmp_path_factory.mktemp("rpmdom0"), "install-dom0")
    assert rpm_files(rpms["dom0"]) == without_docs(staged_entries(staged))
    # dom0 gets the pure core and the witness only: nothing that needs
    # yaml, systemd or zstandard, no daemon that is not meant to run there.
    files = rpm_files(rpms["dom0"])
    modules = {p.split("/qubes_logvm/")[1].split("/")[0] for p in files if "/qubes_logvm/" in p}
    assert modules <= {"__init__.py", "VERSION", "py.typed", "core", "witness", "witness.py"}
    assert [p for p in files if p.startswith("/usr/bin/")] == ["/usr/bin/logvm-witness"]


@pytest.mark.timeout(60)
def test_rpm_metadata(rpms: dict[str, Path]) -> None:
    entries = rpm_entries(rpms["dom0"])
    policies = [p for p in entries if p.startswith("/etc/qubes/policy.d/")]
    assert policies, "the dom0 RPM ships no policy"
    for path in policies:
        assert re.fullmatch(r"/etc/qubes/policy.d/[0-9]{2}-[a-z0-9-]+\.policy", path)
        assert entries[path][1] == 0o664 and entries[path][3:] == ("root", "qubes")
    assert entries["/var/lib/qubes-logvm-witness"][1:2] == (0o770,)
    for pkg in rpms.values():
        configs = run(["rpm", "-qp", "--configfiles", str(pkg)]).split()
        assert configs and all(c.startswith("/etc/") for c in configs)
        # noreplace: the admin's (or Salt's) edits survive upgrades.
        flags = run(["rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", str(pkg)])
        for line in flags.splitlines():
            path, _, fflags = line.partition(" ")
            if path in configs:
                assert "n" in fflags, line
    requires = run(["rpm", "-qp", "--requires", str(rpms["vm"])])
    for dep in ("python3-pyyaml", "python3-systemd", "python3-zstandard"):
        assert dep in requires
    scripts = run(["rpm", "-qp", "--scripts", str(rpms["vm"])])
    assert "systemctl --no-reload preset" in scripts
    # The user first, then the directories it owns, then the units.
    order = [scripts.index(s) for s in ("systemd-sysusers", "systemd-tmpfiles", "preset")]
    assert order == sorted(order), scripts


@pytest.mark.timeout(60)
def test_deb_maintainer_scripts(deb: Path, tmp_path: Path) -> None:
    run(["dpkg-deb", "-e", str(deb), str(tmp_path / "DEBIAN")])
    postinst = (tmp_path / "DEBIAN/postinst").read_text(encoding="utf-8")
    steps = ("systemd-sysusers", "systemd-tmpfiles", "deb-systemd-helper enable", "py3compile")
    assert all(step in postinst for step in steps)
    order = [postinst.index(s) for s in steps[:3]]
    assert order == sorted(order), postinst
    postrm = (tmp_path / "DEBIAN/postrm").read_text(encoding="utf-8")
    assert "rm -rf /var/lib/qubes-logvm-exporter" in postrm
    assert not re.search(r"rm -[a-z]*r[a-z]* /var/lib/qubes-logvm(\s|$)", postrm)


# --------------------------------------------------------------------------
# RPMs installed into scratch roots
# --------------------------------------------------------------------------


def _rpm_root(base: Path, rpm: Path) -> Path:
    root = base / rpm.name.split("-0")[0]
    root.mkdir()
    options = ["--root", str(root), "--dbpath", "/var/lib/rpm", "--nodeps", "--noscripts"]
    run(["rpm", "-i", *options, str(rpm)])
    return root


@pytest.fixture(scope="module")
def rpm_roots(rpms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rpmroot")
    return {name: _rpm_root(base, rpm) for name, rpm in rpms.items()}


@pytest.fixture(scope="module")
def local() -> testinfra.host.Host:
    return testinfra.get_host("local://")


def check_vm_files(host: testinfra.host.Host, root: str, unitdir: str, sitelib: str) -> None:
    """The VM side's files, links and modes under ``root`` ('' for this machine)."""
    send = host.file(f"{root}/etc/qubes-rpc/logvm.Send")
    # A socket service: the link dangles until the socket unit runs, so
    # read the link itself (testinfra's linked_to resolves it).
    assert send.is_symlink and os.readlink(send.path) == SOCKET_PATH
    for command in COMMANDS:
        binary = host.file(f"{root}/usr/bin/{command}")
        assert binary.is_file and binary.mode == 0o755 and binary.user == "root"
        assert binary.content_string.startswith("#!/usr/bin/python3")
    for unit in UNITS:
        text = host.file(f"{root}{unitdir}/{unit}").content_string
        assert f"ConditionPathExists=/run/qubes-service/{GATES[unit]}\n" in text
        if unit in ("logvm-collector.service", "logvm-exporter.service"):
            # They run qrexec-client-vm, which needs /dev/xen: nothing may
            # hide it (ProtectClock=yes implies a device allow-list).
            directives = {line.split("=")[0] for line in text.splitlines() if "=" in line}
            hiding = {"PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"}
            assert not directives & hiding, unit
            assert "KillMode=mixed\n" in text
    socket = host.file(f"{root}{unitdir}/logvm-collector.socket").content_string
    assert f"ListenStream={SOCKET_PATH}\n" in socket and "SocketMode=0600\n" in socket
    collector = host.file(f"{root}{unitdir}/logvm-collector.service").content_string
    assert "User=qubes-logvm\n" in collector
    bind = host.file(f"{root}/usr/lib/qubes-bind-dirs.d/40_qubes-logvm.conf")
    assert bind.mode == 0o644
    assert "binds+=( '/var/lib/qubes-logvm' )" in bind.content_string
    assert "binds+=( '/var/lib/qubes-logvm-exporter' )" in bind.content_string
    rpc_config = host.file(f"{root}/etc/qubes/rpc-config/logvm.Send").content_string
    assert "skip-service-descriptor=false" in rpc_config
    for name in ("collector.yaml", "exporter.yaml"):
        assert host.file(f"{root}/etc/qubes-logvm/{name}").mode == 0o644
    assert host.file(f"{root}{sitelib}/qubes_logvm/__init__.py").is_file


@pytest.mark.timeout(60)
def test_vm_rpm_in_scratch_root(rpm_roots: dict[str, Path], local: testinfra.host.Host) -> None:
    check_vm_files(local, str(rpm_roots["vm"]), "/usr/lib/systemd/system", DEB_SITELIB)
    preset = local.file(f"{rpm_roots['vm']}/usr/lib/systemd/system-preset/75-qubes-logvm.preset")
    for unit in ("logvm-collector.socket", "logvm-rotate.service", "logvm-exporter.service"):
        assert f"enable {unit}" in preset.content_string


@pytest.mark.timeout(60)
def test_dom0_rpm_in_scratch_root(rpm_roots: dict[str, Path], local: testinfra.host.Host) -> None:
    root = rpm_roots["dom0"]
    service = local.file(f"{root}/etc/qubes-rpc/logvm.Witness")
    # qrexec ignores a service without its exec bit.
    assert service.is_file and service.mode == 0o755
    assert "exec /usr/bin/logvm-witness serve" in service.content_string
    assert local.file(f"{root}/usr/bin/logvm-witness").mode == 0o755
    for policy in (root / "etc/qubes/policy.d").glob("*.policy"):
        assert local.file(str(policy)).mode == 0o664
    assert (root / "srv/formulas/base/logvm-formula/logvm/init.sls").is_file()
    minion = yaml.safe_load((root / "etc/salt/minion.d/logvm.conf").read_text())
    assert minion == {"file_roots": {"base": ["/srv/formulas/base/logvm-formula"]}}
    # The dom0 subset is enough for the witness: it imports the installed
    # copy alone, with nothing from the source tree or this machine.
    sitelib = root / DEB_SITELIB.lstrip("/")
    code = (
        f"import sys; sys.path.insert(0, {str(sitelib)!r}); "
        "import qubes_logvm.witness as w; "
        f"assert w.__file__.startswith({str(sitelib)!r}), w.__file__"
    )
    run(["/usr/bin/python3", "-I", "-c", code])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(sitelib)}
    out = run([f"{root}/usr/bin/logvm-witness", "--help"], env=env)
    assert "serve" in out


# --------------------------------------------------------------------------
# The .deb installed on this machine (dpkg -i), then purged
# --------------------------------------------------------------------------


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


def _undo_install() -> None:
    """Leave the machine as before: purge, then our test data and user."""
    if _dpkg_status("qubes-logvm"):
        subprocess.run(["dpkg", "--purge", "qubes-logvm"], capture_output=True, check=False)
    for path in (*STATE_PATHS, Path("/run/qubes-logvm")):
        shutil.rmtree(path, ignore_errors=True)
    if _user_exists("qubes-logvm"):
        subprocess.run(["userdel", "qubes-logvm"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    """The .deb installed with dpkg -i; undone at the end of the module."""
    if os.geteuid() != 0:
        pytest.skip("dpkg -i needs root (CI runs as root)")
    busy = [str(p) for p in STATE_PATHS if p.exists()]
    if _dpkg_status("qubes-logvm") or _user_exists("qubes-logvm") or busy:
        pytest.skip(f"qubes-logvm already installed or has state here ({busy}); not touching it")
    try:
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
        "from qubes_logvm.config.exporter import load_exporter_config\n"
        "load_exporter_config(Path('/etc/qubes-logvm/exporter.yaml'))\n"
        "try:\n"
        "    from qubes_logvm.config.collector import load_collector_config\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    load_collector_config(Path('/etc/qubes-logvm/collector.yaml'))\n"
    )
    run(["/usr/bin/python3", "-I", "-c", code], cwd="/")


# --------------------------------------------------------------------------
# End to end through the installed files
# --------------------------------------------------------------------------


@contextlib.contextmanager
def collector_as_systemd_would() -> Iterator[subprocess.Popen[bytes]]:
    """The installed collector, started the way logvm-collector.socket/.service do.

    Root creates the listening socket (SocketMode=0600, owned by root) and
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
    from support.qrexec import CLIENT_SCRIPT, Qube, World  # type: ignore[import-not-found]

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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["collector", "exporter"])
def test_shipped_config_documents_real_keys(name: str) -> None:
    # The shipped files are all comments (built-in defaults apply); the
    # commented settings, uncommented, must be valid keys and values, so
    # the documentation in them cannot drift from the loaders.
    text = (REPO / "etc/qubes-logvm" / f"{name}.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text) is None
    # After the header (up to the first blank line), settings are "#key:"
    # or "#  nested:", prose is "# Words".
    body = text.split("\n\n", 1)[1]
    settings = [line[1:] for line in body.splitlines() if re.match(r"#(\S|  )", line)]
    data = yaml.safe_load("\n".join(settings))
    assert isinstance(data, dict) and len(data) > 3
    if name == "collector":
        from qubes_logvm.config.collector import parse_collector_config as parse
    else:
        from qubes_logvm.config.exporter import (  # type: ignore[assignment]
            parse_exporter_config as parse,
        )
    parse(data)
