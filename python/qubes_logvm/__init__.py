"""qubes-logvm: secure, persistent, tamper-evident log collection for Qubes OS.

Floors (a module imports only from its own floor or below):
  1. ``core``: pure code, stdlib only, no I/O.
  2. ``store``, ``config``: files on disk, sealing state, verification.
  3. programs: ``collector``, ``exporter``, ``rotate``, ``cli``, ``witness``.
"""

from importlib import resources

__version__ = resources.files(__package__).joinpath("VERSION").read_text().strip()
