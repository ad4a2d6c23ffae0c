"""A tiny random FLUX.1 pipeline, built from configs with offline tokenizers.

FLUX is the "generic" path's other common family (after PixArt): a flow-matching transformer
with two text encoders (CLIP, pooled; T5, per token) and, in FLUX.1-dev/schnell, a distilled
guidance input instead of classifier-free guidance. Built the way diffusers' own fast tests
build theirs; the pictures are noise, the point is the plumbing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pixart_fixture import offline_t5_tokenizer
from synthgen.generate.tiny_random import _text_encoder_config, byte_level_clip_tokenizer

RESOLUTION = 32  # pixels: the VAE halves them and the transformer packs 2x2 latent patches


def build_tiny_flux(seed: int = 0, guidance_embeds: bool = True):
    """A FluxPipeline of random weights; they depend only on `seed`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    clip_tokenizer, t5_tokenizer = byte_level_clip_tokenizer(), offline_t5_tokenizer()
    torch.manual_seed(seed)
    # joint_attention_dim is T5's d_model, pooled_projection_dim CLIP's hidden size.
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8), guidance_embeds=guidance_embeds,
    )
    torch.manual_seed(seed)
    clip = CLIPTextModel(_text_encoder_config(len(clip_tokenizer), 32))
    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=RESOLUTION,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.06, scaling_factor=1.5,
    )
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip,
                        tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer,
                        transformer=transformer)


def save_tiny_flux(folder: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Build and save a tiny FLUX pipeline as a model folder (safetensors weights)."""
    folder = Path(folder)
    build_tiny_flux(seed, guidance_embeds).save_pretrained(folder, safe_serialization=True)
    return folder
