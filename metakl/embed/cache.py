"""On-disk embedding cache: (model identity, text hash) → float32 vector, in one SQLite file (WAL).

Vectors are committed in batches as they are encoded, so an interrupted run keeps what it finished. Several
processes may share the file (busy timeout); the same text embedded twice by the same model is stored once.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np

from metakl.io import open_sqlite

CACHE_FILE = "embeddings.sqlite3"
_CHUNK = 500  # SQLite's parameter limit is 999 on old builds


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / CACHE_FILE
        self._lock = threading.Lock()
        self._conn = open_sqlite(self.path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, key BLOB NOT NULL, vec BLOB NOT NULL, "
            "PRIMARY KEY (model, key)) WITHOUT ROWID"
        )

    def get_many(self, model: str, keys: list[bytes], dim: int) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, vec FROM vectors WHERE model = ? AND key IN ({marks})", [model, *chunk]
                )
                for key, blob in rows:
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.shape[0] == dim:  # a vector of another size is not this model's: ignore it
                        found[key] = vec
        return found

    def put_many(self, model: str, keys: list[bytes], vectors: np.ndarray) -> None:
        rows = [(model, k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in zip(keys, vectors)]
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR REPLACE INTO vectors (model, key, vec) VALUES (?, ?, ?)", rows)
            self._conn.execute("COMMIT")

    def count(self, model: str | None = None) -> int:
        with self._lock:
            if model is None:
                return self._conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            return self._conn.execute("SELECT COUNT(*) FROM vectors WHERE model = ?", (model,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
