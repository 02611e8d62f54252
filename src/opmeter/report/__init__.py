"""Report writers: Markdown, SVG plots and table/graph exporters for a :class:`opmeter.join.Joined`."""

from __future__ import annotations
