"""Labelled images for probes: one image per sample, no augmentation, in a fixed order.

Two layouts: synthgen shards (a dataset directory, a split directory such as the world's
`DIR/train`, or shard URLs; one seeded view per group, the only one for real renders) and
an ImageFolder tree (`root/CLASS/xxx.png`, classes indexed in sorted order, torchvision rules).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import webdataset as wds

from synthgen.data.augment import resize_only
from synthgen.data.pipeline import group_loader
from synthgen.data.sources import MANIFEST, SHARD_GLOB
from synthgen.errors import UserError


def is_shard_dataset(data) -> bool:
    path = Path(str(data))
    if not path.is_dir():
        return True  # a URL pattern or list of shards
    return (path / MANIFEST).is_file() or any(path.glob(SHARD_GLOB))


def image_folder_classes(data) -> list[str] | None:
    """The class names of an ImageFolder tree in index order (torchvision's own rule), None
    for shards or a tree without class folders (`labelled_batches` then says what is wrong)."""
    if isinstance(data, (list, tuple)) or is_shard_dataset(data):
        return None
    from torchvision.datasets.folder import find_classes

    try:
        return find_classes(str(data))[0]
    except FileNotFoundError:
        return None


def labelled_batches(data, resolution: int, batch_size: int = 256, num_workers: int = 0,
                     handler: Callable[[Exception], bool] = wds.warn_and_continue,
                     verify: bool = False,
                     classes: list[str] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (images float (B, 3, res, res) in [0, 1], labels long (B,)) over `data` once.

    Shards give one view per group (k=1: the loader's seeded choice, the same every call) and
    its `cls` label; a directory without shards is read as a torchvision ImageFolder, its
    classes indexed by their place in `classes` when given (another split's
    `image_folder_classes`: a test tree without one of train's classes numbers the others
    alike), else in its own sorted order.
    Deterministic: the same images in the same order every call. `handler` and `verify`: as
    for `group_loader` (damaged samples are skipped with a warning by default).
    """
    if isinstance(data, (list, tuple)) or is_shard_dataset(data):
        loader = group_loader(data, views=1, batch_size=batch_size, resolution=resolution,
                              augment="none", mode="eval", num_workers=num_workers,
                              handler=handler, verify=verify)
        for batch in loader:
            yield batch.views[:, 0], batch.class_index
        return
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(data), transform=resize_only(resolution))
    except (FileNotFoundError, RuntimeError) as error:
        raise UserError(f"data {data}: neither synthgen shards nor an ImageFolder tree "
                        f"({error}); pass a dataset directory or root/CLASS/image files") from None
    if classes is not None:
        unknown = sorted(set(folder.classes) - set(classes))
        if unknown:
            raise UserError(f"data {data}: classes {unknown} are not among the train split's "
                            f"{classes}; give both splits the same class folders")
        position = [classes.index(name) for name in folder.classes]
        folder.target_transform = position.__getitem__
    loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    yield from loader


def load_labelled(data, resolution: int, batch_size: int = 256, num_workers: int = 0,
                  classes: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All of `labelled_batches` at once: (images (N, 3, res, res), labels (N,))."""
    images, labels = [], []
    for batch_images, batch_labels in labelled_batches(data, resolution, batch_size, num_workers,
                                                       classes=classes):
        images.append(batch_images)
        labels.append(batch_labels)
    if not images:
        raise UserError(f"data {data}: holds no images; pass a non-empty dataset")
    return torch.cat(images), torch.cat(labels)
