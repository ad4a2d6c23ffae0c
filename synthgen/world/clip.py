"""The world CLIP: a small ``transformers.CLIPModel`` trained contrastively on rendered scenes.

``train_world_clip`` learns from (render, caption) pairs of a training pool;
``zero_shot_attribute_accuracy`` measures how often the model names the shape
and colour of held-out renders, with no supervised head.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from synthgen.world.corpus import ScenePool, images_to_tensor
from synthgen.world.scene import BACKGROUNDS, COLOURS, SHAPES, SIZES, caption
from synthgen.world.settings import TrainingOptions
from synthgen.world.tokenizer import MODEL_MAX_LENGTH

TEXT_HIDDEN_SIZE = 128
# 8x8 patches (16 tokens): 4x4 patches cost ~4x the CPU time for the vision tower.
PATCH_SIZE = 8
IMAGE_RESOLUTION = 32
# Pixel values are scaled to [-1, 1], the same range the VAE and oracle use.
PIXEL_MEAN = [0.5, 0.5, 0.5]
PIXEL_STD = [0.5, 0.5, 0.5]


def world_clip_config(vocab_size: int):
    """Text: 3 layers of 128; vision: ViT with PATCH_SIZE patches on 32x32, 4 layers of 128; projection 128."""
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, hidden_size=TEXT_HIDDEN_SIZE, intermediate_size=2 * TEXT_HIDDEN_SIZE,
                num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MODEL_MAX_LENGTH,
                bos_token_id=0, eos_token_id=1, pad_token_id=1, layer_norm_eps=1e-5)
    vision = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                  image_size=IMAGE_RESOLUTION, patch_size=PATCH_SIZE, num_channels=3, layer_norm_eps=1e-5)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)


def world_image_processor():
    """A ``CLIPImageProcessor`` that maps any image to 32x32 in [-1, 1], like training did."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": IMAGE_RESOLUTION}, resample=3,
        do_center_crop=True, crop_size={"height": IMAGE_RESOLUTION, "width": IMAGE_RESOLUTION},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=PIXEL_MEAN, image_std=PIXEL_STD, do_convert_rgb=True,
    )


def image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised projected image embeddings of pixels in [-1, 1], (N, 3, 32, 32)."""
    pooled = model.vision_model(pixel_values=pixels).pooler_output
    return F.normalize(model.visual_projection(pooled), dim=-1)


@torch.no_grad()
def patch_features(model, pixels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The vision tower's last hidden state at each patch (class token dropped), (N, 16, 128),
    row-major over the 4x4 patch grid, for pixels in [-1, 1], (N, 3, 32, 32)."""
    return torch.cat([model.vision_model(pixel_values=pixels[start:start + batch_size]).last_hidden_state[:, 1:]
                      for start in range(0, len(pixels), batch_size)])


def text_features(model, input_ids: torch.Tensor) -> torch.Tensor:
    """L2-normalised projected text embeddings (pooled at the first end-of-text token)."""
    pooled = model.text_model(input_ids=input_ids).pooler_output
    return F.normalize(model.text_projection(pooled), dim=-1)


class CaptionTokens:
    """Caches max-length token ids per caption, padded like the diffusers pipeline pads them."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._ids: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self._ids})
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=MODEL_MAX_LENGTH,
                                 truncation=True, return_tensors="pt").input_ids
            self._ids.update(zip(missing, ids))
        return torch.stack([self._ids[c] for c in captions])


@dataclass(frozen=True)
class ClipTrainingOptions(TrainingOptions):
    steps: int = 2500
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05


def train_world_clip(pool: ScenePool, tokenizer, settings: ClipTrainingOptions, device: torch.device,
                     seed: int, log=print):
    """Train a world CLIP with symmetric InfoNCE and a learned temperature; returns (model, stats).

    Batches are built of hard-negative groups (:func:`hard_negative_batches`):
    with random batches, colour, size and background alone tell the captions
    in a batch apart, so the model never has to learn shapes (the first run
    of this code reached 100% zero-shot colour but 54% shape accuracy).
    Each image's caption wording is drawn afresh from the world's templates
    every time it is used, so templates act as paraphrases.
    """
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(world_clip_config(len(tokenizer))).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay, betas=(0.9, 0.98))
    tokens = CaptionTokens(tokenizer)
    images = images_to_tensor(pool.images)
    rng = np.random.default_rng(seed)
    batches = hard_negative_batches(pool, settings.batch_size, rng)
    started = time.time()
    for step in range(settings.steps):
        # 1. Batch: groups of images that differ in shape only (plus nuisances), fresh caption wording.
        indices = next(batches)
        captions = [caption(pool.scenes[i], rng) for i in indices.tolist()]
        input_ids = _trim_padding(tokens(captions)).to(device)
        pixels = images[indices].to(device)
        # 2. Symmetric InfoNCE: image i's positive is caption i, every other caption a negative.
        logit_scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = logit_scale * image_features(model, pixels) @ text_features(model, input_ids).T
        targets = torch.arange(len(indices), device=device)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        # 3. Update with warm-up + cosine learning rate.
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == settings.steps - 1:
            log(f"clip step {step}/{settings.steps} loss {loss.item():.4f} "
                f"temperature {1 / logit_scale.item():.4f} ({time.time() - started:.0f}s)")
    model.eval()
    stats = {"steps": settings.steps, "batch_size": settings.batch_size, "train_scenes": len(pool),
             "hard_negative_group_size": HARD_NEGATIVE_GROUP,
             "final_loss": round(loss.item(), 4), "wall_seconds": round(time.time() - started, 1)}
    return model, stats


def _trim_padding(input_ids: torch.Tensor) -> torch.Tensor:
    """Drop padding columns after the batch's longest caption.

    The text tower is causal and pools at the first end-of-text token, so the
    trailing padding never changes its output; cutting it saves CPU time.
    """
    lengths = (input_ids != 1).sum(dim=1) + 1
    return input_ids[:, : int(lengths.max())]


HARD_NEGATIVE_GROUP = 8
"""Images per group in a CLIP batch: same colour, size and background, all different shapes."""


def hard_negative_batches(pool: ScenePool, batch_size: int, rng: np.random.Generator):
    """Yields index tensors of ``batch_size`` // ``HARD_NEGATIVE_GROUP`` groups.

    A group is ``HARD_NEGATIVE_GROUP`` pool images sharing colour, size and
    background with pairwise different shapes, so within a group only the
    shape (and stripes, logo, position) tells the captions apart. Groups are
    drawn independently, so across groups everything varies.
    """
    cells: dict[tuple[str, str, str], dict[str, list[int]]] = {}
    for index, scene in enumerate(pool.scenes):
        obj = scene.objects[0]
        cells.setdefault((obj.colour, obj.size, scene.background), {}).setdefault(obj.shape, []).append(index)
    # Only keys where enough distinct shapes exist (all of them, for a pool of thousands).
    keys = [key for key, by_shape in cells.items() if len(by_shape) >= HARD_NEGATIVE_GROUP]
    if not keys:
        raise ValueError("pool too small for hard-negative groups")
    groups = max(1, batch_size // HARD_NEGATIVE_GROUP)
    while True:
        batch = []
        for key_index in rng.integers(0, len(keys), groups):
            by_shape = cells[keys[key_index]]
            shapes = sorted(by_shape)
            for shape_index in rng.choice(len(shapes), HARD_NEGATIVE_GROUP, replace=False):
                members = by_shape[shapes[shape_index]]
                batch.append(members[int(rng.integers(len(members)))])
        yield torch.tensor(batch)


@dataclass(frozen=True)
class VisionRefinementOptions(TrainingOptions):
    steps: int = 6000
    batch_size: int = 128
    learning_rate: float = 5e-4
    warmup_steps: int = 50
    weight_decay: float = 0.05


def caption_bank() -> tuple[list[str], list[tuple[str, str, str, bool, str, bool]]]:
    """Canonical captions of every single-object scene, with (shape, colour, size, striped, background, logo)."""
    captions, attributes = [], []
    for shape, colour, size, striped, background, logo in itertools.product(
            SHAPES, COLOURS, SIZES, (False, True), BACKGROUNDS, (False, True)):
        stripe = "striped " if striped else ""
        text = f"a {size} {stripe}{colour} {shape} on a {background} background"
        captions.append(text + (" with a logo mark" if logo else ""))
        attributes.append((shape, colour, size, striped, background, logo))
    return captions, attributes


def refine_vision_tower(model, tokenizer, pool: ScenePool, settings: VisionRefinementOptions,
                        device: torch.device, seed: int, log=print) -> dict:
    """Stage 2 of CLIP training: InfoNCE of images against the whole caption bank, text tower frozen.

    Stage 1 only sees the other captions of its batch as negatives; here every
    image is scored against all 7,920 canonical single-object captions
    (:func:`caption_bank`), so each shape, colour, size, striping, background
    and logo alternative is a negative at every step. Only the vision tower,
    the visual projection and the temperature are updated: the text tower,
    and so the text encoder of world-sd, stays exactly as stage 1 left it.
    Trains ``model`` in place; returns stats.
    """
    captions, attributes = caption_bank()
    position = {attribute: i for i, attribute in enumerate(attributes)}
    model.requires_grad_(False)
    trainable = [*model.vision_model.parameters(), *model.visual_projection.parameters(), model.logit_scale]
    for parameter in trainable:
        parameter.requires_grad_(True)
    with torch.no_grad():
        input_ids = CaptionTokens(tokenizer)(captions).to(device)
        bank = torch.cat([text_features(model, chunk) for chunk in input_ids.split(1024)])
    targets_all = torch.tensor([position[(o.shape, o.colour, o.size, o.striped, scene.background, scene.logo)]
                                for scene in pool.scenes for o in scene.objects[:1]])
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                  betas=(0.9, 0.98))
    images = images_to_tensor(pool.images)
    generator = torch.Generator().manual_seed(seed)
    model.vision_model.train()
    started = time.time()
    for step in range(settings.steps):
        # 1. A random batch of renders and the bank index of each one's canonical caption.
        indices = torch.randint(0, len(pool), (settings.batch_size,), generator=generator)
        pixels, targets = images[indices].to(device), targets_all[indices].to(device)
        # 2. Image-to-text InfoNCE over the full bank, learned temperature.
        logit_scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
        loss = F.cross_entropy(logit_scale * image_features(model, pixels) @ bank.T, targets)
        # 3. Update the vision side only.
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if step % 100 == 0 or step == settings.steps - 1:
            log(f"clip vision refinement step {step}/{settings.steps} loss {loss.item():.4f} "
                f"({time.time() - started:.0f}s)")
    model.eval().requires_grad_(False)
    return {"steps": settings.steps, "batch_size": settings.batch_size, "bank_captions": len(captions),
            "final_loss": round(loss.item(), 4), "wall_seconds": round(time.time() - started, 1)}


@torch.no_grad()
def zero_shot_attribute_accuracy(model, tokenizer, pool: ScenePool, device: torch.device) -> dict:
    """Fraction of ``pool``'s single-object renders whose shape / colour the CLIP names correctly.

    Prompt ensembling over the caption grammar: every caption of
    :func:`caption_bank` (all 7,920 canonical single-object captions) is
    scored, scores become probabilities with the model's temperature, and a
    shape's (colour's) score is the sum over the captions naming it; the
    arg-max of each sum is the prediction.
    """
    model.eval()
    prompts, attributes = caption_bank()
    input_ids = CaptionTokens(tokenizer)(prompts).to(device)
    text = torch.cat([text_features(model, chunk) for chunk in input_ids.split(1024)])
    shape_of = torch.tensor([SHAPES.index(attribute[0]) for attribute in attributes], device=device)
    colour_of = torch.tensor([list(COLOURS).index(attribute[1]) for attribute in attributes], device=device)
    images = images_to_tensor(pool.images)
    shape_hits = colour_hits = 0
    for start in range(0, len(pool), 256):
        pixels = images[start:start + 256].to(device)
        probs = (model.logit_scale.exp() * image_features(model, pixels) @ text.T).softmax(dim=-1)
        shape_scores = torch.zeros(len(pixels), len(SHAPES), device=device).index_add_(1, shape_of, probs)
        colour_scores = torch.zeros(len(pixels), len(COLOURS), device=device).index_add_(1, colour_of, probs)
        scenes = pool.scenes[start:start + 256]
        shape_hits += sum(int(p) == SHAPES.index(s.objects[0].shape)
                          for p, s in zip(shape_scores.argmax(1), scenes))
        colour_hits += sum(int(p) == list(COLOURS).index(s.objects[0].colour)
                           for p, s in zip(colour_scores.argmax(1), scenes))
    return {"zero_shot_shape_accuracy": shape_hits / len(pool),
            "zero_shot_colour_accuracy": colour_hits / len(pool), "held_out_images": len(pool)}


def save_world_clip(model, tokenizer, directory) -> None:
    """Save CLIPModel + tokenizer + image processor so ``CLIPProcessor.from_pretrained`` works."""
    from transformers import CLIPProcessor

    model.save_pretrained(directory, safe_serialization=True)
    CLIPProcessor(image_processor=world_image_processor(), tokenizer=tokenizer).save_pretrained(directory)
