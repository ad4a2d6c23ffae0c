"""synthgen's version, in a module of its own so that stages can record it without importing
the package root (which loads the API on first use, and so would tie them in a circle)."""

__version__ = "0.1.0"
