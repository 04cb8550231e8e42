"""Floor 1: pure code (no I/O, stdlib only), shared by every program.

Trust side: none. Everything here is a function of its arguments.
"""
