"""Where the embedded world models live: the shipped models root, and each model's folder in a root.

world/train.py writes these folders and world/evaluate.py reads them and writes their model
cards; both name them from here, so neither imports the other for a name (and the command line
reads the default root without importing torch).
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODELS_ROOT = Path(__file__).resolve().parent.parent / "models"
"""synthgen/models/: the folder `builtin:` names resolve in (synthgen/builtin.py)."""

CLIP_FOLDER = "world-clip"
SD_FOLDER = "world-sd"
ORACLE_FOLDER = "world-oracle"
