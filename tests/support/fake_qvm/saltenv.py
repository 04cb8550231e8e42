"""Helpers for the Salt formula tests: a private ``salt-call --local`` set-up.

Each test gets its own minion config dir, cache, pillar root and fake-dom0
world in ``tmp_path``; nothing under /etc/salt is read or written. The
formula is served from the repository's ``salt/`` (with its ``_modules``);
dom0's ``qvm`` state module and a template's ``pkg`` are the fakes in
``tests/support/fake_qvm``, and ``qvm-ls`` / ``qvm-volume`` are its fake
commands, first on PATH.

``salt-call`` runs in a private mount namespace, chrooted into an overlay of
the whole filesystem whose upper layer is ``base/root``: the formula writes
its real paths (``/etc/qubes/policy.d``, ``/etc/qubes-logvm``,
``/rw/config``...) and the test reads what changed in :attr:`SaltEnv.root`,
while the host stays untouched. The test's own directory is bound in, so
the world file, caches and logs are shared. The namespace's ``/etc/group``
has a group ``qubes``, as dom0 and every qube do.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.qrexec import QUBES_GID

REPO = Path(__file__).resolve().parents[3]
FORMULA = REPO / "salt"
FAKE_QVM = REPO / "tests" / "support" / "fake_qvm"
HERE = REPO / "tests" / "salt"
PILLARS = HERE / "pillars"
GOLDEN = HERE / "golden"
SALT_CALL = Path(sys.executable).with_name("salt-call")
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"
_NAMESPACE = textwrap.dedent("""\
    set -e
    base=$1; shift
    mount -t overlay overlay -o "lowerdir=/,upperdir=$base/root,workdir=$base/.work" "$base/.mnt"
    for d in /proc /sys /dev; do mount --rbind "$d" "$base/.mnt$d"; done
    mount --bind "$base" "$base/.mnt$base"
    exec chroot "$base/.mnt" "$@"
""")


@dataclass
class Run:
    """One salt-call: its exit code and the state results by state ID."""

    returncode: int
    states: dict[str, dict[str, Any]]
    output: str

    @property
    def changed(self) -> dict[str, Any]:
        """State ID -> changes, for states that changed something."""
        return {sid: st["changes"] for sid, st in self.states.items() if st.get("changes")}

    @property
    def failed(self) -> dict[str, str]:
        """State ID -> comment, for states that failed."""
        return {sid: st["comment"] for sid, st in self.states.items() if st["result"] is False}


@dataclass
class SaltEnv:
    """A private masterless Salt minion with a scratch root for file paths."""

    base: Path
    minion_id: str = "dom0"
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def world(self) -> Path:
        return self.base / "world.json"

    @property
    def root(self) -> Path:
        """The overlay's upper layer: every file the states wrote or changed."""
        return self.base / "root"

    def prepare_namespace(self) -> None:
        """Upper and work directories, and ``/etc/group`` with group ``qubes``."""
        # What dom0 (qubes-core-qrexec) and every qube (/rw) already have.
        for sub in (".mnt", ".work", "root/etc/qubes/policy.d", "root/rw/config"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        group = self.root / "etc/group"
        if not group.exists():
            text = Path("/etc/group").read_text(encoding="utf-8")
            group.write_text(f"{text.rstrip()}\nqubes:x:{QUBES_GID}:\n", encoding="utf-8")

    def written(self) -> list[str]:
        """Files the states left on the system (the upper layer minus our skeleton)."""
        skeleton = {"etc/group"}
        files = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(f for f in files if f not in skeleton)

    def in_namespace(self, argv: list[str]) -> list[str]:
        """``argv`` run chrooted in the private overlay (see the module's doc)."""
        self.prepare_namespace()
        script = ["sh", "-c", _NAMESPACE, "sh", str(self.base), *argv]
        return ["unshare", "--mount", "--propagation", "private", *script]

    @property
    def sls_dir(self) -> Path:
        """A second file root for a test's own ad hoc states."""
        return self.base / "sls"

    def sls(self, name: str, text: str) -> None:
        """Write the ad hoc state NAME (applied with ``apply(NAME)``)."""
        self.sls_dir.mkdir(exist_ok=True)
        (self.sls_dir / f"{name}.sls").write_text(text, encoding="utf-8")

    def configure(self, minion_id: str) -> None:
        """(Re)write the minion config for ``minion_id``."""
        self.minion_id = minion_id
        conf = self.base / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (self.base / "pillar").mkdir(exist_ok=True)
        self.root.mkdir(exist_ok=True)
        config = {
            "id": minion_id,
            "file_client": "local",
            "root_dir": str(self.base),
            "cachedir": str(self.base / "cache"),
            "pki_dir": str(self.base / "pki"),
            "sock_dir": str(self.base / "sock"),
            "extension_modules": str(self.base / "extmods"),
            "log_file": str(self.base / "minion.log"),
            "log_level_logfile": "info",
            "file_roots": {"base": [str(FORMULA), str(self.sls_dir)]},
            "pillar_roots": {"base": [str(self.base / "pillar")]},
            "states_dirs": [str(FAKE_QVM / "_states")],
            "enable_gpu_grains": False,
            "enable_fqdns_grains": False,
            "grains_cache": True,
            "state_output_diff": True,
        }
        (conf / "minion").write_text(yaml.safe_dump(config), encoding="utf-8")

    def pillar(self, data: dict[str, Any]) -> None:
        """Install ``data`` as the whole pillar."""
        pillar_dir = self.base / "pillar"
        (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - logvm\n", encoding="utf-8")
        (pillar_dir / "logvm.sls").write_text(yaml.safe_dump(data), encoding="utf-8")

    def pillar_file(self, name: str) -> dict[str, Any]:
        """Load a test pillar from tests/salt/pillars/NAME.yaml and install it."""
        data: dict[str, Any] = yaml.safe_load(
            (PILLARS / f"{name}.yaml").read_text(encoding="utf-8")
        )
        self.pillar(data)
        return data

    def seed_world(self, name: str = "world") -> None:
        """Start the fake dom0 from tests/salt/NAME.json."""
        shutil.copyfile(HERE / f"{name}.json", self.world)

    def load_world(self) -> dict[str, Any]:
        return dict(json.loads(self.world.read_text(encoding="utf-8")))

    def _environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["FAKE_QVM_WORLD"] = str(self.world)
        env["PATH"] = f"{FAKE_QVM / 'bin'}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def render_many(self, sls: str, overrides: list[dict[str, Any]]) -> list[Any]:
        """``state.show_sls SLS`` once per pillar override, in one Salt process."""
        if not (self.base / "extmods/modules/logvm.py").exists():
            self.sync()
        proc = subprocess.run(
            [sys.executable, str(FAKE_QVM / "render_many.py"), str(self.base / "conf"), sls],
            input=json.dumps(overrides),
            capture_output=True,
            text=True,
            env=self._environ(),
            timeout=120,
            check=True,
        )
        results: list[Any] = json.loads(proc.stdout)
        return results

    def sync(self) -> None:
        """``saltutil.sync_all``, as the install steps (and the dom0 package) run it."""
        cmd = [str(SALT_CALL), "--local", "-c", str(self.base / "conf"), "--log-level=quiet",
               "--out=quiet", "saltutil.sync_all"]  # fmt: skip
        subprocess.run(cmd, env=self._environ(), timeout=120, check=True, capture_output=True)

    def apply(self, sls: str, *, test: bool = False) -> Run:
        """``salt-call --local state.apply SLS`` with JSON output (synced first)."""
        if not (self.base / "extmods/modules/logvm.py").exists():
            self.sync()
        env = self._environ()
        cmd = [
            str(SALT_CALL), "--local", "-c", str(self.base / "conf"), "--retcode-passthrough",
            "--out=json", "--log-level=quiet", "state.apply", sls,
        ]  # fmt: skip
        if test:
            cmd.append("test=True")
        proc = subprocess.run(
            self.in_namespace(cmd), capture_output=True, text=True, env=env, timeout=120,
            check=False,
        )  # fmt: skip
        try:
            local = json.loads(proc.stdout)["local"]
        except (json.JSONDecodeError, KeyError):
            local = proc.stdout + proc.stderr
        if not isinstance(local, dict):
            return Run(proc.returncode, {}, str(local))
        states = {st.get("__id__", key): st for key, st in local.items()}
        return Run(proc.returncode, states, proc.stdout)


def check_golden(actual: str, name: str) -> None:
    """Compare with tests/salt/golden/NAME (UPDATE_GOLDEN=1 rewrites it)."""
    path = GOLDEN / name
    if UPDATE_GOLDEN or not path.exists():
        path.write_text(actual, encoding="utf-8")
        if not UPDATE_GOLDEN:
            pytest.fail(f"golden file {path} was missing and has been written: review it")
    assert actual == path.read_text(encoding="utf-8"), f"differs from golden {name}"
