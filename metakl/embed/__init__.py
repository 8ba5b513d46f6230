"""The one embedding module: sentence-transformers vectors, normalized, batched, cached on disk.

Every stage that embeds text (merge, taxonomy-guided annotation, dedup) goes through `load_embedder`:

```python
from metakl.embed import load_embedder
embed = load_embedder("all-minilm-l6-v2")          # embedded name, model folder, or Hub id
vectors = embed(["What is 2 + 2?", ...], progress=True)   # float32 [n, dim], unit rows
embed.stats                                         # texts encoded by the model vs served from the cache
```

The cache is one SQLite file (WAL) in the user cache (`$METAKL_CACHE_DIR/embeddings.sqlite3`), keyed by the model's
identity (weights, truncation length, dtype) and a hash of the text, so a re-run — or a merge re-embedding an old
taxonomy — encodes nothing it has encoded before, and a changed model re-encodes everything.

Embeddings default to float32 on every machine: bfloat16 is faster on CPUs with AMX/AVX512-BF16 but moves
similarities by ~1e-3, enough to change which near-duplicates or clusters fall on either side of a threshold, so
results would differ between machines. `dtype="auto"` trades that for speed.
"""

from __future__ import annotations

from metakl.embed.cache import EmbeddingCache
from metakl.embed.embedder import DEFAULT_EMBEDDING_MODEL, Embedder, EmbedStats, load_embedder

__all__ = ["DEFAULT_EMBEDDING_MODEL", "EmbedStats", "Embedder", "EmbeddingCache", "load_embedder"]
