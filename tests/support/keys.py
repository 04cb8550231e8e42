"""Epoch keys recomputed from the spec, independently of the product (test-only).

``K[e+1] = SHA-256("logvm-evolve-v1\\0" || K[e])`` (docs/store-format.md); the
product's one derivation is :class:`qubes_logvm.core.seal.EpochKeys`, which
the tests compare with this.
"""

import hashlib


def key_for_epoch(key0: bytes, epoch: int) -> bytes:
    """``K[epoch]`` by walking the spec from ``K[0]``."""
    key = key0
    for _ in range(epoch):
        key = hashlib.sha256(b"logvm-evolve-v1\0" + key).digest()
    return key
