"""qubes-logvm: secure, persistent, tamper-evident log collection for Qubes OS.

Floors (a module imports only from its own floor or below):
  1. ``core``: pure code, stdlib only, no I/O.
  2. ``store``, ``config``: files on disk, sealing state, verification.
  3. programs: ``collector``, ``exporter``, ``rotate``, ``cli``, ``witness``.
"""

import os

# Read next to this file: importlib.resources would pull in zipfile, tempfile
# and more (about 1 MiB of RSS in the exporter, which runs in every qube).
with open(os.path.join(os.path.dirname(__file__), "VERSION"), encoding="ascii") as _version:
    __version__ = _version.read().strip()
