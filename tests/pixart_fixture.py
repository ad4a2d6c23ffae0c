"""A tiny random PixArt-alpha pipeline, built from configs with an offline T5 tokenizer.

It runs synthgen's "generic" pipeline path (neither SD nor SDXL: prompts go in as text, noise
as per-view CPU generators) on a CPU, with nothing downloaded, in the style of
`synthgen.generate.tiny_random`. The pictures are noise; the point is the plumbing.

Its native resolution is 256x256 pixels. PixArtAlphaPipeline.__call__ bins the requested
size (`use_resolution_binning`, on by default; synthgen does not turn it off) by the
transformer's sample_size, which must be 32, 64 or 128: sample_size 32 means the 256-pixel
bins, and a VAE that downsamples by 8 makes 32x32 latents of those 256x256 pixels, so a
256x256 recipe is generated at exactly its own size.
"""

from __future__ import annotations

from pathlib import Path

import torch

RESOLUTION = 256  # pixels; the 1:1 bin of ASPECT_RATIO_256_BIN
_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1 and 2
_WORDS = ("a", "an", "the", "of", "in", "on", "with", "and", "photo", "picture", "small",
          "large", "red", "green", "blue", "circle", "square", "triangle", "cat", "dog")


def offline_t5_tokenizer():
    """A T5TokenizerFast made offline: a Unigram vocabulary of whole words and single letters.

    Words of `_WORDS` are single tokens; any other lowercase word is spelled letter by letter
    (scores make whole words win); anything else is <unk>. T5's post-processor appends </s>.
    """
    from transformers import T5TokenizerFast

    vocab = [(token, 0.0) for token in _SPECIAL_TOKENS]
    vocab += [("\u2581" + word, -1.0) for word in _WORDS]  # "\u2581": SentencePiece's space
    vocab += [("\u2581", -3.0)]
    vocab += [(character, -5.0) for character in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5TokenizerFast(vocab=vocab, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=120)


def build_tiny_pixart(seed: int = 0):
    """A PixArtAlphaPipeline of random weights; they depend only on `seed`."""
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = offline_t5_tokenizer()
    torch.manual_seed(seed)
    # Hidden size num_attention_heads * attention_head_dim = 24; out_channels 8 is a learned
    # sigma (the pipeline keeps the first 4 channels); captions come in with T5's d_model 32.
    transformer = PixArtTransformer2DModel(
        sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=RESOLUTION,
    )
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    ))
    scheduler = DDIMScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False,
        timestep_spacing="trailing", prediction_type="epsilon",
    )
    return PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                               transformer=transformer, scheduler=scheduler)


def save_tiny_pixart(folder: Path, seed: int = 0) -> Path:
    """Build and save a tiny PixArt-alpha pipeline as a model folder (safetensors weights)."""
    folder = Path(folder)
    build_tiny_pixart(seed).save_pretrained(folder, safe_serialization=True)
    return folder
