"""The qrexec stand-in's world: simulated qubes, their roots, the policy (test-only).

No machine here runs Xen, so tests and the demo describe a small Qubes system
in a JSON "world" file and run ``tests/support/fake-qrexec-client-vm`` in
place of ``qrexec-client-vm``. Environment variables tell the fake client
which world it lives in and which qube it runs in:

- ``QREXEC_FAKE_WORLD``: path of the world file (written by :class:`World`);
- ``QREXEC_FAKE_SOURCE``: name of the calling qube (dom0 vouches for it in
  real Qubes; here the test does).

Each qube has a root directory standing in for its filesystem: services are
looked up in ``ROOT/run/qubes-rpc``, ``ROOT/usr/local/etc/qubes-rpc`` and
``ROOT/etc/qubes-rpc``; per-service options in
``ROOT/{usr/local/,}etc/qubes/rpc-config``. Symlinks are followed on the
host filesystem (so ``etc/qubes-rpc/logvm.Send`` links to the real socket a
test's collector listens on). An executable service's stderr, which real
qrexec sends to the target's journal, is appended to
``ROOT/var/log/qrexec/SERVICE.log``.

The world file format (``version`` 1)::

    {"version": 1, "policy_dirs": ["/…/policy.d"], "ask_answer": null,
     "descriptor_plus": true, "call_log": "/…/calls.jsonl",
     "qubes": {"work": {"type": "AppVM", "tags": [], "running": true,
                        "default_dispvm": null, "template_for_dispvms": false,
                        "root": "/…/roots/work", "env": {}}}}

``socket_peer`` says as whom the target's qrexec agent connects to a socket
service: null for root (the agent itself), or the qube's default user
``{"uid": U, "gid": G, "groups": [...]}`` (a member of group ``qubes``) as
the default user's ``qrexec-fork-server`` does once a GUI session runs
(qubes-core-qrexec ``agent/qrexec-agent.c`` ``try_fork_server``;
``doc/execution.rst``: "always made as root or as the default user. Which one
is used is unspecified"). Tests run both: see :data:`SOCKET_PEERS`.

``descriptor_plus`` true reproduces current qrexec, where dom0 appends ``+``
to an argument-less service name (qrexec-daemon.c, "pretend that an empty
argument was provided"), so a socket service sees ``logvm.Send+ work\\0``;
false gives the ``logvm.Send work\\0`` of the socket-services documentation.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from support.qrexec_policy import QubeInfo

SUPPORT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SUPPORT_DIR.parent.parent
CLIENT_SCRIPT = SUPPORT_DIR / "fake-qrexec-client-vm"
DOM0_CLIENT_SCRIPT = SUPPORT_DIR / "fake-qrexec-client"
QVM_RUN_SCRIPT = SUPPORT_DIR / "fake-qvm-run"
QVM_PREFS_SCRIPT = SUPPORT_DIR / "fake-qvm-prefs"
DEFAULT_POLICY_DIR = REPO_ROOT / "qubes-rpc-policy"
WORLD_ENV = "QREXEC_FAKE_WORLD"
SOURCE_ENV = "QREXEC_FAKE_SOURCE"
SERVICE_DIRS = ("run/qubes-rpc", "usr/local/etc/qubes-rpc", "etc/qubes-rpc")
RPC_CONFIG_DIRS = ("usr/local/etc/qubes/rpc-config", "etc/qubes/rpc-config")
#: The test stand-in for group ``qubes`` and the qube's default user ``user``
#: (numeric only: no passwd or group entries are needed to hold them).
QUBES_GID = 61001
DEFAULT_USER: dict[str, Any] = {"uid": 61000, "gid": 61000, "groups": [QUBES_GID]}
#: Another local user of the target qube, not in group ``qubes``.
OTHER_USER: dict[str, Any] = {"uid": 61002, "gid": 61002, "groups": []}
#: The two ways real qrexec reaches a socket service, by name (for parametrize).
SOCKET_PEERS: dict[str, dict[str, Any] | None] = {"root": None, "default-user": DEFAULT_USER}
QUBE_TYPES = frozenset({"AdminVM", "AppVM", "DispVM", "TemplateVM", "StandaloneVM"})


class WorldError(Exception):
    """The world file is missing or malformed (a test set-up error, not a denial)."""


@dataclass
class Qube:
    """One simulated qube: what the policy sees, plus its root directory."""

    name: str
    root: Path
    type: str = "AppVM"
    tags: list[str] = field(default_factory=list)
    running: bool = True
    default_dispvm: str | None = None
    template_for_dispvms: bool = False
    env: dict[str, str] = field(default_factory=dict)
    netvm: str | None = None  # for dom0's qvm-prefs stand-in
    socket_peer: dict[str, Any] | None = None

    def info(self) -> QubeInfo:
        """The policy's view of this qube."""
        return QubeInfo(
            self.name,
            self.type,
            tuple(self.tags),
            self.running,
            self.default_dispvm,
            self.template_for_dispvms,
        )

    @property
    def rpc_dir(self) -> Path:
        return self.root / "etc/qubes-rpc"

    @property
    def rpc_config_dir(self) -> Path:
        return self.root / "etc/qubes/rpc-config"


@dataclass
class World:
    """A simulated Qubes system, written to ``base/world.json``.

    ``World(tmp_path)`` starts with dom0 and the project's shipped policy;
    add qubes, services and policy files, then :meth:`save`.
    """

    base: Path
    qubes: dict[str, Qube] = field(default_factory=dict)
    policy_dirs: list[Path] = field(default_factory=list)
    ask_answer: dict[str, Any] | None = None
    descriptor_plus: bool = True
    shipped_policy: bool = True

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if not self.policy_dirs:
            self.policy_dirs = [self.base / "policy.d"]
            self.policy_dirs[0].mkdir(exist_ok=True)
            if self.shipped_policy:
                for path in sorted(DEFAULT_POLICY_DIR.glob("*.policy")):
                    shutil.copy(path, self.policy_dirs[0] / path.name)
        if "dom0" not in self.qubes:
            self.add_qube("dom0", type="AdminVM")

    @property
    def path(self) -> Path:
        return self.base / "world.json"

    @property
    def call_log(self) -> Path:
        """One JSON line per call: who asked what, and what the policy decided."""
        return self.base / "calls.jsonl"

    def add_qube(self, name: str, **attrs: Any) -> Qube:
        """Add a qube (type, tags, running, default_dispvm, ...) and create its root."""
        qube = Qube(name=name, root=self.base / "roots" / name, **attrs)
        if qube.type not in QUBE_TYPES:
            raise WorldError(f"unknown qube type {qube.type!r}")
        for sub in (*SERVICE_DIRS, *RPC_CONFIG_DIRS):
            (qube.root / sub).mkdir(parents=True, exist_ok=True)
        self.qubes[name] = qube
        return qube

    def write_policy(self, filename: str, text: str) -> Path:
        """Write a policy file into the first policy directory (name used as is)."""
        path = self.policy_dirs[0] / filename
        path.write_text(text, encoding="utf-8")
        return path

    def link_socket_service(self, qube: str, service: str, socket_path: Path) -> Path:
        """Make ``etc/qubes-rpc/SERVICE`` in ``qube`` a symlink to ``socket_path``.

        The shape Qubes recommends for daemons: the socket lives elsewhere
        (it need not exist yet) and the service name links to it. Both
        paths are made reachable for a default-user peer.
        """
        link = self.qubes[qube].rpc_dir / service
        link.unlink(missing_ok=True)
        link.symlink_to(socket_path)
        self.reachable_by_everyone(link)
        if socket_path.parent.exists():
            self.reachable_by_everyone(socket_path)
        return link

    def reachable_by_everyone(self, path: Path) -> None:
        """Give every directory above ``path`` search permission (``o+x``).

        A socket under pytest's 0700 temporary directories cannot be reached
        by a non-root peer; ``/run/qubes-logvm`` is 0755 on a real LogVM.
        """
        for directory in [path.parent, *path.parent.parents]:
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)

    def add_executable_service(self, qube: str, service: str, script: str) -> Path:
        """Write an executable service (a script with its own ``#!`` line)."""
        path = self.qubes[qube].rpc_dir / service
        path.write_text(script, encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    def to_json(self) -> dict[str, Any]:
        qubes = {}
        for name, qube in self.qubes.items():
            entry = asdict(qube)
            entry["root"] = str(qube.root)
            del entry["name"]
            qubes[name] = entry
        return {
            "version": 1,
            "policy_dirs": [str(p) for p in self.policy_dirs],
            "ask_answer": self.ask_answer,
            "descriptor_plus": self.descriptor_plus,
            "call_log": str(self.call_log),
            "qubes": qubes,
        }

    def save(self) -> Path:
        """Write the world file atomically and return its path."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        tmp.replace(self.path)
        return self.path

    def client_env(self, source: str, base_env: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a process running "in" qube ``source`` (saves the world)."""
        if source not in self.qubes:
            raise WorldError(f"no qube {source!r} in the world")
        self.save()
        env = dict(os.environ if base_env is None else base_env)
        env[WORLD_ENV] = str(self.path)
        env[SOURCE_ENV] = source
        env["PATH"] = f"{self.bin_dir()}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    def bin_dir(self) -> Path:
        """A directory with ``qrexec-client-vm`` and dom0's ``qvm-run``/``qvm-prefs`` fakes."""
        directory = self.base / "bin"
        directory.mkdir(exist_ok=True)
        for name, script in (
            ("qrexec-client-vm", CLIENT_SCRIPT),
            ("qrexec-client", DOM0_CLIENT_SCRIPT),
            ("qvm-run", QVM_RUN_SCRIPT),
            ("qvm-prefs", QVM_PREFS_SCRIPT),
        ):
            link = directory / name
            if not link.is_symlink():
                link.symlink_to(script)
        return directory

    def dispvm_events(self) -> list[dict[str, Any]]:
        """Disposables created and removed by the qvm-run stand-in, oldest first."""
        path = self.base / "dispvms.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def live_dispvms(self) -> set[str]:
        """Disposables created and not removed (their roots still exist)."""
        alive: set[str] = set()
        for event in self.dispvm_events():
            (alive.add if event["event"] == "created" else alive.discard)(event["name"])
        return {name for name in alive if (self.base / "roots" / name).exists()}

    def client_command(
        self, source: str, target: str = "@default", service: str = "logvm.Send"
    ) -> tuple[list[str], dict[str, str]]:
        """argv and env of a ``qrexec-client-vm TARGET SERVICE`` call from ``source``.

        Suitable as an exporter's ``qrexec_command`` (with the env given to
        the exporter process).
        """
        return [str(CLIENT_SCRIPT), target, service], self.client_env(source)

    def calls(self) -> list[dict[str, Any]]:
        """The decisions recorded so far, oldest first."""
        if not self.call_log.exists():
            return []
        lines = self.call_log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line]


def load_world(path: Path) -> World:
    """Read a world file written by :meth:`World.save` (by the fake client)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WorldError(f"cannot read world file {path}: {err}") from err
    if not isinstance(data, dict) or data.get("version") != 1:
        raise WorldError(f"{path}: not a version 1 world file")
    try:
        qubes = {
            name: Qube(name=name, **{**entry, "root": Path(entry["root"])})
            for name, entry in data["qubes"].items()
        }
        world = World(
            base=path.parent,
            qubes=qubes,
            policy_dirs=[Path(p) for p in data["policy_dirs"]],
            ask_answer=data.get("ask_answer"),
            descriptor_plus=bool(data.get("descriptor_plus", True)),
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise WorldError(f"{path}: malformed world file: {err}") from err
    return world
