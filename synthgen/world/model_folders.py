"""Where the embedded world models live: the shipped models root, and each model's folder in a root.

world/train.py writes these folders and world/evaluate.py reads them and writes their model
cards; both name them from here, so neither imports the other for a name (and the command line
reads the default root without importing torch). Both load a world-sd folder through
`load_world_sd`, which checks it as `synthgen generate` checks a model.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODELS_ROOT = Path(__file__).resolve().parent.parent / "models"
"""synthgen/models/: the folder `builtin:` names resolve in (synthgen/builtin.py)."""

CLIP_FOLDER = "world-clip"
SD_FOLDER = "world-sd"
ORACLE_FOLDER = "world-oracle"


def load_world_sd(folder: Path):
    """The StableDiffusionPipeline in `folder` (a world-sd the user points `--models` or
    `--out` at): safetensors only, and components from diffusers and transformers only, as
    `synthgen generate` loads a model with trust_remote_code off (another library named in
    model_index.json would be imported, and its code run)."""
    from diffusers import StableDiffusionPipeline

    from synthgen.builtin import PIPELINE, check_model_reference

    check_model_reference(str(folder), "world-sd", PIPELINE)
    return StableDiffusionPipeline.from_pretrained(folder, use_safetensors=True)
