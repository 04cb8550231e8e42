"""``make demo``: the whole path, journald to verified store, on one machine (not product code)."""
