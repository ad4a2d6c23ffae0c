"""Correctness review of synthgen/data (loader) and synthgen/train (losses, trainer, probe,
experiment statistics), 2026-12: each test fails on the code it was written against because
the code computes the wrong thing or breaks a documented promise.

Tiny solid-colour shards (synthgen.data.fixtures), no encoder needed; seconds on one core.
"""

from __future__ import annotations

import pytest
import webdataset as wds

from synthgen.data import group_loader
from synthgen.data.fixtures import solid_sample
from synthgen.errors import UserError
from synthgen.write import write_shard

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_loader_does_not_give_up_on_a_shard_whose_every_draw_holds_readable_groups(tmp_path):
    """pipeline.py `group_samples(give_up_after=...)` counts "shards drawn in a row without a
    usable group" by watching the SHARD_DRAW number of consecutive samples change. In train
    mode that stream has already gone through the shuffle buffer (`GroupViewDataset.iterator1`
    shuffles before `group_samples`), so samples of different draws alternate and every
    alternation is counted as a new shard draw: a handful of consecutive damaged samples, not
    `give_up_after` barren shards, ends the stream with the UserError "the last 8 shards drawn
    ... held no readable group, only damaged samples".

    Reference: the documented rule (pipeline.py docstrings of `group_samples` and
    `tar_samples`; README "damaged ... is skipped with a warning ... and counted in
    loader.skipped"): damaged samples are skipped; only `give_up_after` consecutive shard
    draws with no usable group at all end the stream. Here the dataset is one shard of 16
    groups of which 4 are undamaged (the other 12 have a view that does not decode), so every
    draw holds 4 readable groups and the stream must never give up. Right behaviour: every
    epoch yields `len(loader)` batches and counts the skipped samples; on the current code
    epoch 5 (seed 0) raises after 5 shard draws (not 8), each of which held 4 usable groups.
    """
    samples = [solid_sample(g, g % 4, views=2, size=8) for g in range(16)]
    for index, sample in enumerate(samples):
        if index % 4:  # 12 of 16 groups damaged, 4 in every draw of the shard readable
            sample["view1.png"] = b"not an image"
    write_shard(tmp_path, 0, samples, {})
    shard = str(tmp_path / "shard-000000.tar")

    loader = group_loader([shard], views=2, batch_size=4, resolution=8, augment="none",
                          epoch_groups=16, seed=0, handler=wds.ignore_and_continue)
    for epoch in range(12):
        try:
            batches = list(loader.epoch(epoch))
        except UserError as error:
            pytest.fail(f"epoch {epoch}: the loader gave up although every draw of its one shard "
                        f"holds 4 readable groups: {error}")
        assert len(batches) == len(loader) == 4
        assert all(len(batch.group_id) == 4 for batch in batches)
        assert {int(g[-6:]) % 4 for batch in batches for g in batch.group_id} == {0}
    assert loader.skipped["image"] > 0
