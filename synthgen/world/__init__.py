"""Procedural world: seeded scenes of coloured shapes with exact captions and labels.

``sample_scene`` draws a :class:`Scene` from a numpy Generator, ``render``
turns it into pixels, and ``caption``/``labels`` describe the same scene, so
text, labels and images always agree.
"""

from synthgen.world.render import (
    logo_box,
    render,
    render_background,
    render_object_coverage,
    render_scene_from_seed,
)
from synthgen.world.scene import (
    BACKGROUNDS,
    COLOURS,
    HOLLOW_CENTRE_SHAPES,
    PLAIN_BACKGROUND_COLOURS,
    RELATIONS,
    SHAPES,
    SIZE_FRACTIONS,
    SIZES,
    Scene,
    SceneObject,
    caption,
    describe_object,
    labels,
    sample_scene,
    stripe_colour_for,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "HOLLOW_CENTRE_SHAPES",
    "PLAIN_BACKGROUND_COLOURS",
    "RELATIONS",
    "SHAPES",
    "SIZE_FRACTIONS",
    "SIZES",
    "Scene",
    "SceneObject",
    "caption",
    "describe_object",
    "labels",
    "logo_box",
    "render",
    "render_background",
    "render_object_coverage",
    "render_scene_from_seed",
    "sample_scene",
    "stripe_colour_for",
]
