"""synthgen: multi-view synthetic image datasets from diffusers text-to-image models.

The data flows recipe -> plan -> generate -> write (see ARCHITECTURE.md); `cli.py` at the
repository root is the only place that strings the stages together.
"""

__version__ = "0.1.0"
