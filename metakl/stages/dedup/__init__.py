"""Semantic near-duplicate removal and clustering (`metakl dedup`).

`search` holds the vector algorithms (spherical k-means partition, exact cosine within it, the greedy keep rule);
`stage` the dataset side (texts, keep order, columns, report).
"""

from metakl.stages.dedup.stage import DEFAULT_EPSILON, DedupConfig, Keep, Method, dedup, embedding_texts

__all__ = ["DEFAULT_EPSILON", "DedupConfig", "Keep", "Method", "dedup", "embedding_texts"]
