"""`--batch-size auto` search logic, with a stand-in for running out of GPU memory."""

from __future__ import annotations

import pytest
import torch

from synthgen.generate.batching import auto_batch_size, default_batch_size, largest_fitting_batch


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 48, 64, 100, 255, 256, 300])
def test_largest_fitting_batch_finds_the_limit(limit):
    tried = []

    def fits(size):
        tried.append(size)
        return size <= limit

    assert largest_fitting_batch(fits, upper=256) == min(limit, 256)
    assert len(tried) <= 2 * 9 + 1, "doubling then bisecting: logarithmic tries"


def test_nothing_fits_gives_one():
    assert largest_fitting_batch(lambda size: False) == 1


def test_cpu_uses_the_fixed_size():
    """The CPU pads every call to the batch size as a GPU does (it made one view per call, and
    8 only sized the batches): 16 by default, and for auto, which has no memory to probe there."""
    assert auto_batch_size(lambda n: None, torch.device("cpu")) == 16
    assert default_batch_size(torch.device("cpu")) == 16
    assert default_batch_size(torch.device("cuda")) == 8
