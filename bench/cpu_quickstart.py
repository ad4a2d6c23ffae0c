"""The quickstart on the CPU: synthgen against a plain batched diffusers call, side by side.

On this machine, with the same torch threads and batch size for both:
  1. plain diffusers: the recipe's model loaded with `AutoPipelineForText2Image`, then one
     `pipe(prompt=[...], negative_prompt=[...], generator=[...])` call per batch of the plan's
     views: the same prompts, negative prompts, steps, guidance and size that synthgen uses;
  2. synthgen in this process: `ShardWorker` loads the model, then its `build` samples, encodes
     and writes every shard (tars, stats, manifest). Its time after loading is what compares
     with 1;
  3. `synthgen generate RECIPE --out DIR --device cpu` in a fresh process: the wall time a user
     waits (start-up, model load, generation, manifest).
Rounds alternate 1 and 2, so that a busy machine slows both alike; each figure is the median
over the rounds, and the ratio (synthgen / plain generation time) is the one to compare across
machines. The README's quickstart figures are this on a 2-core machine, with the OpenMP wait
policy that scripts/quickstart.sh sets (both pipelines and the command inherit it):

    OMP_WAIT_POLICY=PASSIVE python bench/cpu_quickstart.py --rounds 3
    python bench/cpu_quickstart.py --batch-size 8 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def plain_pipeline(spec, threads: int):
    """The recipe's model as a user would load it with diffusers alone, on the CPU."""
    from diffusers import AutoPipelineForText2Image

    from synthgen.builtin import resolve_model_source

    torch.set_num_threads(threads)
    pipeline = AutoPipelineForText2Image.from_pretrained(
        resolve_model_source(spec.id), torch_dtype=torch.float32, use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def time_plain(pipeline, plan, batch_size: int, threads: int) -> float:
    """Seconds to make every view of `plan` with plain batched pipeline calls."""
    spec = plan.recipe.model
    views = [view for group in plan.groups for view in group.views]
    torch.set_num_threads(threads)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(views), batch_size):
            batch = views[start:start + batch_size]
            pipeline(prompt=[view.prompt for view in batch],
                     negative_prompt=[view.negative_prompt for view in batch],
                     generator=[torch.Generator("cpu").manual_seed(view.seed) for view in batch],
                     num_inference_steps=spec.steps, guidance_scale=spec.guidance_scale,
                     height=spec.height, width=spec.width)
    return time.perf_counter() - started


def time_synthgen(plan, out_dir: Path, options) -> tuple[float, float]:
    """(model load seconds, generation seconds) of synthgen's local engine into `out_dir`:
    the steps of `generate_dataset`, timed apart."""
    from synthgen.engines.local import ShardWorker, finish_run, start_run
    from synthgen.store import open_store

    started = time.perf_counter()
    store = open_store(out_dir)
    summary, pending = start_run(plan, store, options, engine="local")
    worker = ShardWorker(plan, store, options)
    loaded = time.perf_counter()
    try:
        worker.build(pending)
    finally:
        worker.close()
    finish_run(plan, store, options, summary, started)
    return loaded - started, time.perf_counter() - loaded


def time_command(recipe: Path, out_dir: Path, batch_size: int, threads: int) -> float:
    """Wall seconds of `synthgen generate` in a fresh process."""
    command = [sys.executable, "-m", "cli", "generate", str(recipe), "--out", str(out_dir),
               "--device", "cpu", "--batch-size", str(batch_size), "--cpu-threads", str(threads),
               "--overwrite", "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv=None) -> dict:
    from synthgen.engines.local import GenerateOptions
    from synthgen.generate.batching import default_batch_size
    from synthgen.plan import make_plan
    from synthgen.recipe import load_recipe

    defaults = GenerateOptions()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "quickstart.yaml")
    parser.add_argument("--batch-size", type=int, default=default_batch_size(torch.device("cpu")))
    parser.add_argument("--threads", type=int, default=defaults.cpu_threads)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--work", type=Path, help="Folder for the datasets (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="Also write the result here")
    args = parser.parse_args(argv)

    plan = make_plan(load_recipe(args.recipe))
    images = sum(len(group.views) for group in plan.groups)
    options = GenerateOptions(batch_size=args.batch_size, device="cpu", cpu_threads=args.threads,
                              progress=False, overwrite=True)
    threads_before = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        # 1. Plain diffusers and synthgen in alternating rounds.
        started = time.perf_counter()
        pipeline = plain_pipeline(plan.recipe.model, args.threads)
        plain_load = time.perf_counter() - started
        plain_times, synthgen_times, synthgen_loads = [], [], []
        try:
            for round_number in range(1, args.rounds + 1):
                plain_times.append(time_plain(pipeline, plan, args.batch_size, args.threads))
                load, generation = time_synthgen(plan, work / "in-process", options)
                synthgen_loads.append(load)
                synthgen_times.append(generation)
                print(f"round {round_number}: plain {plain_times[-1]:.1f} s, synthgen "
                      f"{generation:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            torch.set_num_threads(threads_before)
        del pipeline
        # 2. The command a user runs, end to end.
        command_wall = time_command(args.recipe, work / "command", args.batch_size, args.threads)
    plain_seconds = statistics.median(plain_times)
    synthgen_seconds = statistics.median(synthgen_times)
    result = {
        "recipe": str(args.recipe), "images": images, "batch_size": args.batch_size,
        "threads": args.threads, "rounds": args.rounds,
        "machine": {"cores_usable": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
                    # ACTIVE (OpenMP's default) spins while waiting: far slower on a busy machine.
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                    "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
        "plain_diffusers": {"load_s": round(plain_load, 2), "generation_s": round(plain_seconds, 2),
                            "images_per_second": round(images / plain_seconds, 2),
                            "rounds_s": [round(t, 2) for t in plain_times]},
        "synthgen": {"load_s": round(statistics.median(synthgen_loads), 2),
                     "generation_s": round(synthgen_seconds, 2),
                     "images_per_second": round(images / synthgen_seconds, 2),
                     "rounds_s": [round(t, 2) for t in synthgen_times],
                     "command_wall_s": round(command_wall, 2)},
        "synthgen_over_plain": round(synthgen_seconds / plain_seconds, 3),
    }
    plain, ours = result["plain_diffusers"], result["synthgen"]
    print(f"{plan.recipe.name}: {images} images, batch {args.batch_size}, {args.threads} threads, "
          f"{args.rounds} rounds (load average {result['machine']['load_average'][0]:.1f}, "
          f"OMP_WAIT_POLICY {result['machine']['omp_wait_policy']})")
    print(f"plain diffusers  generation {plain['generation_s']:6.1f} s  "
          f"{plain['images_per_second']:5.2f} img/s  (load {plain['load_s']:.1f} s)")
    print(f"synthgen         generation {ours['generation_s']:6.1f} s  "
          f"{ours['images_per_second']:5.2f} img/s  (load {ours['load_s']:.1f} s; "
          "encode and write included)")
    print(f"synthgen / plain {result['synthgen_over_plain']:.2f}")
    print(f"synthgen generate {args.recipe} --device cpu: {ours['command_wall_s']:.1f} s end to end")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
