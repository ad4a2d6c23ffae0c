"""The group loader: shards -> batches of k augmented views per group.

Stages are plain generators, chained inside `GroupViewDataset.iterator1` (a webdataset
`DataPipeline`), so the same code runs in the main process and in DataLoader workers:

    shard URLs (resampled, or partitioned across ranks x workers)
      -> webdataset tar reading (samples: dicts of member bytes)
      -> shuffle buffer
      -> pick k of the group's V views, decode, augment each (GroupSample)
      -> collate (GroupBatch)

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
from synthgen.data.sources import ShardSource, resolve_shards
from synthgen.errors import UserError

VIEW_FILE = re.compile(r"^view(\d+)\.(jpg|jpeg|png|webp)$")
MODES = ("train", "eval")


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


# Stage: yields a GroupSample per webdataset sample: k of its views, each augmented c times.
def group_samples(samples: Iterable[dict], views: int, crops_per_view: int, augment: Callable,
                  seed: int, epoch: int) -> Iterator[GroupSample]:
    for sample in samples:
        group_id = sample["__key__"]
        metadata = json.loads(sample["json"]) if "json" in sample else {}
        files = view_files(sample)
        if len(files) < views:
            raise UserError(
                f"views: {views} views per group asked, but group {group_id} (in "
                f"{sample.get('__url__', '?')}) has only {len(files)}; pass views <= "
                f"{len(files)} (or crops_per_view > 1 for several augmentations of one view)")
        # Which views this epoch: seeded by group id, so the same whichever worker reads it.
        chosen = random.Random(stable_seed(seed, epoch, group_id, "views")).sample(
            range(len(files)), views)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed(seed, epoch, group_id, "augment"))
            crops = [augment(decode_image(sample[files[view][1]]))
                     for view in chosen for _ in range(crops_per_view)]
        class_index = int(sample["cls"]) if "cls" in sample else int(metadata.get("class_index", -1))
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
                 seed: int = 0, rank: int | None = None, world_size: int | None = None):
        super().__init__()
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
        samples = wds.tarfile_samples(urls)
        if self.mode == "train":
            rng = random.Random(stable_seed(self.seed, self.epoch, rank, worker, "shuffle"))
            samples = shuffled(samples, self.shuffle_buffer, rng)
        groups = group_samples(samples, self.views, self.crops_per_view, self.augment,
                               self.seed, self.epoch)
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
                 pin_memory: bool = False) -> GroupLoader:
    """A loader of `GroupBatch`es: per group, `views` (k) of its views, each augmented
    `crops_per_view` times at `resolution` px, so `batch.views` is (B, k * crops, 3, res, res).

    `data`: a dataset directory (manifest.json; or a directory of shard-*.tar with stats
    files), a shard URL pattern, or a list of URLs. `mode`: "train" (resampled, shuffled,
    fixed epoch length, drop_last) or "eval" (each group once, in shard order). `epoch_groups`
    overrides the number of groups per epoch (all ranks together) taken from the manifest.
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
    if source.min_views is not None and views > source.min_views:
        raise UserError(f"views: {views} views per group asked, but the dataset's groups have "
                        f"{source.min_views}; pass views <= {source.min_views}")
    augmentation = make_augmentation(augment, resolution, crop_scale)
    dataset = GroupViewDataset(source, views=views, batch_size=batch_size, augment=augmentation,
                               crops_per_view=crops_per_view, mode=mode,
                               shuffle_buffer=shuffle_buffer, seed=seed, rank=rank,
                               world_size=world_size)
    batches_per_epoch = None
    if mode == "train":
        groups = epoch_groups if epoch_groups is not None else source.samples
        if groups is None:
            raise UserError(f"epoch_groups: the number of groups in {data} is unknown (no "
                            "manifest.json or stats files); pass epoch_groups, e.g. the dataset size")
        world = split_info(rank, world_size)[1]
        per_rank = max(1, math.ceil(groups / (world * batch_size)))
        per_worker = math.ceil(per_rank / max(1, num_workers))
        dataset.with_epoch(per_worker)
        # A buffer larger than what a worker reads per epoch would only delay the first batch
        # (it is filled before anything comes out).
        dataset.shuffle_buffer = min(shuffle_buffer, per_worker * batch_size)
        batches_per_epoch = per_worker * max(1, num_workers)
    return GroupLoader(dataset, num_workers, batches_per_epoch, pin_memory)
