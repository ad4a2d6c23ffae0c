"""Per-view augmentations: PIL image -> float tensor (3, H, W) in [0, 1].

`simclr` is the SimCLR set (Chen et al. 2020, appendix A): random resized crop, horizontal flip,
colour jitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale with p=0.2, and Gaussian blur with p=0.5
only at resolution >= 64 (at 32 px blur erases the little detail there is, as in SimCLR's
CIFAR setting). `simclr-nocolour` is the same set without colour jitter and grayscale, for
views that already differ in colour (the `slots` view strategy). `none` only resizes. No
normalisation here: encoders normalise their input, so every augmentation gives the same value
range.

Randomness comes from torch's global generator; the loader seeds it per group (see
`synthgen.data.pipeline`), which makes the crops a function of (seed, epoch, group).
"""

from __future__ import annotations

from collections.abc import Callable

from synthgen.errors import UserError

AUGMENTATIONS = ("simclr", "simclr-nocolour", "none")
BLUR_MIN_RESOLUTION = 64


def simclr_augmentation(resolution: int, crop_scale: tuple[float, float] = (0.08, 1.0),
                        colour: bool = True) -> Callable:
    """The SimCLR augmentation at `resolution` px; `crop_scale` is RandomResizedCrop's area
    range; `colour=False` leaves out the colour jitter and grayscale."""
    from torchvision import transforms as T

    steps = [T.RandomResizedCrop(resolution, scale=crop_scale, antialias=True),
             T.RandomHorizontalFlip()]
    if colour:
        steps += [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                  T.RandomGrayscale(p=0.2)]
    if resolution >= BLUR_MIN_RESOLUTION:
        kernel = max(3, (resolution // 10) | 1)  # ~10% of the side, odd, as in SimCLR
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    steps.append(T.ToTensor())
    return T.Compose(steps)


def resize_only(resolution: int) -> Callable:
    """Resize the shorter side to `resolution`, centre-crop a square; deterministic."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(resolution, antialias=True), T.CenterCrop(resolution), T.ToTensor()])


def make_augmentation(augment: str | Callable, resolution: int,
                      crop_scale: tuple[float, float] = (0.08, 1.0)) -> Callable:
    """`augment` ("simclr", "simclr-nocolour", "none" or a callable PIL -> tensor (3, H, W))
    -> the callable."""
    if callable(augment):
        return augment
    if augment in ("simclr", "simclr-nocolour"):
        low, high = crop_scale
        if not 0 < low <= high <= 1:
            raise UserError(f"crop_scale: {crop_scale!r} is not an area range; pass two numbers "
                            "0 < low <= high <= 1, e.g. 0.08 1.0")
        return simclr_augmentation(resolution, crop_scale, colour=augment == "simclr")
    if augment == "none":
        return resize_only(resolution)
    raise UserError(f"augment: unknown augmentation {augment!r}; use one of "
                    f"{', '.join(AUGMENTATIONS)} or pass a callable")
