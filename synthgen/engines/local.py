"""The local engine, and the shard worker every engine runs.

A `ShardWorker` is one device with one loaded pipeline that builds whole shards; the engines
differ only in how many workers they start and where (`local`: one, in this process;
`processes`: one process per GPU or CPU worker; `ray`: one actor per GPU). Because every
shard is a pure function of the plan and its index (batches never cross shards, every
pipeline call has a fixed shape), a shard's bytes do not depend on the engine or on which
worker builds it.

Inside a worker the thread that samples only samples. Finished groups go to a thread pool
that encodes their images (Pillow releases the GIL while encoding), and finished shards to
one writer thread, so the device never waits for the CPU unless the CPU falls behind by more
than a few shards.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

from tqdm import tqdm

from synthgen.errors import UserError
from synthgen.plan import GroupPlan, Plan
from synthgen.store import DatasetStore, Location, open_store
from synthgen.views import ViewPlan
from synthgen.write import (
    PublishResult,
    build_sample,
    claim_for_recipe,
    describe_shard_problems,
    encode_image,
    format_shard_ranges,
    missing_shards,
    prepare_output_dir,
    publish_shard,
    sample_metadata,
    shard_done,
    shard_problems,
    write_manifest,
)

# Test hook: "SHARD:MARKER" makes the worker that samples the first batch of SHARD exit at
# once (os._exit, as if killed), if it is the first to create the file MARKER: exactly one
# worker dies, mid-shard, however many build that shard, and nothing of that shard is
# published (the batch never reaches the writer). Engines read it in the coordinating
# process and hand it to their workers, so it reaches Ray actors started earlier.
FAULT_ENV = "SYNTHGEN_TEST_EXIT_IN_SHARD"
FAULT_EXIT_STATUS = 86


@dataclass(frozen=True)
class GenerateOptions:
    """How to run a plan; none of these change which images a view gets.

    For a given batch size and device type (and on the CPU, `cpu_threads`), the bytes of
    every shard are the same whichever engine builds it, with however many workers.
    """

    # Views per pipeline call; None: the device's default, "auto": the largest that fits the
    # GPU (see generate/batching.py). Where views hold their group's layout, rounded down to
    # whole groups (`whole_groups_batch_size`).
    batch_size: int | str | None = None
    device: str = "auto"
    dtype: str | None = None  # overrides the recipe's model.dtype
    overwrite: bool = False
    encode_workers: int = 4
    max_pending_shards: int = 2
    progress: bool = True
    # Worker processes or Ray actors, one device each; None: 1 (local), every GPU (or CPU)
    # of the Ray cluster (ray).
    workers: int | None = None
    # Build only these shards (a slice for a job array or torchrun rank); None: all of them.
    shards: tuple[int, ...] | None = None
    # Ray cluster address; None starts a local Ray.
    address: str | None = None
    # Intra-op threads of a CPU worker. PyTorch's CPU kernels may split work by thread count,
    # and a split can move the last float bits, so it is a fixed number for every engine, not
    # "all cores" (which would tie the bytes to the machine). 2 uses both cores of a small
    # machine such as the quickstart's; --workers N with 2 threads each fills a larger one.
    cpu_threads: int = 2
    # How often one shard may be started before a run gives up on it (its workers died).
    max_attempts: int = 3
    # GPU speed options (see generate/prepare.py); a compiled graph may move the last float
    # bits, so bytes are reproducible per setting, not across settings.
    compile_model: bool = False
    channels_last: bool = False


@dataclass
class RunSummary:
    """What a `generate` run did."""

    out_dir: str  # the dataset's location: a directory or a URL
    shards_total: int
    shards_skipped: int
    shards_written: int = 0
    images_generated: int = 0
    nonfinite_views: int = 0
    seconds: float = 0.0
    model: dict = field(default_factory=dict)
    engine: str = "local"
    workers: int = 1
    shards_selected: int = 0  # the shards this run was asked for (all, or its slice)
    shards_lost: int = 0  # built, but another worker published them first
    shards_retried: int = 0  # started again after their worker died
    missing: list[int] = field(default_factory=list)  # shards of the dataset still not done
    manifest_written: bool = False
    model_variants: int = 1  # distinct model descriptions (device, dtype, ...) across the shards
    # Per suppressed concept, over the views this run generated: redraws, and views stored
    # although they still failed after their last retry (`suppression_failed` in their json).
    rejections: Counter = field(default_factory=Counter)
    suppression_failed: Counter = field(default_factory=Counter)
    # `slots.check`: groups checked, their redraws, and groups stored still disagreeing.
    group_checks: Counter = field(default_factory=Counter)

    @property
    def images_per_second(self) -> float:
        return self.images_generated / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ShardsBuilt:
    """What one `ShardWorker.build` call did; engines add these up into a `RunSummary`."""

    shards: tuple[int, ...]
    published: int = 0
    lost: int = 0
    skipped: int = 0
    images: int = 0
    nonfinite_views: int = 0
    model: dict = field(default_factory=dict)
    rejections: Counter = field(default_factory=Counter)
    suppression_failed: Counter = field(default_factory=Counter)
    group_checks: Counter = field(default_factory=Counter)


def selected_shards(plan: Plan, options: GenerateOptions) -> tuple[int, ...]:
    """The shards a run is asked for: `options.shards`, checked against the plan, or all."""
    if options.shards is None:
        return tuple(range(plan.shard_count))
    outside = [shard for shard in options.shards if not 0 <= shard < plan.shard_count]
    if outside:
        raise UserError(f"--shards: shards {format_shard_ranges(outside)} are not in the plan, "
                        f"which has shards 0-{plan.shard_count - 1}; pick shards in that range")
    return tuple(sorted(set(options.shards)))


def start_run(plan: Plan, out_dir: DatasetStore, options: GenerateOptions,
              engine: str) -> tuple[RunSummary, list[int]]:
    """Steps every engine takes first: check the options, prepare `out_dir`, list the work."""
    selection = selected_shards(plan, options)
    if options.overwrite and options.shards is not None:
        raise UserError("--overwrite with a slice (--shards, --rank or a job array): it would "
                        "delete the shards other slices built; delete --out yourself before "
                        "starting the slices, or run without a slice")
    done = prepare_output_dir(out_dir, plan, options.overwrite, options.shards)
    pending = [shard for shard in selection if shard not in done]
    summary = RunSummary(out_dir=out_dir.location, shards_total=plan.shard_count,
                         shards_skipped=len(selection) - len(pending), engine=engine,
                         shards_selected=len(selection))
    return summary, pending


def shard_images(plan: Plan, shards) -> int:
    """How many images `shards` hold (for a progress bar's total)."""
    return sum(plan.shard_size(shard)[1] for shard in shards)


def add_built(summary: RunSummary, built: ShardsBuilt) -> None:
    summary.shards_written += built.published
    summary.shards_lost += built.lost
    summary.shards_skipped += built.skipped
    summary.images_generated += built.images
    summary.nonfinite_views += built.nonfinite_views
    summary.model = summary.model or built.model
    summary.rejections.update(built.rejections)
    summary.suppression_failed.update(built.suppression_failed)
    summary.group_checks.update(built.group_checks)


def finish_run(plan: Plan, out_dir: DatasetStore, options: GenerateOptions, summary: RunSummary,
               started: float) -> RunSummary:
    """Steps every engine takes last: the manifest, once every shard of the dataset is done.

    A slice run writes it only when the other slices are done too, so whichever worker
    finishes last writes it; `synthgen finalize DIR` does the same by hand.
    """
    summary.missing = missing_shards(out_dir, plan)
    if not summary.missing and options.shards is not None:
        # Other slices' shards were checked by size only; a manifest vouches for their bytes,
        # so they are read against their sha256 first, as `synthgen finalize` reads them.
        selected = set(options.shards)
        others = [shard for shard in range(plan.shard_count) if shard not in selected]
        problems = shard_problems(out_dir, plan, others)
        if problems:
            damaged = sorted(shard for shards in problems.values() for shard in shards)
            raise UserError(
                f"--out {out_dir.location}: other slices' {describe_shard_problems(problems, plan.shard_count)}, "
                f"so no manifest was written; build them with synthgen generate RECIPE "
                f"--out {out_dir.location} --shards {format_shard_ranges(damaged)}, then "
                "synthgen finalize")
    if not summary.missing:
        manifest = write_manifest(out_dir, plan)
        summary.manifest_written = True
        summary.model_variants = len(manifest["model_variants"])
    elif options.shards is None:
        # Only possible when another run raced on this directory and lost its worker
        # between publishing a tar and writing its stats.
        raise UserError(
            f"--out {out_dir.location}: shards {format_shard_ranges(summary.missing)} were published by "
            "another run writing here at the same time and are not finished; rerun synthgen "
            "generate once the other run has stopped")
    summary.seconds = time.perf_counter() - started
    return summary


def generate_dataset(plan: Plan, out_dir: Location, options: GenerateOptions) -> RunSummary:
    """Build every shard of `plan` (or of `options.shards`) that `out_dir` lacks, in this
    process on one device, then the manifest once every shard of the dataset is done.

    `options.workers` is not read here: several workers are the `processes` and `ray`
    engines (`synthgen.engines.run_engine`).
    """
    started = time.perf_counter()
    out_dir = open_store(out_dir)
    # 1. Check the output location and find the shards that are already done.
    summary, pending = start_run(plan, out_dir, options, engine="local")
    if not pending:
        # Everything was built before; a crash may have come between the last stats file
        # and the manifest, so the manifest is (re)assembled from the stats files.
        return finish_run(plan, out_dir, options, summary, started)
    # 2. Load the model once.
    worker = ShardWorker(plan, out_dir, options, fault=fault_from_environment())
    bar = tqdm(total=shard_images(plan, pending),
               unit="img", desc=f"generate {plan.recipe.name}", disable=not options.progress,
               dynamic_ncols=True)
    try:
        # 3. Sample, encode and write the pending shards, each after the other.
        add_built(summary, worker.build(pending, on_batch=lambda shard, images: bar.update(images)))
    finally:
        bar.close()
        worker.close()
    # 4. The manifest.
    return finish_run(plan, out_dir, options, summary, started)


def fault_from_environment() -> str | None:
    """The test hook's value (see `FAULT_ENV`), read where the engine coordinates."""
    return os.environ.get(FAULT_ENV) or None


class ShardWorker:
    """One device, one loaded pipeline, many shards: what each worker of every engine runs.

    The model is loaded on construction; `build` may be called any number of times.
    """

    def __init__(self, plan: Plan, out_dir: Location, options: GenerateOptions,
                 device: str | None = None, fault: str | None = None):
        import torch

        from synthgen.devices import choose_device
        from synthgen.generate.load import choose_dtype

        self.plan = plan
        self.store = open_store(out_dir)
        self.options = options
        self.fault = fault
        # 1. Device and dtype; on the CPU a fixed thread count (see GenerateOptions).
        self.device = choose_device(device or options.device)
        dtype = choose_dtype(options.dtype or plan.recipe.model.dtype, self.device, plan.recipe.model)
        self._threads_before = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(options.cpu_threads)
        elif self.device.type == "cuda" and self.device.index is not None:
            # Anything that asks for "cuda" without an index lands on this worker's GPU too.
            torch.cuda.set_device(self.device)
        try:
            self._load_model(dtype)
        except BaseException:  # a load error or Ctrl-C: close() would never be reached
            torch.set_num_threads(self._threads_before)
            raise

    def _load_model(self, dtype) -> None:
        from synthgen.generate.batching import default_batch_size, whole_groups_batch_size
        from synthgen.generate.load import loading_bars_off
        from synthgen.generate.prepare import prepare_sampler

        options, recipe = self.options, self.plan.recipe
        # 2. Load the pipeline once for all the shards this worker builds.
        #    (prepare_sampler also applies the recipe's erase edits and reject detectors.)
        requested = (default_batch_size(self.device) if options.batch_size is None
                     else options.batch_size)
        auto = requested == "auto"
        with loading_bars_off():  # the pipeline's, the detectors' and the edits' loading
            self.sampler = prepare_sampler(recipe, self.device, dtype, 1 if auto else requested,
                                           compile_model=options.compile_model and not auto,
                                           channels_last=options.channels_last,
                                           encode_workers=options.encode_workers)
        self.model = self.sampler.model
        self.model_info = self.model.describe()
        # 3. With --batch-size auto, probe the largest batch that fits this device, then
        #    compile for that one size (Sampler.compile says why not before).
        self.batch_size = self._probe_batch_size() if auto else requested
        if auto and options.compile_model:
            self.sampler.compile()
        # 4. Views that hold their group's layout are made with the whole group in one call;
        #    checked groups are checked in one batch.
        held = [spec.count for spec in (recipe.views_for(entry) for entry in
                                        [*recipe.classes, *recipe.corner_cases])
                if spec.whole_groups]
        if held:
            self.batch_size = whole_groups_batch_size(self.batch_size, max(held))
            self.sampler.batch_size = self.batch_size

    def _probe_batch_size(self) -> int:
        from synthgen.generate.batching import auto_batch_size

        # Probed without layout sharing (a call may cut a group here); the batch size is then
        # rounded down to whole groups, which leaves room for sharing's few extra tensors.
        # Nor are groups checked (`held_check`): a probe's cut groups are not groups.
        views = [replace(view, layout_anchor=None, layout_sharing=None, held_check=None)
                 for group in self.plan.head(64) for view in group.views
                 if view.source_view is None]

        def try_batch(size: int) -> None:
            self.sampler.batch_size = size
            self.sampler.sample((views * (size // len(views) + 1))[:size])

        self.sampler.batch_size = auto_batch_size(try_batch, self.device)
        return self.sampler.batch_size

    def build(self, shards, on_batch: Callable[[int, int], None] | None = None) -> ShardsBuilt:
        """Build `shards` in order and publish each (see `write.publish_shard`).

        A shard already done in the store (another worker's) is skipped. `on_batch(shard,
        images)` is called after every pipeline call, for progress.
        """
        built = ShardsBuilt(shards=tuple(shards), model=self.model_info)
        assembler = ShardAssembler(self.plan, self.store, self.model_info, self.options)
        try:
            for shard in shards:
                if shard_done(self.store, shard):
                    built.skipped += 1
                    continue
                # Batches never cross shards, so a shard's bytes do not depend on which
                # other shards this worker builds.
                for batch in shard_batches(self.plan, shard, self.batch_size):
                    result = self.sampler.sample([view for _, view in batch])
                    # The test hook dies before the batch reaches the assembler: after it, a
                    # shard's last batch is already on its way to being published, and the
                    # test would race the writer thread.
                    self._inject_fault(shard, assembler)
                    for position, (group, view) in enumerate(batch):
                        assembler.add_view(group, view, result.images[position].numpy(),
                                           nonfinite=position in result.nonfinite,
                                           record=result.record(position),
                                           stored_file=result.file(position))
                    built.images += len(batch)
                    if on_batch is not None:
                        on_batch(shard, len(batch))
            assembler.finish()
        finally:
            assembler.shutdown()
        built.published = sum(1 for result in assembler.results if result.published)
        built.lost = len(assembler.results) - built.published
        built.nonfinite_views = assembler.nonfinite_count
        built.rejections, built.suppression_failed = assembler.rejections, assembler.suppression_failed
        built.group_checks = assembler.group_checks
        return built

    def _inject_fault(self, shard: int, assembler: ShardAssembler) -> None:
        if not self.fault:
            return
        target, marker = self.fault.split(":", 1)
        if int(target) != shard:
            return
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # another worker already died for this test
        # Dies in shard `target` with the shards finished before it published, whatever the
        # machine's load: on a busy one the writer thread could still hold them, and what a
        # rerun finds would be left to chance.
        while assembler.pending_writes:
            assembler.pending_writes.popleft().result()
        os._exit(FAULT_EXIT_STATUS)

    def close(self) -> None:
        """Give back the CPU thread setting (this worker may be a caller's process) and the
        threads that encode judged views."""
        import torch

        torch.set_num_threads(self._threads_before)
        if self.sampler.stored_form is not None:
            self.sampler.stored_form.close()


def shard_batches(plan: Plan, shard: int, batch_size: int) -> list[list[tuple[GroupPlan, ViewPlan]]]:
    """The shard's views in plan order, cut into batches of `batch_size` (the last may be short).

    A group whose views hold its layout (`ViewPlan.layout_anchor`) or are checked together
    (`ViewPlan.held_check`) is never cut: a batch ends early where it would not fit
    (`batch_size` is at least its view count, see `whole_groups_batch_size`)."""
    views = [(group, view) for group in plan.shard_groups(shard) for view in group.views]

    def whole(view: ViewPlan) -> bool:
        return view.layout_anchor is not None or view.held_check is not None

    if not any(whole(view) for _, view in views):
        return [views[start:start + batch_size] for start in range(0, len(views), batch_size)]
    batches: list[list[tuple[GroupPlan, ViewPlan]]] = [[]]
    for group in plan.shard_groups(shard):
        whole_group = group.views and whole(group.views[0])
        if whole_group and len(batches[-1]) + len(group.views) > batch_size:
            batches.append([])
        for view in group.views:
            if len(batches[-1]) == batch_size:
                batches.append([])
            batches[-1].append((group, view))
    return [batch for batch in batches if batch]


class ShardAssembler:
    """Collects views into groups and groups into shards; encodes and writes in the background.

    Shards are published in the order they complete by a single writer thread; at most
    `max_pending_shards` shards wait for it before `add_view` blocks the sampler.
    `results` holds each written shard's `PublishResult`.
    """

    def __init__(self, plan: Plan, store: DatasetStore, model_info: dict,
                 options: GenerateOptions):
        self.plan = plan
        self.store = store
        self.model_info = model_info
        self.max_pending = options.max_pending_shards
        self.encoders = ThreadPoolExecutor(options.encode_workers, thread_name_prefix="encode")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="write")
        # Per group being assembled: view -> (uint8 pixels, or its stored file's bytes; record).
        self.views: dict[str, dict[int, tuple[object, dict]]] = {}
        self.encoded: dict[int, list[Future]] = {}
        self.nonfinite: dict[int, list[tuple[str, int]]] = {}
        self.pending_writes: deque[Future] = deque()
        self.results: list[PublishResult] = []
        self.written = 0
        self.nonfinite_count = 0
        self.rejections: Counter = Counter()
        self.suppression_failed: Counter = Counter()
        self.group_checks: Counter = Counter()

    def add_view(self, group: GroupPlan, view: ViewPlan, pixels, nonfinite: bool,
                 record: dict | None = None, stored_file: bytes | None = None) -> None:
        """One sampled view; `stored_file`: its encoded file where the sampler made it
        already (a detector judged the view as stored), which is then stored as it is."""
        views = self.views.setdefault(group.group_id, {})
        views[view.view] = (stored_file if stored_file is not None else pixels, record or {})
        self.rejections.update((record or {}).get("rejections", {}))
        self.suppression_failed.update((record or {}).get("suppression_failed", ()))
        checked = (record or {}).get("held_check")
        if checked is not None and view.view == 0:  # one count per group
            self.group_checks.update(groups=1, redraws=checked["redraws"],
                                     failed=int(not checked["passed"]))
        if nonfinite:
            self.nonfinite.setdefault(group.shard, []).append((group.group_id, view.view))
            self.nonfinite_count += 1
        if len(views) < len(group.views):
            return
        del self.views[group.group_id]
        ordered = [views[v.view] for v in group.views]
        futures = self.encoded.setdefault(group.shard, [])
        futures.append(self.encoders.submit(self._encode_group, group, ordered))
        if len(futures) == self.plan.shard_size(group.shard)[0]:
            self._submit_shard(group.shard)

    def _encode_group(self, group: GroupPlan, views: list[tuple[object, dict]]) -> dict:
        recipe = self.plan.recipe
        images = [pixels if isinstance(pixels, bytes) else encode_image(pixels, recipe)
                  for pixels, _ in views]
        metadata = sample_metadata(group, recipe, self.model_info, [record for _, record in views])
        return build_sample(group, images, metadata, recipe.output.format)

    def _submit_shard(self, shard: int) -> None:
        futures = self.encoded.pop(shard)
        nonfinite = tuple(self.nonfinite.pop(shard, ()))

        def write() -> PublishResult:
            samples = [f.result() for f in futures]
            claim_for_recipe(self.store, self.plan.recipe)
            return publish_shard(self.store, shard, samples, self.model_info, nonfinite,
                                 self.plan.recipe.output.layout)

        self.pending_writes.append(self.writer.submit(write))
        # Back-pressure: the sampler waits rather than piling up shards in memory.
        while len(self.pending_writes) > self.max_pending:
            self._collect(self.pending_writes.popleft())

    def _collect(self, future: Future) -> None:
        result = future.result()
        self.results.append(result)
        self.written += int(result.published)

    def finish(self) -> int:
        """Wait for every shard to be written; re-raises the first encoding or write error.

        Returns how many shards this assembler published (so far, in total).
        """
        while self.pending_writes:
            self._collect(self.pending_writes.popleft())
        return self.written

    def shutdown(self) -> None:
        """Stop the background threads, also after an error or Ctrl-C in the sampler.

        Shards that were sampled whole are still written (at most `max_pending_shards`, so
        this is quick), because a rerun then skips them; only the unfinished shard's views
        are dropped. Their write errors are not raised here: the error that stopped the run
        is already on its way up.
        """
        while self.pending_writes:
            try:
                self._collect(self.pending_writes.popleft())
            except Exception:  # noqa: BLE001 - see the docstring
                pass
        self.encoders.shutdown(wait=True, cancel_futures=True)
        self.writer.shutdown(wait=True, cancel_futures=True)
