"""The batch size: a default per device, or `--batch-size auto`, the largest that fits the GPU.

Memory use is hard to predict (attention, VAE decode at full resolution, allocator slack), so
for `auto` the sampler is simply run on a batch of real views at doubling sizes until the GPU
runs out of memory, then bisected. The bytes of a dataset depend on its batch size on every
device, since every call is padded to it (see `Sampler.sample`).
"""

from __future__ import annotations

from typing import Callable

import torch

GPU_BATCH_SIZE = 8  # the default on a GPU; `auto` finds the largest that fits
# The CPU has no memory limit worth probing: 16 views per call (32 with guidance) get nearly all
# that batching gives there (builtin:world-sd at 32 px on one thread: 3.3 images per CPU second
# one view per call, 8.4 at 8, 9.1 at 16, 9.2 at 32), and pad less of a shard's last batch
# than 32 would (a quickstart shard is 32 or 16 views).
CPU_BATCH_SIZE = 16


def default_batch_size(device: torch.device) -> int:
    """The batch size when none is asked for: `CPU_BATCH_SIZE` on the CPU, else `GPU_BATCH_SIZE`."""
    return CPU_BATCH_SIZE if device.type == "cpu" else GPU_BATCH_SIZE


def whole_groups_batch_size(batch_size: int, group_size: int) -> int:
    """The batch size when groups of up to `group_size` views are made whole in one call (views
    that hold their group's layout): `batch_size` rounded down to a multiple of `group_size`,
    and at least one group. Rounded down, so a size probed to fit the device still fits.

    >>> whole_groups_batch_size(16, 3), whole_groups_batch_size(2, 4)
    (15, 4)
    """
    return max(group_size, batch_size // group_size * group_size)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error))


def largest_fitting_batch(fits: Callable[[int], bool], upper: int = 256) -> int:
    """The largest n in [1, upper] with fits(n), assuming fits is monotone (True up to a size).

    Doubles from 1 until `fits` fails, then bisects between the last success and the failure.
    Returns 1 even when a batch of 1 does not fit (the run will then fail with its own error).
    """
    good, size = 0, 1
    while size <= upper and fits(size):
        good, size = size, size * 2
    if good == 0:
        return 1
    bad = min(size, upper + 1)
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def auto_batch_size(try_batch: Callable[[int], None], device: torch.device, upper: int = 256) -> int:
    """Batch size for `device`: probed on a GPU with `try_batch(n)`, fixed on the CPU."""
    if device.type != "cuda":
        return default_batch_size(device)

    def fits(size: int) -> bool:
        try:
            try_batch(size)
            return True
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            return False
        finally:
            torch.cuda.empty_cache()

    return largest_fitting_batch(fits, upper)
