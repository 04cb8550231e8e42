"""Shared helpers and constants of the packaging tests (test-only).

File lists are compared as ``{path: (kind, mode, link target)}``: a missing
file, a wrong mode (a qrexec service without its exec bit) or a wrong
symlink shows up as a difference, whatever tool produced the list.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import testinfra

REPO = Path(__file__).resolve().parents[2]
VERSION = (REPO / "version").read_text(encoding="ascii").strip()
SOCKET_PATH = "/run/qubes-logvm/logvm.Send.sock"
# Documentation goes through %doc / dh_installdocs, not the Makefile.
DOC_PREFIXES = ("/usr/share/doc/", "/usr/share/lintian/")
MAN_PREFIX = "/usr/share/man/"

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


def as_packaged(entries: dict[str, Entry]) -> dict[str, Entry]:
    """Staged entries as a package holds them: the Makefile installs manual
    pages plain, dh_compress and brp-compress gzip them."""
    return {
        (p + ".gz" if p.startswith(MAN_PREFIX) else p): e for p, e in without_docs(entries).items()
    }


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
    "logvm-forward.service",
)
GATES = {
    "logvm-collector.socket": "logvm-collector",
    "logvm-collector.service": "logvm-collector",
    "logvm-rotate.service": "logvm-collector",
    "logvm-exporter.service": "logvm-exporter",
    "logvm-forward.service": "logvm-forward",
}
COMMANDS = (
    "logvm",
    "logvm-collector",
    "logvm-exporter",
    "logvm-forward",
    "logvm-rotate",
    "logvm-send",
    "logvm-witness",
    "logvm-browser",
)
# Each command's manual page (section 1: for users, 8: daemons and dom0).
MAN_PAGES = {
    "logvm": "man1/logvm.1",
    "logvm-collector": "man8/logvm-collector.8",
    "logvm-exporter": "man8/logvm-exporter.8",
    "logvm-forward": "man8/logvm-forward.8",
    "logvm-rotate": "man8/logvm-rotate.8",
    "logvm-send": "man1/logvm-send.1",
    "logvm-witness": "man8/logvm-witness.8",
    "logvm-browser": "man1/logvm-browser.1",
}
DEB_SITELIB = "/usr/lib/python3/dist-packages"
#: Fedora's %{python3_sitelib} of what `make rpm` targets by default (Qubes
#: R4.3's dom0, Fedora 41 templates: python3.13).
RPM_SITELIB = "/usr/lib/python3.13/site-packages"
# The arguments debian/rules gives install-vm (bookworm keeps units in /lib).
DEBIAN_INSTALL_ARGS = (
    "PREFIX=/usr",
    "PYTHON=/usr/bin/python3",
    "UNITDIR=/lib/systemd/system",
    "PRESETDIR=/lib/systemd/system-preset",
    "ZSHCOMPDIR=/usr/share/zsh/vendor-completions",
)
STATE_PATHS = (
    Path("/var/lib/qubes-logvm"),
    Path("/var/lib/qubes-logvm-exporter"),
    Path("/var/lib/qubes-logvm-forward"),
)


def stage(tree: Path, base: Path, target: str, *args: str) -> Path:
    """Run a Makefile install target into ``base/target`` (a DESTDIR)."""
    dest = base / target
    run(["make", "--no-print-directory", target, f"DESTDIR={dest}", *args], cwd=tree)
    return dest


def check_vm_files(host: testinfra.host.Host, root: str, unitdir: str, sitelib: str) -> None:
    """The VM side's files, links and modes under ``root`` ('' for this machine)."""
    send = host.file(f"{root}/etc/qubes-rpc/logvm.Send")
    # A socket service: the link dangles until the socket unit runs, so
    # read the link itself (testinfra's linked_to resolves it).
    assert send.is_symlink and os.readlink(send.path) == SOCKET_PATH
    # A witness in a qube other than dom0: executable, state in $HOME.
    witness = host.file(f"{root}/etc/qubes-rpc/logvm.Witness")
    assert witness.is_file and witness.mode == 0o755
    assert "logvm-witness --dir" in witness.content_string
    for command in COMMANDS:
        binary = host.file(f"{root}/usr/bin/{command}")
        assert binary.is_file and binary.mode == 0o755 and binary.user == "root"
        assert binary.content_string.startswith("#!/usr/bin/python3")
        page = host.file(f"{root}{MAN_PREFIX}{MAN_PAGES[command]}.gz")
        assert page.is_file and page.mode == 0o644
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
    assert f"ListenStream={SOCKET_PATH}\n" in socket and "SocketMode=0660\n" in socket
    assert "SocketUser=root\n" in socket and "SocketGroup=qubes\n" in socket
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
