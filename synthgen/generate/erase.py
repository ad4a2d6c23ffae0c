"""Erase a concept from a text-to-image model by a closed-form edit of cross-attention.

Unified Concept Editing (Gandikota et al., 2024): every cross-attention layer reads the text
through its key and value projections W (out x d). The edit solves, per W,

    min_W'  sum_e |W' c_e - W c_t|^2  +  lam sum_p |W' c_p - W c_p|^2  +  gamma |W' - W|^2

where c_e are the erased concept's text embeddings, c_t the target concept's at the same token
positions, and c_p the embeddings of concepts to preserve. The minimiser is

    W' = (W C_t C_e^T + lam W C_p C_p^T + gamma W) (C_e C_e^T + lam C_p C_p^T + gamma I)^-1,

so the model reads the erased concept as the target and the preserved ones as before. No
training, seconds on a CPU.
"""

from __future__ import annotations

import hashlib

import torch

# Preserved concepts weigh as much as the erased one; gamma keeps W' near W in directions the
# text never visits (relative to the embeddings' scale, see `_ridge`).
PRESERVE_WEIGHT = 1.0
RIDGE = 1e-3


@torch.no_grad()
def _encode(pipeline, text: str) -> torch.Tensor:
    """(77, d) float64 cross-attention input of `text`, padding included."""
    from diffusers import StableDiffusionXLPipeline

    device = pipeline.unet.device
    if isinstance(pipeline, StableDiffusionXLPipeline):
        embeds = pipeline.encode_prompt(text, device=device, num_images_per_prompt=1,
                                        do_classifier_free_guidance=False)[0]
    else:
        embeds = pipeline.encode_prompt(text, device, 1, False)[0]
    return embeds[0].double().cpu()


def token_count(pipeline, text: str) -> int:
    """Tokens of `text` including BOS and EOS."""
    return len(pipeline.tokenizer(text, truncation=True).input_ids)


def text_embeddings(pipeline, text: str) -> torch.Tensor:
    """(tokens, d) float64 cross-attention inputs of `text`: BOS, its tokens and EOS."""
    return _encode(pipeline, text)[:token_count(pipeline, text)]


def cross_attention_projections(unet) -> list[tuple[str, torch.nn.Linear]]:
    """Every key and value projection that reads the text, in module order."""
    projections = []
    for name, module in unet.named_modules():
        if getattr(module, "is_cross_attention", False):
            projections += [(f"{name}.to_k", module.to_k), (f"{name}.to_v", module.to_v)]
    return projections


def paired_embeddings(pipeline, concept: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The concept's token embeddings and the target's at the same positions (padding beyond
    the target's end): the edit maps position i of the concept onto position i of the target."""
    length = token_count(pipeline, concept)
    return _encode(pipeline, concept)[:length], _encode(pipeline, target)[:length]


def _ridge(matrix: torch.Tensor) -> float:
    return RIDGE * float(torch.diagonal(matrix).mean())


@torch.no_grad()
def erase_concept(pipeline, concept: str, target: str = "", preserve: list[str] = ()) -> dict:
    """Edit `pipeline.unet` in place so `concept` renders as `target`; returns the edit record.

    The record (concept, target, preserve, layer count, sha256 of the edited weights) goes into
    the dataset manifest, so a dataset says exactly which model made it.
    """
    erased, targets = paired_embeddings(pipeline, concept, target)
    kept = [text_embeddings(pipeline, text) for text in preserve]
    kept = torch.cat(kept) if kept else torch.zeros(0, erased.shape[1], dtype=torch.float64)
    # Right-hand factor, shared by every layer: C_e C_e^T + lam C_p C_p^T + gamma I.
    gram = erased.T @ erased + PRESERVE_WEIGHT * kept.T @ kept
    gamma = _ridge(gram)
    inverse = torch.linalg.inv(gram + gamma * torch.eye(gram.shape[0], dtype=torch.float64))
    digest = hashlib.sha256()
    projections = cross_attention_projections(pipeline.unet)
    for _, linear in projections:
        weight = linear.weight.detach().double().cpu()
        left = (weight @ targets.T @ erased
                + PRESERVE_WEIGHT * weight @ kept.T @ kept
                + gamma * weight)
        edited = left @ inverse
        linear.weight.copy_(edited.to(linear.weight.dtype))
        digest.update(linear.weight.detach().cpu().contiguous().float().numpy().tobytes())
    return {"method": "erase", "concept": concept, "target": target, "preserve": list(preserve),
            "layers": len(projections), "weights_sha256": digest.hexdigest()}
