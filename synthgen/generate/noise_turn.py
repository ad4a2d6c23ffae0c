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

import copy

import torch

from synthgen.errors import UserError
from synthgen.views.slots import colour_rgb


def plane_rotation(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The (C, C) rotation that turns `source`'s direction onto `target`'s in the plane they
    span and leaves its orthogonal complement alone: the identity when they point the same
    way, a half turn (in the plane of `source` and the axis least along it) when opposite."""
    if not (torch.isfinite(source).all() and torch.isfinite(target).all()
            and source.norm() > 0 and target.norm() > 0):
        raise ValueError("plane_rotation needs two finite non-zero directions")
    along = source / source.norm()
    across = target - (target @ along) * along
    if across.norm() <= 1e-6 * target.norm():
        if target @ along > 0:
            return torch.eye(len(source), dtype=source.dtype)
        axis = torch.zeros_like(along)
        axis[int(along.abs().argmin())] = 1.0
        across = axis - (axis @ along) * along
    across = across / across.norm()
    angle = torch.atan2(target @ across, target @ along)
    in_plane = torch.outer(along, along) + torch.outer(across, across)
    turn = torch.outer(across, along) - torch.outer(along, across)
    return torch.eye(len(source), dtype=source.dtype) + (torch.cos(angle) - 1) * in_plane + torch.sin(angle) * turn


def turn_noise(noise: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """`noise` (N, C, h, w) with every pixel's channel vector rotated by `rotation` (C, C)."""
    return torch.einsum("ij,njhw->nihw", rotation.to(noise.dtype), noise)


class ColourLatents:
    """The latent direction of each colour name, from a pipeline's VAE, cached.

    Encoded by a float32 copy of the VAE on the CPU: the same directions on every device and
    dtype (the noise they turn is drawn on the CPU too), and no fp16 encoder overflow (SDXL's
    VAE gives NaN in fp16, which diffusers avoids with `force_upcast`)."""

    def __init__(self, pipeline, side: int):
        self.pipeline = pipeline
        factor = getattr(pipeline, "vae_scale_factor", 8)
        # A flat image encodes to the same latent at every pixel away from its border; a small
        # one keeps the encoding cheap (a 1024 px SDXL image on a CPU would take minutes).
        self.side = max(factor, min(side, 32 * factor) // factor * factor)
        self._vae = None
        self._cache: dict[str, torch.Tensor] = {}

    def _encoder(self):
        if self._vae is None:
            vae = self.pipeline.vae
            parameter = next(vae.parameters())
            on_cpu = parameter.device.type == "cpu" and parameter.dtype == torch.float32
            self._vae = vae if on_cpu else copy.deepcopy(vae).to("cpu", torch.float32)
        return self._vae

    @torch.no_grad()
    def __call__(self, colour: str) -> torch.Tensor:
        if colour not in self._cache:
            rgb = colour_rgb(colour)
            if rgb is None:  # the recipe checks its slots; a plan built by hand may not
                raise ValueError(f"align_noise: {colour!r} is not a colour name")
            vae = self._encoder()
            flat = (torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1.0).view(1, 3, 1, 1)
            latent = vae.encode(flat.expand(1, 3, self.side, self.side)).latent_dist.mean
            self._cache[colour] = denoiser_latent(vae, latent).mean(dim=(0, 2, 3))
            if not torch.isfinite(self._cache[colour]).all():
                raise UserError(f"views.slots.align_noise: the VAE encodes {colour!r} to a "
                                "non-finite latent, so its noise cannot be turned; drop "
                                "align_noise for this model")
        return self._cache[colour]

    def rotation(self, source: str, target: str) -> torch.Tensor:
        return plane_rotation(self(source), self(target))


def denoiser_latent(vae, latent: torch.Tensor) -> torch.Tensor:
    """A VAE encoding in the space the denoiser works in, as diffusers' pipelines make it:
    `(z - latents_mean) * scaling_factor / latents_std` where the VAE config gives a mean and
    std per channel (Playground v2.5, SD3-class VAEs), else `z * scaling_factor`."""
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        return ((latent - torch.tensor(mean).view(shape)) * config.scaling_factor
                / torch.tensor(std).view(shape))
    return latent * config.scaling_factor
