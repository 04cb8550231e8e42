"""The template and LogVM states applied for real into a scratch root.

The files they install are checked with pytest-testinfra (local backend) and
read back with the product's own config loaders; the LogVM's limits reload a
running collector, which then enforces an edited quota; ``logvm.clean``
undoes everything but the stored logs.
"""

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml
from collector.helpers import Collector, make_store, wait_for

from qubes_logvm.config.collector import parse_collector_config
from qubes_logvm.config.schema import deep_merge, load_yaml_files
from qubes_logvm.config.storage_policy import class_of, quota_for
from qubes_logvm.exporter.config import parse_exporter_config
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.usage import usage
from qubes_logvm.store.verify import verify_store
from qubes_logvm.store.writer import Store
from support.fake_qvm.saltenv import FORMULA, PILLARS, SaltEnv
from support.segments import sample_lines, write_segment

HOST = testinfra.get_host("local://")
LIMIT_KEYS = (
    "max_connections",
    "max_connections_per_qube",
    "rate_limit",
    "segment",
    "classes",
    "quota",
    "global",
    "retention",
)


def settings(pillar: dict[str, Any]) -> dict[str, Any]:
    """defaults.yaml merged with a pillar, as map.jinja does."""
    defaults = yaml.safe_load((FORMULA / "logvm/defaults.yaml").read_text())["logvm"]
    return deep_merge(defaults, pillar.get("logvm", {}))


def load_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def check_managed(path: Path) -> None:
    """A config file as Salt installs it: root-owned, 0644, marked as managed."""
    f = HOST.file(str(path))
    assert f.exists and f.is_file
    assert f.user == "root" and f.mode == 0o644
    assert f.contains("Managed by Salt")


@pytest.mark.timeout(90)
def test_template_state_installs_configs_the_programs_accept(salt_env: SaltEnv) -> None:
    salt_env.configure("fedora-40-xfce")
    pillar = salt_env.pillar_file("custom")
    run = salt_env.apply("logvm.template")
    assert run.returncode == 0, run.failed or run.output
    etc = salt_env.root / "etc/qubes-logvm"
    check_managed(etc / "exporter.yaml")
    check_managed(etc / "collector.yaml")
    want = settings(pillar)
    assert load_file(etc / "exporter.yaml") == want["exporter"]
    witness = {"target": "sys-audit", "interval_seconds": 5}
    assert load_file(etc / "collector.yaml") == {**want["collector"], "witness": witness}

    exporter = parse_exporter_config(load_file(etc / "exporter.yaml"))
    assert exporter.qrexec_command == ("qrexec-client-vm", "@default", "logvm.Send")
    collector = parse_collector_config(load_file(etc / "collector.yaml"))
    assert quota_for(collector.retention, "work") == 2 << 30
    assert quota_for(collector.retention, "sys-firewall") == 1 << 30  # class service
    assert class_of(collector.retention, "debian-12-xfce") == "template"
    assert collector.rate_for("sys-net").lines_per_second == 5000
    assert collector.witness.target == "sys-audit"

    again = salt_env.apply("logvm.template")
    assert again.returncode == 0 and again.changed == {}


@pytest.mark.timeout(90)
def test_logvm_state_writes_limits_and_reloads_only_on_change(salt_env: SaltEnv) -> None:
    salt_env.configure("sys-log")
    reloads = salt_env.base / "reloads"
    pillar = yaml.safe_load((PILLARS / "custom.yaml").read_text())
    pillar["logvm"]["vm"]["name"] = "sys-log"
    pillar["logvm"]["system"] = {"reload_command": f"echo reload >> {reloads}"}
    salt_env.pillar(pillar)
    assert salt_env.apply("logvm.collector").returncode == 0
    override = salt_env.root / "rw/config/qubes-logvm/collector.yaml"
    check_managed(override)
    want = settings(pillar)["collector"]
    assert load_file(override) == {key: want[key] for key in LIMIT_KEYS}
    assert reloads.read_text() == "reload\n"

    assert salt_env.apply("logvm.collector").changed == {}
    assert reloads.read_text() == "reload\n"

    edited = copy.deepcopy(pillar)
    edited["logvm"]["collector"]["quota"]["qubes"]["work"] = "3G"
    salt_env.pillar(edited)
    run = salt_env.apply("logvm.collector")
    assert set(run.changed) == {"logvm-collector-limits", "logvm-collector-reload"}
    assert reloads.read_text() == "reload\nreload\n"
    # the LogVM's view: the template's file with the override merged over it
    merged = load_yaml_files(salt_env.root / "nonexistent.yaml", override)
    assert quota_for(parse_collector_config(merged).retention, "work") == 3 << 30


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quota_edit_reapplied_is_enforced_by_running_collector(salt_env: SaltEnv) -> None:
    # The loop a user relies on: edit a quota in pillar, re-apply logvm.collector,
    # and the running collector (reloaded by the state) enforces it.
    salt_env.configure("sys-log")
    pidfile = salt_env.base / "collector.pid"
    override = salt_env.root / "rw/config/qubes-logvm/collector.yaml"
    limits: dict[str, Any] = {
        "segment": {"max_bytes": "32K"},
        "quota": {"default": "2M"},
        "global": {"keep_free": 0},
    }
    reload_command = f"test ! -e {pidfile} || kill -HUP $(cat {pidfile})"
    system = {"reload_command": reload_command}
    salt_env.pillar({"logvm": {"system": system, "collector": limits}})
    assert salt_env.apply("logvm.collector").returncode == 0

    (salt_env.base / "collector").mkdir()
    collector = Collector(salt_env.base / "collector")
    collector.config_path = override
    collector.vkey = make_store(collector.store)
    store = Store(collector.store)
    for i in range(20):
        write_segment(store, "work", sample_lines(300, f"seg{i}"))  # about 1.1 MiB charged
    store.close()
    try:
        collector.start()
        pidfile.write_text(str(collector.pid))
        layout = StoreLayout(collector.store)
        assert usage(layout, "work") > 256 * 1024  # within 2M: nothing deleted

        limits["quota"] = {"default": "2M", "qubes": {"work": "256K"}}
        salt_env.pillar(
            {"logvm": {"system": {"reload_command": reload_command}, "collector": limits}}
        )
        run = salt_env.apply("logvm.collector")
        assert run.returncode == 0, run.failed
        assert "logvm-collector-reload" in run.changed
        assert wait_for(lambda: usage(layout, "work") <= 256 * 1024, 30)
        assert collector.stop() == 0
    finally:
        collector.kill()
    assert [str(e) for e in verify_store(collector.store, collector.vkey).errors] == []
    assert layout.tombstones("work").exists()


@pytest.mark.timeout(90)
def test_clean_in_dom0_keeps_the_logvm_and_its_logs(salt_env: SaltEnv) -> None:
    salt_env.pillar_file("dispvm")
    assert salt_env.apply("logvm").returncode == 0
    run = salt_env.apply("logvm.clean")
    assert run.returncode == 0, run.failed
    qubes = salt_env.load_world()["qubes"]
    for name in ("sys-firewall", "default-dvm"):
        assert "service.logvm-exporter" not in qubes[name]["features"]
    assert qubes["default-dvm"]["tags"] == []
    logvm = qubes["sys-log"]
    assert logvm["features"] == {}
    assert logvm["prefs"]["autostart"] is False
    assert logvm["tags"] == ["created-by-dom0"]
    assert logvm["volumes"]["private"] == 20 << 30  # the store's volume stays
    assert logvm["prefs"].get("default_dispvm") in (None, "*default*")
    assert "sys-log-dvm" not in qubes  # the formula's offline DVM template is gone
    for wrote in ("etc/systemd/user/timers.target.wants/logvm-witness-verify.timer",
                  "etc/qubes-logvm/witness-verify.conf"):  # fmt: skip
        assert not HOST.file(str(salt_env.root / wrote)).exists
    assert not HOST.file(str(salt_env.root / "etc/qubes/policy.d/50-logvm.policy")).exists
    witness = HOST.file(str(salt_env.root / "var/lib/qubes-logvm-witness"))
    assert witness.is_directory and witness.mode == 0o770  # checkpoints are kept
    assert salt_env.apply("logvm.clean").changed == {}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("minion", ["sys-log", "debian-12-xfce"])
def test_clean_in_qubes_removes_config_but_not_logs(salt_env: SaltEnv, minion: str) -> None:
    salt_env.configure(minion)
    reloads = salt_env.base / "reloads"
    salt_env.pillar({"logvm": {"system": {"reload_command": f"echo reload >> {reloads}"}}})
    sls = "logvm.collector" if minion == "sys-log" else "logvm.template"
    assert salt_env.apply(sls).returncode == 0
    store = salt_env.root / "rw/bind-dirs/var/lib/qubes-logvm/work"
    store.mkdir(parents=True)
    (store / "segment").write_text("a log line\n")
    run = salt_env.apply("logvm.clean")
    assert run.returncode == 0, run.failed
    assert salt_env.written() == ["rw/bind-dirs/var/lib/qubes-logvm/work/segment"]
    if minion == "sys-log":
        assert reloads.read_text() == "reload\nreload\n"
    assert salt_env.apply("logvm.clean").changed == {}
    assert os.path.exists(store / "segment")
