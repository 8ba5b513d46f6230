"""Request cache: one SQLite file (metakl.cache) mapping a request key to its completion.

Each result is committed as soon as it arrives, so an interrupted run loses at most the requests in flight.
Only successful completions are stored: a failed request is asked again on the next run.
"""

from __future__ import annotations

import time

from metakl.cache import SqliteCache
from metakl.llm.types import Completion

CACHE_FILE = "requests.sqlite3"


class RequestCache(SqliteCache):
    """A key → Completion store shared safely by threads and processes."""

    def __init__(self, cache_dir) -> None:
        super().__init__(cache_dir, CACHE_FILE, "CREATE TABLE IF NOT EXISTS completions "
                                                "(key TEXT PRIMARY KEY, completion TEXT NOT NULL, created REAL NOT NULL)")

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        rows = self.select_in("SELECT key, completion FROM completions WHERE key IN ({keys})", keys)
        return {key: Completion.from_json(blob, cached=True) for key, blob in rows}

    def put(self, key: str, completion: Completion) -> None:
        self.write("INSERT OR REPLACE INTO completions (key, completion, created) VALUES (?, ?, ?)",
                   [(key, completion.to_json(), time.time())])

    def __len__(self) -> int:
        return self.scalar("SELECT COUNT(*) FROM completions")
