"""Floor 2: the LogVM's configuration files, loaded and validated.

``collector`` reads ``collector.yaml``; ``storage_policy`` its rotation,
quota and retention keys (shared with ``logvm-rotate``). ``schema`` holds the
shared parsing of sizes, durations and typed keys so that every bad value is
reported the same way, naming its key; the exporter's own file is read by
:mod:`qubes_logvm.exporter.config` with it.
"""
