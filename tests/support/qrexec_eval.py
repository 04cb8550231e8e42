"""Qrexec policy evaluation for the qrexec stand-in (test-only code).

Given the parsed rules (:mod:`support.qrexec_policy`), a description of the
qubes and one request, decide as dom0's policy daemon does: first matching
rule wins; ``deny`` refuses; ``allow`` resolves ``@default``/``@dispvm``/
``@adminvm`` and redirects; ``ask`` needs a user, which the stand-in does not
have unless the world file answers for one. Follows QubesOS/qubes-core-qrexec
``qrexec/policy/parser.py`` (Request, Allow/Ask/Deny.evaluate, the token
``match``/``expand`` methods, collect_targets_for_ask), re-implemented.

Trust side: the request's target and service come from the calling qube.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from support.qrexec_policy import QubeInfo, Rule, Token, parse_token


class AccessDenied(Exception):
    """The request is refused (parser.py AccessDenied); ``notify`` as dom0 would."""

    def __init__(self, reason: str, *, notify: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify


@dataclass(frozen=True)
class Request:
    """One call: service, argument (``+`` when none), source name, intended target."""

    service: str
    argument: str
    source: str
    target: Token
    qubes: Mapping[str, QubeInfo]


def make_request(
    service: str, argument: str, source: str, target: str, qubes: Mapping[str, QubeInfo]
) -> Request:
    """Build a request as Request.__init__ does, including IntendedTarget.verify.

    An empty target means ``@default``; a target name that names no qube
    becomes ``@default`` (current master, so a caller cannot probe which
    qubes exist); ``@dispvm:X`` must name a disposable template.
    """
    token = parse_token(target or "@default", "intended")
    if token.kind == "name" and token.text not in qubes:
        token = Token("@default", "@default")
    if token.kind == "@dispvm:":
        base = qubes.get(token.value)
        if base is None or not base.template_for_dispvms:
            raise AccessDenied(f"not a template for dispvm: {token.value}")
    return Request(service, argument, source, token, qubes)


def _dispvm_base(source: str, qubes: Mapping[str, QubeInfo]) -> Token | None:
    """``@dispvm`` for this caller: its default_dispvm (DispVM.get_dispvm_template)."""
    info = qubes.get(source)
    if info is None or info.default_dispvm is None:
        return None
    return Token("@dispvm:" + info.default_dispvm, "@dispvm:", info.default_dispvm)


def _match_dispvm_tag(spec: Token, text: str, qubes: Mapping[str, QubeInfo]) -> bool:
    """``@dispvm:@tag:T`` matches ``@dispvm:X`` when X is a tagged disposable template."""
    if not text.startswith("@dispvm:"):
        return False
    base = qubes.get(text[len("@dispvm:") :])
    return bool(base and base.template_for_dispvms and spec.value in base.tags)


def token_matches(spec: Token, other: Token | str, source: str, qubes: Mapping[str, Any]) -> bool:
    """Does policy token ``spec`` match ``other`` (a request source name or target)?

    Mirrors the ``match`` methods: ``*`` matches all; ``@anyvm`` everything but
    ``@adminvm``; ``@type:``/``@tag:`` look the name up (so they never match
    dom0, which is ``@adminvm`` in a request); ``@dispvm:X`` also matches
    ``@dispvm`` when X is the caller's default_dispvm. Anything else compares
    text, so ``@dispvm:X`` as a *source* never matches a ``dispN`` name.
    """
    text = str(other)
    if spec.kind in ("@dispvm:", "@dispvm:@tag:") and text == "@dispvm":
        base = _dispvm_base(source, qubes)
        text = "" if base is None else base.text
    checks: dict[str, Callable[[], bool]] = {
        "*": lambda: True,
        "@anyvm": lambda: text != "@adminvm",
        "@type:": lambda: text in qubes and bool(qubes[text].type == spec.value),
        "@tag:": lambda: text in qubes and spec.value in qubes[text].tags,
        "@dispvm:@tag:": lambda: _match_dispvm_tag(spec, text, qubes),
    }
    check = checks.get(spec.kind)
    return check() if check is not None else spec.text == text


def rule_matches_but_target(rule: Rule, request: Request) -> bool:
    """Service, argument (``*`` is None) and source match (Rule.is_match_but_target)."""
    return (
        (rule.service is None or rule.service == request.service)
        and (rule.argument is None or rule.argument == request.argument)
        and token_matches(rule.source, request.source, request.source, request.qubes)
    )


def rule_matches(rule: Rule, request: Request) -> bool:
    """The whole rule matches the request (Rule.is_match)."""
    return rule_matches_but_target(rule, request) and token_matches(
        rule.target, request.target, request.source, request.qubes
    )


@dataclass
class Decision:
    """An allowed call: where it goes and how (AllowResolution)."""

    target: str  # a qube name, or "@dispvm:X"
    requested_target: Token
    rule: Rule
    user: str | None
    autostart: bool
    notify: bool
    extra: dict[str, Any] = field(default_factory=dict)


def find_rule(rules: list[Rule], request: Request) -> Rule:
    """First matching rule, or AccessDenied (find_matching_rule)."""
    for rule in rules:
        if rule_matches(rule, request):
            return rule
    raise AccessDenied("no matching rule found")


def _allowed_without_autostart(target: str, qubes: Mapping[str, QubeInfo]) -> bool:
    """allow_no_autostart: dom0 always, DispVMs never, others only when running."""
    if target in ("@adminvm", "dom0"):
        return True
    if target.startswith("@dispvm"):
        return False
    return qubes[target].running


def _resolve_allow(rule: Rule, request: Request, target: Token) -> Decision:
    """Allow.evaluate: redirect, ``@default``, ``@dispvm``, ``@adminvm``, autostart, loopback."""
    if target.kind == "name" and target.text not in request.qubes:
        target = Token("@default", "@default")
    if target.kind == "@default":
        raise AccessDenied(
            f"policy defines 'allow' at {rule.where} but no target is specified "
            "by caller or policy"
        )
    resolved = target.text
    if target.kind == "@dispvm:":
        base_info = request.qubes.get(target.value)
        if base_info is None or not base_info.template_for_dispvms:
            raise AccessDenied(f"not a template for dispvm: {target.value}")
    elif target.kind == "@dispvm":
        base = _dispvm_base(request.source, request.qubes)
        if base is None:
            raise AccessDenied(f"allow to @dispvm at {rule.where} but no DispVM base is set")
        resolved = base.text
    elif target.kind == "@adminvm":
        resolved = "dom0"
    notify = rule.flag("notify", False)
    autostart = rule.flag("autostart", True)
    if not autostart and not _allowed_without_autostart(resolved, request.qubes):
        raise AccessDenied(f"target {resolved} is denied: it would need autostart", notify=notify)
    if resolved == request.source:
        raise AccessDenied("loopback qrexec connection not supported")
    return Decision(resolved, request.target, rule, rule.params.get("user"), autostart, notify)


def evaluate(
    rules: list[Rule], request: Request, *, ask_answer: Mapping[str, Any] | None = None
) -> Decision:
    """Evaluate a request; return the allowed destination or raise AccessDenied.

    ``ask`` has no user here: without ``ask_answer`` it is refused as the
    non-interactive AskResolution does; with ``{"allow": bool, "target": X}``
    it answers like a user choosing X from the offered targets.
    """
    rule = find_rule(rules, request)
    if rule.action == "deny":
        raise AccessDenied(f"denied by policy {rule.where}", notify=rule.flag("notify", True))
    redirect = rule.redirect
    if rule.action == "allow":
        return _resolve_allow(rule, request, redirect or request.target)
    return _evaluate_ask(rules, rule, request, ask_answer)


def _expand(token: Token, qubes: Mapping[str, QubeInfo]) -> Iterator[str]:
    """Targets a token stands for in an ``ask`` dialog (the ``expand`` methods)."""
    bases = [n for n, q in qubes.items() if q.template_for_dispvms]
    if token.kind in ("*", "@anyvm"):
        yield from (n for n, q in qubes.items() if token.kind == "*" or q.type != "AdminVM")
        yield from ("@dispvm:" + n for n in bases)
        yield "@dispvm"
    elif token.kind in ("@adminvm", "@dispvm"):
        yield token.kind
    elif token.kind == "@type:":
        yield from (n for n, q in qubes.items() if q.type == token.value)
    elif token.kind == "@tag:":
        yield from (n for n, q in qubes.items() if token.value in q.tags)
    elif token.kind == "@dispvm:":
        if token.value in bases:
            yield token.text
    elif token.kind == "@dispvm:@tag:":
        yield from ("@dispvm:" + n for n in bases if token.value in qubes[n].tags)
    elif token.kind == "name" and token.text in qubes:
        yield token.text


def targets_for_ask(rules: list[Rule], request: Request) -> set[str]:
    """collect_targets_for_ask: walk rules bottom-up, deny rules remove targets."""
    targets: set[str] = set()
    for rule in reversed(rules):
        if not rule_matches_but_target(rule, request):
            continue
        spec = (rule.redirect if rule.action != "deny" else None) or rule.target
        expansion = set(_expand(spec, request.qubes))
        if rule.action == "deny":
            targets -= expansion
        else:
            targets |= expansion
    if "@dispvm" in targets:
        targets.discard("@dispvm")
        base = _dispvm_base(request.source, request.qubes)
        if base is not None:
            targets.add(base.text)
    if "@adminvm" in targets:
        targets.discard("@adminvm")
        targets.add("dom0")
    targets.discard(request.source)
    return targets


def _evaluate_ask(
    rules: list[Rule], rule: Rule, request: Request, answer: Mapping[str, Any] | None
) -> Decision:
    """Ask.evaluate followed by the (simulated) user's answer."""
    redirect = rule.redirect
    offered = {redirect.text} if redirect is not None else targets_for_ask(rules, request)
    if not rule.flag("autostart", True):
        offered = {t for t in offered if _allowed_without_autostart(t, request.qubes)}
    if not offered:
        raise AccessDenied(f"policy defines 'ask' at {rule.where} but offers no target")
    if answer is None:
        raise AccessDenied(
            f"'ask' at {rule.where}: denied for non-interactive ask "
            "(the stand-in has no user; set ask_answer in the world to answer)"
        )
    if not answer.get("allow", False):
        raise AccessDenied(f"denied by the user {rule.where}", notify=rule.flag("notify", False))
    chosen = str(answer.get("target", ""))
    if chosen not in offered:
        raise AccessDenied(f"target {chosen} is not a valid choice")
    token = parse_token(chosen, "redirect")
    return _resolve_allow(rule, request, token)
