"""Image and text embeddings: the `ImageTextEncoder` contract and its CLIP implementation.

Everything downstream (zero-shot attributes, concept detection, fidelity, similarity,
duplicates) needs only this contract, so tests plug in a deterministic fake and the counting
logic is checked independently of any CLIP's quality.

Contract of an ImageTextEncoder:
- `encode_images(images)`: uint8 (3, H, W) tensors (any size, on any device) -> float32
  numpy array (N, D) of unit-length rows;
- `encode_texts(texts)` -> float32 (N, D) unit rows in the same space;
- `logit_scale`: the temperature that turns cosines into softmax logits;
- `input_size` (optional): the image side the encoder resizes to, so decoders may draft;
- `identity`: a string that changes whenever embeddings could (model id, weights,
  preprocessing); the embedding cache is valid only for the same identity.
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from synthgen.builtin import resolve_model_source
from synthgen.errors import UserError



class ImageTextEncoder(Protocol):
    identity: str
    logit_scale: float

    def encode_images(self, images: list[torch.Tensor]) -> np.ndarray: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


class ClipEncoder:
    """A transformers CLIPModel + CLIPProcessor on one device, in inference mode.

    Preprocessing is the processor's own image processor (torchvision-backed in transformers
    5), called on uint8 tensors on the model's device, so resize/crop/normalise run on the GPU
    when there is one.
    """

    def __init__(self, model, processor, clip_id: str, device: torch.device, dtype: torch.dtype,
                 identity: str):
        self.model = model
        self.processor = processor
        self.clip_id = clip_id
        self.device = device
        self.dtype = dtype
        self.identity = identity
        self.logit_scale = float(model.logit_scale.exp().item())
        size = getattr(processor.image_processor, "size", None) or {}
        # The shortest side the processor resizes to: decoders may decode no larger.
        self.input_size = size.get("shortest_edge") or size.get("height")

    @torch.inference_mode()
    def encode_images(self, images: list[torch.Tensor]) -> np.ndarray:
        pixels = self.processor.image_processor(images=images, return_tensors="pt",
                                                device=self.device)["pixel_values"]
        pixels = pixels.to(self.device, self.dtype)
        # vision_model + visual_projection rather than get_image_features, whose return type
        # changed between transformers 4 (tensor) and 5 (model output).
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        embedded = self.model.visual_projection(pooled)
        return F.normalize(embedded.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True,
                                          return_tensors="pt")
        pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                       attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
        embedded = self.model.text_projection(pooled)
        return F.normalize(embedded.float(), dim=-1).cpu().numpy()


def load_clip_encoder(clip_id: str, device: torch.device, dtype: str = "auto") -> ClipEncoder:
    """Load a CLIP (hub id, local folder or builtin:NAME) from safetensors onto `device`."""
    from transformers import CLIPModel, CLIPProcessor

    source = resolve_model_source(clip_id, "--clip (or audit.clip)")
    torch_dtype = {"float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        torch_dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        model = CLIPModel.from_pretrained(source, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise UserError(f"--clip {clip_id}: could not load a CLIP model and processor from "
                        f"{source} ({str(error).splitlines()[0]}); give a hub id reachable from "
                        "here or a local folder holding a CLIPModel (safetensors) and its "
                        "processor files") from None
    # fp16 and fp32 embeddings differ in the last bits: the dtype is part of the identity.
    identity = f"{model_identity(clip_id, model, processor)}/{str(torch_dtype).replace('torch.', '')}"
    model = model.to(device=device, dtype=torch_dtype).eval()
    return ClipEncoder(model, processor, clip_id, device, torch_dtype, identity)


def load_encoder(clip_id: str, device: torch.device, dtype: str = "auto") -> ImageTextEncoder:
    """The encoder the command uses; one seam, so tests can plug in a deterministic fake."""
    return load_clip_encoder(clip_id, device, dtype)


def model_identity(clip_id: str, model, processor) -> str:
    """`clip_id@` a sha256 over the config, preprocessing and every weight: any change to
    them, a new identity. Where the model was read from and which transformers read it are
    left out (transformers records them in the config as `_name_or_path` and
    `transformers_version`), so the same weights from another checkout, install, spelling of
    the folder or transformers release keep their identity and their cached embeddings."""
    digest = hashlib.sha256()
    digest.update(json.dumps(_portable_config(model.config.to_dict()), sort_keys=True,
                             default=str).encode())
    digest.update(json.dumps(processor.image_processor.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{clip_id}@{digest.hexdigest()[:16]}"


# What a config records about where and by what it was read, not what the model computes.
_INSTALL_KEYS = {"_name_or_path", "transformers_version"}


def _portable_config(config):
    """A config dict (its sub-configs too) without the folder or hub id it was loaded from
    and the transformers version that read it."""
    if isinstance(config, dict):
        return {key: _portable_config(value) for key, value in config.items()
                if key not in _INSTALL_KEYS}
    if isinstance(config, list):
        return [_portable_config(value) for value in config]
    return config

