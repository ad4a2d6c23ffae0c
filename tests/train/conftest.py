"""Tiny models on a shared CPU: one intra-op thread is faster than fighting for two."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every training test on one thread (the root conftest's `one_thread`)."""
