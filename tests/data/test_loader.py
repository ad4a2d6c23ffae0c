"""The group loader reads back exactly what was written, splits shards across ranks and
workers without hanging or losing groups, and is deterministic per (seed, epoch)."""

from __future__ import annotations

import tarfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from synthgen.data import (DamagedSample, ShardChecksumError, group_loader, labelled_batches,
                           load_labelled, resolve_shards)
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


def damaged_dataset(directory: Path) -> tuple[list[str], list[str]]:
    """4 shards x 3 groups x 2 views, damaged the ways fault injection found: shard 0 holds a
    group with invalid json, shard 1 one whose view is no image, shard 2 one whose cls
    disagrees with its json, and shard 3 is cut inside its last group's last view. Returns
    (all group ids, the undamaged ones)."""
    from synthgen.data.fixtures import solid_sample
    from synthgen.write import write_shard

    directory.mkdir(parents=True)
    groups = [[solid_sample(g, g % 4, views=2) for g in range(s * 3, s * 3 + 3)] for s in range(4)]
    groups[1][2]["view1.png"] = b"GIF89a, but not really"
    groups[2][0]["cls"] = b"3"
    for shard, samples in enumerate(groups):
        write_shard(directory, shard, samples, {})

    def member(shard: int, name: str) -> tuple[Path, tarfile.TarInfo]:
        tar = directory / f"shard-{shard:06d}.tar"
        with tarfile.open(tar) as archive:
            return tar, next(m for m in archive.getmembers() if m.name == name)

    tar, json_member = member(0, "class-b-000001.json")
    data = bytearray(tar.read_bytes())
    data[json_member.offset_data] = ord("[")  # '{' -> '[': no longer parses
    tar.write_bytes(bytes(data))
    tar, last_view = member(3, "class-d-000011.view1.png")
    tar.write_bytes(tar.read_bytes()[: last_view.offset_data + last_view.size // 2])
    all_ids = [sample["__key__"] for samples in groups for sample in samples]
    damaged = {groups[0][1]["__key__"], groups[1][2]["__key__"], groups[2][0]["__key__"],
               groups[3][2]["__key__"]}
    return all_ids, [g for g in all_ids if g not in damaged]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_damaged_shards_and_samples_are_skipped_with_a_warning_and_counted(tmp_path, num_workers):
    _, undamaged = damaged_dataset(tmp_path / "ds")
    loader = group_loader(tmp_path / "ds", views=2, batch_size=4, resolution=8, augment="none",
                          mode="eval", num_workers=num_workers)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        seen = run_with_deadline(lambda: groups_seen(loader))
    assert sorted(g for g, _, _ in seen) == sorted(undamaged)
    # Counted in every worker process, summed here.
    assert loader.skipped == {"checksum": 0, "tar": 1, "json": 1, "image": 1, "views": 1,
                              "label": 1}
    if num_workers == 0:  # worker processes warn on their own stderr
        text = "\n".join(str(w.message) for w in warned)
        for fragment in ("class-b-000001 in", "json does not parse", "view1.png does not decode",
                         "its cls says class 3, its json class 2", "lacks view1.png",
                         "unexpected end of data"):
            assert fragment in text


def test_a_raising_handler_stops_at_the_first_damage(tmp_path):
    damaged_dataset(tmp_path / "ds")
    loader = group_loader(tmp_path / "ds", views=2, batch_size=4, resolution=8, augment="none",
                          mode="eval", handler=wds.reraise_exception)
    with pytest.raises(DamagedSample, match="class-b-000001.*json does not parse"):
        list(loader)


def test_verify_leaves_out_a_shard_whose_jpeg_bytes_were_flipped(tmp_path):
    directory = tmp_path / "ds"
    group_ids = write_solid_dataset(directory, shards=3, groups_per_shard=2, views=2,
                                    extension="jpg")
    plain = {g: b.views for b in group_loader(directory, views=2, batch_size=1, resolution=8,
                                              augment="none", mode="eval", seed=1)
             for g in b.group_id}
    tar = directory / "shard-000001.tar"
    with tarfile.open(tar) as archive:
        view = next(m for m in archive.getmembers() if m.name.endswith("view0.jpg"))
    data = bytearray(tar.read_bytes())
    data[view.offset_data + view.size - 4] ^= 0xFF  # inside the entropy-coded data: decodes
    tar.write_bytes(bytes(data))

    def read(**options):
        loader = group_loader(directory, views=2, batch_size=1, resolution=8, augment="none",
                              mode="eval", seed=1, **options)
        return {g: b.views for b in loader for g in b.group_id}, loader.skipped

    # Without verification the damage goes unnoticed: every group, one of them wrong.
    unverified, skipped = read()
    assert list(unverified) == group_ids and not any(skipped.values())
    assert not torch.equal(unverified[view.name.split(".")[0]], plain[view.name.split(".")[0]])
    # With it, the shard is left out, with a warning, and counted.
    with pytest.warns(UserWarning, match="shard-000001.tar: sha256 .* records"):
        verified, skipped = read(verify=True)
    assert list(verified) == group_ids[:2] + group_ids[4:]
    assert skipped["checksum"] == 1 and sum(skipped.values()) == 1
    with pytest.raises(ShardChecksumError, match="shard-000001.tar"):
        read(verify=True, handler=wds.reraise_exception)
    with pytest.raises(UserError, match="verify: the shards' sha256 are unknown"):
        group_loader([str(tar)], views=1, batch_size=1, resolution=8, verify=True, epoch_groups=2)


def test_only_finished_shards_are_read_without_a_manifest(tmp_path):
    directory = tmp_path / "ds"
    group_ids = write_solid_dataset(directory, shards=2, groups_per_shard=2, views=2,
                                    manifest=False)
    (directory / "shard-000099.tar").write_bytes((directory / "shard-000000.tar").read_bytes())
    with pytest.warns(UserWarning, match="leaves out shard-000099.tar: no stats file"):
        source = resolve_shards(directory)
    assert [Path(url).name for url in source.urls] == ["shard-000000.tar", "shard-000001.tar"]
    assert source.samples == 4
    with pytest.warns(UserWarning, match="shard-000099.tar"):
        loader = group_loader(directory, views=1, batch_size=4, resolution=8, augment="none",
                              mode="eval")
    assert [g for g, _, _ in groups_seen(loader)] == group_ids
