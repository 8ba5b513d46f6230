"""The one SQLite cache helper (metakl.cache) under the request and embedding caches: what a killed process wrote
is there, a failed write leaves nothing, many keys are asked in chunks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from metakl.cache import SqliteCache
from metakl.embed.cache import EmbeddingCache
from metakl.llm.cache import RequestCache

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"

# Writes one row at a time and says so on stdout, until it is killed.
CHILD = """
import sys, time
from metakl.cache import SqliteCache
cache = SqliteCache(sys.argv[1], "t.sqlite3", {schema!r})
for k in range(100000):
    cache.write("INSERT INTO t (k, v) VALUES (?, ?)", [(k, "x" * 100)])
    print(k, flush=True)
"""


def test_both_caches_are_the_helper():
    assert issubclass(RequestCache, SqliteCache) and issubclass(EmbeddingCache, SqliteCache)


def test_every_row_a_killed_writer_reported_is_there(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(schema=SCHEMA), str(tmp_path)],
                             stdout=subprocess.PIPE, text=True, env=env)
    reported = -1
    deadline = time.monotonic() + 60
    while reported < 200 and time.monotonic() < deadline:
        reported = int(child.stdout.readline())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    later = child.stdout.read().split()  # what it reported between our last read and the kill
    reported = int(later[-1]) if later else reported
    assert child.returncode == -signal.SIGKILL and reported >= 200
    cache = SqliteCache(tmp_path, "t.sqlite3", SCHEMA)
    stored = cache.scalar("SELECT COUNT(*) FROM t")
    assert reported + 1 <= stored <= reported + 2  # every reported row, plus at most the one written before the kill
    assert cache.scalar("SELECT MAX(k) FROM t") == stored - 1  # no gap: rows 0..stored-1


def test_a_failed_write_leaves_nothing_and_the_cache_goes_on(tmp_path):
    cache = SqliteCache(tmp_path, "t.sqlite3", SCHEMA)
    with pytest.raises(Exception, match="NOT NULL"):
        cache.write("INSERT INTO t (k, v) VALUES (?, ?)", [(1, "a"), (2, None)])
    assert cache.scalar("SELECT COUNT(*) FROM t") == 0  # the whole batch or nothing
    cache.write("INSERT INTO t (k, v) VALUES (?, ?)", [(1, "a")])
    assert cache.scalar("SELECT COUNT(*) FROM t") == 1


def test_many_keys_are_asked_in_chunks(tmp_path):
    cache = EmbeddingCache(tmp_path)
    keys = [k.to_bytes(4, "big") for k in range(1234)]  # over SQLite's 999 parameters in one query
    vectors = np.arange(1234 * 3, dtype=np.float32).reshape(1234, 3)
    cache.put_many("m", keys, vectors)
    found = cache.get_many("m", keys, dim=3)
    assert len(found) == 1234 and np.array_equal(found[keys[1000]], [3000.0, 3001.0, 3002.0])
    assert cache.get_many("other", keys, dim=3) == {} and cache.count("m") == 1234 and cache.count() == 1234
