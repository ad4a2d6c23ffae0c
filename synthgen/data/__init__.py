"""Reading synthgen shards for training: groups of k augmented views, and labelled images.

Depends on torch, torchvision and webdataset only (never on synthgen.generate or diffusers).

    from synthgen.data import group_loader
    loader = group_loader("out/quickstart", views=2, batch_size=64, resolution=64, num_workers=2)
    for epoch in range(10):
        for batch in loader.epoch(epoch):     # GroupBatch
            batch.views                        # (64, 2, 3, 64, 64) float in [0, 1]
"""

from synthgen.data.augment import make_augmentation, resize_only, simclr_augmentation
from synthgen.data.labelled import image_folder_classes, labelled_batches, load_labelled
from synthgen.data.pipeline import (SKIP_REASONS, DamagedSample, GroupBatch, GroupLoader,
                                    GroupSample, GroupViewDataset, UnreadableShard, group_loader,
                                    split_info, stable_seed)
from synthgen.data.sources import ShardChecksumError, ShardSource, resolve_shards

__all__ = ["SKIP_REASONS", "DamagedSample", "GroupBatch", "GroupLoader", "GroupSample",
           "GroupViewDataset", "ShardChecksumError", "ShardSource", "group_loader",
           "image_folder_classes", "labelled_batches", "load_labelled", "make_augmentation", "resize_only",
           "resolve_shards", "simclr_augmentation", "split_info", "stable_seed",
           "UnreadableShard"]
