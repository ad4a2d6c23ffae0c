"""Counterfactual views that share their anchor's layout, judged by the world oracle
(synthgen/generate/attention_sharing.py; docs/WORLD.md, "Counterfactual views").

    python bench/counterfactual_layout.py --per-class 2 --tau 0 0.3 0.5 0.7 1
    python bench/counterfactual_layout.py --per-class 2 --sharing self=0.7,cross=0.7,coarse=0.7
    python bench/counterfactual_layout.py --tau 0 --default      # all 110 groups

1. The plan of `--recipe` (default recipes/counterfactual-colours.yaml: 110 groups of 4 views
   sharing one noise, the colour varied) gives prompts and seeds; `--per-class N` keeps the
   first N groups of each class (in plan order).
2. For each setting, plain pipeline calls on builtin:world-sd as the recipe sets it up
   (DPM-Solver++, its steps and guidance; each view's noise drawn from its seed on a CPU
   generator as the sampler draws it), `--groups-per-call` whole groups per call, inside
   `share_layout` with view 0 as every group's anchor. `--tau T` is prompt-to-prompt alone:
   self-attention maps, cross-attention maps and the pooled text shared for the first
   fraction T of the steps; `--sharing` names each part's fraction (`coarse`: the first
   decoder block's output); `--default` is `LAYOUT_SHARING`. `--tau 0` is the plain pipeline
   (the shared-noise figures of bench/counterfactual_oracle.py). `--text changed-tokens`
   gives every view its anchor's prompt embedding except at the token positions where its
   prompt's tokens differ (the colour word alone), to see what the words after it carry in a
   causal text encoder (what a recipe's `slots: {splice_text: true}` does); the default `own`
   encodes each view's prompt whole, as the sampler does without it. `--align-noise` turns
   each view's noise from view 0's colour towards its own (`slots: {align_noise: true}`,
   generate/noise_turn.py, the same code).
3. The oracle reads every view; edit success and what held, with 95% Wilson intervals, by
   bench/counterfactual_oracle.py's `judge` (position held: every view's centre within
   `--tolerance` px of every other's in x and in y).

Prints one JSON object: per setting, its seconds and the judged figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from counterfactual_oracle import DEFAULT_RECIPE, judge  # noqa: E402

from synthgen.generate.attention_sharing import (  # noqa: E402
    LAYOUT_SHARING,
    LayoutSharing,
    group_anchors,
    share_layout,
)
from synthgen.generate.families import family_of  # noqa: E402
from synthgen.generate.load import load_pipeline  # noqa: E402
from synthgen.generate.noise_turn import ColourLatents, turn_noise  # noqa: E402
from synthgen.plan import GroupPlan, make_plan  # noqa: E402
from synthgen.recipe import load_recipe  # noqa: E402
from synthgen.world.oracle import load_oracle  # noqa: E402


def parse_sharing(text: str) -> LayoutSharing:
    """'self=0.7,cross=0.7,pooled=0.3,coarse=0.7' -> LayoutSharing (a name left out is 0)."""
    names = {"self": "self_maps", "cross": "cross_maps", "pooled": "pooled_text",
             "coarse": "coarse_features"}
    fractions = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in names:
            raise argparse.ArgumentTypeError(f"--sharing {text!r}: {name!r} is not one of "
                                             f"{sorted(names)}")
        fractions[names[name.strip()]] = float(value)
    return LayoutSharing(**{field: fractions.get(field, 0.0) for field in names.values()})


def chosen_groups(groups: tuple[GroupPlan, ...], per_class: int | None) -> list[GroupPlan]:
    if per_class is None:
        return list(groups)
    kept: dict[str, int] = {}
    chosen = []
    for group in groups:
        if kept.get(group.class_name, 0) < per_class:
            kept[group.class_name] = kept.get(group.class_name, 0) + 1
            chosen.append(group)
    return chosen


@torch.inference_mode()
def generate(pipeline, groups: list[GroupPlan], sharing: LayoutSharing, steps: int,
             guidance: float, side: int, groups_per_call: int,
             text: str = "own", colours: ColourLatents | None = None) -> np.ndarray:
    """uint8 (views, side, side, 3) of every group's views, in group then view order."""
    family = family_of(pipeline, torch.device("cpu"))
    embed = lambda texts: torch.cat([family.embedding(text) for text in texts])  # noqa: E731
    factor = pipeline.vae_scale_factor
    shape = (1, pipeline.unet.config.in_channels, side // factor, side // factor)
    pixels = []
    for start in range(0, len(groups), groups_per_call):
        call = groups[start:start + groups_per_call]
        views = [view for group in call for view in group.views]
        latents = torch.cat([noise(view, shape, colours) for view in views])
        if text == "changed-tokens":
            prompts = torch.cat([family.spliced_embedding(view.prompt, group.views[0].prompt)
                                 for group in call for view in group.views])
        else:
            prompts = embed([v.prompt for v in views])
        arguments = {"prompt_embeds": prompts}
        if guidance > 1.0:
            arguments["negative_prompt_embeds"] = embed([v.negative_prompt for v in views])
        with share_layout(pipeline.unet, group_anchors([len(g.views) for g in call]), steps,
                          sharing):
            images = pipeline(num_inference_steps=steps, guidance_scale=guidance, height=side,
                              width=side, latents=latents, output_type="pt", **arguments).images
        pixels.append((images * 255).round().clamp(0, 255).to(torch.uint8)
                      .permute(0, 2, 3, 1).numpy())
    return np.concatenate(pixels)


def noise(view, shape, colours: ColourLatents | None) -> torch.Tensor:
    """The view's starting noise as the sampler draws it: from its seed on a CPU generator,
    turned towards its colour where `colours` is given and the plan turns it."""
    drawn = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(view.seed))
    if colours is None or view.noise_turn is None:
        return drawn
    return turn_noise(drawn, colours.rotation(*view.noise_turn))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--per-class", type=int, default=None,
                        help="keep the first N groups of each class (default: all groups)")
    parser.add_argument("--tau", type=float, nargs="*", default=[],
                        help="fractions of the steps sharing self maps, cross maps and pooled text")
    parser.add_argument("--sharing", type=parse_sharing, action="append", default=[],
                        help="e.g. self=0.7,cross=0.7,pooled=0.3,coarse=0.7 (repeatable)")
    parser.add_argument("--default", action="store_true",
                        help="also the module's LAYOUT_SHARING")
    parser.add_argument("--text", choices=("own", "changed-tokens"), default="own",
                        help="changed-tokens: views take the anchor's prompt embedding but where "
                             "their tokens differ")
    parser.add_argument("--align-noise", action="store_true",
                        help="turn each view's noise towards its colour (slots.align_noise)")
    parser.add_argument("--groups-per-call", type=int, default=11)
    parser.add_argument("--tolerance", type=float, default=2.0,
                        help="pixels (at 32 px) two views' centres may differ by, in x and in y")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--model", type=Path, default=None,
                        help="a world-sd folder to use instead of the recipe's model")
    parser.add_argument("--save", type=Path, default=None,
                        help="folder for each setting's images as .npy (for looking at them)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = [LayoutSharing(self_maps=tau, cross_maps=tau, pooled_text=tau) for tau in args.tau]
    settings += args.sharing + ([LAYOUT_SHARING] if args.default else [])
    if not settings:
        parser.error("give --tau and/or --sharing")
    recipe = load_recipe(args.recipe)
    if args.align_noise:  # validated again: align_noise needs a slot of colour names
        recorded = recipe.model_dump(mode="json")
        recorded["views"]["slots"]["align_noise"] = True
        recipe = type(recipe).model_validate(recorded)
    if args.model is not None:
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"id": str(args.model)})})
    spec = recipe.model
    groups = chosen_groups(make_plan(recipe).groups, args.per_class)
    pipeline = load_pipeline(spec, torch.device("cpu"), torch.float32).pipeline
    oracle = load_oracle()
    colours = ColourLatents(pipeline, min(spec.width, spec.height)) if args.align_noise else None
    result = {"recipe": str(args.recipe), "text": args.text, "align_noise": args.align_noise, "groups": len(groups), "steps": spec.steps,
              "guidance_scale": spec.guidance_scale,
              "scheduler": type(pipeline.scheduler).__name__, "tolerance_px": args.tolerance,
              "settings": []}
    for sharing in settings:
        started = time.perf_counter()
        pixels = generate(pipeline, groups, sharing, spec.steps, spec.guidance_scale, spec.width,
                          args.groups_per_call, args.text, colours)
        seconds = time.perf_counter() - started
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            name = "-".join(f"{part}{fraction}" for part, fraction in asdict(sharing).items())
            np.save(args.save / f"{name}.npy", pixels)
        per_group, position = [], 0
        for group in groups:
            per_group.append((group.to_json(), pixels[position:position + len(group.views)]))
            position += len(group.views)
        judged = judge(per_group, oracle, args.tolerance)
        result["settings"].append({"sharing": asdict(sharing),
                                   "generate_seconds": round(seconds, 1), **judged})
        print(json.dumps(result["settings"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
