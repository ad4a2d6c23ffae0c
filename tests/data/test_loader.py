"""The group loader reads back exactly what was written, splits shards across ranks and
workers without hanging or losing groups, and is deterministic per (seed, epoch)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthgen.data import group_loader, labelled_batches, load_labelled, resolve_shards
from synthgen.data.fixtures import decode_solid_colour, write_solid_dataset
from synthgen.errors import UserError


def groups_seen(batches) -> list[tuple[str, tuple[int, ...], int]]:
    """(group id, views shown, class) per group, checking every crop's colour on the way."""
    seen = []
    for batch in batches:
        for b, group_id in enumerate(batch.group_id):
            group_number = int(group_id.rsplit("-", 1)[1])
            for slot, view in enumerate(batch.view_index[b].tolist()):
                red, shown_view, shown_class = decode_solid_colour(batch.views[b, slot, :, 0, 0])
                assert (red, shown_view, shown_class) == (group_number % 256, view,
                                                          int(batch.class_index[b]))
            assert batch.metadata[b]["group_id"] == group_id
            seen.append((group_id, tuple(batch.view_index[b].tolist()), int(batch.class_index[b])))
    return seen


def run_with_deadline(function, seconds: float = 60.0):
    """`function()` in a thread; fails the test instead of hanging when it does not return."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"loader did not finish within {seconds} s (hang)"
    return result["value"]


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, list[str]]:
    """3 shards x 4 groups x 3 views, solid colours."""
    return tmp_path / "ds", write_solid_dataset(tmp_path / "ds", shards=3, groups_per_shard=4, views=3)


def test_eval_mode_returns_every_group_once_with_the_views_it_says(dataset):
    directory, group_ids = dataset
    loader = group_loader(directory, views=2, batch_size=5, resolution=8, augment="none", mode="eval")
    seen = groups_seen(loader)
    assert [g for g, _, _ in seen] == group_ids  # shard order, each once, last batch kept
    for group_id, views, class_index in seen:
        assert len(set(views)) == 2 and set(views) <= {0, 1, 2}
        assert class_index == int(group_id.rsplit("-", 1)[1]) % 4


def test_view_choice_is_seeded_per_epoch(dataset):
    directory, _ = dataset

    def choices(seed, epoch):
        loader = group_loader(directory, views=2, batch_size=4, resolution=8, augment="none",
                              mode="eval", seed=seed)
        return {g: v for g, v, _ in groups_seen(loader.epoch(epoch))}

    assert choices(0, 0) == choices(0, 0)
    assert choices(0, 0) != choices(0, 1)  # re-drawn each epoch
    assert choices(0, 0) != choices(1, 0)


def test_simclr_crops_are_deterministic_and_differ_between_crops(tmp_path):
    # Noise images, so crops and jitter change pixels.
    from synthgen.data.fixtures import solid_sample
    from synthgen.write import write_shard

    rng = np.random.default_rng(0)
    samples = []
    for g in range(4):
        sample = solid_sample(g, g % 2, views=2, size=32)
        for v in range(2):
            buffer = __import__("io").BytesIO()
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
            sample[f"view{v}.png"] = buffer.getvalue()
        samples.append(sample)
    write_shard(tmp_path, 0, samples, {})

    def first_batch(seed):
        loader = group_loader(str(tmp_path / "shard-000000.tar"), views=1, crops_per_view=2,
                              batch_size=4, resolution=16, seed=seed, epoch_groups=4)
        return next(iter(loader))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert a.views.shape == (4, 2, 3, 16, 16)
    assert torch.equal(a.views, b.views)
    assert not torch.equal(a.views, c.views)
    assert not torch.equal(a.views[:, 0], a.views[:, 1])  # two augmentations of one view


def test_asking_for_more_views_than_groups_have_is_a_user_error(dataset, tmp_path):
    directory, _ = dataset
    with pytest.raises(UserError, match=r"views: 4 views per group asked.*pass views <= 3"):
        group_loader(directory, views=4, batch_size=2, resolution=8)
    # Without a manifest the check happens per sample, with the same message.
    bare = tmp_path / "bare"
    write_solid_dataset(bare, shards=1, groups_per_shard=2, views=2, manifest=False)
    loader = group_loader(bare, views=3, batch_size=2, resolution=8, mode="eval")
    with pytest.raises(UserError, match=r"views: 3 .*has only 2; pass views <= 2"):
        next(iter(loader))


def test_bad_options_name_the_option(dataset):
    directory, _ = dataset
    with pytest.raises(UserError, match="augment: unknown augmentation 'fancy'"):
        group_loader(directory, views=1, batch_size=2, resolution=8, augment="fancy")
    with pytest.raises(UserError, match="mode:"):
        group_loader(directory, views=1, batch_size=2, resolution=8, mode="test")
    empty = directory / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds neither manifest.json"):
        group_loader(empty, views=1, batch_size=2, resolution=8)


def test_manifest_gives_the_shard_list_and_length_hint(dataset):
    directory, group_ids = dataset
    source = resolve_shards(directory)
    assert len(source.urls) == 3 and source.samples == 12 and source.min_views == 3
    loader = group_loader(directory, views=1, batch_size=4, resolution=8, num_workers=0)
    assert loader.batches_per_epoch == 3 == len(loader)
    assert len(list(loader)) == 3


def test_two_ranks_by_two_workers_over_three_shards_cover_the_data_without_hanging(dataset):
    directory, group_ids = dataset

    def rank_batches(rank, mode, epoch=0):
        loader = group_loader(directory, views=2, batch_size=2, resolution=8, augment="none",
                              mode=mode, num_workers=2, rank=rank, world_size=2, seed=3)
        return run_with_deadline(lambda: groups_seen(loader.epoch(epoch))), loader

    # Evaluation: 4 slots, 3 shards: one slot idle, every group exactly once overall.
    seen = [g for rank in (0, 1) for g, _, _ in rank_batches(rank, "eval")[0]]
    assert sorted(seen) == sorted(group_ids)

    # Training (resampled): each rank yields exactly its epoch length, in every epoch.
    covered = set()
    for epoch in range(4):
        for rank in (0, 1):
            seen, loader = rank_batches(rank, "train", epoch)
            assert loader.batches_per_epoch == 4  # ceil(12 / (2 ranks * 2)) = 3 -> 2 per worker
            assert len(seen) == 2 * loader.batches_per_epoch
            covered |= {g for g, _, _ in seen}
    assert covered == set(group_ids)


def test_labelled_real_shards_and_image_folder(tmp_path):
    # Real renders in the world's format: view0.png, json labels, cls.
    directory = tmp_path / "real"
    write_solid_dataset(directory, shards=2, groups_per_shard=3, views=1, classes=3, manifest=False)
    images, labels = load_labelled(directory, resolution=8)
    assert images.shape == (6, 3, 8, 8)
    assert labels.tolist() == [g % 3 for g in range(6)]
    assert [decode_solid_colour(images[i, :, 0, 0])[2] for i in range(6)] == labels.tolist()

    folder = tmp_path / "folder"
    for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((12, 12, 3), colour, np.uint8)).save(folder / name / f"{i}.png")
    batches = list(labelled_batches(folder, resolution=8, batch_size=3))
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert labels.tolist() == [0, 0, 1, 1]
    assert images[0, 0, 0, 0] == 1.0 and images[3, 2, 0, 0] == 1.0


def test_the_loader_does_not_import_the_generator():
    import subprocess
    import sys

    code = ("import sys, synthgen.data; from synthgen.data import group_loader; "
            "bad = [m for m in sys.modules if m.startswith(('diffusers', 'synthgen.generate'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
