"""The version of opmeter (one place: the package, the CLI and every written artifact read it here)."""

__version__ = "0.1.0"
