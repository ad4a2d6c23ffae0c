"""The local engine: one process, one device, encoding and tar writing beside the sampling.

The main thread only samples. Finished groups go to a thread pool that encodes their images
(Pillow releases the GIL while encoding), and finished shards to one writer thread, so the
device never waits for the CPU unless the CPU falls behind by more than a few shards.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from synthgen.generate.load import choose_device, choose_dtype, load_pipeline
from synthgen.generate.sampler import Sampler
from synthgen.plan import GroupPlan, Plan
from synthgen.views import ViewPlan
from synthgen.write import (
    build_sample,
    encode_image,
    prepare_output_dir,
    sample_metadata,
    write_manifest,
    write_shard,
)


@dataclass(frozen=True)
class GenerateOptions:
    """How to run a plan; none of these change which images a view gets."""

    batch_size: int = 8
    device: str = "auto"
    dtype: str | None = None  # overrides the recipe's model.dtype
    overwrite: bool = False
    encode_workers: int = 4
    max_pending_shards: int = 2
    progress: bool = True


@dataclass
class RunSummary:
    """What a `generate` run did."""

    out_dir: Path
    shards_total: int
    shards_skipped: int
    shards_written: int = 0
    images_generated: int = 0
    nonfinite_views: int = 0
    seconds: float = 0.0
    model: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images_generated / self.seconds if self.seconds > 0 else 0.0


def generate_dataset(plan: Plan, out_dir: Path, options: GenerateOptions) -> RunSummary:
    """Build every shard of `plan` that `out_dir` lacks, then the manifest."""
    started = time.perf_counter()
    recipe = plan.recipe
    # 1. Check the output directory and find the shards that are already done.
    done = prepare_output_dir(out_dir, plan, options.overwrite)
    pending = [shard for shard in range(plan.shard_count) if shard not in done]
    summary = RunSummary(out_dir=out_dir, shards_total=plan.shard_count, shards_skipped=len(done))
    if not pending:
        # Everything was built before; a crash may have come between the last stats file
        # and the manifest, so the manifest is (re)assembled from the stats files.
        write_manifest(out_dir, plan)
        summary.seconds = time.perf_counter() - started
        return summary
    # 2. Load the model once.
    device = choose_device(options.device)
    dtype = choose_dtype(options.dtype or recipe.model.dtype, device)
    model = load_pipeline(recipe.model, device, dtype)
    summary.model = model.describe()
    sampler = Sampler(model, recipe.model, options.batch_size)
    # 3. Sample batches of views of a shard's groups; hand finished groups on. Batches never
    #    cross shards, so a shard's bytes do not depend on which other shards a run builds.
    batches = [batch for shard in pending for batch in shard_batches(plan, shard, options.batch_size)]
    image_count = sum(len(batch) for batch in batches)
    assembler = ShardAssembler(plan, out_dir, summary.model, options)
    bar = tqdm(total=image_count, unit="img", desc=f"generate {recipe.name}",
               disable=not options.progress, dynamic_ncols=True)
    try:
        for batch in batches:
            result = sampler.sample([view for _, view in batch])
            for position, (group, view) in enumerate(batch):
                assembler.add_view(group, view, result.images[position].numpy(),
                                   nonfinite=position in result.nonfinite,
                                   record=result.record(position))
            bar.update(len(batch))
        # 4. Wait for the last shards, then write the manifest.
        summary.shards_written = assembler.finish()
    finally:
        assembler.shutdown()
        bar.close()
    write_manifest(out_dir, plan)
    summary.images_generated = image_count
    summary.nonfinite_views = assembler.nonfinite_count
    summary.seconds = time.perf_counter() - started
    return summary


def shard_batches(plan: Plan, shard: int, batch_size: int) -> list[list[tuple[GroupPlan, ViewPlan]]]:
    """The shard's views in plan order, cut into batches of `batch_size` (the last may be short)."""
    views = [(group, view) for group in plan.shard_groups(shard) for view in group.views]
    return [views[start:start + batch_size] for start in range(0, len(views), batch_size)]


class ShardAssembler:
    """Collects views into groups and groups into shards; encodes and writes in the background.

    Shards are written in plan order by a single writer thread; at most
    `max_pending_shards` shards wait for it before `add_view` blocks the sampler.
    """

    def __init__(self, plan: Plan, out_dir: Path, model_info: dict, options: GenerateOptions):
        self.plan = plan
        self.out_dir = out_dir
        self.model_info = model_info
        self.max_pending = options.max_pending_shards
        self.encoders = ThreadPoolExecutor(options.encode_workers, thread_name_prefix="encode")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="write")
        self.views: dict[str, dict[int, tuple[object, dict]]] = {}
        self.encoded: dict[int, list[Future]] = {}
        self.nonfinite: dict[int, list[tuple[str, int]]] = {}
        self.pending_writes: deque[Future] = deque()
        self.written = 0
        self.nonfinite_count = 0

    def add_view(self, group: GroupPlan, view: ViewPlan, pixels, nonfinite: bool,
                 record: dict | None = None) -> None:
        views = self.views.setdefault(group.group_id, {})
        views[view.view] = (pixels, record or {})
        if nonfinite:
            self.nonfinite.setdefault(group.shard, []).append((group.group_id, view.view))
            self.nonfinite_count += 1
        if len(views) < len(group.views):
            return
        del self.views[group.group_id]
        ordered = [views[v.view] for v in group.views]
        futures = self.encoded.setdefault(group.shard, [])
        futures.append(self.encoders.submit(self._encode_group, group, ordered))
        if len(futures) == len(self.plan.shard_groups(group.shard)):
            self._submit_shard(group.shard)

    def _encode_group(self, group: GroupPlan, views: list[tuple[object, dict]]) -> dict:
        recipe = self.plan.recipe
        images = [encode_image(pixels, recipe) for pixels, _ in views]
        metadata = sample_metadata(group, recipe, self.model_info, [record for _, record in views])
        return build_sample(group, images, metadata, recipe.output.format)

    def _submit_shard(self, shard: int) -> None:
        futures = self.encoded.pop(shard)
        nonfinite = tuple(self.nonfinite.pop(shard, ()))
        self.pending_writes.append(self.writer.submit(
            lambda: write_shard(self.out_dir, shard, [f.result() for f in futures],
                                self.model_info, nonfinite)))
        # Back-pressure: the sampler waits rather than piling up shards in memory.
        while len(self.pending_writes) > self.max_pending:
            self.pending_writes.popleft().result()
            self.written += 1

    def finish(self) -> int:
        """Wait for every shard to be written; re-raises the first encoding or write error."""
        while self.pending_writes:
            self.pending_writes.popleft().result()
            self.written += 1
        return self.written

    def shutdown(self) -> None:
        for future in self.pending_writes:
            future.cancel()
        self.encoders.shutdown(wait=True, cancel_futures=True)
        self.writer.shutdown(wait=True, cancel_futures=True)

