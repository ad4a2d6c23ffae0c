"""Tiny random-weight diffusers pipelines, built from configs with an offline tokenizer.

They run the real diffusers code path on a CPU in milliseconds, with nothing downloaded: the
way diffusers' own tests build `get_dummy_components`. The pictures are noise; the point is the
plumbing (batching, seeding, shards). `builtin:tiny-random` is one of these (`save_tiny_pipeline`
with the defaults; `synthgen dev tiny-random OUT_DIR [--family sd|sdxl] [--seed N]` writes one),
saved with `save_pretrained` and loaded through the same `from_pretrained` call as any hub model.
"""

from __future__ import annotations

from pathlib import Path

import torch

# The tokenizer's vocabulary: its 2 special tokens, then one token per byte and one per
# byte at the end of a word. With no merges every word is spelled out byte by byte, which is
# all a random text encoder needs.
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def byte_level_clip_tokenizer(model_max_length: int = 77):
    """A CLIPTokenizer made offline: byte-level vocabulary, no merges, ids 0 and 1 special."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    characters = sorted(ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(_SPECIAL_TOKENS)}
    for suffix in ("", "</w>"):
        for character in characters:
            vocab[character + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def _text_encoder_config(vocab_size: int, hidden_size: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=vocab_size,
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_attention_heads=2,
        num_hidden_layers=2, max_position_embeddings=77, layer_norm_eps=1e-5,
        projection_dim=projection_dim or hidden_size,
    )


def build_tiny_pipeline(family: str = "sd", seed: int = 0):
    """A StableDiffusionPipeline ("sd") or StableDiffusionXLPipeline ("sdxl") of random weights.

    Weights depend only on `seed`. The VAE downsamples by 2, so a 64x64 image has 32x32 latents.
    """
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = byte_level_clip_tokenizer()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="trailing", prediction_type="epsilon", steps_offset=1,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8,
        sample_size=64,
    )
    if family == "sd":
        unet = UNet2DConditionModel(
            block_out_channels=(16, 32), layers_per_block=1, sample_size=32, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(_text_encoder_config(len(tokenizer), 32))
        return StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    if family == "sdxl":
        # SDXL conditions on two text encoders (hidden 16 + 16 = cross_attention_dim 32)
        # plus a pooled embedding and six size/crop numbers through `add_embedding`.
        unet = UNet2DConditionModel(
            block_out_channels=(16, 32), layers_per_block=1, sample_size=32, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=16 + 6 * 8, norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(_text_encoder_config(len(tokenizer), 16))
        text_encoder_2 = CLIPTextModelWithProjection(_text_encoder_config(len(tokenizer), 16, 16))
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=tokenizer, tokenizer_2=byte_level_clip_tokenizer(), unet=unet,
            scheduler=scheduler, force_zeros_for_empty_prompt=True,
        )
    raise ValueError(f"family must be 'sd' or 'sdxl', got {family!r}")


def build_tiny_decoder(seed: int = 0):
    """A random AutoencoderTiny that upsamples by 2, matching `build_tiny_pipeline`'s latents."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(
        encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
        num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4,
        upsampling_scaling_factor=2,
    )


def save_tiny_pipeline(directory: str | Path, family: str = "sd", seed: int = 0) -> Path:
    """Build and save a tiny pipeline as a model folder (safetensors weights)."""
    directory = Path(directory)
    build_tiny_pipeline(family, seed).save_pretrained(directory, safe_serialization=True)
    return directory
