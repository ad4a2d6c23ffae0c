"""Generation throughput: the plain diffusers loop and synthgen's generate path, in one run.

Builds a real architecture (sd-turbo or SDXL-turbo) from the configs in bench/model-configs
with random weights (nothing is downloaded), saves it as a model folder, then measures:
  1. plain diffusers: `pipe(prompt)` one image per call, and a batch per call with PIL output;
  2. synthgen's own path (plan, sample, encode, write shards with metadata) in steady state:
     one worker loads the model, builds a warm-up shard (where torch.compile spends its
     compile time), then the timed shards;
  3. a per-stage breakdown of synthgen's path (UNet, decode, encode, write);
  4. the compute limit: FLOPs per image (counted by torch's FlopCounterMode) against a
     measured dense fp16 matmul peak, and the fraction of it reached; peak GPU memory.
Random weights do the real compute per image; their images are noise, which JPEG-encodes a
little slower than photographs, so the encode figure is if anything pessimistic.

    python bench/throughput.py --arch sd-turbo --images 4096 --batch-size 64          # a GPU
    python bench/throughput.py --arch sd-turbo --decoder tiny --compile --batch-size 64
    python bench/throughput.py --small                                                 # CPU check
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = REPO / "bench" / "model-configs"


def build_model_folder(arch: str, folder: Path, device: torch.device, small: bool) -> Path:
    """A pipeline folder of the architecture with random weights (fp16 on GPU), built once."""
    from synthgen.generate.tiny_random import build_tiny_decoder, save_tiny_pipeline

    if (folder / "model_index.json").is_file():
        return folder
    if small:
        save_tiny_pipeline(folder, family="sdxl" if arch == "sdxl-turbo" else "sd")
        build_tiny_decoder().save_pretrained(folder / "tiny-decoder", safe_serialization=True)
        return folder
    import diffusers
    from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from synthgen.generate.tiny_random import byte_level_clip_tokenizer

    def config(part: str) -> dict:
        return json.loads((CONFIGS / arch / part / "config.json").read_text())

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    index = json.loads((CONFIGS / arch / "model_index.json").read_text())
    # Built directly on the device: initialising 0.9-2.6 B parameters on a CPU takes minutes.
    with torch.device(device):
        parts = {
            "unet": UNet2DConditionModel.from_config(config("unet")),
            "vae": AutoencoderKL.from_config(config("vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(config("text_encoder"))),
        }
        if "text_encoder_2" in index:
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_dict(config("text_encoder_2")))
            parts["tokenizer_2"] = byte_level_clip_tokenizer()
        tiny = AutoencoderTiny.from_config(json.loads((CONFIGS / "taesd" / "config.json").read_text()))
    scheduler_config = json.loads((CONFIGS / arch / "scheduler" / "scheduler_config.json").read_text())
    parts["scheduler"] = EulerDiscreteScheduler.from_config(scheduler_config)
    parts["tokenizer"] = byte_level_clip_tokenizer()
    pipeline_class = getattr(diffusers, index["_class_name"])
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} \
        if index["_class_name"] == "StableDiffusionPipeline" else {}
    pipeline = pipeline_class(**parts, **extra).to(dtype=dtype)
    pipeline.save_pretrained(folder, safe_serialization=True)
    tiny.to(dtype=dtype).save_pretrained(folder / "tiny-decoder", safe_serialization=True)
    return folder


def bench_recipe(folder: Path, args, groups: int, name: str):
    """A recipe of `groups` groups x 4 views on the random model, as synthgen would run it."""
    from synthgen.recipe import Recipe

    return Recipe.model_validate({
        "name": name, "seed": 0,
        "model": {"id": str(folder), "steps": args.steps, "guidance_scale": args.guidance,
                  "width": args.size, "height": args.size,
                  "decoder": str(folder / "tiny-decoder") if args.decoder == "tiny" else None},
        "templates": ["a photo of a {class}, {context}"],
        "slots": {"context": ["outdoors", "indoors", "at night", "close-up"]},
        "classes": [{"name": f"class {n}", "groups": groups // 8 + (n < groups % 8)}
                    for n in range(8)],
        "views": {"count": 4},
        "output": {"groups_per_shard": 64, "format": "jpg", "quality": 90},
    })


def synthgen_path(folder: Path, args, work: Path) -> dict:
    """Images/s of synthgen's generate path in steady state: one worker (the pipeline loaded
    and compiled once) builds a warm-up shard, then the timed shards, as a run builds its
    shards one after another; the manifest is written after, untimed. (Two generate_dataset
    calls would load, digest and compile the model again inside the timed run.)"""
    from synthgen.engines.local import (GenerateOptions, ShardWorker, add_built, finish_run,
                                        start_run)
    from synthgen.plan import make_plan
    from synthgen.store import open_store

    options = GenerateOptions(batch_size=args.batch_size, device=args.device, progress=False,
                              encode_workers=args.encode_workers, overwrite=True,
                              compile_model=args.compile, channels_last=args.channels_last)
    warm_groups = 64  # bench_recipe's groups_per_shard: shard 0 is the warm-up
    plan = make_plan(bench_recipe(folder, args, warm_groups + args.images // 4, "bench"))
    store = open_store(work / "bench")
    run_started = time.perf_counter()
    summary, pending = start_run(plan, store, options, engine="local")
    worker = ShardWorker(plan, store, options)
    try:
        add_built(summary, worker.build(pending[:1]))
        warmup_seconds = time.perf_counter() - run_started
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        timed = worker.build(pending[1:])
        seconds = time.perf_counter() - started
        add_built(summary, timed)
    finally:
        worker.close()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    finish_run(plan, store, options, summary, run_started)
    return {"images": timed.images, "seconds": round(seconds, 3),
            "images_per_second": round(timed.images / seconds, 2) if seconds > 0 else 0.0,
            "warmup_seconds_incl_load_and_compile": round(warmup_seconds, 1),
            "peak_gpu_memory_gib": round(peak, 2) if peak is not None else None}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stage_breakdown(folder: Path, args, device: torch.device, batches: int) -> dict:
    """Seconds per image in each stage of synthgen's path, from `batches` timed batches.

    Each stage is timed alone (with device synchronisation), so the stages add up to more
    than the overlapped pipeline takes.
    """
    from synthgen.generate.load import choose_dtype
    from synthgen.generate.prepare import prepare_sampler
    from synthgen.plan import make_plan
    from synthgen.write import build_sample, encode_image, sample_metadata, write_shard

    recipe = bench_recipe(folder, args, max(1, batches * args.batch_size // 4), "stages")
    plan = make_plan(recipe)
    sampler = prepare_sampler(recipe, device, choose_dtype(recipe.model.dtype, device, recipe.model),
                              args.batch_size, compile_model=args.compile,
                              channels_last=args.channels_last)
    totals = {"unet": 0.0, "decode": 0.0, "encode": 0.0, "write": 0.0}
    pipeline = sampler.pipeline

    def timed(stage, function):
        def wrapper(*a, **k):
            _synchronize(device)
            start = time.perf_counter()
            result = function(*a, **k)
            _synchronize(device)
            totals[stage] += time.perf_counter() - start
            return result
        return wrapper

    views = [(group, view) for group in plan.groups for view in group.views]
    batch = [view for _, view in views[:args.batch_size]]
    sampler.sample(batch)  # warm-up (and compile) outside the timing
    for key in totals:
        totals[key] = 0.0
    pipeline.unet.forward = timed("unet", pipeline.unet.forward)
    pipeline.vae.decode = timed("decode", pipeline.vae.decode)
    images = 0
    samples = []
    for start in range(0, len(views), args.batch_size):
        chunk = views[start:start + args.batch_size]
        result = sampler.sample([view for _, view in chunk])
        started = time.perf_counter()
        encoded = [encode_image(result.images[i].numpy(), recipe) for i in range(len(chunk))]
        totals["encode"] += time.perf_counter() - started
        for (group, view), data in zip(chunk, encoded):
            if view.view == 0:
                samples.append(build_sample(group, [data] * len(group.views),
                                            sample_metadata(group, recipe, {}), "jpg"))
        images += len(chunk)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        write_shard(Path(out), 0, samples, {})
        totals["write"] = (time.perf_counter() - started) * len(views) / max(1, len(samples) * 4)
    return {stage: round(1000 * seconds / images, 3) for stage, seconds in totals.items()} | {
        "unit": "ms per image"}


def plain_diffusers(folder: Path, args, device: torch.device) -> dict:
    """The loops people write first: one image per call, then a batch per call, PIL output."""
    from diffusers import AutoPipelineForText2Image

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = AutoPipelineForText2Image.from_pretrained(folder, torch_dtype=dtype,
                                                     use_safetensors=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    call = {"num_inference_steps": args.steps, "guidance_scale": args.guidance,
            "height": args.size, "width": args.size}
    pipe("warm up", **call)
    results = {}
    for label, per_call, calls in (("one_per_call", 1, args.plain_calls),
                                   ("batched", args.batch_size, max(2, args.plain_calls // 8))):
        _synchronize(device)
        started = time.perf_counter()
        for n in range(calls):
            pipe([f"a photo of a thing {n}"] * per_call, **call)
        _synchronize(device)
        results[f"{label}_images_per_second"] = round(per_call * calls / (time.perf_counter() - started), 2)
    return results


def flops_per_image(folder: Path, args, device: torch.device) -> float:
    """FLOPs of one image through the pipeline (all steps and the decode), counted by torch."""
    from diffusers import AutoPipelineForText2Image
    from torch.utils.flop_counter import FlopCounterMode

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = AutoPipelineForText2Image.from_pretrained(folder, torch_dtype=dtype,
                                                     use_safetensors=True).to(device)
    if args.decoder == "tiny":
        from diffusers import AutoencoderTiny

        pipe.vae = AutoencoderTiny.from_pretrained(folder / "tiny-decoder", torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        pipe("a photo", num_inference_steps=args.steps, guidance_scale=args.guidance,
             height=args.size, width=args.size, output_type="pt")
    return float(counter.get_total_flops())


def measured_peak_flops(device: torch.device) -> float:
    """Dense matmul FLOP/s this device reaches (fp16 on GPU, fp32 on CPU): the compute limit."""
    size, dtype = (8192, torch.float16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _synchronize(device)
    repeats = 20 if device.type == "cuda" else 5
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd-turbo", choices=("sd-turbo", "sdxl-turbo"))
    parser.add_argument("--decoder", default="full", choices=("full", "tiny"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--plain-calls", type=int, default=32)
    parser.add_argument("--encode-workers", type=int, default=8)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "synthgen-bench")
    parser.add_argument("--small", action="store_true",
                        help="tiny random model at 64 px on the CPU: checks the script, not speed")
    args = parser.parse_args(argv)
    if args.small:
        args.size, args.images, args.batch_size, args.plain_calls = 64, min(args.images, 64), 8, 8
    from synthgen.devices import choose_device

    device = choose_device(args.device)
    args.device = str(device)
    folder = build_model_folder(args.arch, args.work / f"{args.arch}{'-small' if args.small else ''}",
                                device, args.small)
    def finished(name: str, value):
        # Each part on stderr as it ends: a run its time limit stops still leaves what it measured.
        print(json.dumps({"finished": name, name: value}), file=sys.stderr, flush=True)
        return value

    # 1. Compute limit first, while nothing else runs; then synthgen's own path, the figure the
    #    issue gates, before the plain-diffusers comparison and the per-stage breakdown.
    peak = finished("measured_peak_flops", measured_peak_flops(device))
    flops = finished("flops_per_image", flops_per_image(folder, args, device))
    ours = finished("synthgen", synthgen_path(folder, args, args.work / "runs"))
    plain = finished("plain_diffusers", plain_diffusers(folder, args, device))
    stages = finished("stages", stage_breakdown(folder, args, device, batches=4))
    limit = peak / flops
    import diffusers

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "arch": args.arch, "decoder": args.decoder, "size": args.size, "steps": args.steps,
        "guidance": args.guidance, "batch_size": args.batch_size, "compile": args.compile,
        "channels_last": args.channels_last,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "plain_diffusers": plain, "synthgen": ours, "stages": stages,
        "gflop_per_image": round(flops / 1e9, 1),
        "measured_peak_tflops": round(peak / 1e12, 1),
        "compute_limit_images_per_second": round(limit, 1),
        "fraction_of_compute_limit": round(ours["images_per_second"] / limit, 3),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
