"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class OpmeterError(Exception):
    """Base class for user-facing errors (bad input, missing files, unsupported configuration)."""
