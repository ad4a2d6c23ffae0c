"""The one definition of identity: every random choice is a pure function of names.

A view's seed depends only on (recipe seed, group id, view index), never on batch size,
worker count, device or engine, so any worker can rebuild any shard bit for bit.
"""

import hashlib

# Seeds stay below 2**63 so that every consumer (torch, numpy, JSON readers in other
# languages) can hold them as a signed 64-bit integer.
_SEED_MASK = (1 << 63) - 1


def derive_seed(*parts: object) -> int:
    """Hash the parts' string forms into a 63-bit seed; the same parts always give the same seed."""
    text = "\x1f".join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & _SEED_MASK


def seed_for(recipe_seed: int, group_id: str, view: int) -> int:
    """The noise seed of one view of one group."""
    return derive_seed("view", recipe_seed, group_id, view)
