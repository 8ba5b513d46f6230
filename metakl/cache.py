"""One SQLite file (WAL) as a store shared by threads and processes: the request cache (metakl.llm.cache) and the
embedding cache (metakl.embed.cache) are each a table in one of these.

Every write is committed before it returns, so a process killed at any point (kill -9 included) keeps everything it
wrote before; only what it had not yet handed to `write` is lost. Several processes may share the file (WAL, a busy
timeout); threads share one connection behind a lock (async backends write from a worker thread).
Why not diskcache: with the same durability (WAL, synchronous NORMAL) it measured ~2.7x slower per committed write
and ~3x per read here (3000 entries of 1 KB: 177 vs 65 us/write, 11.7 vs 3.8 us/key), has no batched read, and
would leave the existing cache files behind.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_CHUNK = 500  # keys per `IN (...)`: SQLite's parameter limit is 999 on old builds


def open_sqlite(path: str | Path) -> sqlite3.Connection:
    """A SQLite connection shared safely by threads and processes: WAL, a busy timeout, autocommit.

    NORMAL synchronous is durable across process kills under WAL (only an OS crash can lose the last commits).
    Callers guard the connection with their own lock (it is used from worker threads).
    """
    conn = sqlite3.connect(path, timeout=60.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteCache:
    """`cache_dir/file_name`, created with `schema` (CREATE TABLE IF NOT EXISTS ...) on first use."""

    def __init__(self, cache_dir: str | Path, file_name: str, schema: str) -> None:
        self.dir = Path(cache_dir).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / file_name
        self._lock = threading.Lock()
        self._conn = open_sqlite(self.path)
        self._conn.execute(schema)

    def select_in(self, sql: str, keys: Sequence[Any], params: Sequence[Any] = ()) -> Iterable[tuple]:
        """The rows of `sql`, whose one `{keys}` is filled with `?, ?, ...` for `keys` (asked in chunks), after
        `params` for the placeholders before it."""
        rows: list[tuple] = []
        with self._lock:
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start : start + _CHUNK])
                rows.extend(self._conn.execute(sql.format(keys=",".join("?" * len(chunk))), [*params, *chunk]))
        return rows

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """`sql` for every row, committed as one transaction before returning."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(sql, rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()[0]

    def __bool__(self) -> bool:  # an empty cache is still a cache
        return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()
