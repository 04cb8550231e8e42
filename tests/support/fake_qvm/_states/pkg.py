"""Fake ``pkg`` state module for the formula tests (test stand-in).

A Qubes template installs ``qubes-logvm`` from the Qubes repository; this
machine has neither the repository nor the template. The fake keeps the
installed set in ``/var/lib/fake-pkg/installed`` (inside the test's mount
namespace, so in its scratch upper layer), knows only the project's two
packages (anything else fails, as a missing package does), and reports no
change when nothing would change, as the real ``pkg.installed`` does.
"""

from pathlib import Path
from typing import Any

__virtualname__ = "pkg"
__opts__: dict[str, Any] = {}
DB = Path("/var/lib/fake-pkg/installed")
KNOWN = ("qubes-logvm", "qubes-logvm-dom0")


def __virtual__() -> str:
    return __virtualname__


def _installed() -> set[str]:
    return set(DB.read_text(encoding="utf-8").split()) if DB.exists() else set()


def _save(names: set[str]) -> None:
    if not names:  # nothing installed: leave no trace
        DB.unlink(missing_ok=True)
        return
    DB.parent.mkdir(parents=True, exist_ok=True)
    DB.write_text("".join(f"{n}\n" for n in sorted(names)), encoding="utf-8")


def _ret(name: str, result: bool | None, comment: str, changes: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "result": result, "comment": comment, "changes": changes}


def installed(name: str, **kwargs: Any) -> dict[str, Any]:
    if name not in KNOWN:
        return _ret(name, False, f"fake pkg: no package {name!r} in the repositories", {})
    have = _installed()
    if name in have:
        return _ret(name, True, f"All specified packages are already installed: {name}", {})
    if __opts__.get("test"):
        return _ret(name, None, f"{name} would be installed", {name: {"old": "", "new": "1"}})
    _save(have | {name})
    return _ret(name, True, f"installed {name}", {name: {"old": "", "new": "1"}})


def removed(name: str, **kwargs: Any) -> dict[str, Any]:
    have = _installed()
    if name not in have:
        return _ret(name, True, f"All specified packages are already absent: {name}", {})
    if __opts__.get("test"):
        return _ret(name, None, f"{name} would be removed", {name: {"old": "1", "new": ""}})
    _save(have - {name})
    return _ret(name, True, f"removed {name}", {name: {"old": "1", "new": ""}})
