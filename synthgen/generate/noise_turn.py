"""Turning a view's starting noise towards its colour (`views.slots.align_noise`).

A group's counterfactual views share one starting noise and change one colour word. Where the
object appears is chosen early, where the noise already leans towards the object's colour in
the latent; with another colour the same noise leans elsewhere, and the object moves
(docs/WORLD.md, "Counterfactual views"). So each view takes view 0's noise turned, at every
latent pixel, by the rotation of the channel space that takes the latent of view 0's colour
onto the latent of its own: the plane the two span is rotated, everything orthogonal to it
kept. A rotation maps a unit Gaussian onto a unit Gaussian, so each view's noise is still a
fair draw, and view 0's is untouched.

A colour's latent is the VAE's encoding (mean, times the scaling factor) of a flat image of
that colour, averaged over the latent's pixels: a direction in channel space, computed once
per colour.
"""

from __future__ import annotations

import torch

from synthgen.views.slots import colour_rgb


def plane_rotation(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The (C, C) rotation that turns `source`'s direction onto `target`'s in the plane they
    span and leaves its orthogonal complement alone (the identity when they are parallel)."""
    along = source / source.norm()
    across = target - (target @ along) * along
    if across.norm() <= 1e-6 * target.norm():
        return torch.eye(len(source), dtype=source.dtype)
    across = across / across.norm()
    angle = torch.atan2(target @ across, target @ along)
    in_plane = torch.outer(along, along) + torch.outer(across, across)
    turn = torch.outer(across, along) - torch.outer(along, across)
    return torch.eye(len(source), dtype=source.dtype) + (torch.cos(angle) - 1) * in_plane + torch.sin(angle) * turn


def turn_noise(noise: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """`noise` (N, C, h, w) with every pixel's channel vector rotated by `rotation` (C, C)."""
    return torch.einsum("ij,njhw->nihw", rotation.to(noise.dtype), noise)


class ColourLatents:
    """The latent direction of each colour name, from a pipeline's VAE, cached."""

    def __init__(self, pipeline, side: int):
        self.vae = pipeline.vae
        factor = getattr(pipeline, "vae_scale_factor", 8)
        # A flat image encodes to the same latent at every pixel away from its border; a small
        # one keeps the encoding cheap (a 1024 px SDXL image on a CPU would take minutes).
        self.side = max(factor, min(side, 32 * factor) // factor * factor)
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, colour: str) -> torch.Tensor:
        if colour not in self._cache:
            rgb = colour_rgb(colour)
            if rgb is None:  # the recipe checks its slots; a plan built by hand may not
                raise ValueError(f"align_noise: {colour!r} is not a colour name")
            parameter = next(self.vae.parameters())
            flat = (torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1.0).view(1, 3, 1, 1)
            image = flat.expand(1, 3, self.side, self.side).to(parameter.device, parameter.dtype)
            latent = self.vae.encode(image).latent_dist.mean * self.vae.config.scaling_factor
            self._cache[colour] = latent.float().mean(dim=(0, 2, 3)).cpu()
        return self._cache[colour]

    def rotation(self, source: str, target: str) -> torch.Tensor:
        return plane_rotation(self(source), self(target))
