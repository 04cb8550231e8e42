"""The fake dom0's persistent world: qubes, prefs, features, tags, volumes.

Test stand-in (never imported by product code). One JSON file, named by the
environment variable ``FAKE_QVM_WORLD``, holds every qube the fake Salt
``qvm`` state module, ``qvm-ls`` and ``qvm-volume`` know about, plus a log of
every change they made, so that tests compare it with golden files and a
second ``salt-call`` sees what the first one did.
"""

import json
import os
from pathlib import Path
from typing import Any

ENV = "FAKE_QVM_WORLD"

# Property values that name another qube; "none"/"" mean no qube.
QUBE_REFS = ("netvm", "default_dispvm", "management_dispvm", "guivm", "audiovm")
LABELS = ("red", "orange", "yellow", "green", "gray", "blue", "purple", "black")
CLASSES = ("AppVM", "TemplateVM", "StandaloneVM", "DispVM")
DEFAULT_PRIVATE_BYTES = 2 * 1024**3


def path() -> Path:
    """The world file; a missing variable is a test set-up error."""
    value = os.environ.get(ENV)
    if not value:
        raise RuntimeError(f"fake qvm: {ENV} is not set")
    return Path(value)


def load() -> dict[str, Any]:
    """Read the world (an empty one if the file does not exist yet)."""
    try:
        data: dict[str, Any] = json.loads(path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    data.setdefault("qubes", {})
    data.setdefault("changes", [])
    return data


def save(data: dict[str, Any]) -> None:
    """Write the world atomically (sorted keys, so diffs stay readable)."""
    target = path()
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(target)


def new_qube(klass: str, label: str, template: str | None) -> dict[str, Any]:
    """A qube as qvm-create leaves it (Qubes tags it created-by-dom0)."""
    return {
        "class": klass,
        "label": label,
        "template": template,
        "prefs": {},
        "features": {},
        "tags": ["created-by-dom0"],
        "volumes": {"private": DEFAULT_PRIVATE_BYTES},
    }


def record(data: dict[str, Any], qube: str, what: str, key: str, old: Any, new: Any) -> None:
    """Append one change to the world's change log."""
    data["changes"].append({"qube": qube, "what": what, "key": key, "old": old, "new": new})
