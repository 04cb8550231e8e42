"""Floor 3: ``logvm-exporter``, the source-qube side (sources, records, transport).

Trust side: runs in every source qube and trusts that qube's own logs only as
far as to escape them into one-line records; the LogVM treats whatever it
sends as hostile. Never imports the store, the collector or zstandard.
"""
