"""Host-side cost of synthgen's generate path per image, with the model compute taken out.

Runs the real local engine (`synthgen.engines.local.generate_dataset`: plan, ShardWorker,
Sampler, ShardAssembler with its encode pool and writer thread, publish_shard, manifest) on
a recipe at --size x --size, loading builtin:tiny-random (a StableDiffusionPipeline) and
replacing only the model compute inside the *real* diffusers pipeline call:
  - `unet.forward`  -> returns zeros of the latent shape (no compute),
  - `vae.decode`    -> returns a precomputed (B, 3, H, W) float batch in [-1, 1],
  - the family's latent shape is sd-turbo's (1, 4, H/8, W/8) (tiny-random's VAE is /2).
Everything else runs as in production: prompt embedding cache + cat, per-view CPU generators,
starting noise on the CPU, diffusers' __call__ Python (check_inputs, scheduler, progress bar,
postprocess), synthgen's uint8 conversion, the device->host copy, per-view add_view, JPEG/PNG
encoding in the encode pool, sample json, tar, sha256, json schema, fsync'd publish, stats.

On this CPU-only machine the elementwise tensor work that is GPU work in production (diffusers'
postprocess denormalise/clamp and synthgen's nan_to_num/*255/round/clamp/uint8/permute on the
full-resolution batch) runs on the CPU; it is timed separately as "device-equivalent" and
reported apart from host work, and "host path images/s" subtracts it.

    OMP_NUM_THREADS=1 python bench/host_overhead.py --format jpg --size 512 --images 512
Options: --reject (a suppress entry: every view encoded and decoded for a detector, a stub
that passes it), --views 1|4, --batch-size 64, --encode-workers 4 (the CLI default), --content
smooth|noise, --resolution N (stored size, e.g. 256 as imagenet100-sd-turbo.yaml), --profile FILE.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))

# name -> [wall seconds, thread CPU seconds, calls]
STATS: dict[str, list] = defaultdict(lambda: [0.0, 0.0, 0])
_LOCK = threading.Lock()
_PROFILES: dict[int, cProfile.Profile] = {}
PROFILING = False
_PIXELS_ON_HOST = None  # synthgen.generate.sampler.pixels_on_host, before any stub replaced it


def timed(name, function, profile_root=False):
    """Wrap `function`: adds wall and this-thread CPU time to STATS[name]. With profile_root,
    the call also runs under this thread's cProfile profiler (worker threads)."""
    def wrapper(*args, **kwargs):
        profiler = None
        if PROFILING and profile_root:
            ident = threading.get_ident()
            with _LOCK:
                profiler = _PROFILES.setdefault(ident, cProfile.Profile())
            profiler.enable()
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            if profiler is not None:
                profiler.disable()
            with _LOCK:
                entry = STATS[name]
                entry[0] += wall
                entry[1] += cpu
                entry[2] += 1
    wrapper.__wrapped__ = function
    return wrapper


def make_images(count: int, size: int, content: str, seed: int = 0) -> np.ndarray:
    """`count` distinct uint8 (size, size, 3) pictures: 'noise' (uniform, worst case for a codec)
    or 'smooth' (a low-frequency random field plus mild grain: photo-like compressibility)."""
    rng = np.random.default_rng(seed)
    if content == "noise":
        return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    out = np.empty((count, size, size, 3), np.uint8)
    coarse = size // 16
    for n in range(count):
        field = rng.normal(0, 1, (coarse, coarse, 3)).astype(np.float32)
        field = torch.nn.functional.interpolate(torch.from_numpy(field).permute(2, 0, 1)[None],
                                                size=(size, size), mode="bicubic",
                                                align_corners=False)[0].permute(1, 2, 0).numpy()
        field = 128 + 45 * field + rng.normal(0, 4, (size, size, 3))
        out[n] = np.clip(field, 0, 255).astype(np.uint8)
    return out


def build_recipe(args, groups: int, name: str):
    from synthgen.recipe import Recipe

    classes = 8
    return Recipe.model_validate({
        "name": name, "seed": 0,
        "model": {"id": "builtin:tiny-random", "steps": 1, "guidance_scale": 0.0,
                  "width": args.size, "height": args.size},
        # Shaped like recipes/imagenet100-sd-turbo.yaml: templates x slots, seeds views.
        "templates": ["a photo of a {class}, {context}", "a {style} photo of a {class}"],
        "slots": {"context": ["outdoors", "indoors", "at night", "close-up", "at dusk"],
                  "style": {"": 4, "blurry": 1, "bright": 1, "dark": 1}},
        "classes": [{"name": f"class {n}", "groups": groups // classes + (n < groups % classes)}
                    for n in range(classes)],
        "views": {"count": args.views, **({"strategy": "seeds"} if args.views > 1 else {})},
        "output": {"groups_per_shard": args.groups_per_shard, "format": args.format,
                   "quality": 90, "resolution": args.resolution},
        # --reject: every view judged as stored (the detector itself is stubbed out).
        "suppress": [{"concept": "blurry", "method": "reject", "detector": "builtin:world-clip",
                      "max_retries": 1}] if args.reject else [],
    })


def install_stubs(args):
    """Patch the model compute out and timers in; returns nothing (patches are global)."""
    import importlib

    import diffusers
    import webdataset

    local = importlib.import_module("synthgen.engines.local")
    import importlib

    # (`synthgen.generate` the attribute is the API function, so `import ... as` fails here.)
    prepare = importlib.import_module("synthgen.generate.prepare")
    sampler_module = importlib.import_module("synthgen.generate.sampler")
    plan_module = importlib.import_module("synthgen.plan")
    store_module = importlib.import_module("synthgen.store")
    write = importlib.import_module("synthgen.write")

    size = args.size
    pool = make_images(args.pool, size, args.content)
    # One precomputed decoded batch (as the VAE returns it: float, [-1, 1], NCHW), built once.
    index = torch.arange(args.batch_size) % args.pool
    pixels_uint8 = torch.from_numpy(pool)[index].contiguous()  # (B, H, W, 3), as .cpu() returns
    decoded = None
    if args.device_ops == "cpu":
        decoded = (pixels_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()

    original_prepare = prepare.prepare_sampler

    def prepare_stubbed(recipe, device, dtype, batch_size, **kwargs):
        sampler = original_prepare(recipe, device, dtype, batch_size, **kwargs)
        pipeline = sampler.pipeline
        unet, vae = pipeline.unet, pipeline.vae

        def unet_stub(sample, *a, **k):
            return (torch.zeros_like(sample),)

        def decode_stub(latents, *a, **k):
            n = latents.shape[0]
            if args.device_ops == "skip":
                # A (N, 1) stand-in: the finiteness hook and postprocess still run, on nothing.
                return (torch.zeros(n, 1, 1, 1),)
            return (decoded[:n],)

        unet.forward = timed("model: unet (stub)", unet_stub)
        vae.decode = timed("model: vae.decode (stub)", decode_stub)
        # sd-turbo's latents: 4 x H/8 x W/8 (tiny-random's VAE downsamples by 2).
        pipeline.vae_scale_factor = 8
        sampler.family.latent_shape = lambda spec: (1, 4, spec.height // 8, spec.width // 8)
        sampler.family.text_embeddings = timed("model: text encoder (per unique prompt)",
                                               sampler.family.text_embeddings)
        sampler.family.prompt_arguments = timed("S1 prompt_arguments (embed cache + cat, incl. text encoder)",
                                                sampler.family.prompt_arguments)
        pipeline.image_processor.postprocess = timed(
            "D1 diffusers postprocess (device-equivalent)", pipeline.image_processor.postprocess)
        return sampler

    prepare.prepare_sampler = prepare_stubbed

    class DetectorStub:
        """--reject's CLIP detector: passes every view (its model compute is GPU work)."""

        def __init__(self, model_id, device, *a, **k):
            pass

        def probabilities(self, images, concept, contrast, prompts):
            return torch.zeros(len(images))

    prepare.ClipConceptScorer = timed("model: detector (stub)", DetectorStub)
    if args.reject:
        stored = importlib.import_module("synthgen.generate.stored")
        stored.StoredBatch.pixels = timed("S8 stored form for detectors (encode + decode)",
                                          stored.StoredBatch.pixels)
    # Sampler (sampler thread).
    S = sampler_module.Sampler
    S.sample = timed("S0 Sampler.sample total", S.sample, profile_root=True)
    S._denoise = timed("S2 Sampler._denoise total", S._denoise)
    global _PIXELS_ON_HOST
    _PIXELS_ON_HOST = sampler_module.pixels_on_host
    if args.device_ops == "skip":
        # The uint8 conversion is device work in production: left out; `.cpu()` is emulated by
        # copying the batch's uint8 pixels into a fresh host tensor (what a device-to-host copy
        # costs the host: a new pageable buffer, faulted in and filled).
        def land_on_host(output, decoded_finite):
            pixels = timed("S7 D2H landing (fresh host copy, emulated .cpu())",
                           lambda: pixels_uint8[:len(output)].clone())()
            return pixels, torch.ones(len(output), dtype=torch.bool)

        sampler_module.pixels_on_host = land_on_host
    S._initial_noise = timed("S3 _initial_noise (CPU randn + cat + to)", S._initial_noise)
    P = diffusers.StableDiffusionPipeline
    P.__call__ = timed("S4 pipeline __call__ total (incl. stubs, postprocess)", P.__call__)
    # The per-view hand-off in ShardWorker.build.
    local.ShardWorker._load_model = timed("L model load (one-off, excluded from rates)",
                                          local.ShardWorker._load_model)
    local.ShardAssembler.add_view = timed("S5 ShardAssembler.add_view", local.ShardAssembler.add_view)
    plan_module.Plan.shard_groups = timed("S6 Plan.shard_groups (lazy plan draw)",
                                          plan_module.Plan.shard_groups)
    # Encode pool.
    A = local.ShardAssembler
    A._encode_group = timed("E0 _encode_group total (encode thread)", A._encode_group,
                            profile_root=True)
    local.encode_image = timed("E1 encode_image (PIL encode)", local.encode_image)
    local.sample_metadata = timed("E2 sample_metadata", local.sample_metadata)
    local.build_sample = timed("E3 build_sample (canonical json)", local.build_sample)
    # Writer thread.
    local.publish_shard = timed("W0 publish_shard total (writer thread)", local.publish_shard,
                                profile_root=True)
    local.claim_for_recipe = timed("W1 claim_for_recipe", local.claim_for_recipe)
    write.shard_tar = timed("W2 shard_tar (tar+json+sha256+schema)", write.shard_tar)
    webdataset.TarWriter.write = timed("W3 TarWriter.write", webdataset.TarWriter.write)
    write.json_schema = timed("W4 json_schema", write.json_schema)

    class _Hashlib:
        @staticmethod
        def sha256(data=b""):
            return timed("W5 sha256 (in shard_tar)", lambda: _real_sha(data))()

    import hashlib
    _real_sha = hashlib.sha256
    write.hashlib = _Hashlib
    write.check_claim = timed("W6 check_claim (reads recipe.json)", write.check_claim)
    store_module.LocalStore.publish_once = timed("W7 LocalStore.publish_once (write+fsync+link)",
                                                 store_module.LocalStore.publish_once)
    store_module.LocalStore.write = timed("W8 LocalStore.write (stats, fsync)",
                                          store_module.LocalStore.write)


def run(args) -> dict:
    global PROFILING
    from synthgen.engines.local import GenerateOptions, generate_dataset
    from synthgen.plan import make_plan

    install_stubs(args)
    work = tempfile.mkdtemp(prefix="host-overhead-", dir=args.work)
    options = GenerateOptions(batch_size=args.batch_size, device="cpu", progress=args.progress,
                              encode_workers=args.encode_workers, overwrite=True,
                              cpu_threads=int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        # Warm-up: loads the model, fills caches, first-call costs; not counted.
        generate_dataset(make_plan(build_recipe(args, max(1, args.batch_size // args.views), "warmup")),
                         os.path.join(work, "warmup"), options)
        STATS.clear()
        groups = args.images // args.views
        started = time.perf_counter()
        plan = make_plan(build_recipe(args, groups, "bench"))
        plan_seconds = time.perf_counter() - started
        PROFILING = args.profile is not None
        main_profile = cProfile.Profile() if PROFILING else None
        cpu0 = time.process_time()
        children0 = _children_cpu()
        started = time.perf_counter()
        if main_profile:
            main_profile.enable()
        summary = generate_dataset(plan, os.path.join(work, "bench"), options)
        if main_profile:
            main_profile.disable()
        seconds = time.perf_counter() - started
        process_cpu = time.process_time() - cpu0
        children_cpu = _children_cpu() - children0
        PROFILING = False
        images = summary.images_generated
        out_bytes = sum(os.path.getsize(os.path.join(work, "bench", f))
                        for f in os.listdir(os.path.join(work, "bench")) if f.endswith(".tar"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load = STATS["L model load (one-off, excluded from rates)"]
    seconds -= load[0]
    process_cpu -= load[1]  # (its CPU on the main thread; close enough for a one-off)
    per = {name: {"wall_ms_per_image": 1000 * s[0] / images, "cpu_ms_per_image": 1000 * s[1] / images,
                  "calls": s[2]} for name, s in sorted(STATS.items())}
    device_equiv = (_device_equivalent(args, images) if args.device_ops == "cpu"
                    else {"seconds": 0.0})
    emulated = (STATS["D1 diffusers postprocess (device-equivalent)"][1] + device_equiv["seconds"]
                if args.device_ops == "cpu" else 0.0)
    # Model compute left in the path (the tiny text encoder, once per unique prompt, on the
    # sampler thread; the stubs): not host work either.
    model_wall = sum(v[0] for k, v in STATS.items() if k.startswith("model:"))
    model_cpu = sum(v[1] for k, v in STATS.items() if k.startswith("model:"))
    host_seconds = max(1e-9, seconds - emulated - model_wall)
    result = {
        "command": " ".join(sys.argv), "device_ops": args.device_ops, "format": args.format, "size": args.size,
        "stored_size": args.resolution or args.size, "views": args.views,
        "batch_size": args.batch_size, "encode_workers": args.encode_workers,
        "content": args.content, "images": images, "shards": summary.shards_written,
        "tar_bytes_per_image": round(out_bytes / images),
        "cpu_cores_visible": os.cpu_count(), "omp_threads": torch.get_num_threads(),
        "make_plan_s": round(plan_seconds, 3),
        "end_to_end_s": round(seconds, 3),
        "end_to_end_images_per_s_incl_emulated_device_ops": round(images / seconds, 1),
        "process_cpu_ms_per_image": round(1000 * process_cpu / images, 3),
        "child_process_cpu_ms_per_image (encode processes)": round(1000 * children_cpu / images, 3),
        "emulated_device_ops_ms_per_image": round(1000 * emulated / images, 3),
        "model_stages_ms_per_image (text encoder + stubs; cpu)": round(1000 * model_cpu / images, 3),
        "host_path_images_per_s (e2e minus emulated device ops and model stages)":
            round(images / host_seconds, 1),
        "host_cpu_ms_per_image (process CPU minus emulated device ops and model stages)":
            round(1000 * (process_cpu - emulated - model_cpu) / images, 3),
        "stages": {k: {kk: round(vv, 4) if isinstance(vv, float) else vv for kk, vv in v.items()}
                   for k, v in per.items()},
        "device_equivalent_conversion_ms_per_image": round(1000 * device_equiv["seconds"] / images, 3),
    }
    if args.profile:
        stats = pstats.Stats(main_profile)
        for profile in _PROFILES.values():
            stats.add(profile)
        stats.dump_stats(args.profile)
        stream = io.StringIO()
        pstats.Stats(args.profile, stream=stream).sort_stats("tottime").print_stats(args.top)
        result["profile_top_tottime"] = stream.getvalue()
    return result


def _children_cpu() -> float:
    """CPU seconds of this process's live child processes (encode processes, if any)."""
    import multiprocessing

    total = 0.0
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def _device_equivalent(args, images: int) -> dict:
    """Time synthgen's own elementwise conversion (sampler.py pixels_on_host) on one batch on
    this CPU, x the number of calls: work that runs on the GPU in production but on the CPU here
    (inside the measured 'S2 _denoise' time)."""
    batches = STATS["S2 Sampler._denoise total"][2]
    output = torch.rand(args.batch_size, 3, args.size, args.size)
    times = []
    for _ in range(3):
        started = time.thread_time()
        _PIXELS_ON_HOST(output, torch.zeros(0, dtype=torch.bool))
        times.append(time.thread_time() - started)
    return {"seconds": min(times) * batches}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="jpg", choices=("jpg", "png", "webp"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--groups-per-shard", type=int, default=64)
    parser.add_argument("--encode-workers", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=None, help="stored size (output.resolution)")
    parser.add_argument("--content", default="smooth", choices=("smooth", "noise"))
    parser.add_argument("--pool", type=int, default=16, help="distinct pictures in a batch")
    parser.add_argument("--progress", action="store_true", help="tqdm bar on (the CLI default)")
    parser.add_argument("--device-ops", default="skip", choices=("skip", "cpu"),
                        help="skip: leave out the elementwise work that is GPU work in production "
                             "(host path only, the default); cpu: run it on this CPU too")
    parser.add_argument("--reject", action="store_true",
                        help="a reject entry: every view judged as stored, by a stub detector")
    parser.add_argument("--profile", default=None, help="write merged cProfile stats here")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--work", default=None, help="folder for the temporary dataset")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=1))
        return result
    profile = result.pop("profile_top_tottime", None)
    stages = result.pop("stages")
    for key, value in result.items():
        print(f"{key}: {value}")
    print(f"\n{'stage':62s} {'wall ms/img':>11s} {'cpu ms/img':>11s} {'calls':>6s}")
    for name, value in stages.items():
        print(f"{name:62s} {value['wall_ms_per_image']:11.4f} {value['cpu_ms_per_image']:11.4f} "
              f"{value['calls']:6d}")
    print("(S* run on the sampler thread, E* in the encode pool, W* on the writer thread; "
          "nested stages are included in their totals)")
    if profile:
        print("\n" + profile)
    return result


if __name__ == "__main__":
    main()
