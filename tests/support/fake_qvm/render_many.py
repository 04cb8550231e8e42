"""Render one formula state for many pillars in a single Salt process.

Test helper (never imported by product code). Starting ``salt-call`` costs
about a second; checking dozens of bad pillars that only have to fail while
rendering is done here instead, with Salt's own ``Caller`` (what salt-call
runs) and the same minion config: ``python render_many.py CONF_DIR SLS``
reads a JSON list of pillar overrides on stdin and prints, for each, what
``state.show_sls`` returned (the states, or the list of render errors).
"""

import json
import sys

import salt.client
import salt.config


def main(argv: list[str]) -> int:
    conf_dir, sls = argv
    cases = json.load(sys.stdin)
    opts = salt.config.minion_config(f"{conf_dir}/minion")
    caller = salt.client.Caller(mopts=opts)
    results = [caller.cmd("state.show_sls", sls, pillar=pillar) for pillar in cases]
    json.dump(results, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
