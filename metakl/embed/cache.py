"""On-disk embedding cache: (model identity, text hash) → float32 vector, in one SQLite file (metakl.cache).

Vectors are committed in batches as they are encoded, so an interrupted run keeps what it finished. Several
processes may share the file; the same text embedded twice by the same model is stored once.
"""

from __future__ import annotations

import hashlib

import numpy as np

from metakl.cache import SqliteCache

CACHE_FILE = "embeddings.sqlite3"


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache(SqliteCache):
    def __init__(self, cache_dir) -> None:
        super().__init__(cache_dir, CACHE_FILE, "CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, "
                                                "key BLOB NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (model, key)) WITHOUT ROWID")

    def get_many(self, model: str, keys: list[bytes], dim: int) -> dict[bytes, np.ndarray]:
        rows = self.select_in("SELECT key, vec FROM vectors WHERE model = ? AND key IN ({keys})", keys, [model])
        vectors = ((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        return {key: vec for key, vec in vectors if vec.shape[0] == dim}  # another size: not this model's

    def put_many(self, model: str, keys: list[bytes], vectors: np.ndarray) -> None:
        self.write("INSERT OR REPLACE INTO vectors (model, key, vec) VALUES (?, ?, ?)",
                   [(model, k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in zip(keys, vectors)])

    def count(self, model: str | None = None) -> int:
        if model is None:
            return self.scalar("SELECT COUNT(*) FROM vectors")
        return self.scalar("SELECT COUNT(*) FROM vectors WHERE model = ?", (model,))
