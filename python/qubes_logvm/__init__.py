"""qubes-logvm: secure, persistent, tamper-evident log collection for Qubes OS.

Floors (a module imports only from its own floor or below):
  1. ``core``: pure code, stdlib only, no I/O.
  2. ``store``, ``config``: files on disk, sealing state, verification.
  3. programs: ``collector``, ``exporter``, ``rotate``, ``cli``, ``snapshot``,
     ``forward``, ``witness``; a program never imports another program.

Which folder runs where, and what it may import (tests/test_layering.py
checks the programs' side at run time)::

  folder      runs in                       may import
  ----------  ----------------------------  ---------------------------------
  core/       everywhere                    stdlib
  daemon_support.py                         stdlib (journald logging,
  (the daemons and the store)               readiness, socket activation,
                                            fsync_dir, exit codes)
  config/     LogVM (schema.py: every qube  core; yaml
              too, for exporter.yaml)
  store/      LogVM, the verifying DispVM   core, config; zstandard
  exporter/   every qube, dom0 included     core, config.schema; yaml,
                                            systemd.journal (never store,
                                            collector, zstandard)
  collector/  LogVM (logvm-collector)       core, config, store
  rotate.py   LogVM (logvm-rotate)          core, config, store
  cli/        LogVM (logvm)                 core, config, store
  snapshot/   LogVM (logvm.Export), fresh   core, store
              DispVM (logvm.VerifySnapshot)
  forward/    LogVM (logvm-forward)         core, config, store
  browser/    LogVM (logvm-browser)         core, config, store, cli's
                                            reading helpers; gi (GTK 3)
  witness/    dom0 or a witness qube        core and stdlib only

Every program but the witness also uses ``daemon_support``.
"""

import os

# Read next to this file: importlib.resources would pull in zipfile, tempfile
# and more (about 1 MiB of RSS in the exporter, which runs in every qube).
with open(os.path.join(os.path.dirname(__file__), "VERSION"), encoding="ascii") as _version:
    __version__ = _version.read().strip()
