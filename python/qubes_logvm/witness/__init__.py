"""The witness (``logvm-witness``, qrexec service ``logvm.Witness``).

Runs in dom0 by default: imports only :mod:`qubes_logvm.core` and the
stdlib. :mod:`.state` keeps one LogVM's files, :mod:`.cli` is the service
loop and the admin commands.
"""

from .cli import main

__all__ = ["main"]
