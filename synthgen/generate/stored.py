"""Views as their shards store them, for the detectors that judge what is stored.

`reject` and `slots.check` decide on the stored file, not on the sampler's pixels: at 32 px,
JPEG's 8x8 blocks alone move world-clip's 'striped' score of a plain view from 0.06 to 0.91,
and `output.resolution` resamples every view. So a judged view is encoded in the recipe's
format, quality and stored size (`write.encode_image`, deterministic) and decoded again, as the
audit and a trainer read it.

The encoding is the writer's: the file a detector judged is the file the shard stores
(`SampledBatch.files` carries it to `engines/local.py`), so a view is encoded once. The
sampler waits for these encodes between pipeline calls, so they run on a pool of threads
(Pillow releases the GIL while it encodes): a 512 px PNG takes ~50 ms, and one thread
encoding a GPU's batch of 256 in turn would leave the GPU idle for 13 s.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from synthgen.recipe import Recipe
from synthgen.write import encode_image


def decode_stored(data: bytes) -> np.ndarray:
    """Image file bytes -> uint8 (H, W, 3), as a reader of the shard decodes them."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


class StoredForm:
    """Encodes uint8 (N, H, W, 3) views as the recipe stores them, on `workers` threads."""

    def __init__(self, recipe: Recipe, workers: int = 4):
        self.recipe = recipe
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="stored-form")

    def files(self, images: torch.Tensor) -> list[bytes]:
        """Each view's stored file, in order."""
        return list(self._pool.map(lambda pixels: encode_image(pixels, self.recipe),
                                   images.numpy()))

    def decoded(self, files: list[bytes]) -> torch.Tensor:
        """The files decoded again: uint8 (N, H', W', 3), H' x W' the stored size."""
        return torch.from_numpy(np.stack(list(self._pool.map(decode_stored, files))))

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) sampled views -> uint8 (N, H', W', 3) as a reader decodes them."""
        return self.decoded(self.files(images))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class StoredBatch:
    """The stored form of one batch's views, made for a view when a detector first asks and
    forgotten when the view is drawn again (`redrawn`).

    `images` is the sampler's tensor of the batch; redraws go through `redrawn`. Without a
    `form` (a `Sampler` made without one, as tests' stub detectors are) the detectors are
    given the sampler's pixels and no file is kept.
    """

    def __init__(self, form: StoredForm | None, images: torch.Tensor):
        self.form = form
        self.images = images
        self._files: list[bytes | None] = [None] * len(images)
        self._pixels: list[torch.Tensor | None] = [None] * len(images)

    def pixels(self, positions: list[int]) -> torch.Tensor:
        """uint8 (len(positions), H', W', 3): the views at `positions` as stored."""
        if self.form is None:
            return self.images[positions]
        missing = [p for p in positions if self._pixels[p] is None]
        if missing:
            files = self.form.files(self.images[missing])
            for position, data, pixels in zip(missing, files, self.form.decoded(files)):
                self._files[position], self._pixels[position] = data, pixels
        return torch.stack([self._pixels[p] for p in positions])

    def redrawn(self, positions: list[int], images: torch.Tensor) -> None:
        """The views at `positions` drawn again as `images`: written into the batch, and their
        stored form made afresh when next asked for."""
        self.images[positions] = images
        for position in positions:
            self._files[position] = self._pixels[position] = None

    def files(self) -> tuple[bytes | None, ...]:
        """Per view, its stored file where a detector judged its last draw, else None."""
        return tuple(self._files)
