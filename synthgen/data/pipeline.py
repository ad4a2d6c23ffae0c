"""The group loader: shards -> batches of k augmented views per group.

Stages are plain generators, chained inside `GroupViewDataset.iterator1` (a webdataset
`DataPipeline`), so the same code runs in the main process and in DataLoader workers:

    shard URLs (resampled, or partitioned across ranks x workers)
      -> webdataset tar reading (samples: dicts of member bytes)
      -> one sample per group (the `view` layout's per-view samples regrouped, shards.py)
      -> shuffle buffer
      -> pick k of the group's V views, decode, augment each (GroupSample)
      -> collate (GroupBatch)

Damaged data: an unreadable shard or part of one (a truncated tar), and a sample whose json
does not parse, whose image does not decode, that lacks views its json lists or whose `cls`
disagrees with its json, go to a webdataset-style `handler` (default `warn_and_continue`:
warn and skip; `wds.reraise_exception` stops the run) and are counted in
`GroupLoader.skipped`. Bytes flipped inside a JPEG can still decode, to wrong pixels: only the
shard's sha256 shows that, so `verify=True` reads every shard once, when the loader is built,
against the sha256 that manifest.json (or the stats files) record, and leaves out (or, with a
raising handler, stops at) the shards that differ. It is off by default because it reads the
whole dataset; turn it on for data copied or stored where bytes can rot.

Determinism: everything random is seeded from (seed, epoch, ...) with a stable hash, never from
the process: which shards a (rank, worker) draws, the shuffle order, which k views a group
shows in an epoch (seeded by group id, so independent of shard order and worker) and its crops.
For a fixed (seed, epoch, world size, num_workers) a rank's batch sequence is therefore the
same in every run, which is what makes a resumed training run equal an uninterrupted one.
Call `GroupLoader.set_epoch` (or iterate `GroupLoader.epoch(e)`) before each epoch; workers are
not persistent, so each epoch's workers get the current epoch with the pickled dataset.

Modes:
- `train` (resampled): each (rank, worker) draws shards with replacement from all shards, for
  ever, and `with_epoch` cuts an epoch at `ceil(groups / (world_size * batch_size))` batches
  per rank (split over the workers; `groups` from manifest.json or the shards' stats files, or
  `epoch_groups`). Every rank yields the same number of batches whatever the shard count, so
  ranks never wait on each other in a collective and fewer shards than ranks x workers cannot
  starve anybody; an epoch shows each group about once (with replacement: some twice, some
  not at all).
- `eval` (deterministic): shard i goes to slot i mod (world_size x num_workers), each read
  once in order, no shuffle, last batch kept. Together the slots see every group exactly once;
  slots without a shard yield nothing (no hang), but ranks may get unequal batch counts, so
  gather results rather than stepping collectives per batch.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import torch
import webdataset as wds
from PIL import Image

from synthgen.data.augment import make_augmentation
from synthgen.data.sources import ShardSource, resolve_shards, verified_source
from synthgen.errors import UserError
from synthgen.shards import SHARD_DRAW, regrouped

VIEW_FILE = re.compile(r"^view(\d+)\.(jpg|jpeg|png|webp)$")
MODES = ("train", "eval")
# What the loader leaves out, counted per reason (`GroupLoader.skipped`): shards whose sha256
# differs (verify=True); unreadable tar data; samples whose json, image, views or label is
# damaged.
SKIP_REASONS = ("checksum", "tar", "json", "image", "views", "label")


class DamagedSample(ValueError):
    """A sample that cannot be read as the group it claims to be; `reason` is one of
    `SKIP_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class UnreadableShard(ValueError):
    """A shard whose tar data cannot be read (to its end)."""

    reason = "tar"


class SkipCounts:
    """Counts per `SKIP_REASONS`, one row per DataLoader worker in shared memory, so the
    main process sees what its workers skipped (each row has one writer: no lock needed)."""

    def __init__(self, workers: int):
        rows = max(1, workers)
        self.table = torch.zeros(rows, len(SKIP_REASONS), dtype=torch.int64).share_memory_()

    def add(self, reason: str) -> None:
        info = torch.utils.data.get_worker_info()
        # The modulo only matters for a DataLoader with more workers than the loader was
        # built for (a caller's own); rows then have two writers and may lose a count.
        row = 0 if info is None else info.id % self.table.shape[0]
        self.table[row, SKIP_REASONS.index(reason)] += 1

    def totals(self) -> dict[str, int]:
        return dict(zip(SKIP_REASONS, self.table.sum(0).tolist()))


class CountingHandler:
    """A webdataset handler that counts what it is given, then defers to `handler`.
    (A class rather than a closure so spawned DataLoader workers can unpickle it.)"""

    def __init__(self, handler: Callable[[Exception], bool], counts: SkipCounts):
        self.handler = handler
        self.counts = counts

    def __call__(self, error: Exception) -> bool:
        self.counts.add(error.reason)  # DamagedSample, UnreadableShard, ShardChecksumError
        return self.handler(error)


class GroupSample(NamedTuple):
    """One group: `views` float (k * crops_per_view, 3, H, W) in [0, 1], view-major (the crops
    of the first chosen view, then of the second, ...); `view_index` the k chosen view numbers."""

    views: torch.Tensor
    view_index: tuple[int, ...]
    class_index: int
    group_id: str
    metadata: dict


class GroupBatch(NamedTuple):
    """A batch of B groups: `views` (B, n, 3, H, W), `view_index` long (B, k), `class_index`
    long (B,) (-1 for groups without a class), `group_id` and `metadata` lists of length B."""

    views: torch.Tensor
    view_index: torch.Tensor
    class_index: torch.Tensor
    group_id: list[str]
    metadata: list[dict]


def stable_seed(*parts) -> int:
    """A 63-bit seed from any str/int parts; the same in every process (unlike `hash`)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def split_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers) of the calling process.

    Rank and world size are the arguments when given (simulated ranks in tests), else
    torch.distributed's or the RANK / WORLD_SIZE environment variables (webdataset's rules);
    worker and num_workers come from the DataLoader worker this runs in (0, 1 outside one).
    """
    detected_rank, detected_world = wds.utils.pytorch_worker_info()[:2]
    rank = detected_rank if rank is None else rank
    world_size = detected_world if world_size is None else world_size
    info = torch.utils.data.get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank, world_size, worker, num_workers


# Stage: yields {"url": ...} drawn with replacement from all shards, for ever.
def resampled_shard_urls(urls: tuple[str, ...], seed: int, epoch: int, rank: int,
                         worker: int) -> Iterator[dict]:
    worker_seed = stable_seed("shards", rank, worker)
    yield from wds.ResampledShards(list(urls), seed=stable_seed(seed, epoch) & 0x7FFFFFFF,
                                   worker_seed=lambda: worker_seed, deterministic=True)


# Stage: yields {"url": ...} of the shards of this (rank, worker) slot, once, in order.
def partitioned_shard_urls(urls: tuple[str, ...], rank: int, world_size: int, worker: int,
                           num_workers: int) -> Iterator[dict]:
    slots = world_size * num_workers
    slot = rank * num_workers + worker
    for index, url in enumerate(urls):
        if index % slots == slot:
            yield {"url": url}


# Stage: yields the webdataset samples of each shard in turn. Unreadable tar data (a shard
# cut short, a missing file) ends its shard and goes to `handler` once per shard, after the
# samples read before it; a False from the handler ends the stream.
# `give_up_after`: in resampled mode shards are drawn for ever, so where none can be read the
# stream would never end; that many draws in a row without a sample end it with a UserError.
def tar_samples(urls: Iterable[dict], handler: Callable[[Exception], bool],
                give_up_after: int | None = None) -> Iterator[dict]:
    barren = draws = 0
    for source in urls:
        errors: list[Exception] = []

        def end_shard(error: Exception) -> bool:
            errors.append(error)
            return False  # webdataset would otherwise report a broken stream once per member

        read = 0
        draws += 1
        for sample in wds.tarfile_samples([source], handler=end_shard):
            read += 1
            sample[SHARD_DRAW] = draws  # which draw of a shard it came from (`group_samples`)
            yield sample
        barren = 0 if read else barren + 1
        if errors:
            error = errors[0]
            detail = str(error.args[0]).split(" @ ")[0] if error.args else ""
            if not handler(UnreadableShard(f"{source['url']}: unreadable tar data "
                                           f"({type(error).__name__}: {detail}); the samples "
                                           "before it were read")):
                return
        if give_up_after is not None and barren >= give_up_after:
            raise UserError(f"data: the last {barren} shards drawn (e.g. {source['url']}) held no "
                            "readable sample: the dataset's shards are missing or damaged (see the "
                            "warnings above); rebuild it with synthgen generate (it resumes)")


# Stage: yields the same samples, mixed within a buffer of `buffer_size` (0 or 1: unchanged).
def shuffled(samples: Iterable, buffer_size: int, rng: random.Random) -> Iterator:
    if buffer_size <= 1:
        yield from samples
        return
    buffer: list = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        index = rng.randrange(len(buffer))
        buffer[index], sample = sample, buffer[index]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def view_files(sample: dict) -> list[tuple[int, str]]:
    """(view number, member name) of the sample's views, by view number: [(0, "view0.png"), ...]."""
    return sorted((int(match[1]), key) for key in sample if (match := VIEW_FILE.match(key)))


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def checked_metadata(sample: dict) -> tuple[dict, list[tuple[int, str]], int]:
    """(json metadata, view files, class index) of a sample, or a `DamagedSample`: no json
    (every synthgen sample has one; a shard cut short can leave a sample without), json that
    does not parse, views its json lists but the sample lacks, a `cls` that is not the json's
    class index."""
    where = f"group {sample['__key__']} in {sample.get('__url__', '?')}"
    if "json" not in sample:
        raise DamagedSample("json", f"{where}: has no json member")
    try:
        metadata = json.loads(sample["json"])
    except ValueError as error:
        raise DamagedSample("json", f"{where}: its json does not parse ({error})") from None
    views = (metadata.get("views") or []) if isinstance(metadata, dict) else None
    if not isinstance(views, list) or not all(isinstance(view, dict) and isinstance(view.get("file"), str)
                                              for view in views):
        raise DamagedSample("json", f"{where}: its json is not a synthgen sample's (an object "
                                    "with a list of views, each naming its file)")
    files = view_files(sample)
    listed = {view.get("file") for view in views}
    if listed and not listed <= {name for _, name in files}:
        missing = sorted(str(name) for name in listed - {name for _, name in files})
        raise DamagedSample("views", f"{where}: lacks {', '.join(missing)}, which its json lists")
    recorded = metadata.get("class_index")
    label = sample.get("cls", -1 if recorded is None else recorded)
    try:
        class_index = int(label)
    except (TypeError, ValueError):
        raise DamagedSample("label", f"{where}: its class index {label!r:.30} is not a "
                                     "number") from None
    if recorded is not None and class_index != recorded:
        raise DamagedSample("label", f"{where}: its cls says class {class_index}, its json "
                                     f"class {recorded}")
    return metadata, files, class_index


def decoded_view(sample: dict, name: str) -> Image.Image:
    try:
        return decode_image(sample[name])
    except Exception as error:  # noqa: BLE001 - PIL raises many kinds for damaged bytes
        raise DamagedSample("image", f"group {sample['__key__']} in {sample.get('__url__', '?')}: "
                                     f"{name} does not decode ({type(error).__name__}: {error})"
                            ) from None


# Stage: yields a GroupSample per webdataset sample: k of its views, each augmented c times.
# Damaged samples go to `handler` (skipped when it returns True, the end when False).
def group_samples(samples: Iterable[dict], views: int, crops_per_view: int, augment: Callable,
                  seed: int, epoch: int,
                  handler: Callable[[Exception], bool] = wds.reraise_exception,
                  views_known: bool = False, give_up_after: int | None = None
                  ) -> Iterator[GroupSample]:
    """`views_known`: the dataset records its groups' view count and `views` was checked
    against it, so a group with fewer views is damage (a view-layout shard cut between two
    views of its last group), skipped; else the request itself is the mistake.
    `give_up_after`: that many shards drawn in a row without a usable group end the stream
    with a UserError (resampled shards whose every sample is damaged would be drawn for ever).
    Counted as draws *first seen* since the last usable group, not as changes of draw between
    samples: after the shuffle buffer, samples of several draws alternate, and a few damaged
    samples in a row are not a shard without readable groups."""
    newest, fresh = None, 0  # the latest draw seen; draws first seen since the last usable group
    for sample in samples:
        draw = sample.get(SHARD_DRAW)
        if give_up_after is not None and draw is not None and (newest is None or draw > newest):
            newest, fresh = draw, fresh + 1
            if fresh > give_up_after:
                raise UserError(f"data: the last {give_up_after} shards drawn (e.g. {sample.get('__url__')}) held no "
                                "readable group, only damaged samples (see the warnings above); "
                                "pass a synthgen dataset, or rebuild this one with synthgen generate")
        group_id = sample["__key__"]
        try:
            metadata, files, class_index = checked_metadata(sample)
        except DamagedSample as error:
            if handler(error):
                continue
            return
        if len(files) < views and views_known:
            if handler(DamagedSample("views", f"group {group_id} in {sample.get('__url__', '?')}: "
                                              f"has {len(files)} of its views, fewer than the "
                                              f"{views} asked (a shard cut short?)")):
                continue
            return
        if len(files) < views:
            raise UserError(
                f"views: {views} views per group asked, but group {group_id} (in "
                f"{sample.get('__url__', '?')}) has only {len(files)}; pass views <= "
                f"{len(files)} (or crops_per_view > 1 for several augmentations of one view)")
        # Which views this epoch: seeded by group id, so the same whichever worker reads it.
        chosen = random.Random(stable_seed(seed, epoch, group_id, "views")).sample(
            range(len(files)), views)
        try:
            images = [decoded_view(sample, files[view][1]) for view in chosen]
        except DamagedSample as error:
            if handler(error):
                continue
            return
        fresh = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed(seed, epoch, group_id, "augment"))
            crops = [augment(image) for image in images for _ in range(crops_per_view)]
        yield GroupSample(torch.stack(crops), tuple(files[view][0] for view in chosen),
                          class_index, group_id, metadata)


def collate(items: list[GroupSample]) -> GroupBatch:
    return GroupBatch(views=torch.stack([item.views for item in items]),
                      view_index=torch.tensor([item.view_index for item in items], dtype=torch.long),
                      class_index=torch.tensor([item.class_index for item in items], dtype=torch.long),
                      group_id=[item.group_id for item in items],
                      metadata=[item.metadata for item in items])


# Stage: yields GroupBatches of `batch_size` groups (a short last one unless `drop_last`).
def batched(items: Iterable[GroupSample], batch_size: int, drop_last: bool) -> Iterator[GroupBatch]:
    batch: list[GroupSample] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch and not drop_last:
        yield collate(batch)


class GroupViewDataset(wds.DataPipeline):
    """An IterableDataset of `GroupBatch`es (already batched: use DataLoader(batch_size=None)).

    Build it with `group_loader`, which also sets the epoch length; see the module docstring
    for the modes, splitting and determinism.
    """

    def __init__(self, source: ShardSource, *, views: int, batch_size: int, augment: Callable,
                 crops_per_view: int = 1, mode: str = "train", shuffle_buffer: int = 1000,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 handler: Callable[[Exception], bool] = wds.warn_and_continue,
                 skip_counts: SkipCounts | None = None):
        super().__init__()
        self.skip_counts = skip_counts or SkipCounts(1)
        self.handler = CountingHandler(handler, self.skip_counts)
        self.source = source
        self.views = views
        self.batch_size = batch_size
        self.augment = augment
        self.crops_per_view = crops_per_view
        self.mode = mode
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def iterator1(self) -> Iterator[GroupBatch]:
        rank, world_size, worker, num_workers = split_info(self.rank, self.world_size)
        if self.mode == "train":
            urls = resampled_shard_urls(self.source.urls, self.seed, self.epoch, rank, worker)
        else:
            urls = partitioned_shard_urls(self.source.urls, rank, world_size, worker, num_workers)
        give_up = max(8, 2 * len(self.source.urls)) if self.mode == "train" else None
        samples = regrouped(tar_samples(urls, self.handler, give_up))
        if self.mode == "train":
            rng = random.Random(stable_seed(self.seed, self.epoch, rank, worker, "shuffle"))
            samples = shuffled(samples, self.shuffle_buffer, rng)
        groups = group_samples(samples, self.views, self.crops_per_view, self.augment,
                               self.seed, self.epoch, self.handler,
                               views_known=self.source.min_views is not None,
                               give_up_after=give_up)
        return batched(groups, self.batch_size, drop_last=self.mode == "train")


class GroupLoader:
    """A DataLoader (webdataset `WebLoader`) over a `GroupViewDataset`, epoch by epoch.

    `batches_per_epoch` is what one rank yields per epoch in train mode (None in eval mode,
    where it is the rank's share of the data). Iterating gives the current epoch's batches.
    """

    def __init__(self, dataset: GroupViewDataset, num_workers: int, batches_per_epoch: int | None,
                 pin_memory: bool = False):
        self.dataset = dataset
        self.num_workers = num_workers
        self.batches_per_epoch = batches_per_epoch
        # Its own generator: DataLoader draws a base seed per iterator, and drawing it from
        # torch's global generator would make the caller's random stream depend on how often
        # a loader was iterated (our randomness is seeded per group and never uses it).
        self.loader = wds.WebLoader(dataset, batch_size=None, num_workers=num_workers,
                                    persistent_workers=False, pin_memory=pin_memory,
                                    generator=torch.Generator().manual_seed(dataset.seed))

    def __len__(self) -> int:
        """Batches per epoch on this rank (train mode), for progress bars and trainers."""
        if self.batches_per_epoch is None:
            raise TypeError("an evaluation loader streams each shard once and has no fixed "
                            "length; iterate it, or use train mode for a length")
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch

    @property
    def skipped(self) -> dict[str, int]:
        """What this loader left out since it was built, in all its workers, per reason
        (`SKIP_REASONS`): shards that failed verification, unreadable tar data (a truncated
        shard counts once) and damaged samples. All zero for an undamaged dataset."""
        return self.dataset.skip_counts.totals()

    def epoch(self, epoch: int) -> Iterator[GroupBatch]:
        self.set_epoch(epoch)
        return iter(self)

    def __iter__(self) -> Iterator[GroupBatch]:
        return iter(self.loader)


def group_loader(data, *, views: int, batch_size: int, resolution: int,
                 augment: str | Callable = "simclr", crop_scale: tuple[float, float] = (0.08, 1.0),
                 crops_per_view: int = 1, mode: str = "train", num_workers: int = 0,
                 shuffle_buffer: int = 1000, seed: int = 0, epoch_groups: int | None = None,
                 rank: int | None = None, world_size: int | None = None,
                 pin_memory: bool = False,
                 handler: Callable[[Exception], bool] = wds.warn_and_continue,
                 verify: bool = False) -> GroupLoader:
    """A loader of `GroupBatch`es: per group, `views` (k) of its views, each augmented
    `crops_per_view` times at `resolution` px, so `batch.views` is (B, k * crops, 3, res, res).

    `data`: a dataset directory (the shards manifest.json lists; without one, the shard-*.tar
    that have a stats file), a shard URL pattern, or a list of URLs. `mode`: "train"
    (resampled, shuffled, fixed epoch length, drop_last) or "eval" (each group once, in shard
    order). `epoch_groups` overrides the number of groups per epoch (all ranks together) taken
    from the manifest. `handler` gets each damaged shard or sample (webdataset's convention;
    default: warn and skip; `wds.reraise_exception`: raise), and `loader.skipped` counts them.
    `verify`: check every shard's sha256 against the dataset's record once, now (reads the
    whole dataset; needs a dataset directory), and leave out the shards that differ.
    """
    if mode not in MODES:
        raise UserError(f"mode: unknown loader mode {mode!r}; use 'train' or 'eval'")
    for name, value in (("views", views), ("batch_size", batch_size), ("resolution", resolution),
                        ("crops_per_view", crops_per_view)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name}: {value!r} is not a positive integer; pass 1 or more")
    if num_workers < 0:
        raise UserError(f"num_workers: {num_workers!r} is negative; pass 0 (main process) or more")
    source = resolve_shards(data)
    skip_counts = SkipCounts(num_workers)
    if verify:
        source = verified_source(source, CountingHandler(handler, skip_counts))
        if not source.urls:
            raise UserError(f"data {data}: no shard has its recorded sha256, so nothing is left "
                            "to read; rebuild the dataset (synthgen generate resumes it)")
    if not source.urls or source.samples == 0:
        raise UserError(f"data {data}: holds no groups (no shards, or shards of no samples), so "
                        "there is nothing to load; generate the dataset first (synthgen generate)")
    if source.min_views is not None and views > source.min_views:
        raise UserError(f"views: {views} views per group asked, but the dataset's groups have "
                        f"{source.min_views}; pass views <= {source.min_views}")
    augmentation = make_augmentation(augment, resolution, crop_scale)
    dataset = GroupViewDataset(source, views=views, batch_size=batch_size, augment=augmentation,
                               crops_per_view=crops_per_view, mode=mode,
                               shuffle_buffer=shuffle_buffer, seed=seed, rank=rank,
                               world_size=world_size, handler=handler, skip_counts=skip_counts)
    batches_per_epoch = None
    if mode == "train":
        groups = epoch_groups if epoch_groups is not None else source.samples
        if groups is None:
            raise UserError(f"epoch_groups: the number of groups in {data} is unknown (shard "
                            "paths and URLs carry no count; a dataset directory's manifest.json "
                            "does); pass --epoch-groups (epoch_groups from Python), e.g. the "
                            "dataset size, or the dataset directory")
        world = split_info(rank, world_size)[1]
        per_rank = max(1, math.ceil(groups / (world * batch_size)))
        per_worker = math.ceil(per_rank / max(1, num_workers))
        dataset.with_epoch(per_worker)
        # A buffer larger than what a worker reads per epoch would only delay the first batch
        # (it is filled before anything comes out).
        dataset.shuffle_buffer = min(shuffle_buffer, per_worker * batch_size)
        batches_per_epoch = per_worker * max(1, num_workers)
    return GroupLoader(dataset, num_workers, batches_per_epoch, pin_memory)
