"""A wrong pillar fails the state, naming the key, before anything changes."""

from typing import Any

import pytest
import yaml

from support.fake_qvm.saltenv import FORMULA, SaltEnv

BAD: list[tuple[dict[str, Any], str]] = [
    # a typo at the top and deeper down
    ({"vmm": {"name": "x"}}, "logvm:vmm: unknown key"),
    ({"vm": {"memroy": 600}}, "logvm:vm:memroy: unknown key"),
    ({"collector": {"quota": {"defualt": "1G"}}}, "logvm:collector:quota:defualt: unknown key"),
    # bad sizes and durations
    (
        {"collector": {"quota": {"default": "512X"}}},
        "logvm:collector:quota:default: expected a size",
    ),
    ({"vm": {"disk": "big"}}, "logvm:vm:disk: expected a size"),
    (
        {"collector": {"retention": {"max_age": {"default": "7 days"}}}},
        "logvm:collector:retention:max_age:default: expected a duration",
    ),
    # unknown qube class, bad qube name as a map key
    (
        {"collector": {"quota": {"classes": {"netvm": "1G"}}}},
        "logvm:collector:quota:classes:netvm",
    ),
    (
        {"collector": {"quota": {"qubes": {"bad name": "1G"}}}},
        "logvm:collector:quota:qubes:bad name",
    ),
    # a quoted number and a quoted boolean (the qvm module would flap on them)
    ({"vm": {"memory": "600"}}, "logvm:vm:memory: expected a whole number"),
    ({"vm": {"autostart": "yes"}}, "logvm:vm:autostart: expected true or false"),
    ({"vm": {"label": "pink"}}, "logvm:vm:label: expected one of"),
    ({"sources": {"names": "work"}}, "logvm:sources:names: expected a list"),
    ({"sources": {"tags": ["bad tag"]}}, "logvm:sources:tags[0]: expected a tag"),
    (
        {"exporter": {"sources": {"files": [{"path": "/var/log/x", "tga": "x"}]}}},
        "logvm:exporter:sources:files[0]:tga: unknown key",
    ),
    (
        {"collector": {"compress": {"level": 40}}},
        "logvm:collector:compress:level: must be at most",
    ),
    # dom0 as a source: typed keys, and a switch with nothing to ship
    ({"dom0": {"enabled": "yes"}}, "logvm:dom0:enabled: expected true or false"),
    ({"dom0": {"filters": {"unit": {}}}}, "logvm:dom0:filters:unit: unknown key"),
    (
        {"dom0": {"enabled": True, "journal": False, "consoles": False, "qubes_logs": False}},
        "logvm:dom0:enabled: needs one of dom0:journal, dom0:consoles, dom0:qubes_logs",
    ),
    (
        {"dom0": {"consoles": False, "remove_dispvm_consoles": True}},
        "logvm:dom0:remove_dispvm_consoles: needs dom0:consoles",
    ),
    # further LogVMs: typed, their own qubes, each source routed once
    ({"logvms": {"x": {"sources": {"name": []}}}}, "logvm:logvms:x:sources:name: unknown key"),
    ({"logvms": {"x": {"quota": "lots"}}}, "logvm:logvms:x:quota: expected a size"),
    ({"logvms": {"sys-log": {}}}, "logvm:logvms:sys-log: a LogVM must be its own qube"),
    (
        {"sources": {"names": ["work"]}, "logvms": {"x": {"sources": {"names": ["work"]}}}},
        "logvm:logvms:x:sources:names: work is already routed by logvm:sources",
    ),
    (
        {"logvms": {"x": {"sources": {"names": ["nosuch"]}}}},
        "logvm:logvms:x:sources:names: no qube named",
    ),
    # checks across keys and against dom0's qubes
    ({"witness": "sys-log"}, "logvm:vm:name: the LogVM cannot be dom0 or its own witness"),
    ({"vm": {"maxmem": 100}}, "logvm:vm:maxmem: must be 0"),
    ({"sources": {"names": ["nosuch"]}}, 'logvm:sources:names: no qube named "nosuch"'),
    ({"vm": {"dispvm": {"name": "sys-log"}}}, "logvm:vm:dispvm:name: must differ"),
    (
        {"forward": {"enabled": True, "server": {"name": "logs.example.org", "address": "::1"}}},
        "logvm:forward:hostname: required when forward:enabled is true",
    ),
    # dom0's checks before anything changes: named qubes exist, and every
    # place that needs the package has its template in logvm:templates
    ({"witness": "nosuch-witness"}, "logvm:witness: no qube named 'nosuch-witness'"),
    ({"templates": ["nosuch-tpl"]}, "logvm:templates: no qube named 'nosuch-tpl'"),
    (
        {"sources": {"names": ["personal"]}},
        "source qube personal is based on fedora-40-xfce, which is not in logvm:templates",
    ),
    (
        {"vm": {"template": "fedora-40-xfce"}},
        "the LogVM sys-log is based on fedora-40-xfce, which is not in logvm:templates",
    ),
    (
        {"witness": "sys-audit"},
        "the witness sys-audit is based on fedora-40-xfce, which is not in logvm:templates",
    ),
]


@pytest.mark.timeout(120)
def test_bad_pillars_fail_while_rendering_naming_the_key(salt_env: SaltEnv) -> None:
    # All cases in one Salt process (state.show_sls with a pillar override).
    results = salt_env.render_many("logvm", [{"logvm": pillar} for pillar, _ in BAD])
    for (pillar, message), result in zip(BAD, results, strict=True):
        assert isinstance(result, list), f"{pillar} rendered"
        assert any(message in error for error in result), (message, result[0][:300])
    # and a good pillar renders in the same process
    assert isinstance(salt_env.render_many("logvm", [{}])[0], dict)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("pillar", "message"), [BAD[1], BAD[3], BAD[6], BAD[-3]])
def test_bad_pillar_fails_before_any_change(
    salt_env: SaltEnv, pillar: dict[str, Any], message: str
) -> None:
    before = salt_env.load_world()
    salt_env.pillar({"logvm": pillar})
    run = salt_env.apply("logvm")
    assert run.returncode != 0
    assert message in run.output
    assert run.states == {}, "nothing may run"
    assert salt_env.load_world() == before
    assert not any(salt_env.root.rglob("*.policy"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sls", ["logvm.template", "logvm.collector", "logvm.clean"])
def test_bad_pillar_fails_in_qubes_too(salt_env: SaltEnv, sls: str) -> None:
    salt_env.configure("sys-log" if sls == "logvm.collector" else "debian-12-xfce")
    salt_env.pillar({"logvm": {"collector": {"quota": {"classes": {"vpn": "1G"}}}}})
    run = salt_env.apply(sls)
    assert run.returncode != 0
    assert "logvm:collector:quota:classes:vpn: unknown qube class" in run.output
    assert salt_env.written() == []


@pytest.mark.timeout(60)
def test_pillar_logvm_must_be_a_mapping(salt_env: SaltEnv) -> None:
    salt_env.pillar({"logvm": ["sys-log"]})
    run = salt_env.apply("logvm")
    assert run.returncode != 0
    assert "pillar `logvm` must be a mapping" in run.output


def key_paths(node: Any, prefix: str = "") -> set[str]:
    """Dotted keys of the formula's settings (free-form maps count as leaves)."""
    free = {"rate_limit:qubes", "classes", "quota:classes", "quota:qubes", "max_age:classes"}
    free |= {"max_age:qubes"}
    paths = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not any(path.endswith(f) for f in free):
            paths |= key_paths(value, path + ":")
        else:
            paths.add(path)
    return paths


@pytest.mark.timeout(120)
def test_pillar_example_documents_every_key_and_renders(salt_env: SaltEnv) -> None:
    formula = FORMULA / "logvm"
    defaults = yaml.safe_load((formula / "defaults.yaml").read_text())
    example = yaml.safe_load((formula / "pillar.example").read_text())
    assert key_paths(example["logvm"]) == key_paths(defaults["logvm"])
    # As shipped, on the stock system of tests/salt/world.json; twice, the
    # second time changing nothing. (No systemd here to reload a collector.)
    example["logvm"]["system"]["reload_command"] = "true"
    salt_env.pillar(example)
    for minion, sls in (("dom0", "logvm"), ("debian-12-xfce", "logvm.template"),
                        ("sys-log", "logvm.collector")):  # fmt: skip
        salt_env.configure(minion)
        first = salt_env.apply(sls)
        assert first.returncode == 0, (sls, first.failed or first.output)
        assert first.changed, sls
        assert salt_env.apply(sls).changed == {}, sls
