"""Audit throughput: images/s through the audit's own read -> decode -> preprocess -> embed stages.

    python bench/audit_throughput.py                       # ViT-B/32 (random weights), 64 and 512 px
    python bench/audit_throughput.py --images 20000 --batch-size 512 --device cuda   # on a GPU
    python bench/audit_throughput.py --small --images 32   # tiny CLIP: a CPU smoke test

It writes a dataset of N JPEG views per size (smooth random pictures, so JPEG sizes are like
real photos, not noise) as real synthgen shards, builds a CLIP of the ViT-B/32 architecture
with random weights (`CLIPConfig()` defaults: vision 768 wide, 12 layers, patch 32, 224 px;
text 512) — speed does not depend on the weights — and times `run.embedded_batches` over
`source.iter_views`: tar reading, per-view sha1, decode, CLIP preprocessing and the vision
tower, exactly what `synthgen audit` runs per view. On CUDA the decode is nvJPEG on the GPU
(torchvision.io.decode_jpeg(device="cuda")), resize/crop/normalise run on the GPU, and the
model runs in float16. One batch is run first as a warm-up; then every view is timed, `--repeat` times (best
and median reported: on a shared machine the best pass is the least disturbed). The embedding cache is off.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def smooth_jpeg(rng: np.random.Generator, size: int, quality: int = 90) -> bytes:
    """A blurry random picture: a 8x8 colour field upsampled, plus mild noise."""
    field = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


DISTINCT_PICTURES = 256


def build_dataset(out_dir: Path, images: int, size: int, views: int = 4, per_shard: int = 250) -> Path:
    """`images` JPEG views in groups of `views`, as synthgen shards plus a manifest.

    At most DISTINCT_PICTURES different pictures, used in turn: making each 512 px view
    (resize, noise, encode) took 6-14 ms on one thread, so 20,000 distinct ones took longer
    than bench/gpu_session.sh gives the whole benchmark. The audit decodes and embeds every
    view whatever its bytes (its cache is off here), so the timed work is the same."""
    out_dir.mkdir(parents=True, exist_ok=True)
    from synthgen.recipe import canonical_json
    from synthgen.write import MANIFEST, write_shard

    rng = np.random.default_rng(size)
    pictures = [smooth_jpeg(rng, size) for _ in range(min(images, DISTINCT_PICTURES))]
    samples = []
    for group in range((images + views - 1) // views):
        key = f"class-bench-{group:06d}"
        metadata = {"group_id": key, "class_name": "bench", "class_index": 0, "corner_case": None,
                    "tags": [], "view_strategy": "seeds",
                    "views": [{"view": v, "prompt": "a picture", "seed": v, "file": f"view{v}.jpg"}
                              for v in range(views)]}
        sample = {"__key__": key, "json": canonical_json(metadata), "cls": b"0"}
        for v in range(views):
            sample[f"view{v}.jpg"] = pictures[(group * views + v) % len(pictures)]
        samples.append(sample)
    shards = []
    for shard, start in enumerate(range(0, len(samples), per_shard)):
        stats = write_shard(out_dir, shard, samples[start:start + per_shard], {}).to_json()
        shards.append({k: stats[k] for k in ("name", "samples", "images", "bytes", "sha256")})
    totals = {"shards": len(shards), "samples": len(samples),
              **{key: sum(shard[key] for shard in shards) for key in ("images", "bytes")}}
    (out_dir / MANIFEST).write_text(json.dumps({
        "format": "synthgen-dataset/1", "recipe_hash": "0" * 64, "totals": totals,
        "recipe": {"name": "bench", "model": {"id": "none (pictures made by this benchmark)"}},
        "shards": shards}))
    return out_dir


def build_clip(small: bool, device: torch.device, dtype: torch.dtype):
    """A random-weight CLIP encoder: ViT-B/32 architecture, or a tiny one with --small."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from synthgen.audit.encoder import ClipEncoder
    from synthgen.generate.tiny_random import byte_level_clip_tokenizer

    tokenizer = byte_level_clip_tokenizer()
    text = dict(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if small:
        config = CLIPConfig(
            text_config=dict(text, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, image_size=32, patch_size=8),
            projection_dim=16)
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        config = CLIPConfig(text_config=text)  # defaults: ViT-B/32 vision, 512-wide text
        image_processor = CLIPImageProcessor()  # 224 px, bicubic, OpenAI mean/std
    torch.manual_seed(0)
    model = CLIPModel(config).to(device=device, dtype=dtype).eval()
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return ClipEncoder(model, processor, "bench", device, dtype, identity="bench")


def measure(dataset: Path, encoder, device: torch.device, batch_size: int, prefetch: int = 2,
            repeat: int = 1) -> dict:
    from synthgen.audit import source
    from synthgen.audit.cache import EmbeddingCache
    from synthgen.audit.decode import ImageDecoder
    from synthgen.audit.run import embedded_batches

    _, shards = source.dataset_shards(dataset)
    decoder = ImageDecoder(device, draft_size=encoder.input_size)

    def make_batches():
        views = source.iter_views(dataset, shards, source.ShardProblems())
        return embedded_batches(views, encoder, decoder, EmbeddingCache("none"), batch_size, prefetch)

    next(make_batches())  # warm-up on the first batch: kernels, allocator, nvJPEG handles
    rates = []
    for _ in range(repeat):
        _sync(device)
        started = time.perf_counter()
        count = sum(len(batch) for batch in make_batches())
        _sync(device)
        rates.append(count / (time.perf_counter() - started))
    decoder.close()
    # On a shared machine the best pass is the least disturbed one; the median shows the spread.
    return {"images": count, "images_per_second": max(rates),
            "median_images_per_second": float(np.median(rates)), "passes": repeat}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="views per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512], help="image sizes (px)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CPU, 512 on GPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--small", action="store_true", help="tiny CLIP instead of ViT-B/32")
    parser.add_argument("--prefetch", type=int, default=2, help="batches read+decoded ahead in a thread (0: none)")
    parser.add_argument("--repeat", type=int, default=1, help="timed passes; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)

    from synthgen.devices import choose_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.float16 if device.type == "cuda" else torch.float32)
    batch_size = args.batch_size or (512 if device.type == "cuda" else 64)
    encoder = build_clip(args.small, device, dtype)
    name = "tiny CLIP" if args.small else "ViT-B/32 (random weights)"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name} on {where}, {str(dtype).replace('torch.', '')}, batch {batch_size}")
    results = []
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as scratch:
        for size in args.sizes:
            dataset = build_dataset(Path(scratch) / f"s{size}", args.images, size)
            result = {"size": size, **measure(dataset, encoder, device, batch_size, args.prefetch, args.repeat)}
            results.append(result)
            print(f"{size}x{size} JPEG: {result['images']} images, {result['images_per_second']:.1f} "
                  f"images/s (best of {args.repeat}; median {result['median_images_per_second']:.1f}) "
                  "end to end: read, sha1, decode, preprocess, embed")
            sys.stdout.flush()
    return results


if __name__ == "__main__":
    main()
