"""Request cache: one SQLite file (WAL) mapping a request key to its completion.

Each result is committed as soon as it arrives, so an interrupted run loses at most the requests in flight.
Only successful completions are stored: a failed request is asked again on the next run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from metakl.io import open_sqlite
from metakl.llm.types import Completion

CACHE_FILE = "requests.sqlite3"


class RequestCache:
    """A key → Completion store shared safely by threads and processes (WAL, busy timeout)."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / CACHE_FILE
        self._lock = threading.Lock()
        # Producers may run in a worker thread (async backends): one connection guarded by a lock.
        self._conn = open_sqlite(self.path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, completion TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(f"SELECT key, completion FROM completions WHERE key IN ({marks})", chunk)
                for key, blob in rows:
                    found[key] = Completion.from_json(blob, cached=True)
        return found

    def put(self, key: str, completion: Completion) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO completions (key, completion, created) VALUES (?, ?, ?)",
                (key, completion.to_json(), time.time()),
            )

    def __bool__(self) -> bool:  # an empty cache is still a cache
        return True

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
