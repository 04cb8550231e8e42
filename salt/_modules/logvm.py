"""Salt execution module ``logvm``: the logvm formula's settings, checked.

Shipped with the formula in ``_modules/`` and synced by ``qubesctl
saltutil.sync_all`` (dom0) or carried to the qubes by salt-ssh. It must stand
alone: it runs in qubes where the qubes-logvm package is not installed yet,
so it cannot import the product. Its size and duration grammar is the one of
``qubes_logvm.config.schema`` (``parse_size``, ``parse_duration``); a test
(``tests/salt/test_module.py``) holds the two together.

``settings(defaults, given)`` merges pillar ``logvm:`` over ``defaults.yaml``
and raises naming the first wrong key (``logvm:collector:quota:default:
expected a size like 512M or 2G, got "lots"``), so that a state rendering it
changes nothing. ``dom0_problems(settings)`` lists what dom0 can check before
anything changes (qubes named in pillar exist, the LogVM's and witness's
templates get the package, every source's template does).
"""

import ipaddress
import json
import re
import subprocess

__virtualname__ = "logvm"

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?\s*")
_QUBE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,30}")
_TAG = re.compile(r"[A-Za-z0-9_-]{1,64}")
_GLOB = re.compile(r"[A-Za-z0-9_.*?\[\]-]{1,31}")
LABELS = ("red", "orange", "yellow", "green", "gray", "blue", "purple", "black")
PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
#: forward.yaml's facilities (qubes_logvm.config.forward.FACILITIES).
FACILITIES = ("user", "daemon", "auth", "syslog", *(f"local{n}" for n in range(8)))

#: Leaf kinds by pillar key; every mapping above a leaf is a section.
LEAVES = {
    "system:reload_command": "text", "system:forward_restart_command": "text",
    "system:dom0_exporter_restart_command": "text", "system:dom0_exporter_stop_command": "text",
    "vm:name": "qube", "vm:template": "qube", "vm:label": "label", "vm:memory": "mem",
    "vm:maxmem": "count0", "vm:vcpus": "count", "vm:disk": "size", "vm:autostart": "bool",
    "vm:tag": "tag", "vm:dispvm:name": "qube", "vm:dispvm:label": "label",
    "witness": "qube",
    "verify:enabled": "bool", "verify:schedule": "text", "verify:dispvm_template": "qube_or_empty",
    "sources:all": "bool", "sources:names": "qubes", "sources:tags": "tags",
    "sources:disposable_templates": "qubes", "sources:dispvm_tag": "tag",
    "sources:exclude:names": "qubes", "sources:exclude:tags": "tags",
    "templates": "qubes", "logvms": "logvms",
    "dom0:enabled": "bool", "dom0:journal": "bool", "dom0:consoles": "bool",
    "dom0:qubes_logs": "bool", "dom0:remove_dispvm_consoles": "bool",
    "dom0:filters:min_priority": "priority",
    "dom0:filters:units:include": "texts", "dom0:filters:units:exclude": "texts",
    "dom0:filters:identifiers:include": "texts", "dom0:filters:identifiers:exclude": "texts",
    "exporter:qrexec_command": "command",
    "exporter:batch:max_lines": "count", "exporter:batch:max_delay": "duration",
    "exporter:sources:journal:enabled": "bool",
    "exporter:sources:journal:min_priority": "priority",
    "exporter:sources:journal:units:include": "texts",
    "exporter:sources:journal:units:exclude": "texts",
    "exporter:sources:journal:identifiers:include": "texts",
    "exporter:sources:journal:identifiers:exclude": "texts",
    "exporter:sources:files": "files",
    "exporter:sources:syslog:enabled": "bool", "exporter:sources:syslog:socket": "path",
    "exporter:sources:syslog:udp": "port_or_null", "exporter:sources:syslog:tcp": "port_or_null",
    "exporter:sources:stdin": "bool",
    "exporter:backoff:initial": "duration", "exporter:backoff:max": "duration",
    "exporter:ack_timeout": "duration",
    "exporter:shutdown_drain": "duration",
    "collector:max_line_bytes": "size", "collector:max_connections": "count",
    "collector:max_connections_per_qube": "count",
    "collector:rate_limit:lines_per_second": "number0", "collector:rate_limit:burst": "count",
    "collector:rate_limit:qubes": "rates", "collector:classes": "classdefs",
    "collector:segment:max_bytes": "size", "collector:segment:max_age": "duration",
    "collector:quota:default": "size", "collector:quota:classes": "classmap:size",
    "collector:quota:qubes": "qubemap:size", "collector:quota:plain_ratio": "ratio",
    "collector:global:max_bytes": "size", "collector:global:keep_free": "size",
    "collector:global:keep_free_inodes": "count0",
    "collector:retention:max_age:default": "duration_or_null",
    "collector:retention:max_age:classes": "classmap:duration_or_null",
    "collector:retention:max_age:qubes": "qubemap:duration_or_null",
    "collector:retention:dispvm_delete_after_close": "duration_or_null",
    "collector:retention:dispvm_grace": "duration",
    "collector:compress:after": "duration", "collector:compress:level": "zstd_level",
    "collector:witness:interval_seconds": "interval",
    "forward:enabled": "bool",
    "forward:server:name": "text_or_empty", "forward:server:address": "address_or_empty",
    "forward:server:port": "port",
    "forward:forwarder:name": "qube", "forward:forwarder:create": "bool",
    "forward:forwarder:template": "qube_or_empty", "forward:forwarder:label": "label",
    "forward:forwarder:netvm": "qube_or_empty", "forward:forwarder:memory": "mem",
    "forward:tls:ca": "path", "forward:tls:cert": "path", "forward:tls:key": "path",
    "forward:hostname": "text_or_empty", "forward:qubes": "globs",
    "forward:window:records": "count", "forward:window:bytes": "size",
    "forward:window:seconds": "duration", "forward:facility": "facility", "forward:pen": "count",
    "forward:connect_timeout": "duration", "forward:poll": "duration",
    "forward:retry_max": "duration", "forward:state_dir": "path",
}  # fmt: skip
SECTIONS = {":".join(k.split(":")[:n]) for k in LEAVES for n in range(1, k.count(":") + 1)}


def __virtual__():
    return __virtualname__


class Invalid(Exception):
    """A wrong pillar value; Salt reports it as the render's failure, message intact."""


def _fail(key, what, value):
    raise Invalid(f"logvm: pillar key logvm:{key}: {what}, got {json.dumps(value, default=str)}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool)


def size_bytes(value, key="size"):
    """A size in bytes (1K = 1024), as ``qubes_logvm.config.schema.parse_size``."""
    if _is_int(value) and value >= 0:
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        _fail(key, "expected a size like 512M or 2G", value)
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()[:1]])


def _duration(key, value, nullable=False):
    if value is None and nullable:
        return
    if _is_number(value) and value >= 0:
        return
    if not (isinstance(value, str) and _DURATION.fullmatch(value)):
        _fail(key, "expected a duration like 30s, 10m or 7d" + (" or null" * nullable), value)


def _minimum(key, value, low, high=None):
    if not _is_int(value):
        _fail(key, "expected a whole number (unquoted)", value)
    if value < low:
        _fail(key, f"must be at least {low}", value)
    if high is not None and value > high:
        _fail(key, f"must be at most {high}", value)


def _matches(pattern):
    return lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None


_MINIMA = {"count": (1, None), "count0": (0, None), "mem": (200, None), "zstd_level": (1, 22)}
#: kind -> (test, what a good value looks like)
_CHECKS = {
    "bool": (lambda v: isinstance(v, bool), "expected true or false"),
    "number0": (lambda v: _is_number(v) and v >= 0, "expected a number, not negative (unquoted)"),
    "ratio": (lambda v: _is_number(v) and v >= 1, "expected a number, at least 1 (unquoted)"),
    "interval": (
        lambda v: _is_number(v) and v >= 0.1,
        "expected a number of seconds, at least 0.1 (unquoted)",
    ),
    "port_or_null": (
        lambda v: v is None or (_is_int(v) and 0 < v < 65536),
        "expected a port number 1-65535 or null",
    ),
    "qube": (_matches(_QUBE), "expected a qube name"),
    "qube_or_empty": (lambda v: v == "" or _matches(_QUBE)(v), "expected a qube name or ''"),
    "tag": (_matches(_TAG), "expected a tag (letters, digits, _ and -)"),
    "label": (lambda v: v in LABELS, "expected one of " + ", ".join(LABELS)),
    "priority": (
        lambda v: (_is_int(v) and 0 <= v <= 7) or v in PRIORITIES,
        "expected 0-7 or one of " + ", ".join(PRIORITIES),
    ),
    "text": (lambda v: isinstance(v, str) and v != "", "expected a non-empty string"),
    "text_or_empty": (lambda v: isinstance(v, str), "expected a string"),
    "glob": (_matches(_GLOB), "expected a qube name or glob"),
    "address_or_empty": (
        lambda v: v == "" or _is_address(v),
        "expected a numeric IPv4 or IPv6 address (qrexec's /dev/tcp takes no host names)",
    ),
    "port": (lambda v: _is_int(v) and 0 < v < 65536, "expected a port number 1-65535"),
    "facility": (lambda v: v in FACILITIES, "expected one of " + ", ".join(FACILITIES)),
    "path": (lambda v: isinstance(v, str) and v.startswith("/"), "expected an absolute path"),
}


def _scalar(key, kind, value):
    if kind in _MINIMA:
        _minimum(key, value, *_MINIMA[kind])
    elif kind == "size":
        size_bytes(value, key)
    elif kind in ("duration", "duration_or_null"):
        _duration(key, value, nullable=kind == "duration_or_null")
    else:
        test, what = _CHECKS[kind]
        if not test(value):
            _fail(key, what, value)


def _items(key, value):
    """``(key[index], item)`` of a list value; fails when it is not a list."""
    if not isinstance(value, list):
        _fail(key, "expected a list", value)
    return [(f"{key}[{index}]", item) for index, item in enumerate(value)]


def _list(key, kind, value):
    for at, item in _items(key, value):
        _scalar(at, kind, item)


def _mapping(key, value, what="expected a mapping"):
    if not isinstance(value, dict):
        _fail(key, what, value)
    return sorted(value.items(), key=lambda kv: str(kv[0]))


def _files(key, value):
    for at, item in _items(key, value):
        if not isinstance(item, dict):
            _fail(at, "expected a mapping with path and tag", item)
        for name in item:
            if name not in ("path", "tag"):
                _fail(f"{at}:{name}", "unknown key", name)
        _scalar(f"{at}:path", "path", item.get("path"))
        if "tag" in item:
            _scalar(f"{at}:tag", "text", item["tag"])


def _rates(key, value):
    for name, rate in _mapping(
        key, value, "expected a mapping of qube: {lines_per_second, burst}"
    ):
        if not _matches(_GLOB)(name):
            _fail(f"{key}:{name}", "expected a qube name or glob", name)
        for rkey, rvalue in _mapping(f"{key}:{name}", rate, "expected {lines_per_second, burst}"):
            kind = {"lines_per_second": "number0", "burst": "count"}.get(rkey)
            if kind is None:
                _fail(f"{key}:{name}:{rkey}", "unknown key", rkey)
            _scalar(f"{key}:{name}:{rkey}", kind, rvalue)


def _logvms(key, value):
    """``logvms: {NAME: {sources: {names, tags}, quota}}``: the further LogVMs."""
    for name, more in _mapping(key, value, "expected a mapping of LogVM name: settings"):
        at = f"{key}:{name}"
        _scalar(at, "qube", name)
        for sub, item in _mapping(at, more, "expected {sources, quota}"):
            if sub == "quota":
                size_bytes(item, f"{at}:quota")
            elif sub == "sources":
                for skey, names in _mapping(f"{at}:sources", item, "expected {names, tags}"):
                    kind = {"names": "qube", "tags": "tag"}.get(skey)
                    if kind is None:
                        _fail(f"{at}:sources:{skey}", "unknown key", skey)
                    _list(f"{at}:sources:{skey}", kind, names)
            else:
                _fail(f"{at}:{sub}", "unknown key", sub)


def _across_logvms(merged):
    """Every LogVM its own qube; a source name or tag routed to one LogVM only."""
    vm, src = merged["vm"], merged["sources"]
    taken = {("names", n): "vm" for n in src["names"] + src["disposable_templates"]}
    taken.update({("tags", t): "vm" for t in src["tags"]})
    for name, more in sorted(merged["logvms"].items()):
        roles = ("dom0", vm["name"], vm["dispvm"]["name"], vm["template"], merged["witness"])
        if name in roles or ("names", name) in taken:
            _fail(
                f"logvms:{name}",
                "a LogVM must be its own qube (not dom0, the witness, "
                "the first LogVM, its template, disposable template or a source)",
                name,
            )
        quota = more.get("quota", merged["collector"]["quota"]["default"])
        segment = size_bytes(merged["collector"]["segment"]["max_bytes"])
        if size_bytes(quota) < segment:
            _fail(f"logvms:{name}:quota", "a quota must be at least one segment", quota)
        for kind in ("names", "tags"):
            for item in more.get("sources", {}).get(kind, []):
                if (kind, item) in taken or item in merged["logvms"]:
                    other = taken.get((kind, item), item)
                    where = "logvm:sources" if other == "vm" else f"logvm:logvms:{other}"
                    _fail(
                        f"logvms:{name}:sources:{kind}",
                        f"{item} is already routed by {where}: each source goes to one LogVM",
                        item,
                    )
                taken[(kind, item)] = name


def _leaf(key, kind, value, classes):
    lists = {"qubes": "qube", "tags": "tag", "texts": "text", "command": "text", "globs": "glob"}
    if kind in lists:
        _list(key, lists[kind], value)
        if kind == "command" and not value:
            _fail(key, "expected a non-empty list", value)
    elif kind == "logvms":
        _logvms(key, value)
    elif kind == "files":
        _files(key, value)
    elif kind == "classdefs":
        for name, globs in _mapping(key, value, "expected a mapping of class: [name globs]"):
            _scalar(f"{key}:{name}", "tag", name)
            _leaf(f"{key}:{name}", "command", globs, classes)
    elif kind == "rates":
        _rates(key, value)
    elif kind.startswith(("classmap:", "qubemap:")):
        keys, valkind = kind.split(":")
        for name, item in _mapping(key, value):
            if keys == "classmap" and name not in classes:
                what = f"unknown qube class (known: {', '.join(classes)})"
                _fail(f"{key}:{name}", what, name)
            if keys == "qubemap":
                _scalar(f"{key}:{name}", "qube", name)
            _scalar(f"{key}:{name}", valkind, item)
    else:
        _scalar(key, kind, value)


def _walk(node, prefix, classes):
    for name, value in _mapping(prefix[:-1], node):
        key = f"{prefix}{name}"
        if key in LEAVES:
            _leaf(key, LEAVES[key], value, classes)
        elif key in SECTIONS:
            _walk(value, f"{key}:", classes)
        else:
            raise Invalid(f"logvm: pillar key logvm:{key}: unknown key (see pillar.example)")


def merge(defaults, given):
    """``given`` over ``defaults``: mappings recursively, anything else replaced."""
    out = dict(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _across(merged):
    collector, vm = merged["collector"], merged["vm"]
    segment = size_bytes(collector["segment"]["max_bytes"], "collector:segment:max_bytes")
    if segment < 4096:
        _fail(
            "collector:segment:max_bytes", "must be at least 4K", collector["segment"]["max_bytes"]
        )
    quota = collector["quota"]
    quotas = {"collector:quota:default": quota["default"]}
    for sub in ("classes", "qubes"):
        quotas.update({f"collector:quota:{sub}:{k}": v for k, v in quota[sub].items()})
    for key, value in sorted(quotas.items()):
        if size_bytes(value, key) < segment:
            _fail(key, "a quota must be at least one segment (collector:segment:max_bytes)", value)
    if vm["name"] in ("dom0", merged["witness"]):
        _fail("vm:name", "the LogVM cannot be dom0 or its own witness", vm["name"])
    if vm["dispvm"]["name"] in (vm["name"], vm["template"]):
        _fail(
            "vm:dispvm:name", "must differ from the LogVM and its template", vm["dispvm"]["name"]
        )
    if vm["maxmem"] != 0 and vm["maxmem"] < vm["memory"]:
        _fail("vm:maxmem", "must be 0 (no balancing) or at least vm:memory", vm["maxmem"])


def _is_address(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _across_forward(merged):
    forward = merged["forward"]
    if not forward["enabled"]:
        return
    for key in ("name", "address"):
        if not forward["server"][key]:
            _fail(f"forward:server:{key}", "required when forward:enabled is true", "")
    if not forward["hostname"]:
        # Every qube's hostname is its own name: every machine's LogVM would be
        # "sys-log" at the central server.
        _fail(
            "forward:hostname",
            "required when forward:enabled is true (this machine's name at the central "
            "server; the LogVM's own hostname is its qube name, the same on every machine)",
            "",
        )
    name = forward["forwarder"]["name"]
    if name in ("dom0", merged["vm"]["name"], merged["witness"]):
        _fail(
            "forward:forwarder:name",
            "the forwarder must be its own qube (not dom0, the LogVM or the witness)",
            name,
        )


def _across_dom0(merged):
    dom0 = merged["dom0"]
    if dom0["enabled"] and not (dom0["journal"] or dom0["consoles"] or dom0["qubes_logs"]):
        _fail("dom0:enabled", "needs one of dom0:journal, dom0:consoles, dom0:qubes_logs", True)
    if dom0["remove_dispvm_consoles"] and not dom0["consoles"]:
        _fail(
            "dom0:remove_dispvm_consoles", "needs dom0:consoles (nothing else removes them)", True
        )


def check(defaults, given):
    """The merged settings; raises :class:`Invalid` naming the first wrong key."""
    if not isinstance(given, dict):
        raise Invalid(f"logvm: pillar `logvm` must be a mapping, got {given!r:.60}")
    merged = merge(defaults, given)
    classes = ["dispvm"]
    if isinstance(merged.get("collector", {}).get("classes"), dict):
        classes += sorted(merged["collector"]["classes"])
    _walk(merged, "", classes)
    _across(merged)
    _across_forward(merged)
    _across_dom0(merged)
    _across_logvms(merged)
    return merged


def settings(defaults, given):
    """Salt entry point: :func:`check` (its error fails the render)."""
    return check(defaults, given)


# --------------------------------------------------------------- dom0 checks


def _qubes():
    """name -> (class, template or '') of every qube, from ``qvm-ls`` (dom0)."""
    out = subprocess.run(
        ["qvm-ls", "--raw-data", "--fields", "NAME,CLASS,TEMPLATE"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    qubes = {}
    for row in out.splitlines():
        parts = row.split("|")
        if len(parts) == 3:
            qubes[parts[0]] = (parts[1], "" if parts[2] in ("-", "") else parts[2])
    return qubes


def _template_of(qubes, name):
    """The TemplateVM a qube's root comes from (through a DispVM's dvm template)."""
    for _ in range(3):
        klass, template = qubes.get(name, ("", ""))
        if klass in ("TemplateVM", "StandaloneVM", "AdminVM", ""):
            return name
        name = template
    return name


def _forward_named(forward):
    """The qubes forwarding names that must exist before anything changes."""
    if not forward["enabled"]:
        return []
    fwd = forward["forwarder"]
    if not fwd["create"]:
        return [("forward:forwarder:name", fwd["name"])]
    return [(f"forward:forwarder:{k}", fwd[k]) for k in ("template", "netvm") if fwd[k]]


def problems(merged, sources, qubes=None):
    """What is wrong before anything changes, as one sentence each (dom0)."""
    qubes = _qubes() if qubes is None else qubes
    vm, found = merged["vm"], []
    named = [("vm:template", vm["template"])]
    named += [
        (f"sources:{k}", n)
        for k in ("names", "disposable_templates")
        for n in merged["sources"][k]
    ]
    named += [("templates", n) for n in merged["templates"]]
    named += [
        (f"logvms:{logvm}:sources:names", n)
        for logvm, more in sorted(merged["logvms"].items())
        for n in more.get("sources", {}).get("names", [])
    ]
    if merged["witness"] != "dom0":
        named.append(("witness", merged["witness"]))
    if merged.get("verify", {}).get("dispvm_template"):
        named.append(("verify:dispvm_template", merged["verify"]["dispvm_template"]))
    named += _forward_named(merged["forward"])
    for key, name in named:
        if name not in qubes:
            found.append(f"logvm:{key}: no qube named {name!r}")
    managed = set(merged["templates"])
    needs = [("the LogVM", vm["name"], vm["template"])]
    if merged["witness"] != "dom0" and merged["witness"] in qubes:
        needs.append(("the witness", merged["witness"], _template_of(qubes, merged["witness"])))
    needs += [("source qube", name, _template_of(qubes, name)) for name in sources]
    for what, name, template in needs:
        rooted = template in qubes and qubes[template][0] in ("TemplateVM", "StandaloneVM")
        if rooted and template not in managed:
            found.append(
                f"{what} {name} is based on {template}, which is not in logvm:templates "
                "(it would get no qubes-logvm package): add it, or exclude the qube"
            )
    return found


def dom0_check(merged, sources):
    """Salt entry point: raise listing every problem found by :func:`problems`."""
    found = problems(merged, sources)
    if found:
        raise Invalid("logvm: nothing changed, fix the pillar first:\n- " + "\n- ".join(found))
    return True
