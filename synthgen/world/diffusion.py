"""The world text-to-image model: a StableDiffusionPipeline with the world CLIP's text tower.

Training is two stages on rendered scenes:

1. ``train_world_vae``: an ``AutoencoderKL`` that downsamples 32x32 images to
   4x16x16 latents, trained for reconstruction plus a small KL term.
2. ``train_world_unet``: a ``UNet2DConditionModel`` trained with the DDPM
   noise-prediction loss on VAE latents (scaled by ``scaling_factor`` =
   1/std of the latents), weighted by min-SNR-gamma, conditioned on the frozen
   text tower's token embeddings (cross-attention, plus a pooled copy added
   to the timestep embedding), with captions dropped to the empty prompt 10%
   of the time so classifier-free guidance works; in the first of its two
   phases also aligned with the world CLIP's image features (``AlignmentHead``).

``assemble_pipeline`` puts the parts together as an ordinary diffusers
pipeline folder that ``AutoPipelineForText2Image.from_pretrained`` loads.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from synthgen.world.corpus import ScenePool, images_to_tensor
from synthgen.world.settings import TrainingOptions

LATENT_CHANNELS = 4
CAPTION_DROPOUT = 0.1
TRAIN_TIMESTEPS = 1000
# min-SNR-gamma loss weighting (Hang et al. 2023): noise levels whose SNR exceeds gamma (the
# nearly clean ones, i.e. fine detail) stop dominating the loss, so training time goes to the
# noisy levels where the layout, shape and colour of an object are decided.
MIN_SNR_GAMMA = 5.0
# Stable Diffusion's noise schedule: the samplers shipped with diffusers are tuned for it.
BETA_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_world_vae():
    """AutoencoderKL 32x32x3 <-> 16x16x4 (one downsampling), no attention, channels (32, 32).

    Narrow on purpose: full-resolution convolutions dominate CPU training time,
    and flat-coloured shapes need little capacity to reconstruct.
    """
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8, sample_size=32,
        mid_block_add_attention=False,
    )


def build_world_unet(cross_attention_dim: int):
    """UNet2DConditionModel on 16x16 latents, channels (32, 64, 96), cross-attention at 8x8 and 4x4.

    ~2.9M parameters: the widest layers sit at the coarse resolutions, where
    they are cheap on a CPU and where the text decides shape and colour.
    ``addition_embed_type="text"`` also pools the prompt's token embeddings into
    the timestep embedding, so every resolution block (also the 16x16 ones
    without cross-attention) knows the prompt: in the first world-sd, with
    cross-attention alone, 2,000 steps learnt colour (70%) long before shape (17%).
    The stock StableDiffusionPipeline runs it unchanged (it only passes the token
    embeddings, which the UNet pools itself).
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 96), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=16,
        addition_embed_type="text", addition_embed_type_num_heads=4,
    )


def build_sampling_scheduler():
    """DPM-Solver++ (2M) over the training noise schedule: good samples in ~20 steps.

    The config also records ``clip_sample=False``, as Stable Diffusion's own scheduler configs
    do: a recipe's ``model.scheduler`` builds the new scheduler from this config, and DDIM or
    DDPM otherwise default to clipping the predicted latent to [-1, 1], which wrecks latents
    of unit variance (measured on world-sd: DDIM 50 steps drew the prompted shape 7.7% of the
    time instead of 86%).
    """
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=TRAIN_TIMESTEPS, prediction_type="epsilon",
                                            timestep_spacing="trailing", steps_offset=1, **BETA_SCHEDULE)
    scheduler.register_to_config(clip_sample=False)
    return scheduler


def assemble_pipeline(vae, unet, text_encoder, tokenizer):
    """A StableDiffusionPipeline with no safety checker or feature extractor."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=build_sampling_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class VaeTrainingOptions(TrainingOptions):
    steps: int = 2400
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    kl_weight: float = 1e-6


def train_world_vae(pool: ScenePool, settings: VaeTrainingOptions, device: torch.device, seed: int,
                    log=print):
    """Train the autoencoder on pool renders (MSE reconstruction + ``kl_weight`` * KL); returns (vae, stats)."""
    torch.manual_seed(seed)
    vae = build_world_vae().to(device)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    images = images_to_tensor(pool.images)
    rng = np.random.default_rng(seed)
    started = time.time()
    for step in range(settings.steps):
        # 1. A random batch of renders in [-1, 1].
        pixels = images[torch.from_numpy(rng.integers(0, len(pool), settings.batch_size))].to(device)
        # 2. Encode, sample a latent, decode.
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        # 3. Loss: reconstruction plus a small KL that keeps the latent space smooth.
        mse = F.mse_loss(reconstruction, pixels)
        loss = mse + settings.kl_weight * posterior.kl().mean()
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == settings.steps - 1:
            log(f"vae step {step}/{settings.steps} mse {mse.item():.5f} ({time.time() - started:.0f}s)")
    vae.eval()
    stats = {"steps": settings.steps, "batch_size": settings.batch_size, "train_scenes": len(pool),
             "final_mse": round(mse.item(), 6), "wall_seconds": round(time.time() - started, 1)}
    return vae, stats


@torch.no_grad()
def encode_latents(vae, pool: ScenePool, device: torch.device) -> torch.Tensor:
    """Posterior means of the pool's renders, (N, 4, 16, 16), unscaled."""
    images = images_to_tensor(pool.images)
    return torch.cat([vae.encode(images[start:start + 256].to(device)).latent_dist.mean.cpu()
                      for start in range(0, len(images), 256)])


@torch.no_grad()
def round_trips(vae, pool: ScenePool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(renders, decode(encode mean) of them), both (N, 3, H, W) in [-1, 1] on the CPU."""
    images = images_to_tensor(pool.images)
    decoded = [vae.decode(vae.encode(images[start:start + 256].to(device, vae.dtype)).latent_dist.mean)
               .sample.clamp(-1, 1).float().cpu() for start in range(0, len(images), 256)]
    return images, torch.cat(decoded)


def reconstruction_error(vae, pool: ScenePool, device: torch.device) -> float:
    """Mean absolute error, in 0-255 pixel units, of decode(encode mean) on ``pool``."""
    images, decoded = round_trips(vae, pool, device)
    # The mean of per-256 chunk means, as this was first measured (the shipped model cards).
    errors = [(decoded[start:start + 256] - images[start:start + 256]).abs().mean().item() * 127.5
              for start in range(0, len(images), 256)]
    return float(np.mean(errors))


@torch.no_grad()
def prompt_embeddings(pipeline, prompts: list[str], device: torch.device) -> torch.Tensor:
    """Token embeddings exactly as the pipeline computes them at sampling time, (N, L, hidden)."""
    return torch.cat([pipeline.encode_prompt(prompts[start:start + 512], device, 1, False)[0].cpu()
                      for start in range(0, len(prompts), 512)])


@dataclass(frozen=True)
class UnetTrainingOptions(TrainingOptions):
    steps: int = 10000
    batch_size: int = 64
    learning_rate: float = 5e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    min_snr_gamma: float | None = MIN_SNR_GAMMA
    """None: every noise level weighted alike (the plain DDPM epsilon loss)."""
    small_object_weight: float = 1.0
    """How much more often a render of a small object is drawn into a batch than another."""
    alignment_weight: float = 0.5
    """Weight of the representation-alignment loss (`AlignmentHead`); 0 turns it off. 0.5 as in
    the REPA paper; a matched 3,000-step trial from scratch: prompted shape 38.3% -> 44.7%."""
    colour_splice_share: float = 0.0
    """Share of the captions with a colour swap (`synthgen.world.captions.colour_swaps`) shown as
    the swapped caption's embedding with the true colour token spliced in; 0 turns it off."""


DETAIL_PHASE = UnetTrainingOptions(steps=4000, learning_rate=2e-4, warmup_steps=50, min_snr_gamma=None,
                                    small_object_weight=2.0, alignment_weight=0.0)
"""The second UNet phase, continued from the first phase's EMA weights. After phase 1, world-sd
drew small objects as round blobs (prompted shape 74% on small objects against 92% on medium
and 98% on large ones): a small object spans ~5 latent pixels, so its shape is the fine detail
that min-SNR weighting de-emphasises. Phase 2 weights every noise level alike and draws small
objects twice as often (a 1,500-step trial: small 71.8% -> 77.8% against a control that kept
phase 1's settings). Drawing stars and crosses, the shapes it still blends, twice as often
as well was tried and not kept (docs/WORLD.md)."""

CAPTION_PHASE = replace(DETAIL_PHASE, steps=3000, ema_decay=0.998, colour_splice_share=0.5)
"""An optional third UNet phase (`synthgen world train --models sd-captions`; a trial the shipped
world-sd did not get, figures in docs/WORLD.md), continued from the detail phase's weights on the captions of
`synthgen.world.captions`: colours left out when typical (an image prior for unnamed colours)
and colour tokens spliced into swapped captions half the time (the colour read from its own
token). EMA 0.998: at 0.999, 5% of the starting weights would still be in the average."""


def batch_draw_weights(settings: UnetTrainingOptions, small_objects: torch.Tensor | None) -> torch.Tensor | None:
    """Relative chance of each render to be drawn into a batch; None when all are alike."""
    if settings.small_object_weight == 1.0:
        return None
    return torch.where(small_objects, settings.small_object_weight, 1.0).double()


class AlignmentHead(torch.nn.Module):
    """REPA (Yu et al. 2024, "Representation Alignment for Generation"): an MLP maps each position
    of the UNet's 4x4 mid-block features to the world CLIP vision tower's feature of the same
    patch of the *clean* render, and the loss is their negative cosine similarity. The UNet
    then has to recognise, from the noisy latent, what a trained image encoder sees in the
    clean image, which the paper found speeds diffusion training up many times. The head is
    used in training only and is not shipped."""

    def __init__(self, unet_channels: int, target_dim: int, hidden: int = 256):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(unet_channels, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, target_dim))

    def alignment_loss(self, mid_features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """mid_features (B, C, 4, 4), targets (B, 16, D) row-major over the same 4x4 grid."""
        positions = mid_features.flatten(2).transpose(1, 2)
        if positions.shape[1] != targets.shape[1]:
            raise ValueError(f"the UNet's mid-block has {positions.shape[1]} positions, "
                             f"the alignment targets {targets.shape[1]} patches")
        return -F.cosine_similarity(self.mlp(positions), targets, dim=-1).mean()


def _spliced_contexts(context: torch.Tensor, caption_embeddings: torch.Tensor, indices: torch.Tensor,
                      colour_swaps: tuple[torch.Tensor, torch.Tensor], share: float,
                      generator: torch.Generator) -> torch.Tensor:
    """``context`` with a ``share`` of its swappable rows replaced by their swapped caption's
    embedding, in which the true caption's colour token is put back: the colour is then said by
    that one token and contradicted by every later one, as in a spliced counterfactual view."""
    swap_index, swap_position = (part[indices] for part in colour_swaps)
    chosen = (torch.rand(len(indices), generator=generator) < share) & (swap_position >= 0)
    rows = chosen.nonzero().flatten()
    if len(rows) == 0:
        return context
    spliced = context.clone()
    spliced[rows] = caption_embeddings[swap_index[rows].to(context.device)]
    positions = swap_position[rows].to(context.device)
    spliced[rows.to(context.device), positions] = context[rows.to(context.device), positions]
    return spliced


def train_world_unet(latents: torch.Tensor, caption_index: torch.Tensor, caption_embeddings: torch.Tensor,
                     empty_embedding: torch.Tensor, settings: UnetTrainingOptions, device: torch.device,
                     seed: int, log=print, small_objects: torch.Tensor | None = None, initial_unet=None,
                     alignment_targets: torch.Tensor | None = None,
                     colour_swaps: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Train the UNet on scaled latents; returns (EMA UNet, stats).

    ``latents[i]`` (already multiplied by the VAE scaling factor) is captioned
    by ``caption_embeddings[caption_index[i]]``; ``empty_embedding`` (1, L, H)
    is the empty prompt used for caption dropout and as the unconditional
    branch of classifier-free guidance. ``small_objects[i]`` says whether
    latent i shows a small object (needed when ``settings.small_object_weight``
    is not 1). ``initial_unet`` continues a trained UNet (its weights start both
    the trained copy and the EMA, with a fresh optimiser) instead of a new one.
    ``alignment_targets[i]`` (N, 16, D) are the CLIP patch features of render i,
    needed when ``settings.alignment_weight`` is not 0 (see `AlignmentHead`).
    ``colour_swaps`` = (swap_index, swap_position): latent i's caption with another colour is
    ``caption_embeddings[swap_index[i]]``, differing at token ``swap_position[i]`` (-1: no swap);
    needed when ``settings.colour_splice_share`` is not 0.
    """
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    noise_schedule = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, **BETA_SCHEDULE)
    if initial_unet is None:
        unet = build_world_unet(caption_embeddings.shape[-1])
    else:
        # Built from its config, weights copied: a loaded UNet's config also carries where it
        # was loaded from (the `_` keys), which the trained copy must not.
        config = {key: value for key, value in initial_unet.config.items() if not key.startswith("_")}
        unet = type(initial_unet).from_config(config)
        unet.load_state_dict(initial_unet.state_dict())
    unet.to(device)
    unet.train()
    # An exponential moving average of the weights samples much better after a short run.
    ema_unet = copy.deepcopy(unet).eval().requires_grad_(False)
    draw_weights = batch_draw_weights(settings, small_objects)
    trained = list(unet.parameters())
    mid_features = {}
    if settings.alignment_weight:
        if alignment_targets is None:
            raise ValueError("alignment_weight needs alignment_targets")
        head = AlignmentHead(unet.config.block_out_channels[-1], alignment_targets.shape[-1]).to(device)
        trained += list(head.parameters())
        unet.mid_block.register_forward_hook(lambda module, inputs, output: mid_features.update(mid=output))
    if settings.colour_splice_share and colour_swaps is None:
        raise ValueError("colour_splice_share needs colour_swaps")
    optimizer = torch.optim.AdamW(trained, lr=settings.learning_rate, weight_decay=0.01)
    alphas_cumprod = noise_schedule.alphas_cumprod.to(device)
    generator = torch.Generator().manual_seed(seed)
    caption_embeddings = caption_embeddings.to(device)
    empty_embedding = empty_embedding.to(device)
    started = time.time()
    for step in range(settings.steps):
        # 1. Batch: latents, their captions' embeddings, 10% of captions dropped to "".
        if draw_weights is None:  # randint, as before weighted draws existed: phase 1 stays reproducible
            indices = torch.randint(0, len(latents), (settings.batch_size,), generator=generator)
        else:
            indices = torch.multinomial(draw_weights, settings.batch_size, replacement=True, generator=generator)
        clean = latents[indices].to(device)
        context = caption_embeddings[caption_index[indices].to(device)]
        if settings.colour_splice_share:
            context = _spliced_contexts(context, caption_embeddings, indices, colour_swaps,
                                        settings.colour_splice_share, generator)
        dropped = (torch.rand(settings.batch_size, generator=generator) < CAPTION_DROPOUT).to(device)
        context = torch.where(dropped[:, None, None], empty_embedding, context)
        # 2. Forward diffusion at uniformly drawn timesteps.
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(0, TRAIN_TIMESTEPS, (settings.batch_size,), generator=generator).to(device)
        alpha_bar = alphas_cumprod[timesteps][:, None, None, None]
        noisy = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise
        # 3. Predict the noise (the epsilon objective of DDPM / Stable Diffusion), each
        #    sample's MSE weighted by min(SNR, gamma) / SNR, or all alike without a gamma.
        prediction = unet(noisy, timesteps, encoder_hidden_states=context).sample
        per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        if settings.min_snr_gamma is None:
            diffusion_loss = per_sample.mean()
        else:
            snr = alpha_bar.flatten() / (1 - alpha_bar.flatten())
            diffusion_loss = (snr.clamp(max=settings.min_snr_gamma) / snr * per_sample).mean()
        loss = diffusion_loss
        if settings.alignment_weight:
            alignment = head.alignment_loss(mid_features["mid"], alignment_targets[indices].to(device))
            loss = diffusion_loss + settings.alignment_weight * alignment
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        # 4. EMA, with a warm-up so early steps are not averaged with the random init for long
        #    (a continued UNet starts from trained weights: no warm-up).
        decay = settings.ema_decay if initial_unet is not None else min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, current in zip(ema_unet.parameters(), unet.parameters()):
                averaged.lerp_(current, 1 - decay)
        if step % 100 == 0 or step == settings.steps - 1:
            aligned = f" alignment {-alignment.item():.3f}" if settings.alignment_weight else ""
            log(f"unet step {step}/{settings.steps} loss {diffusion_loss.item():.4f}{aligned} ({time.time() - started:.0f}s)")
    stats = {"steps": settings.steps, "batch_size": settings.batch_size, "train_latents": len(latents),
             "caption_dropout": CAPTION_DROPOUT, "ema_decay": settings.ema_decay,
             "min_snr_gamma": settings.min_snr_gamma, "small_object_weight": settings.small_object_weight,
             "alignment_weight": settings.alignment_weight, "colour_splice_share": settings.colour_splice_share,
             **({"final_alignment_cosine": round(-alignment.item(), 4)} if settings.alignment_weight else {}),
             # The diffusion objective alone, comparable across runs with and without alignment.
             "final_loss": round(diffusion_loss.item(), 4), "wall_seconds": round(time.time() - started, 1)}
    return ema_unet, stats


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """1 / std of the latents, so scaled latents have unit variance like the diffusion noise."""
    return float(1.0 / latents.std())

