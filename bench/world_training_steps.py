"""Seconds per training step of the four world models, at their real sizes and batches.

    python bench/world_training_steps.py --threads 1 2      # the figures in docs/WORLD.md
    python bench/world_training_steps.py --steps 2 --warmup 1 --threads 1   # a quick check
    python bench/world_training_steps.py --threads 2 --bf16       # bfloat16 autocast as well

Each step is a forward, backward and AdamW update on random inputs of the training batch
shape (UNet 64 latents 4x16x16 with 32x128 token embeddings; CLIP 128 image-caption pairs;
VAE 32 renders; oracle 128 renders), timed after warm-up steps. Random inputs cost what real
ones do: the step time depends on shapes only. Run it on a quiet machine: with other jobs on
the cores a second thread can make every step several times slower (docs/WORLD.md).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _steps():
    """(name, one training step) for each world model, with fixed random inputs."""
    from transformers import CLIPModel

    from synthgen.world.clip import world_clip_config
    from synthgen.world.diffusion import build_world_unet, build_world_vae
    from synthgen.world.oracle import WorldOracle
    from synthgen.world.tokenizer import build_world_tokenizer

    torch.manual_seed(0)
    unet, clip = build_world_unet(128), CLIPModel(world_clip_config(len(build_world_tokenizer())))
    vae, oracle = build_world_vae(), WorldOracle()
    latents, context = torch.randn(64, 4, 16, 16), torch.randn(64, 32, 128)
    timesteps = torch.randint(0, 1000, (64,))
    input_ids, renders = torch.randint(0, clip.config.text_config.vocab_size, (128, 16)), torch.randn(128, 3, 32, 32)
    optimizers = {name: torch.optim.AdamW(model.parameters())
                  for name, model in (("unet", unet), ("clip", clip), ("vae", vae), ("oracle", oracle))}

    def update(name, loss):
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    return {
        "unet": lambda: update("unet", unet(latents, timesteps, encoder_hidden_states=context).sample.pow(2).mean()),
        "clip": lambda: update("clip", clip(input_ids=input_ids, pixel_values=renders, return_loss=True).loss),
        "vae": lambda: update("vae", (vae.decode(vae.encode(renders[:32]).latent_dist.sample()).sample
                                      - renders[:32]).pow(2).mean()),
        "oracle": lambda: update("oracle", sum(head.float().pow(2).mean() for head in oracle(renders).values())),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true",
                        help="also time each step under CPU bfloat16 autocast (weights stay float32)")
    args = parser.parse_args(argv)
    precisions = ("float32", "bfloat16") if args.bf16 else ("float32",)
    threads_before = torch.get_num_threads()
    results: dict[str, dict[str, float]] = {}
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for precision in precisions:
                for name, step in _steps().items():
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                        for _ in range(args.warmup):
                            step()
                        started = time.perf_counter()
                        for _ in range(args.steps):
                            step()
                    seconds = (time.perf_counter() - started) / args.steps
                    suffix = "" if precision == "float32" else "_bf16"
                    results.setdefault(name, {})[f"{threads}_threads{suffix}"] = round(seconds, 4)
                    print(f"{name:7s} {threads} thread(s) {precision}: {seconds:.3f} s/step", flush=True)
    finally:
        torch.set_num_threads(threads_before)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
