"""Packages: build both RPMs and the .deb, lint them, compare each with what
the Makefile installs, and install the RPMs into scratch roots.

The machine-changing part (dpkg -i ... dpkg --purge) is test_installed.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import testinfra
import yaml

from support.packages import (
    DEBIAN_INSTALL_ARGS,
    REPO,
    RPM_SITELIB,
    VERSION,
    as_packaged,
    check_vm_files,
    copy_tree,
    deb_entries,
    rpm_entries,
    rpm_files,
    run,
    stage,
    staged_entries,
)

pytestmark = [pytest.mark.slow]


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
    # Fedora's settings (rpm_spec/rpmlint-fedora.toml) and filters, each
    # with its reason (rpm_spec/qubes-logvm.rpmlintrc).
    config = REPO / "rpm_spec/rpmlint-fedora.toml"
    rc = REPO / "rpm_spec/qubes-logvm.rpmlintrc"
    out = run(["rpmlint", "-c", str(config), "-r", str(rc), *map(str, rpms.values())], timeout=240)
    assert "0 errors, 0 warnings" in out, out


# --------------------------------------------------------------------------
# File lists: each package holds exactly what the Makefile installs
# --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_deb_holds_what_install_vm_installs(
    tree: Path, deb: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    staged = stage(tree, tmp_path_factory.mktemp("deb"), "install-vm", *DEBIAN_INSTALL_ARGS)
    assert deb_entries(deb) == as_packaged(staged_entries(staged))


@pytest.mark.timeout(120)
def test_vm_rpm_holds_what_install_vm_installs(
    tree: Path, rpms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    sitelib = f"PYTHON_SITELIB={RPM_SITELIB}"  # what the spec passes
    staged = stage(tree, tmp_path_factory.mktemp("rpmvm"), "install-vm", sitelib)
    assert rpm_files(rpms["vm"]) == as_packaged(staged_entries(staged))


@pytest.mark.timeout(120)
def test_dom0_rpm_holds_what_install_dom0_installs(
    tree: Path, rpms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    sitelib = f"PYTHON_SITELIB={RPM_SITELIB}"  # what the spec passes
    staged = stage(tree, tmp_path_factory.mktemp("rpmdom0"), "install-dom0", sitelib)
    assert rpm_files(rpms["dom0"]) == as_packaged(staged_entries(staged))
    # dom0 gets the pure core, the witness and dom0's exporter (with the
    # config schema it reads and the daemon helpers) only: no store, no
    # zstandard, no daemon that is not meant to run there.
    files = rpm_files(rpms["dom0"])
    ours = [p.split("/qubes_logvm/")[1] for p in files if "/qubes_logvm/" in p]
    top = {"__init__.py", "VERSION", "py.typed", "core", "witness", "exporter"}
    assert {p.split("/")[0] for p in ours} <= top | {"daemon_support.py", "config"}
    assert {p for p in ours if p.startswith("config/")} == {
        "config/__init__.py",
        "config/schema.py",
    }
    assert [p for p in files if p.startswith("/usr/bin/")] == [
        "/usr/bin/logvm-exporter",
        "/usr/bin/logvm-witness",
    ]
    assert [p for p in files if p.startswith("/usr/share/man/")] == [
        "/usr/share/man/man8/logvm-exporter.8.gz",
        "/usr/share/man/man8/logvm-witness.8.gz",
    ]
    units = [p for p in files if p.startswith("/usr/lib/systemd/system/")]
    assert units == ["/usr/lib/systemd/system/logvm-exporter-dom0.service"]


@pytest.mark.timeout(60)
def test_rpm_metadata(rpms: dict[str, Path]) -> None:
    entries = rpm_entries(rpms["dom0"])
    policies = [p for p in entries if p.startswith("/etc/qubes/policy.d/")]
    assert policies, "the dom0 RPM ships no policy"
    for path in policies:
        assert re.fullmatch(r"/etc/qubes/policy.d/[0-9]{2}-[a-z0-9-]+\.policy", path)
        assert entries[path][1] == 0o664 and entries[path][3:] == ("root", "qubes")
    assert entries["/var/lib/qubes-logvm-witness"][1:2] == (0o770,)
    # Everything else, and all of the VM package, belongs to root.
    special = {*policies, "/var/lib/qubes-logvm-witness"}
    vm_entries = rpm_entries(rpms["vm"])
    for path, entry in [*entries.items(), *vm_entries.items()]:
        if path not in special:
            assert entry[3:] == ("root", "root"), (path, entry)
    for pkg in rpms.values():
        configs = run(["rpm", "-qp", "--configfiles", str(pkg)]).split()
        assert configs and all(c.startswith("/etc/") for c in configs)
        # noreplace: the admin's (or Salt's) edits survive upgrades.
        flags = run(["rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", str(pkg)])
        for line in flags.splitlines():
            path, _, fflags = line.partition(" ")
            if path in configs:
                assert "n" in fflags, line
    requires = run(["rpm", "-qp", "--requires", str(rpms["vm"])]).splitlines()
    for dep in ("python3-pyyaml", "python3-systemd", "python3-zstandard", "qubes-core-agent"):
        assert dep in requires
    dom0_requires = run(["rpm", "-qp", "--requires", str(rpms["dom0"])]).splitlines()
    for dep in ("qubes-mgmt-salt-dom0-qvm", "qubes-core-qrexec-dom0"):
        assert dep in dom0_requires
    # dom0's exporter: the distribution's yaml and systemd bindings, never zstandard.
    assert {"python3-pyyaml", "python3-systemd"} <= set(dom0_requires)
    assert "python3-zstandard" not in dom0_requires
    dom0_scripts = run(["rpm", "-qp", "--scripts", str(rpms["dom0"])])
    assert "disable --now logvm-exporter-dom0.service" in dom0_scripts
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


@pytest.mark.timeout(60)
def test_vm_rpm_in_scratch_root(rpm_roots: dict[str, Path], local: testinfra.host.Host) -> None:
    check_vm_files(local, str(rpm_roots["vm"]), "/usr/lib/systemd/system", RPM_SITELIB)
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
    sitelib = root / RPM_SITELIB.lstrip("/")
    code = (
        f"import sys; sys.path.insert(0, {str(sitelib)!r}); "
        "import qubes_logvm.witness as w; "
        f"assert w.__file__.startswith({str(sitelib)!r}), w.__file__"
    )
    run(["/usr/bin/python3", "-I", "-c", code])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(sitelib)}
    out = run([f"{root}/usr/bin/logvm-witness", "--help"], env=env)
    assert "serve" in out
    # ... and for dom0's exporter, every module of it (lazy ones too), with
    # no store and no zstandard loaded; its command runs.
    code = (
        f"import sys, importlib, pkgutil; sys.path.insert(0, {str(sitelib)!r}); "
        "import qubes_logvm.exporter as e; "
        "walk = pkgutil.walk_packages(e.__path__, 'qubes_logvm.exporter.'); "
        "[importlib.import_module(m.name) for m in walk]; "
        f"assert e.__file__.startswith({str(sitelib)!r}), e.__file__; "
        "bad = [n for n in sys.modules if n.startswith(('qubes_logvm.store', 'zstandard'))]; "
        "assert not bad, bad"
    )
    run(["/usr/bin/python3", "-I", "-c", code])
    out = run([f"{root}/usr/bin/logvm-exporter", "--help"], env=env)
    assert "--config" in out
    unit = local.file(f"{root}/usr/lib/systemd/system/logvm-exporter-dom0.service")
    assert "ConditionPathExists=/etc/qubes-logvm/exporter-dom0.yaml" in unit.content_string


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
        from qubes_logvm.exporter.config import (  # type: ignore[assignment]
            parse_exporter_config as parse,
        )
    parse(data)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("unit", "most"),
    [
        # systemd's own exposure score (0 safe .. 10 unprotected) of the
        # packaged units: a guard against sandboxing being dropped. The
        # exporter stays higher by design (root minus capabilities, /dev/xen
        # visible, loopback syslog ports).
        ("logvm-collector.service", 1.5),
        ("logvm-rotate.service", 1.0),
        ("logvm-exporter.service", 2.5),
    ],
)
def test_unit_sandboxing_score(unit: str, most: float, rpm_roots: dict[str, Path]) -> None:
    path = rpm_roots["vm"] / "usr/lib/systemd/system" / unit
    out = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)])
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", out)
    assert match, out
    assert float(match.group(1)) <= most, out


def _python_files(rpm: Path) -> set[str]:
    """The site directories holding the RPM's Python files."""
    files = run(["rpm", "-qlp", str(rpm)]).splitlines()
    return {
        re.sub(r"/qubes_logvm/.*", "", f)
        for f in files
        if "/qubes_logvm/" in f and f.endswith(".py")
    }


@pytest.mark.timeout(60)
def test_rpms_install_python_where_fedora_reads_it(rpms: dict[str, Path]) -> None:
    for rpm in rpms.values():
        assert _python_files(rpm) == {RPM_SITELIB}, rpm.name
        requires = run(["rpm", "-qp", "--requires", str(rpm)]).splitlines()
        assert "python(abi) = 3.13" in requires, rpm.name


@pytest.mark.timeout(600)
def test_dom0_rpm_for_qubes_r42_targets_fedora_37(tree: Path, tmp_path: Path) -> None:
    copy = copy_tree(tmp_path)
    run(["make", "--no-print-directory", "rpm", "QUBES_RELEASE=4.2"], cwd=copy)
    dom0 = copy / "dist" / f"qubes-logvm-dom0-{VERSION}-1.noarch.rpm"
    assert _python_files(dom0) == {"/usr/lib/python3.11/site-packages"}
    requires = run(["rpm", "-qp", "--requires", str(dom0)]).splitlines()
    assert "python(abi) = 3.11" in requires


@pytest.mark.timeout(120)
def test_source_tarball_holds_tracked_files_only() -> None:
    stray = REPO / "logvm-test-stray-vk.txt"  # an untracked key lying in the checkout
    stray.write_text("logvm-vk1:secret\n")
    try:
        run(["make", "--no-print-directory", "srpm-tarball"], cwd=REPO)
    finally:
        stray.unlink()
    tarball = REPO / "build/pkg/rpmbuild/SOURCES" / f"qubes-logvm-{VERSION}.tar.gz"
    names = {n.split("/", 1)[1] for n in run(["tar", "-tzf", str(tarball)]).splitlines()}
    tracked = {p for p in run(["git", "ls-files"], cwd=REPO).splitlines() if (REPO / p).exists()}
    assert names == tracked


@pytest.mark.timeout(60)
def test_deb_depends_on_the_qubes_agent(deb: Path) -> None:
    depends = run(["dpkg-deb", "-f", str(deb), "Depends"])
    assert "qubes-core-agent" in [d.strip().split(" ")[0] for d in depends.split(",")]
