"""Embedding annotation, no model: the nearest units whose similarity clears a calibrated floor (and lies within a
margin of the best), the unit's description as the reason. Fast and deterministic; the baseline the LLM modes must
beat."""

from __future__ import annotations

from collections import Counter
from typing import Any

from metakl.schema import DOMAINS
from metakl.stages.annotate.base import MIN_SIMILARITY, AnnotateConfig, Labels, Rows
from metakl.stages.annotate.retrieval import Candidates


class Embedding:
    uses_taxonomy = True
    domains = DOMAINS

    def __init__(self, config: AnnotateConfig, backend: Any = None):
        self.config = config
        self.candidates = config.max_units

    def label(self, rows: Rows, todo: list[int], found: Candidates, progress: bool) -> Labels:
        from metakl.stages.unit_index import select_by_similarity

        cfg, index, idx, sim = self.config, found.index, found.idx, found.sim
        n = len(rows)
        knowledge: list[list[dict[str, str]]] = [[] for _ in range(n)]
        floor = next(f for f in (cfg.min_similarity, index.min_similarity, MIN_SIMILARITY) if f is not None)
        chosen = select_by_similarity(idx, sim, cfg.max_units, floor, cfg.similarity_margin)
        # A row with no unit over the floor abstains: no units, and no error either (with the seed taxonomy's floor
        # about half of the real prompts abstain, by design: a wrong unit misleads selection, a missing one does
        # not); the report counts them by domain.
        abstained: Counter = Counter()
        for row, i in enumerate(todo):
            if not chosen[row]:
                abstained[rows.domains[i]] += 1
                continue
            # The chosen units are the row's first candidates, in order, so their similarities line up.
            knowledge[i] = [
                {"skill": index.names[j],
                 "reason": index.descriptions[j] or f"closest unit to the prompt (similarity {float(s):.2f})"}
                for j, s in zip(chosen[row], sim[row][: len(chosen[row])])
            ]
        total = sum(abstained.values())
        return Labels(knowledge, {}, [0] * n, {
            "min_similarity": floor, "abstained": total, "abstained_rate": round(total / len(todo), 4) if todo else 0.0,
            "abstained_by_domain": dict(sorted(abstained.items()))})
