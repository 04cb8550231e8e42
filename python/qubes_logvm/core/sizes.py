"""Sizes for people to read (floor 1: pure, stdlib only)."""


def human_size(size: int) -> str:
    """``1.5 MiB``: binary units, one decimal (bytes as a whole number)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
