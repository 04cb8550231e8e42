"""``logvm-forward``: sealed records and their seals to a central syslog server (floor 3).

Runs in the LogVM; see forward/daemon.py and docs/forwarding.md.
"""
