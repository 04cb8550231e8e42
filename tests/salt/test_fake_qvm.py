"""The fake qvm state module fails where the real one fails, ignores or flaps.

Each case is a state the real qubes-mgmt-salt-dom0-qvm module would reject,
silently ignore (a misspelled key "succeeds" and does nothing) or report as
a change on every run (a quoted number, an unquoted feature value). The fake
must fail it, name the problem, and leave its world untouched.
"""

import pytest

from support.fake_qvm.saltenv import SaltEnv

REJECTED = [
    # qvm.vm's own check: an action keyword it does not know
    (
        "qvm.vm:\n    - name: work\n    - preferences:\n      - memory: 400",
        "Unknown action keyword",
    ),
    # misspelled pref: the real module drops it silently
    ("qvm.prefs:\n    - name: work\n    - memroy: 400", "unknown key 'memroy'"),
    # underscore spelling the real parser does not alias
    ("qvm.prefs:\n    - name: work\n    - provides_network: true", "unknown key"),
    # a quoted number reaches qubesd as text and flaps
    ("qvm.prefs:\n    - name: work\n    - memory: '400'", "unquoted integer"),
    ("qvm.prefs:\n    - name: work\n    - autostart: 'yes'", "expected true/false"),
    ("qvm.prefs:\n    - name: work\n    - netvm: work", "does not provide network"),
    ("qvm.prefs:\n    - name: nosuch\n    - memory: 400", "does not exist"),
    # an unquoted feature value is stored as text and reports a change every run
    ("qvm.features:\n    - name: work\n    - set:\n      - foo: 512", "is not a string"),
    ("qvm.features:\n    - name: work\n    - enabled:\n      - foo", "unknown key 'enabled'"),
    ("qvm.features:\n    - name: work", "no action"),
    ("qvm.service:\n    - name: work\n    - enable: logvm-exporter", "expected a non-empty list"),
    ("qvm.tags:\n    - name: work\n    - add:\n      - 'bad tag'", "bad name"),
    # qvm.vm action values: a bare item, or a mapping instead of a list
    ("qvm.vm:\n    - name: work\n    - prefs:\n      - memory", "bare item"),
    ("qvm.vm:\n    - name: work\n    - prefs:\n        memory: 400", "expected a list"),
    # qvm.create ignores unknown keys and flags: 'memory' is 'mem' there
    ("qvm.present:\n    - name: new\n    - label: red\n    - memory: 400", "unknown key 'memory'"),
    ("qvm.present:\n    - name: new\n    - label: red\n    - flags:\n      - internal", "flag"),
    ("qvm.present:\n    - name: new\n    - template: work\n    - label: red", "not a template"),
    ("qvm.present:\n    - name: new", "a valid label is required"),
    # functions the real module has but the fake does not model
    ("qvm.start:\n    - name: work", "not modelled"),
    ("qvm.vm:\n    - name: work\n    - start: []", "not modelled"),
]


@pytest.mark.timeout(60)
def test_fake_rejects_what_real_module_would_not_do(salt_env: SaltEnv) -> None:
    # All cases in one salt-call (independent states): each must fail alone.
    before = salt_env.load_world()
    salt_env.pillar({})
    salt_env.sls(
        "case", "".join(f"case-{i}:\n  {state}\n" for i, (state, _) in enumerate(REJECTED))
    )
    run = salt_env.apply("case")
    assert run.returncode != 0
    comments = {sid: st["comment"] for sid, st in run.states.items()}
    for i, (state, message) in enumerate(REJECTED):
        assert run.states[f"case-{i}"]["result"] is False, state
        assert message in comments[f"case-{i}"], (state, comments[f"case-{i}"])
    assert salt_env.load_world() == before


@pytest.mark.timeout(60)
def test_unknown_state_function_is_refused(salt_env: SaltEnv) -> None:
    # The real module has no qvm.nosuch: Salt itself refuses the state.
    salt_env.pillar({})
    salt_env.sls("case", "case:\n  qvm.nosuch:\n    - name: work\n")
    run = salt_env.apply("case")
    assert run.returncode != 0
    assert "qvm.nosuch" in run.output


@pytest.mark.timeout(60)
def test_fake_reports_no_change_when_state_holds(salt_env: SaltEnv) -> None:
    salt_env.pillar({})
    salt_env.sls(
        "case",
        """
case:
  qvm.vm:
    - name: box
    - present:
      - template: debian-12-xfce
      - label: green
      - mem: 500
    - prefs:
      - memory: 500
      - netvm: sys-firewall
      - default_dispvm: default-dvm
    - features:
      - set:
        - gui: '1'
    - service:
      - disable:
        - cups
    - tags:
      - add:
        - box
""",
    )
    first = salt_env.apply("case")
    assert first.returncode == 0, first.failed
    assert set(first.changed["case"]) == {
        "qvm.present",
        "qvm.prefs",
        "qvm.features",
        "qvm.service",
        "qvm.tags",
    }
    # memory came with qvm-create's mem: prefs does not set it again
    assert set(first.changed["case"]["qvm.prefs"]) == {"netvm", "default_dispvm"}
    box = salt_env.load_world()["qubes"]["box"]
    assert box["features"] == {"gui": "1", "service.cups": ""}
    assert box["tags"] == ["box", "created-by-dom0"]
    second = salt_env.apply("case")
    assert second.returncode == 0
    assert second.changed == {}


@pytest.mark.timeout(60)
def test_fake_test_mode_writes_nothing(salt_env: SaltEnv) -> None:
    before = salt_env.load_world()
    salt_env.pillar({})
    salt_env.sls("case", "case:\n  qvm.tags:\n    - name: work\n    - add:\n      - t1\n")
    run = salt_env.apply("case", test=True)
    assert run.states["case"]["result"] is None
    assert run.states["case"]["changes"] == {"old": [], "new": ["t1"]}
    assert salt_env.load_world() == before
