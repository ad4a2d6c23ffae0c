"""Encoded image bytes -> uint8 (3, H, W) tensors, on the CPU with Pillow or on a GPU with nvJPEG.

Contract of `decode_batch`: one entry per input, a tensor or None when the bytes do not decode
(or are None: a missing view). On a CUDA device JPEGs are decoded there in one batched call
(torchvision.io.decode_jpeg), so pixels never cross PCIe; other formats, and any batch the
GPU decoder refuses, fall back to Pillow image by image. Pillow decodes run in a thread pool
(Pillow releases the GIL while decoding). With `draft_size`, Pillow decodes JPEGs at the
smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides >= draft_size: a 512 px view bound for
a 224 px CLIP decodes at 256 px, 4x fewer pixels to decode and resize; the embedding moves
slightly against a full-size decode (a different downscaling filter), far below what an audit
measures.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

# Brightest channel value at or below which a view counts as all black: JPEG ringing leaves a
# few levels above 0 on a black image, while a dark but real scene has highlights far above.
BLACK_MAX_LEVEL = 16
_JPEG_MAGIC = b"\xff\xd8"


class ImageDecoder:
    """Decodes batches of encoded images for one device."""

    def __init__(self, device: torch.device, workers: int = 4, draft_size: int | None = None,
                 batched_jpeg: bool | None = None):
        self.device = device
        self.draft_size = draft_size
        # torchvision's batched decode_jpeg: nvJPEG on a GPU. On the CPU Pillow with draft
        # decoding is faster; `batched_jpeg=True` there only exercises this path in tests.
        self.batched_jpeg = device.type == "cuda" if batched_jpeg is None else batched_jpeg
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit-decode")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def decode_batch(self, datas: list[bytes | None]) -> list[torch.Tensor | None]:
        decoded: list[torch.Tensor | None] = [None] * len(datas)
        pending = list(range(len(datas)))
        if self.batched_jpeg:
            jpegs = [i for i, d in enumerate(datas) if d is not None and d[:2] == _JPEG_MAGIC]
            if jpegs:
                try:
                    from torchvision.io import ImageReadMode, decode_jpeg

                    encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpegs]
                    images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
                    for i, image in zip(jpegs, images):
                        decoded[i] = image
                    pending = [i for i in pending if decoded[i] is None]
                except RuntimeError:
                    pass  # a corrupt JPEG fails the whole batch: Pillow sorts out which one
        results = self._pool.map(lambda i: _decode_with_pillow(datas[i], self.draft_size), pending)
        for i, image in zip(pending, results):
            decoded[i] = image if image is None or self.device.type == "cpu" else image.to(self.device)
        return decoded


def _decode_with_pillow(data: bytes | None, draft_size: int | None = None) -> torch.Tensor | None:
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            pixels = np.asarray(image.convert("RGB"))
    except Exception:  # any decoder error means "unreadable", which the audit reports
        return None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def black_flags(images: list[torch.Tensor | None]) -> list[bool]:
    """True for each decoded image whose brightest value is at most BLACK_MAX_LEVEL."""
    present = [image for image in images if image is not None]
    if not present:
        return [False] * len(images)
    # One device->host copy for the whole batch, not one sync per image.
    maxima = iter(torch.stack([image.amax() for image in present]).cpu().tolist())
    return [image is not None and next(maxima) <= BLACK_MAX_LEVEL for image in images]


def decode_pil(data: bytes) -> Image.Image | None:
    """A view as a PIL image for the report's pictures, or None if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except Exception:
        return None
