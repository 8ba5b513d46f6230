"""MergeConfig: the merge stage's settings, in a module of their own so that every step of the package (stage,
llm_merge, taxonomy) can read them without importing each other in a circle."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MergeConfig:
    embedding_model: str = "all-minilm-l6-v2"
    threshold: float = 0.15  # cosine distance under which clusters merge (average linkage)
    reason_weight: float = 0.0  # share of the reason's embedding in a skill's vector (0: the name alone)
    neighbors: int = 30  # nearest neighbours per group in the graph that bounds the merges
    exact_limit: int = 5000  # components up to this size get exact average linkage
    max_seq_length: int = 32  # tokens per embedded text (names are short; reasons are cut here)
    batch_size: int = 64
    embedding_dtype: str = "float32"  # or "bfloat16": about 1.5x faster on CPUs with AVX512-BF16
    examples_per_unit: int = 3
    seed: int = 0
    llm_merge: bool = False
    llm_max_cluster: int = 30  # larger clusters are not shown to the LLM (step 2 result kept)
    llm_max_tokens: int = 400
    taxonomy: str | None = None  # an existing taxonomy file to map skills onto
    name: str = "taxonomy"  # the name written into the new taxonomy
    templates_dir: str | None = None  # your own merge/merge.j2
