"""Deterministic rasteriser for :class:`~synthgen.world.scene.Scene`.

Objects are rasterised with PIL polygons at ``SUPERSAMPLE`` times the output
resolution and box-filtered down with integer arithmetic, which gives exact
area-coverage antialiasing and bit-identical output for identical scenes.
Nothing here reads global state: ``render(scene, resolution)`` depends on its
arguments only (the noise texture is seeded by ``scene.background_seed``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from synthgen.world.scene import (
    COLOURS,
    PLAIN_BACKGROUND_COLOURS,
    SHAPES,
    Scene,
    SceneObject,
    bounding_radius,
    sample_scene,
    stripe_colour_for,
)

SUPERSAMPLE = 4
MIN_RESOLUTION = 16

LOGO_OUTER_RGB = (255, 255, 255)
LOGO_INNER_RGB = (0, 0, 0)

_CHECKER_RGB = ((100, 100, 100), (160, 160, 160))
_NOISE_GREY_RANGE = (70, 190)
_GRADIENT_TOP_RGB = np.array((60, 70, 90), dtype=np.float64)
_GRADIENT_BOTTOM_RGB = np.array((190, 190, 180), dtype=np.float64)
_GRID_BASE_RGB = (150, 150, 150)
_GRID_LINE_RGB = (90, 90, 90)


def _regular_polygon(vertex_count: int, radius: float = 1.0, phase_deg: float = 90.0) -> np.ndarray:
    angles = np.deg2rad(phase_deg) + np.arange(vertex_count) * (2 * np.pi / vertex_count)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _disc(radius: float = 1.0, centre: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    return _regular_polygon(96, radius, 0.0) + np.asarray(centre)


def _star(points: int = 5, inner_ratio: float = 0.45) -> np.ndarray:
    outer = _regular_polygon(points, 1.0)
    inner = _regular_polygon(points, inner_ratio, 90.0 + 180.0 / points)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, 120, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    y -= (y.min() + y.max()) / 2
    outline = np.stack([x, y], axis=1)
    return outline / np.hypot(x, y).max()


def _semicircle(flat_edge_offset: float = 0.35) -> np.ndarray:
    # Pushing the flat edge below the centre keeps (x, y) well inside the
    # shape; the radius is shrunk so the corners stay on the unit circle.
    radius = np.sqrt(1.0 - flat_edge_offset**2)
    angles = np.linspace(0.0, np.pi, 49)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles) - flat_edge_offset], axis=1)


_CROSS_HALF_WIDTH = 0.3
_CROSS_ARM = float(np.sqrt(1.0 - _CROSS_HALF_WIDTH**2))
_ARROW_TAIL = float(np.sqrt(1.0 - 0.3**2))

# Each shape is a sequence of (polygon, paints) steps applied in order to a
# mask: paints=True fills the polygon, paints=False cuts it back out, which is
# how the ring and crescent get their holes. Polygons are in unit coordinates
# (y up) and lie inside the unit circle, the object's bounding circle.
_SHAPE_STEPS: dict[str, tuple[tuple[np.ndarray, bool], ...]] = {
    "circle": ((_disc(), True),),
    "square": ((_regular_polygon(4, phase_deg=45.0), True),),
    "triangle": ((_regular_polygon(3), True),),
    "star": ((_star(), True),),
    "ring": ((_disc(), True), (_disc(0.6), False)),
    "cross": (
        (
            np.array(
                [
                    (-_CROSS_HALF_WIDTH, _CROSS_ARM),
                    (_CROSS_HALF_WIDTH, _CROSS_ARM),
                    (_CROSS_HALF_WIDTH, _CROSS_HALF_WIDTH),
                    (_CROSS_ARM, _CROSS_HALF_WIDTH),
                    (_CROSS_ARM, -_CROSS_HALF_WIDTH),
                    (_CROSS_HALF_WIDTH, -_CROSS_HALF_WIDTH),
                    (_CROSS_HALF_WIDTH, -_CROSS_ARM),
                    (-_CROSS_HALF_WIDTH, -_CROSS_ARM),
                    (-_CROSS_HALF_WIDTH, -_CROSS_HALF_WIDTH),
                    (-_CROSS_ARM, -_CROSS_HALF_WIDTH),
                    (-_CROSS_ARM, _CROSS_HALF_WIDTH),
                    (-_CROSS_HALF_WIDTH, _CROSS_HALF_WIDTH),
                ]
            ),
            True,
        ),
    ),
    "heart": ((_heart(), True),),
    # A 0.6:1 rhombus rather than a rotated square, so it stays distinct
    # from "square" at any rotation.
    "diamond": ((np.array([(0.0, 1.0), (0.6, 0.0), (0.0, -1.0), (-0.6, 0.0)]), True),),
    "crescent": ((_disc(), True), (_disc(0.85, (0.4, 0.0)), False)),
    "arrow": (
        (
            np.array(
                [
                    (-_ARROW_TAIL, 0.3),
                    (0.0, 0.3),
                    (0.0, 0.7),
                    (1.0, 0.0),
                    (0.0, -0.7),
                    (0.0, -0.3),
                    (-_ARROW_TAIL, -0.3),
                ]
            ),
            True,
        ),
    ),
    "semicircle": ((_semicircle(), True),),
}
assert set(_SHAPE_STEPS) == set(SHAPES), "every vocabulary shape needs an outline"


def _check_resolution(resolution: int) -> None:
    if int(resolution) != resolution or resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be an integer >= {MIN_RESOLUTION}, got {resolution!r}")


def _texture_cell_px(resolution: int) -> int:
    """Checker cell, grid spacing and stripe period in output pixels: 1/8 of the image."""
    return max(2, resolution // 8)


def _object_mask_supersampled(obj: SceneObject, resolution: int) -> np.ndarray:
    side = resolution * SUPERSAMPLE
    radius_px = bounding_radius(obj.size) * side
    theta = np.deg2rad(obj.rotation_deg)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon, paints in _SHAPE_STEPS[obj.shape]:
        rotated_x = polygon[:, 0] * cos_t - polygon[:, 1] * sin_t
        rotated_y = polygon[:, 0] * sin_t + polygon[:, 1] * cos_t
        # Image rows grow downwards, hence the minus on y; the -0.5 moves from
        # continuous coordinates to PIL's pixel-centre convention.
        columns = obj.x * side + radius_px * rotated_x - 0.5
        rows = obj.y * side - radius_px * rotated_y - 0.5
        draw.polygon(list(zip(columns.tolist(), rows.tolist())), fill=255 if paints else 0)
    return np.asarray(canvas) > 0


def _box_downsample(supersampled: np.ndarray, resolution: int) -> np.ndarray:
    """Average SUPERSAMPLE x SUPERSAMPLE blocks with integer rounding (exact and platform-independent)."""
    block_pixels = SUPERSAMPLE * SUPERSAMPLE
    trailing = supersampled.shape[2:]
    blocks = supersampled.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, *trailing)
    sums = blocks.sum(axis=(1, 3), dtype=np.uint32)
    return ((sums + block_pixels // 2) // block_pixels).astype(np.uint8)


def render_object_coverage(obj: SceneObject, resolution: int = 32) -> np.ndarray:
    """Fraction in [0, 1] of each output pixel covered by ``obj``'s silhouette.

    Returns a float64 ``resolution x resolution`` array from the same
    rasterisation ``render`` uses, ignoring stripes and occlusion by other
    objects or the logo: 1.0 means the pixel lies entirely inside the shape.
    """
    _check_resolution(resolution)
    mask = _object_mask_supersampled(obj, resolution)
    block_pixels = SUPERSAMPLE * SUPERSAMPLE
    counts = mask.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).sum(axis=(1, 3))
    return counts / block_pixels


def render_background(scene: Scene, resolution: int = 32) -> np.ndarray:
    """The background of ``scene`` alone, as uint8 ``resolution x resolution x 3``.

    Textures are defined on the output pixel grid, so they are identical to
    the background pixels of ``render`` wherever no object or logo is drawn.
    """
    _check_resolution(resolution)
    name = scene.background
    if name in PLAIN_BACKGROUND_COLOURS:
        return np.broadcast_to(np.array(PLAIN_BACKGROUND_COLOURS[name], np.uint8), (resolution, resolution, 3)).copy()
    rows, columns = np.indices((resolution, resolution))
    cell = _texture_cell_px(resolution)
    if name == "checkerboard":
        parity = (rows // cell + columns // cell) % 2
        return np.array(_CHECKER_RGB, np.uint8)[parity]
    if name == "noise":
        low, high = _NOISE_GREY_RANGE
        grey = np.random.default_rng(scene.background_seed).integers(low, high + 1, (resolution, resolution))
        return np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)
    if name == "gradient":
        weight = ((np.arange(resolution) + 0.5) / resolution)[:, None]
        row_colours = (1 - weight) * _GRADIENT_TOP_RGB + weight * _GRADIENT_BOTTOM_RGB
        return np.repeat(np.rint(row_colours).astype(np.uint8)[:, None, :], resolution, axis=1)
    if name == "grid":
        on_line = (rows % cell == 0) | (columns % cell == 0)
        return np.where(on_line[:, :, None], np.array(_GRID_LINE_RGB, np.uint8), np.array(_GRID_BASE_RGB, np.uint8))
    raise ValueError(f"no renderer for background {name!r}")


def logo_box(resolution: int = 32) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` output-pixel bounds (end-exclusive) of the logo mark."""
    side = max(4, resolution // 8)
    margin = max(1, resolution // 32)
    bottom = right = resolution - margin
    return bottom - side, right - side, bottom, right


def _draw_logo(canvas: np.ndarray, resolution: int) -> None:
    top, left, bottom, right = (edge * SUPERSAMPLE for edge in logo_box(resolution))
    canvas[top:bottom, left:right] = LOGO_OUTER_RGB
    inset = (bottom - top) // 4
    canvas[top + inset : bottom - inset, left + inset : right - inset] = LOGO_INNER_RGB


def render(scene: Scene, resolution: int = 32) -> np.ndarray:
    """Render ``scene`` as a uint8 ``resolution x resolution x 3`` RGB array.

    Pure and deterministic: equal scenes give byte-identical images. Objects
    are painted in ``scene.objects`` order; a pixel fully inside a
    non-striped object is exactly ``COLOURS[colour]``. Striped objects get
    45-degree stripes of ``stripe_colour_for(colour)`` with a period of 1/8
    of the image. The logo, when present, is drawn last inside
    ``logo_box(resolution)`` and may cover the edge of a large object there.
    """
    _check_resolution(resolution)
    side = resolution * SUPERSAMPLE
    background = render_background(scene, resolution)
    canvas = np.repeat(np.repeat(background, SUPERSAMPLE, axis=0), SUPERSAMPLE, axis=1)
    half_period = _texture_cell_px(resolution) * SUPERSAMPLE // 2
    rows, columns = np.indices((side, side))
    on_stripe = ((rows + columns) // half_period) % 2 == 1
    for obj in scene.objects:
        mask = _object_mask_supersampled(obj, resolution)
        if obj.striped:
            canvas[mask & ~on_stripe] = COLOURS[obj.colour]
            canvas[mask & on_stripe] = stripe_colour_for(obj.colour)
        else:
            canvas[mask] = COLOURS[obj.colour]
    if scene.logo:
        _draw_logo(canvas, resolution)
    return _box_downsample(canvas, resolution)


def render_scene_from_seed(
    seed: int,
    resolution: int = 32,
    **sampling_probs: float,
) -> tuple[np.ndarray, Scene]:
    """Sample a scene from ``numpy.random.default_rng(seed)`` and render it.

    ``sampling_probs`` are passed to ``sample_scene`` (``two_object_prob``,
    ``striped_prob``, ``logo_prob``). The result depends only on the
    arguments.
    """
    scene = sample_scene(np.random.default_rng(seed), **sampling_probs)
    return render(scene, resolution), scene
