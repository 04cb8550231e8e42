"""Fake of dom0's ``qvm`` Salt state module, for ``salt-call --local`` tests.

Test stand-in (never imported by product code). It mirrors the interface of
QubesOS/qubes-mgmt-salt-dom0-qvm (``_states/ext_state_qvm.py`` and
``_modules/ext_module_qvm.py``): the same state functions, the same ``qvm.vm``
action order and ``Unknown action keyword`` failure, the same argument and
property names (hyphen and underscore aliases where the real parser has
them), and "already in desired state" when nothing would change. Changes go
to the JSON world of ``world.py``.

It is stricter than the real module wherever the real one silently does
nothing or flaps (see qubes-notes.md): an unknown key, flag or property, a
bare list item, an action without a list, a quoted number or a non-string
feature value, an empty action and a state function it does not model all
FAIL here, naming what is wrong.
"""

import copy
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location(
    "_fake_qvm_world", Path(__file__).resolve().parent.parent / "world.py"
)
assert _spec is not None and _spec.loader is not None
world = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(world)

__virtualname__ = "qvm"
__opts__: dict[str, Any] = {}

# qvm.vm's default action order, exactly as in ext_state_qvm.vm().
ACTIONS = (
    "exists", "running", "missing", "halted", "absent", "present", "clone", "prefs",
    "devices", "service", "features", "firewall", "tags", "unpause", "pause",
    "shutdown", "kill", "start", "run",
)  # fmt: skip
MODELLED = ("exists", "missing", "absent", "present", "prefs", "service", "features", "tags")

# qvm.create's parser: keyword -> kind; flags it knows.
CREATE_KEYS = {
    "template": "qube", "label": "label", "class": "class", "mem": "int", "vcpus": "int",
    "root-move-from": "str", "root-copy-from": "str", "flags": "flags",
}  # fmt: skip
CREATE_FLAGS = ("quiet", "net", "proxy", "hvm", "hvm-template", "standalone")

# qvm.prefs' parser: every option string -> (property, kind). Only these
# spellings are recognised by the real module; any other key is ignored there.
_PREFS: dict[tuple[str, ...], tuple[str, str]] = {
    ("autostart",): ("autostart", "bool"),
    ("debug",): ("debug", "bool"),
    ("default-user", "default_user"): ("default_user", "str"),
    ("default-dispvm", "default_dispvm"): ("default_dispvm", "ref"),
    ("management-dispvm", "management_dispvm"): ("management_dispvm", "ref"),
    ("guivm",): ("guivm", "ref"),
    ("audiovm",): ("audiovm", "ref"),
    ("template-for-dispvms", "template_for_dispvms", "dispvm-allowed"): (
        "template_for_dispvms",
        "bool",
    ),
    ("virt-mode", "virt_mode"): ("virt_mode", "virt"),
    ("label",): ("label", "label"),
    ("last-backup", "last_backup"): ("backup_timestamp", "str"),
    ("include-in-backups", "include_in_backups"): ("include_in_backups", "bool"),
    ("installed-by-rpm", "installed_by_rpm"): ("installed_by_rpm", "bool"),
    ("ip",): ("ip", "str"),
    ("kernel",): ("kernel", "str"),
    ("kernelopts",): ("kernelopts", "str"),
    ("mac",): ("mac", "str"),
    ("maxmem",): ("maxmem", "int"),
    ("memory",): ("memory", "int"),
    ("netvm",): ("netvm", "ref"),
    ("pci-strictreset", "pci_strictreset"): ("pci_strictreset", "unmodelled"),
    ("pcidevs",): ("pcidevs", "unmodelled"),
    ("provides-network",): ("provides_network", "bool"),
    ("template",): ("template", "template"),
    ("qrexec-timeout", "qrexec_timeout"): ("qrexec_timeout", "int"),
    ("updateable",): ("updateable", "bool"),
    ("vcpus",): ("vcpus", "int"),
}
PREFS = {spelling: prop for spellings, prop in _PREFS.items() for spelling in spellings}

TAG = re.compile(r"[A-Za-z0-9_-]+")
FEATURE = re.compile(r"[A-Za-z0-9_.-]+")
DEFAULT = "*default*"


class Reject(Exception):
    """Something the real module would reject, ignore or flap on."""


def __virtual__() -> str:
    return __virtualname__


# ---------------------------------------------------------------- helpers


def _ret(name: str, result: bool | None, comment: str, changes: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "result": result, "comment": comment, "changes": changes}


def _check_keys(what: str, kw: dict[str, Any], allowed: tuple[str, ...] | dict[str, Any]) -> None:
    for key in kw:
        if key not in allowed:
            raise Reject(
                f"{what}: unknown key {key!r} (the real module ignores it silently); "
                f"known: {', '.join(sorted(allowed))}"
            )


def _str_list(what: str, value: Any, pattern: re.Pattern[str] = FEATURE) -> list[str]:
    if not isinstance(value, list) or not value:
        raise Reject(f"{what}: expected a non-empty list, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise Reject(f"{what}: bad name {item!r}")
    return value


def _qube(data: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        qube: dict[str, Any] = data["qubes"][name]
    except KeyError:
        raise Reject(f"Virtual Machine does not exist: {name!r}") from None
    return qube


def _check_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Reject(f"{what}: expected an unquoted integer, got {value!r} (quoted numbers flap)")
    number: int = value
    return number


def _run(name: str, impl: Any, kw: dict[str, Any]) -> dict[str, Any]:
    """Run one modelled function against the world, saving unless in test mode."""
    # The world file comes from $FAKE_QVM_WORLD, or from the minion config.
    if __opts__.get("fake_qvm_world"):
        os.environ.setdefault(world.ENV, str(__opts__["fake_qvm_world"]))
    data = world.load()
    scratch = copy.deepcopy(data)
    try:
        changes, comment = impl(scratch, name, kw)
    except Reject as err:
        return _ret(name, False, f"fake qvm: {err}", {})
    if changes and not __opts__.get("test"):
        world.save(scratch)
    result = None if changes and __opts__.get("test") else True
    return _ret(name, result, comment, changes)


def _public(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop the bookkeeping keys Salt adds to every call (__id__, __env__...)."""
    return {k: v for k, v in kwargs.items() if not k.startswith("__")}


# ---------------------------------------------------------------- actions


def _exists(data: dict[str, Any], name: str, kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    _check_keys("exists", kw, ("flags",))
    _qube(data, name)
    return {}, f"'{name}' exists"


def _missing(data: dict[str, Any], name: str, kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    _check_keys("missing", kw, ("flags",))
    if name in data["qubes"]:
        raise Reject(f"'{name}' exists")
    return {}, f"'{name}' is missing"


def _absent(data: dict[str, Any], name: str, kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    _check_keys("absent", kw, ("flags",))
    if name not in data["qubes"]:
        return {}, f"[SKIP] The VM with the name '{name}' is already missing."
    for other, qube in data["qubes"].items():
        refs = [qube.get("template")] + [qube["prefs"].get(p) for p in world.QUBE_REFS]
        if name in refs:
            raise Reject(f"qvm-remove: '{name}' is in use by '{other}'")
    del data["qubes"][name]
    world.record(data, name, "qube", "", "present", None)
    return {"removed": name}, f"'{name}' removed"


def _check_create(kw: dict[str, Any]) -> list[str]:
    """qvm.create's arguments; returns the flags."""
    _check_keys("present", kw, CREATE_KEYS)
    flags: list[str] = _str_list("present: flags", kw["flags"]) if "flags" in kw else []
    for flag in flags:
        if flag not in CREATE_FLAGS:
            raise Reject(f"present: unknown flag {flag!r} (ignored by the real module)")
    for key in ("mem", "vcpus"):
        if key in kw:
            _check_int(f"present: {key}", kw[key])
    return flags


def _present(data: dict[str, Any], name: str, kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    flags = _check_create(kw)
    if name in data["qubes"]:
        return {}, f"[SKIP] A VM with the name '{name}' already exists."
    label = kw.get("label")
    if label not in world.LABELS:
        raise Reject(f"qvm-create: a valid label is required, got {label!r}")
    klass = kw.get("class", "AppVM")
    if "hvm-template" in flags:
        klass = "TemplateVM"
    elif "standalone" in flags:
        klass = "StandaloneVM"
    if klass not in world.CLASSES:
        raise Reject(f"qvm-create: unknown class {klass!r}")
    template = kw.get("template", data.get("default_template"))
    if klass in ("AppVM", "DispVM"):
        tpl = _qube(data, str(template))
        if tpl["class"] != "TemplateVM" and klass == "AppVM":
            raise Reject(f"qvm-create: {template!r} is not a template")
    qube = world.new_qube(klass, label, template)
    for key, prop in (("mem", "memory"), ("vcpus", "vcpus")):
        if key in kw:
            qube["prefs"][prop] = kw[key]
    data["qubes"][name] = qube
    world.record(data, name, "qube", "", None, {"class": klass, "template": template})
    return {"created": {"class": klass, "template": template, "label": label}}, "created"


def _pref_value(data: dict[str, Any], key: str, kind: str, value: Any) -> Any:
    if kind == "unmodelled":
        raise Reject(f"prefs: {key!r} is not modelled by the fake")
    if value == DEFAULT:
        return DEFAULT
    if kind == "bool" and not isinstance(value, bool):
        raise Reject(f"prefs: {key}: expected true/false, got {value!r}")
    if kind == "int":
        return _check_int(f"prefs: {key}", value)
    if kind == "label" and value not in world.LABELS:
        raise Reject(f"prefs: {key}: no such label {value!r}")
    if kind == "virt" and value not in ("hvm", "pv", "pvh"):
        raise Reject(f"prefs: {key}: bad virt_mode {value!r}")
    if kind in ("str", "ref", "template") and not isinstance(value, str):
        raise Reject(f"prefs: {key}: expected a string, got {value!r}")
    if kind == "ref":
        if value in ("none", ""):
            return None
        target = _qube(data, value)
        if key == "netvm" and not target["prefs"].get("provides_network"):
            raise Reject(f"prefs: netvm: '{value}' does not provide network")
    if kind == "template" and _qube(data, value)["class"] != "TemplateVM":
        raise Reject(f"prefs: template: '{value}' is not a template")
    return value


def _prefs(data: dict[str, Any], name: str, kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    qube = _qube(data, name)
    if not kw:
        raise Reject("prefs: nothing to set (the real module would only list)")
    _check_keys("prefs", kw, PREFS)
    seen: set[str] = set()
    changes: dict[str, Any] = {}
    for key, value in kw.items():
        prop, kind = PREFS[key]
        if prop in seen:
            raise Reject(f"prefs: {prop} given twice")
        seen.add(prop)
        new = _pref_value(data, key, kind, value)
        on_qube = prop in ("label", "template")
        current = qube[prop] if on_qube else qube["prefs"].get(prop, DEFAULT)
        if current == new:
            continue
        if prop in ("label", "template"):
            qube[prop] = new
        elif new == DEFAULT:
            del qube["prefs"][prop]
        else:
            qube["prefs"][prop] = new
        changes[prop] = {"old": current, "new": new}
        world.record(data, name, "pref", prop, current, new)
    return changes, "prefs set" if changes else "[SKIP] prefs already set"


def _set_features(
    data: dict[str, Any], name: str, wanted: dict[str, str | None], what: str
) -> dict[str, Any]:
    qube = _qube(data, name)
    changes: dict[str, Any] = {}
    for feature, new in wanted.items():
        current = qube["features"].get(feature)
        if current == new:
            continue
        if new is None:
            del qube["features"][feature]
        else:
            qube["features"][feature] = new
        changes[feature.removeprefix("service.") if what == "service" else feature] = {
            "old": current,
            "new": new,
        }
        world.record(data, name, what, feature, current, new)
    return changes


def _toggles(what: str, kw: dict[str, Any], prefix: str) -> dict[str, str | None]:
    wanted: dict[str, str | None] = {}
    for action, value in (("enable", "1"), ("disable", ""), ("default", None)):
        for item in _str_list(f"{what}: {action}", kw[action]) if action in kw else []:
            if prefix + item in wanted:
                raise Reject(f"{what}: {item!r} given in two actions")
            wanted[prefix + item] = value
    return wanted


def _features(data: dict[str, Any], name: str, kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    _check_keys("features", kw, ("enable", "disable", "default", "set"))
    if not kw:
        raise Reject("features: no action (the real module would only list)")
    wanted = _toggles("features", kw, "")
    if "set" in kw:
        if not isinstance(kw["set"], list) or not kw["set"]:
            raise Reject("features: set: expected a list of {name: value}")
        for item in kw["set"]:
            if not isinstance(item, dict) or len(item) != 1:
                raise Reject(f"features: set: expected {{name: value}}, got {item!r}")
            ((feature, value),) = item.items()
            if not isinstance(value, str):
                raise Reject(
                    f"features: set: {feature}: value {value!r} is not a string "
                    "(qubesd stores text; an unquoted value reports a change every run)"
                )
            if feature in wanted:
                raise Reject(f"features: {feature!r} given in two actions")
            wanted[str(feature)] = value
    changes = _set_features(data, name, wanted, "feature")
    return changes, "features set" if changes else "[SKIP] features already in desired state"


def _service(data: dict[str, Any], name: str, kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    _check_keys("service", kw, ("enable", "disable", "default"))
    if not kw:
        raise Reject("service: no action (the real module would only list)")
    changes = _set_features(data, name, _toggles("service", kw, "service."), "service")
    return changes, "services set" if changes else "[SKIP] services already in desired state"


def _tags(data: dict[str, Any], name: str, kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    _check_keys("tags", kw, ("add", "present", "del", "absent"))
    if not kw:
        raise Reject("tags: no action (the real module would only list)")
    qube = _qube(data, name)
    add = [t for k in ("add", "present") if k in kw for t in _str_list(f"tags: {k}", kw[k], TAG)]
    drop = [t for k in ("del", "absent") if k in kw for t in _str_list(f"tags: {k}", kw[k], TAG)]
    if set(add) & set(drop):
        raise Reject(f"tags: {sorted(set(add) & set(drop))} both added and deleted")
    old = sorted(qube["tags"])
    new = sorted((set(old) | set(add)) - set(drop))
    if new == old:
        return {}, "[SKIP] All requested tags already set"
    qube["tags"] = new
    world.record(data, name, "tags", "", old, new)
    return {"old": old, "new": new}, "tags set"


_IMPL = {
    "exists": _exists,
    "missing": _missing,
    "absent": _absent,
    "present": _present,
    "prefs": _prefs,
    "service": _service,
    "features": _features,
    "tags": _tags,
}


# ------------------------------------------------------- state functions


def _direct(action: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return _run(name, _IMPL[action], _public(kwargs))


def exists(name: str, **kwargs: Any) -> dict[str, Any]:
    return _direct("exists", name, kwargs)


def missing(name: str, **kwargs: Any) -> dict[str, Any]:
    return _direct("missing", name, kwargs)


def absent(name: str, **kwargs: Any) -> dict[str, Any]:
    return _direct("absent", name, kwargs)


def present(name: str, **kwargs: Any) -> dict[str, Any]:
    return _direct("present", name, kwargs)


def prefs(name: str, **kwargs: Any) -> dict[str, Any]:
    return _direct("prefs", name, kwargs)


def service(name: str, **kwargs: Any) -> dict[str, Any]:
    return _direct("service", name, kwargs)


def features(name: str, **kwargs: Any) -> dict[str, Any]:
    return _direct("features", name, kwargs)


def tags(name: str, **kwargs: Any) -> dict[str, Any]:
    return _direct("tags", name, kwargs)


def _unmodelled(function: str) -> Any:
    def state(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _ret(name, False, f"fake qvm: qvm.{function} exists but is not modelled", {})

    state.__name__ = function
    return state


running = _unmodelled("running")
halted = _unmodelled("halted")
start = _unmodelled("start")
shutdown = _unmodelled("shutdown")
kill = _unmodelled("kill")
pause = _unmodelled("pause")
unpause = _unmodelled("unpause")
clone = _unmodelled("clone")
run = _unmodelled("run")
devices = _unmodelled("devices")
firewall = _unmodelled("firewall")
template_installed = _unmodelled("template_installed")


def _options(action: str, options: Any) -> dict[str, Any]:
    """An action's list of single-key mappings, as qvm.vm's parse_options reads it."""
    if not isinstance(options, list):
        raise Reject(
            f"{action}: expected a list (of '- key: value' items), got {options!r}; "
            "the real module iterates it and does something else"
        )
    keywords: dict[str, Any] = {}
    for option in options:
        if not isinstance(option, dict):
            raise Reject(
                f"{action}: bare item {option!r} becomes a positional argument "
                "(list/get in the real module): write '- key: value'"
            )
        for key, value in option.items():
            if key in keywords:
                raise Reject(f"{action}: {key!r} given twice")
            keywords[key] = value
    return keywords


def _action_order(actions: Any) -> list[tuple[str, str]]:
    if not isinstance(actions, list | tuple):
        raise Reject(f"actions: expected a list, got {actions!r}")
    order = []
    for item in actions:
        action, value = item, "fail"
        if isinstance(item, dict):
            if len(item) != 1:
                raise Reject(f"actions: expected '- action: pass|fail', got {item!r}")
            ((action, value),) = item.items()
        if action not in ACTIONS or not isinstance(value, str):
            raise Reject(f"actions: unknown action {action!r}")
        order.append((action, value))
    return order


def _parse_vm(kwargs: dict[str, Any]) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Action order and each action's keywords; Reject as qvm.vm would fail."""
    order = _action_order(kwargs.pop("actions", list(ACTIONS)))
    for key in kwargs:
        if key not in [a for a, _ in order]:
            raise Reject(f"Unknown action keyword: {key}")
    parsed = {key: _options(key, value) for key, value in kwargs.items()}
    for key in parsed:
        if key not in MODELLED:
            raise Reject(f"qvm.vm action {key!r} is not modelled by the fake")
    return order, parsed


def vm(name: str, **kwargs: Any) -> dict[str, Any]:
    """qvm.vm: run the given actions in qvm.vm's order (or ``actions:``)."""
    kwargs = _public(kwargs)
    ret = _ret(name, True, "", {})
    try:
        order, parsed = _parse_vm(kwargs)
    except Reject as err:
        return _ret(name, False, f"fake qvm: {err}", {})
    for action, mode in order:
        if action not in parsed:
            continue
        ret["comment"] += f"\n====== ['{action}'] ======\n"
        if ret["result"] is False:
            ret["comment"] += "[SKIP] Skipping due to previous failure!"
            continue
        status = _run(name, _IMPL[action], parsed[action])
        if status["result"] is False and "pass" not in mode.lower():
            ret["result"] = False
        if status["changes"]:
            ret["changes"][f"qvm.{action}"] = status["changes"]
            if status["result"] is None:
                ret["result"] = None
        ret["comment"] += status["comment"]
    ret["comment"] = ret["comment"].strip()
    return ret
