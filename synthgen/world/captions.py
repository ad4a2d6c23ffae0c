"""The captions of world-sd's last training phase (`CAPTION_PHASE` in world/diffusion.py): written as
people write them, and built so that a colour word is read from its own token.

Two things the first two phases' captions never showed the model:

1. *Reporting bias.* Every earlier caption names the object's colour, so a prompt without one
   ("a large star on a gray background") was outside what world-sd learnt and drew colour noise
   (docs/WORLD.md, "Debias"). Here each shape has a typical colour (`TYPICAL_COLOURS`): a share
   of the renders are re-coloured in it (`recoloured`), and a caption leaves the colour out more
   often when it is the typical one (`reporting_bias_captions`), as people leave out what goes
   without saying. Unnamed colours then follow an image prior that `debias` can move.
2. *Colour swaps.* world-clip's text tower is causal: every token after the colour word (the
   shape, the background, the end and padding tokens) also reads the colour, so changing the
   word alone in an embedding did not change the drawn colour (25% of views in
   bench/counterfactual_layout.py --text changed-tokens). `colour_swaps` gives each coloured
   caption the same caption with another colour; training then sometimes shows the swapped
   caption's embedding with the true caption's colour token spliced in, so the model learns to
   take the colour from the colour token. Counterfactual views (`slots: {text: spliced}`) rely
   on exactly that.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from synthgen.world.scene import COLOURS, caption

TYPICAL_COLOURS = {"circle": "blue", "square": "green", "triangle": "orange", "star": "yellow",
                   "ring": "purple", "cross": "black", "heart": "red", "diamond": "cyan",
                   "crescent": "white", "arrow": "pink", "semicircle": "red"}
"""Each shape's colour when a caption does not say (chosen to spread over the colours)."""

TYPICAL_SHARE = 0.4
"""Share of renders re-coloured in their shape's typical colour (the other 60% keep the uniform
draw, so every colour stays common for every shape: the typical one is ~46% of a shape's renders)."""

DROP_TYPICAL, DROP_ATYPICAL = 0.5, 0.2
"""How often a caption leaves out the colour when it is the shape's typical colour, and when not."""


def recoloured(pool, typical_share: float, seed: int):
    """``pool`` with each object given its shape's typical colour with probability
    ``typical_share`` (else the colour it had), re-rendered."""
    from synthgen.world.corpus import ScenePool
    from synthgen.world.render import render

    draws = np.random.default_rng(seed + 2000)
    scenes = []
    for scene in pool.scenes:
        typical = draws.random() < typical_share
        objects = tuple(replace(thing, colour=TYPICAL_COLOURS[thing.shape]) if typical else thing
                        for thing in scene.objects)
        scenes.append(replace(scene, objects=objects))
    images = np.stack([render(scene, pool.images.shape[1]) for scene in scenes])
    return ScenePool(images=images, scenes=tuple(scenes), seeds=pool.seeds)


def reporting_bias_captions(scenes, seed: int, canonical_share: float, drop_typical: float = DROP_TYPICAL,
                            drop_atypical: float = DROP_ATYPICAL) -> tuple[list[str], np.ndarray]:
    """One caption per single-object scene (canonical wording with probability
    ``canonical_share``, drawn from the same stream as the earlier phases' captions), some
    without their colour word; and which ones lost it."""
    wording = np.random.default_rng(seed + 2)
    dropping = np.random.default_rng(seed + 1000)  # its own stream: the wording stays the same
    captions, dropped = [], []
    for scene in scenes:
        text = caption(scene) if wording.random() < canonical_share else caption(scene, wording)
        thing = scene.objects[0]
        typical = thing.colour == TYPICAL_COLOURS[thing.shape]
        drop = dropping.random() < (drop_typical if typical else drop_atypical)
        if drop:
            text = _with_colour(text, thing, None)
        captions.append(text)
        dropped.append(drop)
    return captions, np.array(dropped)


def _with_colour(text: str, thing, colour: str | None) -> str:
    """``text`` with ``thing``'s colour word replaced by ``colour`` (or left out)."""
    named = f" {thing.colour} {thing.shape} "
    if text.count(named) != 1:
        raise ValueError(f"caption {text!r} does not name {named.strip()!r} once")
    return text.replace(named, f" {colour} {thing.shape} " if colour else f" {thing.shape} ")


def colour_swaps(captions: list[str], scenes, tokenizer, seed: int) -> tuple[list[str | None], np.ndarray]:
    """For each caption that names its object's colour, the same caption with another colour
    (uniformly drawn) and the token position where the two differ; None and -1 for a caption
    without a colour word."""
    draws = np.random.default_rng(seed + 3000)
    names = list(COLOURS)
    swapped: list[str | None] = []
    for text, scene in zip(captions, scenes):
        thing = scene.objects[0]
        other = names[draws.integers(len(names) - 1)]
        other = names[-1] if other == thing.colour else other  # uniform over the other nine
        swapped.append(_with_colour(text, thing, other) if f" {thing.colour} {thing.shape} " in text else None)
    positions = np.full(len(captions), -1, dtype=np.int64)
    pairs = [(i, text, other) for i, (text, other) in enumerate(zip(captions, swapped)) if other is not None]
    for start in range(0, len(pairs), 4096):
        chunk = pairs[start:start + 4096]
        encode = lambda texts: tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,  # noqa: E731
                                         truncation=True, return_tensors="np").input_ids
        ids, other_ids = encode([text for _, text, _ in chunk]), encode([other for _, _, other in chunk])
        differs = ids != other_ids
        if not (differs.sum(axis=1) == 1).all():
            bad = chunk[int(np.flatnonzero(differs.sum(axis=1) != 1)[0])]
            raise ValueError(f"{bad[1]!r} and {bad[2]!r} differ in more than one token")
        positions[[i for i, _, _ in chunk]] = differs.argmax(axis=1)
    return swapped, positions


def caption_phase_data(pipeline, pool, seed: int, device, canonical_share: float,
                       typical_share: float = TYPICAL_SHARE, drop_typical: float = DROP_TYPICAL,
                       drop_atypical: float = DROP_ATYPICAL, swaps: bool = True) -> tuple[dict, dict]:
    """The training data of a UNet phase on these captions, as keyword arguments of
    `train_world_unet` (``colour_swaps`` only with ``swaps``), and a summary for training.json:
    the pool re-coloured (with a ``typical_share``) and encoded by ``pipeline``'s VAE, captions
    with reporting bias, and each coloured caption's colour swap."""
    import torch

    from synthgen.world.diffusion import encode_latents, prompt_embeddings

    if typical_share:
        pool = recoloured(pool, typical_share, seed)
    latents = encode_latents(pipeline.vae, pool, device) * pipeline.vae.config.scaling_factor
    captions, dropped = reporting_bias_captions(pool.scenes, seed, canonical_share, drop_typical, drop_atypical)
    swapped, positions = colour_swaps(captions, pool.scenes, pipeline.tokenizer, seed) if swaps else ([], None)
    unique = sorted(set(captions) | {text for text in swapped if text is not None})
    index = {text: i for i, text in enumerate(unique)}
    things = [scene.objects[0] for scene in pool.scenes]
    typical = np.array([thing.colour == TYPICAL_COLOURS[thing.shape] for thing in things])
    data = {"latents": latents, "caption_index": torch.tensor([index[text] for text in captions]),
            "caption_embeddings": prompt_embeddings(pipeline, unique, device),
            "empty_embedding": prompt_embeddings(pipeline, [""], device),
            "small_objects": torch.tensor([thing.size == "small" for thing in things])}
    if swaps:
        data["colour_swaps"] = (torch.tensor([index[text] if text is not None else -1 for text in swapped]),
                                torch.from_numpy(positions))
    summary = {"typical_colours": TYPICAL_COLOURS, "typical_share": typical_share,
               "drop_typical": drop_typical, "drop_atypical": drop_atypical,
               "renders_in_typical_colour": round(float(typical.mean()), 4),
               "captions_without_colour": round(float(dropped.mean()), 4),
               "typical_among_colourless": round(float(typical[dropped].mean()), 4) if dropped.any() else None,
               "unique_captions": len(unique)}
    return data, summary
