"""Step 1 of a report, inputs: the options checked before the long work, turned into a model adapter's request."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from opmeter.errors import OpmeterError
from opmeter.report.limits import DEFAULT_MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "meta")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``meta``; reject unknown or unavailable devices."""
    name = str(device).strip().lower()
    if name not in DEVICES:
        raise OpmeterError(f"unsupported device {device!r}; choose one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if cuda else "meta"
    if name == "cuda" and not cuda:
        raise OpmeterError("--device cuda requested but no CUDA device is available (torch.cuda.is_available() is "
                           "False); use --device meta (shape-only) or cpu")
    return name


def check_out_dir(out: str | Path, force: bool = False) -> Path:
    """Prove ``out`` can receive the report, creating nothing (see :func:`opmeter.report.outdir.check_output_dir`)."""
    from opmeter.report.outdir import check_output_dir

    return check_output_dir(out, force)


def check_image(image: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Path:
    """The image must exist, be at most ``max_pixels`` pixels (header only, 0 = no limit) and decode."""
    from PIL import Image, UnidentifiedImageError

    from opmeter.report.limits import check_image_size

    path = Path(image)
    if not path.is_file():
        raise OpmeterError(f"image file {path} not found")
    try:
        check_image_size(path, max_pixels)
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OpmeterError(f"image file {path} is not a readable image ({exc.__class__.__name__}: {exc})") from None
    return path


def parse_dtype_option(name: str | None) -> torch.dtype | None:
    """``--dtype`` as a torch dtype (``None``: the model's default for the device)."""
    if name is None:
        return None
    from opmeter.timemodel.calibrate import parse_dtype

    return parse_dtype(name)
