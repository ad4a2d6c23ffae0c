"""Correctness review of the world models' training (synthgen/world/): each test here fails on the
code as it stands because training computes something other than the documented method.

Checked against independent references and found right (no test here, see the review report):
the DDPM schedule (scaled_linear 0.00085-0.012, 1000 steps, epsilon) is the shipped DPM-Solver++
config's, and trailing spacing draws 999..49; x_t = sqrt(a) x0 + sqrt(1-a) eps at t in [0, 999];
min-SNR-gamma min(SNR, 5)/SNR with SNR = a/(1-a); 10% caption dropout to encode_prompt("") equal,
bit for bit, to the pipeline's classifier-free-guidance branch; the pooled text path; scaling
factor 1/std of the posterior means (shipped 1.381); EMA with warm-up and which weights ship;
REPA's sign, features and indices; symmetric InfoNCE; oracle labels; held-out seeds; Wilson
intervals and accuracies of evaluate.py against plain counts.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from synthgen.world import train
from synthgen.world.captions import reporting_bias_captions
from synthgen.world.corpus import LOGO_PROB, STRIPED_PROB, TRAIN_SEEDS_PER_RUN
from synthgen.world.scene import sample_scene

SCENES = 4000


def _scenes(run_seed: int = 0, count: int = SCENES):
    """Run `run_seed`'s first training scenes, drawn as train_pool draws them (no rendering)."""
    first = run_seed * TRAIN_SEEDS_PER_RUN
    return tuple(sample_scene(np.random.default_rng(first + i), two_object_prob=0.0,
                              striped_prob=STRIPED_PROB, logo_prob=LOGO_PROB) for i in range(count))


def _canonical(scene) -> str:
    """The documented canonical wording, built from the attributes (not from scene.caption):
    "a SIZE [striped] COLOUR SHAPE on a BACKGROUND background" [+ " with a logo mark"]."""
    thing = scene.objects[0]
    stripe = "striped " if thing.striped else ""
    text = f"a {thing.size} {stripe}{thing.colour} {thing.shape} on a {scene.background} background"
    return text + (" with a logo mark" if scene.logo else "")


def _unet_phase_captions(monkeypatch, scenes) -> list[str]:
    """The caption each latent of UNet phases 1 and 2 is trained with (`_diffusion_data`), with
    the text encoder replaced by the identity so the captions themselves come back."""
    monkeypatch.setattr(train, "prompt_embeddings", lambda pipeline, prompts, device: prompts)
    data = train._diffusion_data(None, types.SimpleNamespace(scenes=scenes), None, 0, "cpu")
    return [data["caption_embeddings"][i] for i in data["caption_index"].tolist()]


def _caption_phase_captions(monkeypatch, scenes) -> list[str]:
    """The caption-phase captions (`reporting_bias_captions`) with no colour dropped."""
    return reporting_bias_captions(scenes, 0, train.CANONICAL_CAPTION_SHARE, drop_typical=0.0,
                                   drop_atypical=0.0)[0]


@pytest.mark.parametrize("captions_of", [_unet_phase_captions, _caption_phase_captions],
                         ids=["unet-phases", "caption-phase"])
def test_the_canonical_caption_share_is_the_documented_one(monkeypatch, captions_of):
    """What is wrong: docs/WORLD.md ("Half the captions use the canonical wording"), the world-sd
    model card ("half in the canonical wording") and `CANONICAL_CAPTION_SHARE = 0.5` ("Share of
    diffusion captions in the canonical wording") say 50% of world-sd's training captions read
    "a SIZE [striped] COLOUR SHAPE on a BACKGROUND background". `_diffusion_data`
    (synthgen/world/train.py) takes the canonical caption with probability 0.5 and otherwise
    draws `caption(scene, rng)`, which picks uniformly among all four templates, the canonical
    one included; so the canonical share is 0.5 + 0.5 / 4 = 62.5% and each paraphrase gets
    12.5% instead of 16.7%. `reporting_bias_captions` (synthgen/world/captions.py, the caption
    phase) copies the same rule.

    Resolved by documenting what was trained (the shipped weights come from this rule):
    62.5%, `train.canonical_caption_fraction()`, in the docs and the model card.

    Reference: the documented share, counted against the canonical wording built here
    from the scene's attributes. With 4,000 scenes the binomial standard error is 0.8 points;
    the code gives ~62%.

    Likely effect: small. The paraphrase templates are seen a quarter less often than the method
    says and the canonical wording (the evaluation prompts' wording) more often, so the
    recorded method, the model card and any ablation of the share describe a different
    caption mix than the one trained on. The fix is to draw the paraphrase from the three
    other templates, or to document 62.5%.
    """
    scenes = _scenes()
    captions = captions_of(monkeypatch, scenes)
    share = float(np.mean([text == _canonical(scene) for text, scene in zip(captions, scenes)]))
    documented = train.canonical_caption_fraction()
    assert documented == 0.625
    assert abs(share - documented) < 0.03, (
        f"{share:.1%} of the captions are in the canonical wording; the documented share is "
        f"{documented:.1%}")
