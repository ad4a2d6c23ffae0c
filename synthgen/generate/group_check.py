"""`slots.check`: read what a drawn group's views should share; redraw the groups that disagree.

A counterfactual group (`slots` views on shared noise) is only useful if its views differ in
the varied slot and nowhere else, and no model holds the rest every time (on world-sd the
views of 1 group in 5 disagree on the shape: docs/WORLD.md, "Counterfactual views"). So each
group is read after it is drawn, as its shard will store it (`generate/stored.py`):

- a held name (`class` or a slot): a CLIP model compares each view with its own prompt and
  with the same prompt filled with every other value of that name (`HeldCheckPlan.readings`,
  filled by the plan); the view passes where its own value wins. The prompt is compared
  whole, with the view's varied value in it, because a CLIP tower reads a shape word best in
  the caption it was drawn from;
- `layout`: each view's edge map correlated with view 0's (`layout_agreement`). Edges mark
  the object's outline and place whatever its colour, so a recoloured view of the same
  picture scores near 1 and a moved or redrawn object lower.

A group with a view that fails is drawn again whole from a new shared seed (`retry_group`),
keeping its prompts, noise turn and layout sharing, at most `max_retries` times; the last draw
is kept and recorded as failing.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from synthgen.errors import UserError
from synthgen.generate.detector import ClipConceptScorer
from synthgen.recipe import Recipe
from synthgen.seeding import derive_seed
from synthgen.views import ViewPlan

LAYOUT = "layout"
# Edge maps are compared at most this many pixels wide (larger views are area-averaged
# down first), so the blur below means the same fraction of the picture at any resolution;
# 64 px keeps a 32 px world view as it is.
_EDGE_SIZE = 64


# An edge map whose spread is below this (gradient units of [0, 1] pixels) has no edges: a
# flat view, or one stored black after NaN output.
_FLAT = 1e-4


def edge_maps(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, P): each view's edge magnitude, standardised (all
    zeros for a view without edges).

    Gaussian blur (sigma 1 px, so pixel noise is not an edge), then the Sobel gradient of each
    colour channel, combined as the length of the 6-vector: an outline between two colours of
    equal brightness is still an edge.
    """
    pixels = images.permute(0, 3, 1, 2).float() / 255.0
    height, width = pixels.shape[-2:]
    scale = _EDGE_SIZE / max(height, width)
    if scale < 1:
        pixels = F.interpolate(pixels, size=(max(1, round(height * scale)),
                                             max(1, round(width * scale))), mode="area")
    taps = torch.exp(-torch.arange(-2, 3, dtype=torch.float32) ** 2 / 2)
    taps = taps / taps.sum()
    blur = (taps[:, None] * taps[None, :]).expand(3, 1, 5, 5)
    pixels = F.conv2d(F.pad(pixels, (2, 2, 2, 2), mode="replicate"), blur, groups=3)
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel_x, sobel_x.T])[:, None].repeat(3, 1, 1, 1)
    gradients = F.conv2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), kernels, groups=3)
    magnitude = gradients.pow(2).sum(dim=1).sqrt().flatten(1)
    centred = magnitude - magnitude.mean(dim=1, keepdim=True)
    spread = centred.pow(2).mean(dim=1, keepdim=True).sqrt()
    return torch.where(spread > _FLAT, centred / spread.clamp(min=_FLAT), 0.0)


def layout_agreement(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) views of one group -> float (N,): each view's edge-map correlation
    with view 0's (1 for view 0 itself; -1 to 1). Two views without edges agree (1): nothing
    in them moved; a view without edges and one with them do not (0)."""
    edges = edge_maps(images)
    flat = edges.abs().amax(dim=1) == 0
    agreement = (edges * edges[0]).mean(dim=1)
    agreement = torch.where(flat & flat[0], 1.0, agreement)
    return torch.where(flat ^ flat[0], 0.0, agreement)


class GroupChecker:
    """Reads the held names and layout of drawn groups (see the module docstring)."""

    def __init__(self, recipe: Recipe, scorers: dict[str, ClipConceptScorer]):
        self.recipe = recipe
        self.scorers = scorers  # one per detector the recipe's checks name
        self._readable: set[tuple[str, tuple[str, ...]]] = set()  # compared prompts seen apart

    def _check_readable(self, detector: str, name: str,
                        compared: tuple[tuple[str, str], ...]) -> None:
        """A `UserError` where the detector reads two compared prompts as the same tokens (a
        held word past its maximum length is cut off, or two values read alike): the check
        could not tell those values apart."""
        key = (detector, compared)
        if key in self._readable:
            return
        scorer = self.scorers[detector]
        first_seen: dict[tuple[int, ...], str] = {}
        for value, prompt in compared:
            tokens = scorer.read_tokens(prompt)
            if tokens in first_seen:
                raise UserError(
                    f"views.slots.check.hold: {name!r}: the detector {detector} reads "
                    f"{prompt!r} as the same tokens as the prompt with {first_seen[tokens]!r} "
                    f"(it reads at most {len(tokens)} tokens, or the two values read alike), so "
                    f"the check cannot tell {name} {value!r} from {first_seen[tokens]!r}; put "
                    f"{{{name}}} earlier in the template or shorten it, give the values "
                    f"distinct words, or drop {name} from hold")
            first_seen[tokens] = value
        self._readable.add(key)

    def disagreements(self, views: list[ViewPlan], images: torch.Tensor) -> list[list[str]]:
        """For one group's views (plan order, view 0 first) and their uint8 images as their
        shard stores them (`stored.StoredBatch`): per view, the held names it fails (its own
        value not the detector's choice) and `layout` where its edge map agrees with view 0's
        less than the check asks."""
        failing: list[list[str]] = [[] for _ in views]
        check = views[0].held_check
        if check.readings:
            scorer = self.scorers[check.detector]
            features = scorer.image_features(images)
            for reading in range(len(check.readings)):  # the same names in every view
                readings = [view.held_check.readings[reading] for view in views]
                for name, _, compared in readings:
                    self._check_readable(check.detector, name, compared)
                chosen = scorer.choose_by_features(
                    features, [[prompt for _, prompt in compared] for _, _, compared in readings])
                for position, ((name, own, compared), index) in enumerate(zip(readings, chosen)):
                    if compared[index][0] != own:
                        failing[position].append(name)
        if check.layout is not None:
            agreement = layout_agreement(images)
            for position in range(1, len(views)):
                if agreement[position] < check.layout:
                    failing[position].append(LAYOUT)
        return failing


def retry_group(views: list[ViewPlan], attempt: int) -> list[ViewPlan]:
    """A group's views drawn again: new seeds derived from the group's first draw, the same
    prompts, noise turns and layout sharing. Views that shared view 0's seed share the new
    one (a shared-noise group stays one), others get their own; a latent anchor is
    redrawn once for the group."""
    first = views[0]
    shared_seed = derive_seed("group-retry", first.seed, first.group_id, attempt)
    anchor = (derive_seed("group-retry-anchor", first.anchor_seed, first.group_id, attempt)
              if first.anchor_seed is not None else None)
    redrawn = []
    for view in views:
        seed = (shared_seed if view.seed == first.seed
                else derive_seed("group-retry", view.seed, view.group_id, view.view, attempt))
        redrawn.append(replace(view, seed=seed,
                               anchor_seed=anchor if view.anchor_seed is not None else None))
    return redrawn
