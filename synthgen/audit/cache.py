"""`embeddings.npz` beside the report: image embeddings reused by the next audit.

Contract: a cached row is used only when the encoder identity matches the file's and the
view's image bytes have the same sha1 as when it was embedded, so a changed model, changed
preprocessing or a regenerated shard never reuses a stale vector. The file is written
atomically at the end of an audit and holds exactly the views that audit embedded or reused.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from synthgen.store import write_atomically

CACHE_FILE = "embeddings.npz"


def same_model(identity: str, other: str) -> bool:
    """Whether two encoder identities (`id@digest/dtype`) name the same weights in the same
    dtype, however the model's id or folder was spelled."""
    return identity.rpartition("@")[2] == other.rpartition("@")[2]


class EmbeddingCache:
    """view id -> (image sha1, embedding, black flag), for one encoder identity."""

    def __init__(self, identity: str, rows: dict[str, tuple[str, np.ndarray, bool]] | None = None):
        self.identity = identity
        self._rows = rows or {}
        self.hits = 0

    @classmethod
    def load(cls, path: Path, identity: str) -> EmbeddingCache:
        """The cache at `path` if it was made by `identity`, else an empty one."""
        if not path.is_file():
            return cls(identity)
        try:
            with np.load(path, allow_pickle=False) as stored:
                if not same_model(str(stored["identity"]), identity):
                    return cls(identity)
                rows = {key: (digest, embedding, bool(black)) for key, digest, embedding, black
                        in zip(stored["keys"].tolist(), stored["digests"].tolist(),
                               stored["embeddings"], stored["black"])}
        except (OSError, KeyError, ValueError):
            return cls(identity)  # a damaged cache is only lost time, never wrong numbers
        return cls(identity, rows)

    def get(self, view_id: str, digest: str) -> tuple[np.ndarray, bool] | None:
        row = self._rows.get(view_id)
        if row is None or row[0] != digest:
            return None
        self.hits += 1
        return row[1], row[2]


def save_cache(path: Path, identity: str, view_ids: list[str], digests: list[str],
               embeddings: np.ndarray, black: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, identity=np.array(identity), keys=np.array(view_ids, dtype=str),
             digests=np.array(digests, dtype=str), embeddings=embeddings.astype(np.float32),
             black=black.astype(bool))
    write_atomically(path, buffer.getvalue())
