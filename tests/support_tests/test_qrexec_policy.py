"""The stand-in's policy parser and evaluator, on the shipped policy and synthetic ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.qrexec import DEFAULT_POLICY_DIR
from support.qrexec_eval import AccessDenied, evaluate, make_request, targets_for_ask
from support.qrexec_policy import (
    PolicyError,
    PolicySyntaxError,
    QubeInfo,
    Rule,
    UnsupportedByStandIn,
    load_policy,
    parse_policy_text,
    policy_files,
)

QUBES = {
    q.name: q
    for q in (
        QubeInfo("dom0", "AdminVM"),
        QubeInfo("sys-log"),
        QubeInfo("work", tags=("logged",), default_dispvm="dvm"),
        QubeInfo("vault", running=False),
        QubeInfo("fedora-40", "TemplateVM"),
        QubeInfo("disp1234", "DispVM"),
        QubeInfo("dvm", tags=("dvm-tag",), template_for_dispvms=True),
    )
}


def decide(rules: list[Rule], service: str, source: str, target: str, **kw: object) -> str:
    """'allow:TARGET' or 'deny' / 'deny-quiet' (no notification)."""
    name, _, arg = service.partition("+")
    try:
        request = make_request(name, "+" + arg, source, target, QUBES)
        return "allow:" + evaluate(rules, request, **kw).target  # type: ignore[arg-type]
    except AccessDenied as err:
        return "deny" if err.notify else "deny-quiet"


SHIPPED = load_policy([DEFAULT_POLICY_DIR])


@pytest.mark.parametrize(
    ("service", "source", "target", "expected"),
    [
        # an AppVM sends its logs the way the exporter does
        ("logvm.Send", "work", "@default", "allow:sys-log"),
        # DispVMs and templates are sources too
        ("logvm.Send", "disp1234", "@default", "allow:sys-log"),
        ("logvm.Send", "fedora-40", "@default", "allow:sys-log"),
        # an argument does not change the decision (argument column is *)
        ("logvm.Send+v2", "work", "@default", "allow:sys-log"),
        # the sender may not pick the LogVM itself, nor any other target
        ("logvm.Send", "work", "sys-log", "deny"),
        ("logvm.Send", "work", "dom0", "deny"),
        ("logvm.Send", "work", "@dispvm", "deny"),
        ("logvm.Send", "work", "@dispvm:dvm", "deny"),
        # a name that is no qube becomes @default (current qrexec: no probing)
        ("logvm.Send", "work", "no-such-qube", "allow:sys-log"),
        # the LogVM calling itself is refused without a notification
        ("logvm.Send", "sys-log", "@default", "deny-quiet"),
        ("logvm.Send", "sys-log", "sys-log", "deny-quiet"),
        # only the LogVM reaches the witness, by @default or by naming dom0
        ("logvm.Witness", "sys-log", "@default", "allow:dom0"),
        ("logvm.Witness", "sys-log", "dom0", "allow:dom0"),
        ("logvm.Witness", "sys-log", "@adminvm", "allow:dom0"),
        ("logvm.Witness", "work", "@default", "deny"),
        ("logvm.Witness", "work", "dom0", "deny"),
        ("logvm.Witness", "disp1234", "@adminvm", "deny"),
        ("logvm.Witness", "sys-log", "work", "deny"),
        # services the package does not own are left to other files
        ("qubes.Other", "work", "@default", "deny"),
    ],
)
def test_shipped_policy(service: str, source: str, target: str, expected: str) -> None:
    assert decide(SHIPPED, service, source, target) == expected


def test_shipped_policy_without_logvm_qube_refuses() -> None:
    # before Salt creates sys-log, target=sys-log names nothing: refused
    rules = SHIPPED
    qubes = {k: v for k, v in QUBES.items() if k != "sys-log"}
    request = make_request("logvm.Send", "+", "work", "@default", qubes)
    with pytest.raises(AccessDenied, match="no target"):
        evaluate(rules, request)


def test_shipped_policy_conventions() -> None:
    files = policy_files([DEFAULT_POLICY_DIR])
    # one file, so that Salt's rendered 70-logvm.policy replaces all of it
    assert [p.name for p in files] == ["70-logvm.policy"]
    for rule in SHIPPED:
        # never * as source or target; allow only through @default+target= or dom0
        assert "*" not in (rule.source.text, rule.target.text)
        if rule.action == "allow":
            assert rule.target.kind in ("@default", "@adminvm")
    for service in ("logvm.Send", "logvm.Witness"):
        # the last two rules of each service refuse everything else explicitly
        last = [r for r in SHIPPED if r.service == service][-2:]
        assert [(r.source.text, r.target.text, r.action) for r in last] == [
            ("@anyvm", "@anyvm", "deny"),
            ("@anyvm", "@adminvm", "deny"),
        ]


def rules_of(text: str) -> list[Rule]:
    return parse_policy_text(text, "test.policy")


@pytest.mark.parametrize(
    ("policy", "source", "target", "expected"),
    [
        # first match wins
        ("s * work @anyvm deny\ns * @anyvm @anyvm allow", "work", "vault", "deny"),
        # @anyvm never matches dom0; an explicit dom0 / @adminvm does
        ("s * @anyvm @anyvm allow", "work", "dom0", "deny"),
        ("s * @anyvm dom0 allow", "work", "dom0", "allow:dom0"),
        # * matches everything, dom0 included
        ("s * * * allow", "work", "dom0", "allow:dom0"),
        # @type: and @tag: match sources and targets, never dom0
        ("s * @type:TemplateVM @anyvm allow", "fedora-40", "work", "allow:work"),
        ("s * @type:TemplateVM @anyvm allow", "work", "vault", "deny"),
        ("s * @tag:logged @anyvm allow", "work", "vault", "allow:vault"),
        ("s * @anyvm @type:AdminVM allow", "work", "dom0", "deny"),
        ("s * @anyvm @tag:logged allow", "vault", "work", "allow:work"),
        # @default needs a redirect; the redirect can be dom0
        ("s * @anyvm @default allow target=dom0", "work", "@default", "allow:dom0"),
        # @dispvm resolves to the caller's default_dispvm; it matches @dispvm:dvm rules
        ("s * @anyvm @dispvm allow", "work", "@dispvm", "allow:@dispvm:dvm"),
        ("s * @anyvm @dispvm:dvm allow", "work", "@dispvm", "allow:@dispvm:dvm"),
        ("s * @anyvm @dispvm:@tag:dvm-tag allow", "work", "@dispvm", "allow:@dispvm:dvm"),
        # ... but a caller without default_dispvm cannot use @dispvm
        ("s * @anyvm @dispvm allow", "vault", "@dispvm", "deny"),
        # autostart=no refuses a halted target (with the allow rule's notify=,
        # default no), allows a running one
        ("s * @anyvm @anyvm allow autostart=no", "work", "vault", "deny-quiet"),
        ("s * @anyvm @anyvm allow autostart=no", "vault", "work", "allow:work"),
        # a qube calling itself is a loopback: refused even when allowed
        ("s * @anyvm @default allow target=work", "work", "@default", "deny"),
        # argument "+" is the argument-less call only
        ("s + @anyvm @anyvm allow", "work", "vault", "allow:vault"),
        # notify=no on deny silences the notification
        ("s * @anyvm @anyvm deny notify=no", "work", "vault", "deny-quiet"),
        # no rule at all: refused
        ("", "work", "vault", "deny"),
    ],
)
def test_synthetic_policy(policy: str, source: str, target: str, expected: str) -> None:
    assert decide(rules_of(policy), "s", source, target) == expected


def test_argument_rules() -> None:
    rules = rules_of("s +a @anyvm @anyvm allow\ns * @anyvm @anyvm deny")
    assert decide(rules, "s+a", "work", "vault") == "allow:vault"
    assert decide(rules, "s+b", "work", "vault") == "deny"
    assert decide(rules, "s", "work", "vault") == "deny"


def test_user_parameter_is_kept() -> None:
    request = make_request("s", "+", "work", "vault", QUBES)
    decision = evaluate(rules_of("s * @anyvm @anyvm allow user=root"), request)
    assert decision.user == "root"


def test_ask_without_user_is_refused_with_reason() -> None:
    request = make_request("s", "+", "work", "@default", QUBES)
    with pytest.raises(AccessDenied, match="non-interactive ask"):
        evaluate(rules_of("s * @anyvm @anyvm ask"), request)


def test_ask_answered_by_world() -> None:
    rules = rules_of("s * @anyvm vault deny\ns * @anyvm @anyvm ask default_target=sys-log")
    request = make_request("s", "+", "work", "@default", QUBES)
    offered = targets_for_ask(rules, request)
    # deny rules remove targets; the caller itself is never offered
    assert "vault" not in offered and "work" not in offered
    assert {"sys-log", "fedora-40", "@dispvm:dvm"} <= offered
    assert "dom0" not in offered
    allowed = evaluate(rules, request, ask_answer={"allow": True, "target": "sys-log"})
    assert allowed.target == "sys-log"
    with pytest.raises(AccessDenied, match="not a valid choice"):
        evaluate(rules, request, ask_answer={"allow": True, "target": "vault"})
    with pytest.raises(AccessDenied, match="denied by the user"):
        evaluate(rules, request, ask_answer={"allow": False})


@pytest.mark.parametrize(
    "line",
    [
        "s * @anyvm @anyvm",  # too few fields
        "s * @anyvm @anyvm permit",  # unknown action
        "s * @anyvm @anyvm deny target=work",  # deny takes notify= only
        "s * @anyvm @default allow",  # @default needs target=
        "s * @anyvm @anyvm allow bogus=1",  # unknown parameter
        "s * @anyvm @anyvm allow notify=true",  # booleans are yes/no
        "s * @anyvm @anyvm allow notify=yes notify=no",  # parameter twice
        "s * @anyvm @anyvm allow notify",  # parameter without =
        "s * @anyvm @anyvm allow target=*",  # * is not a redirect
        "s * @anyvm @anyvm allow target=@anyvm",  # nor @anyvm
        "s * @anyvm @anyvm allow target=@tag:x",  # nor a tag
        "s * @anyvm @anyvm allow default_target=work",  # default_target is for ask
        "s * @default @anyvm allow",  # @default is not a source
        "s * @dispvm @anyvm allow",  # @dispvm is not a source
        "s * @anyvm @bogus allow",  # unknown keyword
        "s * @tag: @anyvm allow",  # empty tag
        "s * @anyvm @dispvm:@tag: allow",  # empty disposable tag
        "s arg @anyvm @anyvm allow",  # argument must start with +
        "* +arg @anyvm @anyvm allow",  # argument with * service
        "s/x * @anyvm @anyvm allow",  # bad service characters
        "s +a/b @anyvm @anyvm allow",  # bad argument characters
        "s * @anyvm @anyvm allow # trailing comment",  # # starts comments only at line start
        "!bogus",  # unknown directive
    ],
)
def test_rejected_lines(line: str) -> None:
    with pytest.raises(PolicySyntaxError):
        rules_of(line)


@pytest.mark.parametrize(
    "line",
    [
        "* * @anyvm @anyvm deny",
        "s * dom0 @adminvm deny notify=no",
        "s * @dispvm:dvm @dispvm:@tag:t deny",
        "s * @anyvm @default ask",
        "s * @anyvm @default ask default_target=@dispvm target=@dispvm:dvm",
        "s * @anyvm @anyvm allow target=dom0 user=root notify=yes autostart=no",
        "   # indented comment",
    ],
)
def test_accepted_lines(line: str) -> None:
    rules_of(line)


def test_include_directives_are_refused_clearly() -> None:
    with pytest.raises(UnsupportedByStandIn, match="!include"):
        rules_of("!include include/other")


def test_file_selection_and_order(tmp_path: Path) -> None:
    (tmp_path / "9-late.policy").write_text("s * @anyvm @anyvm deny\n")
    (tmp_path / "10-early.policy").write_text("s * @anyvm @anyvm allow\n")
    (tmp_path / "30-user.policy~").write_text("garbage\n")  # editor backup: not .policy
    (tmp_path / ".hidden.policy").write_text("garbage\n")  # dot files are skipped
    (tmp_path / "README").write_text("garbage\n")
    assert [p.name for p in policy_files([tmp_path])] == ["10-early.policy", "9-late.policy"]
    # C order: "10-" sorts before "9-", so the allow wins
    assert decide(load_policy([tmp_path]), "s", "work", "vault") == "allow:vault"


@pytest.mark.parametrize("name", ["30-User.policy", "30 user.policy", "30-usér.policy"])
def test_bad_file_name_spoils_whole_policy(tmp_path: Path, name: str) -> None:
    (tmp_path / "70-ok.policy").write_text("s * @anyvm @anyvm allow\n")
    (tmp_path / name).write_text("s * @anyvm @anyvm allow\n")
    with pytest.raises(PolicyError, match="invalid filename"):
        load_policy([tmp_path])


def test_syntax_error_anywhere_spoils_whole_policy(tmp_path: Path) -> None:
    (tmp_path / "70-ok.policy").write_text("s * @anyvm @anyvm allow\n")
    (tmp_path / "80-bad.policy").write_text("s * @anyvm @anyvm allow oops\n")
    with pytest.raises(PolicySyntaxError, match=r"80-bad\.policy:1"):
        load_policy([tmp_path])


def test_earlier_directory_hides_same_name(tmp_path: Path) -> None:
    run, etc = tmp_path / "run", tmp_path / "etc"
    run.mkdir()
    etc.mkdir()
    (run / "70-x.policy").write_text("s * @anyvm @anyvm deny\n")
    (etc / "70-x.policy").write_text("s * @anyvm @anyvm allow\n")
    assert decide(load_policy([run, etc]), "s", "work", "vault") == "deny"


def test_user_file_overrides_shipped_policy(tmp_path: Path) -> None:
    (tmp_path / "70-logvm.policy").write_text((DEFAULT_POLICY_DIR / "70-logvm.policy").read_text())
    (tmp_path / "30-user.policy").write_text(
        "logvm.Send * vault @default deny notify=no\n"
        "logvm.Send * @tag:logged @default allow target=fedora-40\n"
    )
    rules = load_policy([tmp_path])
    # read first: vault is kept out quietly, tagged qubes go elsewhere
    assert decide(rules, "logvm.Send", "vault", "@default") == "deny-quiet"
    assert decide(rules, "logvm.Send", "work", "@default") == "allow:fedora-40"
    assert decide(rules, "logvm.Send", "disp1234", "@default") == "allow:sys-log"
