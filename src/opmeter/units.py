"""Unit conversions, in one place. Everything inside opmeter counts plain FLOPs and bytes; these functions turn
them into the units planners read (decimal prefixes throughout)."""

from __future__ import annotations

from typing import Final

TERA: Final = 1e12
GIGA: Final = 1e9
MEGA: Final = 1e6
BITS_PER_BYTE: Final = 8


def tflops(flops: float) -> float:
    """FLOPs -> TFLOPs (1e12 FLOPs)."""
    return flops / TERA


def terabits(nbytes: float) -> float:
    """Bytes -> terabits (1e12 bits)."""
    return nbytes * BITS_PER_BYTE / TERA


def gigabytes(nbytes: float) -> float:
    """Bytes -> GB (1e9 bytes)."""
    return nbytes / GIGA


def flops_per_bit(flops: float, nbytes: float) -> float:
    """Arithmetic intensity in FLOPs per bit of I/O (0 without I/O); FLOPs per byte is 8 times larger."""
    return flops / (nbytes * BITS_PER_BYTE) if nbytes else 0.0
