"""Floor 2: the store on disk (segments, seals, key state, reading, verifying).

Trust side: runs in the LogVM. What it writes was sanitised by the collector;
what it reads back may have been edited by a later intruder, so readers and
the verifier parse strictly.
"""
