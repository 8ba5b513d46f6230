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

The compute dtype is chosen per CPU at run time (`dtype="auto"`, the default): bfloat16 where the CPU has it natively
(AMX / AVX512-BF16: 1.8-4x the float32 texts/s of MiniLM on 2 shared cores, every vector at cosine >= 0.9998 to
float32, dedup and tagging decisions unchanged but for a handful, see benchmarks/embed_speed.py and README "Embedding
speed"), float32 elsewhere (bfloat16 emulated on AVX2 is slower than float32). The dtype is part of the cache identity.

One text form per purpose, so a run embeds each text once per model and every stage reads the same vectors:
- a prompt, for what it asks (annotate's embedding retrieval, dedup, decontaminate): `prompt_text(question, choices)`
  (metakl.stages.unit_index: a long question's last sentence first, then the text, then `Options: a / b`) at
  `PROMPT_MAX_SEQ_LENGTH` tokens. Annotate's retrieval was tuned on this form; for dedup, two long prompts on one
  passage embed alike whatever they ask, and its ending guard (below) tells them apart, as it did before.
- a long prompt's ending (dedup's guard: two long prompts must also end alike): its last `tail_chars` characters.
- a skill name or unit text (merge, the unit index): their own short texts, their own settings.
"""

from __future__ import annotations

from metakl.embed.cache import EmbeddingCache
from metakl.embed.embedder import DEFAULT_EMBEDDING_DTYPE, DEFAULT_EMBEDDING_MODEL, Embedder, EmbedStats, load_embedder

PROMPT_MAX_SEQ_LENGTH = 128  # tokens of a prompt text that are embedded (the topic and the asking sentence are first)

__all__ = ["DEFAULT_EMBEDDING_DTYPE", "DEFAULT_EMBEDDING_MODEL", "EmbedStats", "Embedder", "EmbeddingCache",
           "PROMPT_MAX_SEQ_LENGTH", "load_embedder"]
