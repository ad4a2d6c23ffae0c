"""A trial for debias (docs/WORLD.md, "Debias of star colours"): give world-sd a colour prior by
continuing its training on captions with reporting bias, then see whether debias can move it.
(The trials that led to world-sd's caption phase, `synthgen world train --models sd-captions`,
which also splices colour tokens; `colourless` and `gates` measure any world-sd folder.)

    python bench/world_colour_prior.py continue --out OUT/world-sd [--init DIR] [--steps 1500]
    python bench/world_colour_prior.py colourless --model OUT/world-sd --out colourless.json
    python bench/world_colour_prior.py gates --model OUT/world-sd --out gates.json
    synthgen world edits --model OUT/world-sd --out edits.json

`continue` copies a world-sd folder (`--init`, default the shipped one) to `--out` and trains
its UNet further (with `--cross-attention-16`, first grown by cross-attention at the 16x16
level, `with_cross_attention_16`), as the shipped detail phase does (same scenes, captions, settings and
small-object weight; `synthgen/world/train.py`), except that a caption leaves its colour word
out with probability `--drop-typical` when the object has its shape's typical colour
(`TYPICAL`) and `--drop-atypical` otherwise, as people leave out what goes without saying.
By default the images are unchanged, so their colours stay uniform and only the captions are
biased; `--typical-share P` also re-colours a share P of the objects in their shape's typical
colour (re-rendered), so that the images have a colour prior for the captions to point at. The data
(latents and caption embeddings) is cached beside `--out`. `colourless` draws
`--per-shape` prompts per shape that name no colour, at the attribute-editing recipe's
settings, and reports the oracle's colours, the typical colour's share, the KL divergence to
uniform and how often the shape is drawn. `gates` is world-sd's own evaluation
(`synthgen.world.evaluate.evaluate_generator`: prompted shape, colour and size, 2,000 prompts)
on another folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.world.captions import TYPICAL_COLOURS, caption_phase_data  # noqa: E402
from synthgen.world.corpus import train_pool  # noqa: E402
from synthgen.world.diffusion import DETAIL_PHASE, train_world_unet  # noqa: E402
from synthgen.world.edits import kl_to_wanted  # noqa: E402
from synthgen.world.evaluate import (GENERATION_SEED_OFFSET, evaluate_generator,  # noqa: E402
                                     generate)
from synthgen.world.model_folders import SD_FOLDER, SHIPPED_MODELS_ROOT  # noqa: E402
from synthgen.world.oracle import load_oracle  # noqa: E402
from synthgen.world.scene import BACKGROUNDS, COLOURS, SHAPES, SIZES  # noqa: E402
from synthgen.world.train import CANONICAL_CAPTION_SHARE, TRAIN_SCENES, _scaled  # noqa: E402

TYPICAL = TYPICAL_COLOURS
DROP_TYPICAL, DROP_ATYPICAL = 0.7, 0.1  # the first trials' rates (the caption phase uses 0.5 and 0.2)
SEED = 0  # the shipped run's seed: the same scenes and caption wording


def training_data(pipeline, cache: Path, args, log) -> dict:
    if cache.is_file():
        log(f"data from {cache}")
        return torch.load(cache)
    data, summary = caption_phase_data(pipeline, train_pool(SEED, TRAIN_SCENES), SEED, torch.device("cpu"),
                                       CANONICAL_CAPTION_SHARE, args.typical_share, args.drop_typical,
                                       args.drop_atypical, swaps=bool(args.splice_share))
    data["stats"] = summary
    torch.save(data, cache)
    log(f"data: {summary}")
    return data


def with_cross_attention_16(unet):
    """`unet` with cross-attention transformers added at the 16x16 level (the first down block
    and the last up block, which have none), their output projections zeroed: the grown UNet
    computes exactly what `unet` does until training moves them (a trial, docs/WORLD.md)."""
    from diffusers import UNet2DConditionModel

    config = {key: value for key, value in unet.config.items() if not key.startswith("_")}
    config["down_block_types"] = ["CrossAttnDownBlock2D", *config["down_block_types"][1:]]
    config["up_block_types"] = [*config["up_block_types"][:-1], "CrossAttnUpBlock2D"]
    grown = UNet2DConditionModel.from_config(config)
    missing, unexpected = grown.load_state_dict(unet.state_dict(), strict=False)
    added = ("down_blocks.0.attentions.", f"up_blocks.{len(config['up_block_types']) - 1}.attentions.")
    if unexpected or not all(name.startswith(added) for name in missing):
        raise ValueError(f"not world-sd's UNet layout: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for block in (grown.down_blocks[0], grown.up_blocks[-1]):
            for attention in block.attentions:
                attention.proj_out.weight.zero_()
                attention.proj_out.bias.zero_()
    return grown


def continue_training(args) -> None:
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {message}", flush=True)

    source = args.init or SHIPPED_MODELS_ROOT / SD_FOLDER
    if not (args.out / "model_index.json").is_file():
        shutil.copytree(source, args.out)
    pipeline = StableDiffusionPipeline.from_pretrained(source, use_safetensors=True)
    cache = args.out.parent / (f"colour-prior-data-{args.typical_share:g}-{args.drop_typical:g}-"
                               f"{args.drop_atypical:g}-{'splices' if args.splice_share else 'plain'}.pt")
    data = training_data(pipeline, cache, args, log)
    # EMA 0.998, not the detail phase's 0.999: at 0.999, 22% of the starting weights would
    # still be in the average after 1,500 steps.
    settings = replace(_scaled(DETAIL_PHASE, args.steps / DETAIL_PHASE.steps), ema_decay=args.ema_decay,
                       colour_splice_share=args.splice_share,
                       small_object_weight=args.small_object_weight)
    initial = with_cross_attention_16(pipeline.unet) if args.cross_attention_16 else pipeline.unet
    unet, stats = train_world_unet(
        data["latents"], data["caption_index"], data["caption_embeddings"], data["empty_embedding"],
        settings=settings, device=torch.device("cpu"), seed=args.seed, log=log,
        small_objects=data["small_objects"], initial_unet=initial,
        colour_swaps=data.get("colour_swaps"))
    unet.save_pretrained(args.out / "unet", safe_serialization=True)
    record = json.loads((args.out / "training.json").read_text())
    record.setdefault("colour_prior_phases", []).append(
        stats | {"settings": asdict(settings), "seed": args.seed, "init": str(source),
                 "typical": TYPICAL, "typical_share": args.typical_share,
                 "drop_typical": args.drop_typical, "drop_atypical": args.drop_atypical,
                 "splice_share": args.splice_share, "small_object_weight": args.small_object_weight,
                 "cross_attention_16": args.cross_attention_16,
                 "data": data["stats"], "threads": args.threads})
    (args.out / "training.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    log(f"saved {args.out / 'unet'}")


def colourless(args) -> None:
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    oracle = load_oracle(device=torch.device("cpu"))
    pipeline = StableDiffusionPipeline.from_pretrained(args.model, use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    wording = np.random.default_rng(99)
    result = {"model": str(args.model), "steps": 12, "guidance_scale": 4.0, "per_shape": {}}
    for k, shape in enumerate(SHAPES):
        prompts = [f"a {wording.choice(SIZES)} {shape} on a {wording.choice(BACKGROUNDS)} background"
                   for _ in range(args.per_shape)]
        seeds = [GENERATION_SEED_OFFSET + 500_000 + 1000 * k + i for i in range(args.per_shape)]
        readings = oracle.read(generate(pipeline, prompts, seeds, guidance_scale=4.0, steps=12))
        colours = Counter(reading["colour"] for reading in readings)
        result["per_shape"][shape] = {
            "typical": TYPICAL[shape], "typical_share": colours[TYPICAL[shape]] / args.per_shape,
            "colours": dict(colours.most_common()),
            "kl_to_uniform": round(kl_to_wanted(colours, dict.fromkeys(COLOURS, 1.0)), 4),
            "shape_drawn": sum(reading["shape"] == shape for reading in readings) / args.per_shape}
        print(shape, result["per_shape"][shape], flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def gates(args) -> None:
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    pipeline = StableDiffusionPipeline.from_pretrained(args.model, use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    metrics = evaluate_generator(pipeline, load_oracle(device=torch.device("cpu")), args.prompts,
                                 log=print)
    args.out.write_text(json.dumps({"model": str(args.model), **metrics}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("continue", help="continue a world-sd on reporting-bias captions")
    train.add_argument("--out", type=Path, required=True, help="the new world-sd folder")
    train.add_argument("--init", type=Path, default=None, help="world-sd folder to start from")
    train.add_argument("--steps", type=int, default=1500)
    train.add_argument("--seed", type=int, default=8)
    train.add_argument("--ema-decay", type=float, default=0.998)
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--typical-share", type=float, default=0.0,
                       help="re-colour this share of the objects in their shape's typical colour")
    train.add_argument("--drop-typical", type=float, default=DROP_TYPICAL)
    train.add_argument("--drop-atypical", type=float, default=DROP_ATYPICAL)
    train.add_argument("--small-object-weight", type=float, default=DETAIL_PHASE.small_object_weight,
                       help="how much more often renders of small objects are drawn")
    train.add_argument("--splice-share", type=float, default=0.0,
                       help="share of coloured captions shown with their colour token spliced into "
                            "a colour-swapped caption (synthgen/world/captions.py)")
    train.add_argument("--cross-attention-16", action="store_true",
                       help="first add cross-attention at the 16x16 level (zero-initialised)")
    read = commands.add_parser("colourless", help="oracle colours of prompts that name none")
    read.add_argument("--model", type=Path, required=True)
    read.add_argument("--out", type=Path, required=True)
    read.add_argument("--per-shape", type=int, default=100)
    read.add_argument("--threads", type=int, default=2)
    judge = commands.add_parser("gates", help="world-sd's prompted shape/colour/size evaluation")
    judge.add_argument("--model", type=Path, required=True)
    judge.add_argument("--out", type=Path, required=True)
    judge.add_argument("--prompts", type=int, default=2000)
    judge.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    {"continue": continue_training, "colourless": colourless, "gates": gates}[args.command](args)


if __name__ == "__main__":
    main()
