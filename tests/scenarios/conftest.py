"""Fixtures of the end-to-end scenarios: the exporter's, reused."""

from exporter.conftest import make_exporter

__all__ = ["make_exporter"]
