"""Size bounds checked before the long work: image pixels, decode tokens, memory of an executed run on CPU.

Each check raises :class:`~opmeter.errors.OpmeterError` with one line saying what is too large, the bound, and what
to do instead, so a run that cannot finish (or would exhaust the machine) is refused in milliseconds rather than
killed after minutes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Final

from opmeter.errors import OpmeterError

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS: Final = 40_000_000
"""Default ``--max-image-pixels``: above an A4 page at 600 dpi (35 Mpx). The model resizes every page to at most
nine 640-px crops plus a 1024-px view, so a larger page adds decoding cost and memory, not tokens."""

MEMORY_HEADROOM: Final = 0.8
"""An executed run is refused when its estimate exceeds this share of the memory available now."""


def check_image_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """Read the image header only (no decoding) and refuse more than ``max_pixels`` pixels (0 = no limit).

    Pillow's own decompression-bomb guard (which fires on headers above ~179 Mpx) is answered with the same line.

    Returns
    -------
    width, height
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        raise OpmeterError(f"image file {path} is too large to decode safely (Pillow's decompression-bomb "
                           f"limit); the limit here is {max_pixels:,} pixels (--max-image-pixels)") from None
    if max_pixels and width * height > max_pixels:
        raise OpmeterError(f"image file {path} has {width} x {height} = {width * height:,} pixels, above the limit "
                           f"of {max_pixels:,} (--max-image-pixels; 0 = no limit): downscale the page first")
    return width, height


def check_decode_tokens(tokens: int, prefill_length: int, max_positions: int) -> None:
    """The prompt plus the generated tokens must fit the model's position table (``max_position_embeddings``)."""
    if prefill_length + tokens - 1 > max_positions:  # the last new token is never fed back
        raise OpmeterError(f"--decode-tokens {tokens} does not fit: the prompt takes {prefill_length} positions and "
                           f"the model has {max_positions} (max_position_embeddings), so at most "
                           f"{max(max_positions - prefill_length + 1, 0)} new tokens")


def _cgroup_room() -> int | None:
    """Room left under a cgroup v2 memory limit (a container), or None when there is no limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation now (``MemAvailable`` of ``/proc/meminfo``), or None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                limit = _cgroup_room()
                return free if limit is None else min(free, limit)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        log.info("available memory unknown on this system: the CPU memory check is skipped")
        return None


def check_cpu_memory(need: int, what: str, smaller: str, available: int | None = None) -> None:
    """Refuse to execute on CPU what would not fit in memory.

    Parameters
    ----------
    need
        The run's estimated peak in bytes (the adapter's analytic estimate).
    what
        What would run, for the message (e.g. the preset).
    smaller
        What to use instead, for the message (e.g. the smaller presets).
    available
        Bytes available (default: measured now).
    """
    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    if need > MEMORY_HEADROOM * available:
        raise OpmeterError(f"executing {what} on CPU needs about {need / 1e9:.1f} GB (parameters, activations, "
                           f"KV cache), {available / 1e9:.1f} GB is available: use --device meta (shape-only, exact "
                           f"counts) or {smaller}")
