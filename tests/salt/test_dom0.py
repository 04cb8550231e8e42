"""The dom0 states (`qubesctl state.apply logvm`) against the fake qvm module.

For each test pillar: the qubes, prefs, features, tags and volume the states
ask for (the fake world after the run) and the rendered policy equal the
golden files; a second apply changes nothing; and the policy, evaluated by
the qrexec stand-in, allows and denies exactly the calls it should.
"""

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from qubes_logvm.exporter.config import Dom0Config, load_exporter_config
from support.fake_qvm.saltenv import REPO, SaltEnv, check_golden
from support.qrexec_eval import AccessDenied, evaluate, make_request
from support.qrexec_policy import QubeInfo, load_policy

CASES = [
    "defaults", "custom", "tags", "dispvm", "all", "forward", "forward_existing", "two_logvms",
]  # fmt: skip

# (source, service, requested target) -> where the call goes, or "deny".
EXPECTED: dict[str, dict[tuple[str, str, str], str]] = {
    # no source selected yet: nobody may send; the witness path works
    "defaults": {
        ("work", "logvm.Send", "@default"): "deny",
        ("sys-log", "logvm.Send", "@default"): "deny",
        ("sys-log", "logvm.Witness", "@default"): "dom0",
        ("sys-log", "logvm.Witness", "dom0"): "dom0",
        ("work", "logvm.Witness", "@default"): "deny",
    },
    # named sources only, renamed LogVM, witness in a qube
    "custom": {
        ("work", "logvm.Send", "@default"): "logbox",
        ("personal", "logvm.Send", "@default"): "logbox",
        ("sys-net", "logvm.Send", "@default"): "logbox",
        ("work", "logvm.Send", "logbox"): "deny",
        ("vault", "logvm.Send", "@default"): "deny",
        ("logbox", "logvm.Send", "@default"): "deny",
        ("logbox", "logvm.Witness", "@default"): "sys-audit",
        ("logbox", "logvm.Witness", "sys-audit"): "sys-audit",
        ("logbox", "logvm.Witness", "dom0"): "deny",
        ("sys-audit", "logvm.Witness", "@default"): "deny",
    },
    # exclusions by name and by tag beat a name and a tag selection
    "tags": {
        ("personal", "logvm.Send", "@default"): "sys-log",
        ("vault", "logvm.Send", "@default"): "deny",
        ("work", "logvm.Send", "@default"): "deny",
        ("untrusted", "logvm.Send", "@default"): "deny",
        ("sys-net", "logvm.Send", "@default"): "deny",
    },
    # a DispVM started after the apply inherits the tag; an older one does not
    "dispvm": {
        ("sys-firewall", "logvm.Send", "@default"): "sys-log",
        ("default-dvm", "logvm.Send", "@default"): "sys-log",
        ("disp77", "logvm.Send", "@default"): "sys-log",
        ("disp1234", "logvm.Send", "@default"): "deny",
        ("work", "logvm.Send", "@default"): "deny",
    },
    # everything but the exclusions and the LogVM itself
    "all": {
        ("work", "logvm.Send", "@default"): "sys-log",
        ("debian-12-xfce", "logvm.Send", "@default"): "sys-log",
        ("disp77", "logvm.Send", "@default"): "sys-log",
        ("sys-net", "logvm.Send", "@default"): "deny",
        ("vault", "logvm.Send", "@default"): "deny",
        ("sys-log", "logvm.Send", "@default"): "deny",
        ("work", "logvm.Send", "sys-log"): "deny",
    },
    # forwarding: only the LogVM may call logvm.Forward, only to the forwarder
    "forward": {
        ("sys-log", "logvm.Forward", "@default"): "sys-logfwd",
        ("sys-log", "logvm.Forward", "sys-net"): "deny",
        ("sys-log", "logvm.Forward", "sys-logfwd"): "deny",
        ("work", "logvm.Forward", "@default"): "deny",
        ("sys-logfwd", "logvm.Forward", "@default"): "deny",
        ("work", "logvm.Send", "@default"): "sys-log",
    },
    # two LogVMs: each source to exactly one, neither chosen by the sender
    "two_logvms": {
        ("work", "logvm.Send", "@default"): "sys-log",
        ("sys-firewall", "logvm.Send", "@default"): "sys-log",
        ("sys-net", "logvm.Send", "@default"): "sys-log-net",
        ("personal", "logvm.Send", "@default"): "sys-log-net",
        ("vault", "logvm.Send", "@default"): "deny",
        ("untrusted", "logvm.Send", "@default"): "deny",
        ("work", "logvm.Send", "sys-log-net"): "deny",
        ("sys-net", "logvm.Send", "sys-log"): "deny",
        ("sys-log", "logvm.Send", "@default"): "deny",
        ("sys-log-net", "logvm.Send", "@default"): "deny",
        ("sys-log", "logvm.Witness", "@default"): "dom0",
        ("sys-log-net", "logvm.Witness", "@default"): "dom0",
        ("sys-log-net", "logvm.Witness", "dom0"): "dom0",
        ("work", "logvm.Witness", "@default"): "deny",
    },
    "forward_existing": {
        ("sys-log", "logvm.Forward", "@default"): "sys-firewall",
        ("sys-firewall", "logvm.Forward", "@default"): "deny",
        ("work", "logvm.Forward", "@default"): "deny",
    },
}


def qube_infos(world: dict[str, Any]) -> dict[str, QubeInfo]:
    """The policy's view of the fake world, plus a DispVM started after the apply."""
    infos = {}
    for name, qube in world["qubes"].items():
        infos[name] = QubeInfo(
            name=name,
            type=qube["class"],
            tags=tuple(qube["tags"]),
            default_dispvm=qube["prefs"].get("default_dispvm"),
            template_for_dispvms=bool(qube["prefs"].get("template_for_dispvms")),
        )
    dvm = world["qubes"]["default-dvm"]
    # Qubes copies the disposable template's tags into a new DispVM.
    infos["disp77"] = QubeInfo("disp77", "DispVM", tuple(dvm["tags"]), default_dispvm=None)
    return infos


def decide(policy_dir: Path, infos: dict[str, QubeInfo], call: tuple[str, str, str]) -> str:
    source, service, target = call
    rules = load_policy([policy_dir])
    try:
        return evaluate(rules, make_request(service, "+", source, target, infos)).target
    except AccessDenied:
        return "deny"


def touched(world: dict[str, Any]) -> str:
    """The change log and the final state of every qube it names, as JSON."""
    names = sorted({change["qube"] for change in world["changes"]})
    qubes = {name: world["qubes"].get(name) for name in names}
    return json.dumps({"changes": world["changes"], "qubes": qubes}, indent=2) + "\n"


def policy_path(env: SaltEnv) -> Path:
    return env.root / "etc/qubes/policy.d/50-logvm.policy"


@pytest.mark.timeout(150)  # two applies of every dom0 state; slow on a loaded machine
@pytest.mark.parametrize("case", CASES)
def test_dom0_apply_matches_golden_and_is_idempotent(salt_env: SaltEnv, case: str) -> None:
    salt_env.pillar_file(case)
    first = salt_env.apply("logvm")
    assert first.returncode == 0, first.failed or first.output
    assert first.changed, "the first apply must change something"
    world = salt_env.load_world()
    check_golden(touched(world), f"{case}.world.json")
    check_golden(policy_path(salt_env).read_text(encoding="utf-8"), f"{case}.policy")

    second = salt_env.apply("logvm")
    assert second.returncode == 0, second.failed
    assert second.changed == {}
    assert salt_env.load_world() == world

    infos = qube_infos(world)
    got = {call: decide(policy_path(salt_env).parent, infos, call) for call in EXPECTED[case]}
    assert got == EXPECTED[case]
    assert_offline_dispvm(world)


def assert_offline_dispvm(world: dict[str, Any]) -> None:
    """The LogVM opens logs only in its own offline disposable template."""
    qubes = world["qubes"]
    logvms = [q for q in qubes.values() if "service.logvm-collector" in q["features"]]
    assert logvms
    for logvm in logvms:
        dvm = qubes[logvm["prefs"]["default_dispvm"]]
        assert dvm["prefs"]["template_for_dispvms"] is True
        assert dvm["prefs"]["netvm"] is None and dvm["prefs"]["default_dispvm"] is None
        assert dvm["template"] == logvm["template"]
        assert "service.logvm-exporter" not in dvm["features"]
        assert "service.logvm-exporter" not in logvm["features"]


@pytest.mark.timeout(30)
def test_rendered_policy_replaces_the_shipped_default() -> None:
    # The package ships qubes-rpc-policy/70-logvm.policy; Salt writes the same
    # name, so the rendered policy replaces it instead of adding rules to it.
    shipped = sorted(p.name for p in (REPO / "qubes-rpc-policy").glob("*.policy"))
    assert shipped == ["70-logvm.policy"]
    assert load_policy([REPO / "qubes-rpc-policy"])


@pytest.mark.timeout(60)
def test_pillar_edit_changes_only_what_it_names(salt_env: SaltEnv) -> None:
    salt_env.pillar_file("defaults")
    assert salt_env.apply("logvm").returncode == 0
    salt_env.pillar({"logvm": {"vm": {"memory": 800}, "sources": {"names": ["work"]}}})
    run = salt_env.apply("logvm")
    assert run.returncode == 0, run.failed
    assert run.changed == {
        "logvm-create-qube": {"qvm.prefs": {"memory": {"old": 600, "new": 800}}},
        "logvm-policy-file": run.changed["logvm-policy-file"],
        "logvm-sources-enable-work": {
            "qvm.service": {"logvm-exporter": {"old": None, "new": "1"}}
        },
    }
    assert "+logvm.Send     *   work" in run.changed["logvm-policy-file"]["diff"]


@pytest.mark.timeout(60)
def test_disk_grows_but_never_shrinks(salt_env: SaltEnv) -> None:
    salt_env.pillar({"logvm": {"vm": {"disk": "30G"}}})
    assert salt_env.apply("logvm").returncode == 0
    assert salt_env.load_world()["qubes"]["sys-log"]["volumes"]["private"] == 30 * 1024**3
    salt_env.pillar({"logvm": {"vm": {"disk": "10G"}}})
    run = salt_env.apply("logvm")
    assert run.returncode == 0, run.failed
    assert salt_env.load_world()["qubes"]["sys-log"]["volumes"]["private"] == 30 * 1024**3


@pytest.mark.timeout(90)
def test_verify_timer_is_enabled_scheduled_and_given_the_template(salt_env: SaltEnv) -> None:
    timer = "logvm-witness-verify.timer"
    wants = salt_env.root / "etc/systemd/user/timers.target.wants" / timer
    dropin = salt_env.root / f"etc/systemd/user/{timer}.d/50-logvm-schedule.conf"
    conf = salt_env.root / "etc/qubes-logvm/witness-verify.conf"
    salt_env.pillar({"logvm": {}})
    assert salt_env.apply("logvm").returncode == 0
    assert os.readlink(wants) == f"/usr/lib/systemd/user/{timer}"
    assert (REPO / "systemd/user" / timer).exists()
    assert "OnCalendar=\nOnCalendar=daily\n" in dropin.read_text(encoding="utf-8")
    assert "LOGVM_VERIFY_DISPVM=sys-log-dvm\n" in conf.read_text(encoding="utf-8")
    salt_env.pillar(
        {
            "logvm": {
                "verify": {
                    "enabled": False,
                    "schedule": "*-*-* 03:00",
                    "dispvm_template": "default-dvm",
                },
            }
        }
    )
    run = salt_env.apply("logvm")
    assert run.returncode == 0, run.failed
    assert not os.path.lexists(wants)
    assert "OnCalendar=*-*-* 03:00\n" in dropin.read_text(encoding="utf-8")
    assert "LOGVM_VERIFY_DISPVM=default-dvm\n" in conf.read_text(encoding="utf-8")
    salt_env.pillar({"logvm": {"verify": {"enabeld": True}}})
    bad = salt_env.apply("logvm")
    assert bad.returncode != 0 and "verify:enabeld" in bad.output


@pytest.mark.timeout(90)
def test_witness_gets_the_deployed_retention_policy(salt_env: SaltEnv) -> None:
    from qubes_logvm.config.storage_policy import max_age_for, quota_for
    from qubes_logvm.store.verify.policy import parse_policy

    salt_env.pillar(
        {
            "logvm": {
                "collector": {
                    "retention": {"max_age": {"default": "30d", "qubes": {"work": "90d"}}},
                    "quota": {"qubes": {"work": "2G"}},
                }
            }
        }
    )
    run = salt_env.apply("logvm")
    assert run.returncode == 0, run.failed
    path = salt_env.root / "etc/qubes-logvm/witness-policy/sys-log.json"
    policy = parse_policy(path.read_bytes())  # what verify --witness reads from the export
    assert max_age_for(policy, "personal") == 30 * 86400
    assert max_age_for(policy, "work") == 90 * 86400
    assert quota_for(policy, "work") == 2 << 30


@pytest.mark.timeout(120)
def test_dom0_exporter_configured_enabled_and_turned_off(salt_env: SaltEnv) -> None:
    commands = salt_env.base / "systemctl"
    system = {
        "dom0_exporter_restart_command": f"echo restart >> {commands}",
        "dom0_exporter_stop_command": f"echo stop >> {commands}",
    }
    dom0 = {
        "enabled": True,
        "qubes_logs": False,
        "filters": {"min_priority": "info", "identifiers": {"exclude": ["kernel"]}},
        "remove_dispvm_consoles": True,
    }
    sources = {"names": ["work"], "exclude": {"names": ["vault"], "tags": ["no-logs"]}}
    pillar = {"system": system, "dom0": dom0, "vm": {"name": "logbox"}, "sources": sources}
    salt_env.pillar({"logvm": pillar})
    first = salt_env.apply("logvm")
    assert first.returncode == 0, first.failed or first.output
    conf = salt_env.root / "etc/qubes-logvm/exporter-dom0.yaml"
    wants = (
        salt_env.root / "etc/systemd/system/multi-user.target.wants/logvm-exporter-dom0.service"
    )
    assert os.readlink(wants) == "/usr/lib/systemd/system/logvm-exporter-dom0.service"
    assert (REPO / "systemd/logvm-exporter-dom0.service").exists()
    unit = (REPO / "systemd/logvm-exporter-dom0.service").read_text(encoding="utf-8")
    assert "ConditionPathExists=/etc/qubes-logvm/exporter-dom0.yaml\n" in unit
    assert "--config /etc/qubes-logvm/exporter-dom0.yaml\n" in unit
    # What the dom0 exporter reads: the product's own loader accepts it. It is
    # comment lines and a JSON object (YAML too), read without PyYAML.
    text = conf.read_text(encoding="utf-8")
    assert yaml.safe_load(text) == json.loads(text[text.index("{") :])
    config = load_exporter_config(conf)
    assert config.dom0 == Dom0Config(
        enabled=True,
        logvm="logbox",
        qubes_logs=False,
        remove_dispvm_consoles=True,
        exclude=("untrusted", "vault"),  # by name, and by tag (resolved when applied)
    )
    assert config.journal.enabled and config.journal.min_priority == 6
    assert config.journal.identifiers.exclude == ("kernel",)
    assert config.files == () and not config.syslog.enabled
    assert commands.read_text() == "restart\n"

    again = salt_env.apply("logvm")
    assert again.returncode == 0 and again.changed == {}
    assert commands.read_text() == "restart\n"

    salt_env.pillar({"logvm": {"system": system, "vm": {"name": "logbox"}}})
    off = salt_env.apply("logvm")
    assert off.returncode == 0, off.failed
    assert not conf.exists() and not os.path.lexists(wants)
    assert commands.read_text() == "restart\nstop\n"
    assert salt_env.apply("logvm").changed == {}
    assert commands.read_text() == "restart\nstop\n"


@pytest.mark.timeout(150)
def test_each_logvm_gets_its_own_quota_and_witness_policy(salt_env: SaltEnv) -> None:
    from qubes_logvm.config.collector import parse_collector_config
    from qubes_logvm.config.storage_policy import quota_for
    from qubes_logvm.store.verify.policy import parse_policy

    pillar = salt_env.pillar_file("two_logvms")
    # no collector or dom0 exporter to (re)start here
    pillar["logvm"]["system"] = {
        key: "true"
        for key in (
            "reload_command",
            "dom0_exporter_restart_command",
            "dom0_exporter_stop_command",
        )
    }
    pillar["logvm"]["dom0"] = {"enabled": True}
    salt_env.pillar(pillar)
    assert salt_env.apply("logvm").returncode == 0
    # dom0's exporter delivers each qube's files where its own logs go
    dom0 = load_exporter_config(salt_env.root / "etc/qubes-logvm/exporter-dom0.yaml").dom0
    assert dom0.logvm == "sys-log"
    assert dict(dom0.routes) == {"personal": "sys-log-net", "sys-net": "sys-log-net"}
    policies = salt_env.root / "etc/qubes-logvm/witness-policy"
    assert quota_for(parse_policy((policies / "sys-log.json").read_bytes()), "sys-net") == 1 << 30
    net = parse_policy((policies / "sys-log-net.json").read_bytes())
    assert quota_for(net, "sys-net") == 5 << 30
    # logvm.clean undoes both LogVMs (keeping their qubes and logs)
    assert salt_env.apply("logvm.clean").returncode == 0
    qubes = salt_env.load_world()["qubes"]
    for name in ("sys-log", "sys-log-net"):
        assert qubes[name]["features"] == {} and qubes[name]["prefs"]["autostart"] is False
        assert not (policies / f"{name}.json").exists()
    # in the second LogVM, logvm.collector renders its own limits
    salt_env.configure("sys-log-net")
    (salt_env.base / "cache/grains.cache.p").unlink()  # another minion now: grain id
    run = salt_env.apply("logvm.collector")
    assert run.returncode == 0, run.failed or run.output
    override = salt_env.root / "rw/config/qubes-logvm/collector.yaml"
    limits = parse_collector_config(yaml.safe_load(override.read_text(encoding="utf-8")))
    assert quota_for(limits.retention, "personal") == 5 << 30
