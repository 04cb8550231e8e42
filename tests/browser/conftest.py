"""Real GTK on a private Xvfb display for the browser tests.

Xvfb is started once per session (``-displayfd``: it picks a free display
and says which); the tests skip, naming the reason, only when no X server
can be started. Gtk is imported after DISPLAY is set.
"""

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

SCREEN = "1280x800x24"


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """A running Xvfb's DISPLAY."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("no display: Xvfb is not installed (make test installs xvfb)")
    read, write = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", SCREEN, "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as stream:
        number = stream.readline().strip()
    if not number:
        proc.kill()
        pytest.skip("no display: Xvfb did not start")
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    os.environ["GDK_BACKEND"] = "x11"
    os.environ["NO_AT_BRIDGE"] = "1"
    import gi

    gi.require_version("Gtk", "3.0")
    from gi.repository import Gtk

    if not Gtk.init_check(None)[0]:
        proc.kill()
        pytest.skip("no display: GTK cannot open the Xvfb display")
    yield os.environ["DISPLAY"]
    proc.terminate()
    proc.wait(10)
    if old is not None:
        os.environ["DISPLAY"] = old
