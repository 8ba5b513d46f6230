"""Candidate knowledge units for a prompt: embedding retrieval over a taxonomy's units.

Each unit is embedded once as `name in words: description` (a unit without a description: its name and its other
member names) through metakl.embed, whose on-disk cache makes a second run over the same taxonomy encode nothing.
A prompt (question + options) is embedded the same way and its candidates are the units with the highest cosine
similarity (one matrix product per block of prompts; exact, so no approximate index is needed: 20K prompts against
10K units is ~80 GFLOP, seconds on two cores).

A unit may carry a `domain`; a row then only sees the units of the domains `UNIT_DOMAINS` allows for it (general
questions may need math units, math and safety rows keep to their own), plus units without a domain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from metakl import resources
from metakl.errors import UserError

SEED_TAXONOMY = "seed"

# Which unit domains a row of each domain may be tagged with (units without a domain suit every row).
UNIT_DOMAINS: dict[str, tuple[str, ...]] = {"math": ("math",), "general": ("general", "math"), "safety": ("safety",)}

_BLOCK = 4096  # prompts per matrix product


def resolve_taxonomy(value: str | Path | None) -> Path:
    """A taxonomy file: a path, a merge output folder (its taxonomy.json), or the name of one shipped in
    annotations/taxonomies/ (or on $METAKL_ANNOTATIONS) (None: the seed taxonomy)."""
    if value is None:
        value = SEED_TAXONOMY
    path = Path(value).expanduser()
    if path.is_dir():
        if (path / "taxonomy.json").is_file():
            return path / "taxonomy.json"
        raise UserError(f"{value}: a folder without a taxonomy.json; give the taxonomy file")
    if path.exists():
        return path
    shipped = resources.taxonomy(str(value)) if path.suffix == "" and "/" not in str(value) else None
    if shipped is not None:
        return shipped
    available = resources.names(resources.TAXONOMIES, ".json")
    raise UserError(f"{value}: no such taxonomy file (shipped taxonomies: {', '.join(available) or 'none'})")


def unit_text(name: str, entry: dict[str, Any], max_members: int = 5) -> str:
    """The text a unit is retrieved by: its name in words and its description (else its other member names)."""
    words = name.replace("_", " ")
    description = entry.get("description")
    if isinstance(description, str) and description.strip():
        return f"{words}: {description.strip()}"
    others = [m.replace("_", " ") for m in entry.get("members", {}) if m != name][:max_members]
    return f"{words} ({', '.join(others)})" if others else words


def prompt_text(question: str, choices: Sequence[str] | None = None) -> str:
    """The text a prompt is retrieved by: the question, then its options on one line."""
    text = (question or "").strip()
    opts = [str(c).strip() for c in choices or [] if str(c).strip()]
    return f"{text}\nOptions: {' / '.join(opts)}" if opts else text


def taxonomy_digest(tax: dict[str, Any]) -> str:
    """A short digest of the unit names and texts (what retrieval depends on)."""
    h = hashlib.sha256()
    for name, entry in tax["units"].items():
        h.update(json.dumps([name, unit_text(name, entry), entry.get("domain")]).encode())
    return h.hexdigest()[:16]


@dataclass
class UnitIndex:
    names: list[str]
    texts: list[str]
    descriptions: list[str | None]
    domains: list[str | None]
    areas: list[str | None]
    vectors: np.ndarray  # [units, dim] float32, unit rows
    digest: str

    @classmethod
    def build(cls, tax: dict[str, Any], embedder: Callable[..., np.ndarray], progress: bool = False) -> "UnitIndex":
        units = tax["units"]
        if not units:
            raise UserError("the taxonomy has no units to choose from")
        names = list(units)
        texts = [unit_text(n, units[n]) for n in names]
        try:
            vectors = embedder(texts, progress=progress)
        except TypeError:  # a plain callable without a progress argument (tests)
            vectors = embedder(texts)
        vectors = np.asarray(vectors, dtype=np.float32)
        return cls(
            names=names,
            texts=texts,
            descriptions=[(units[n].get("description") or None) for n in names],
            domains=[units[n].get("domain") for n in names],
            areas=[units[n].get("area") for n in names],
            vectors=vectors,
            digest=taxonomy_digest(tax),
        )

    def __len__(self) -> int:
        return len(self.names)

    def eligible(self, domain: str | None, unit_domains: dict[str, Sequence[str]] | None = None) -> np.ndarray:
        """Indices of the units a row of `domain` may be tagged with."""
        allowed = (unit_domains or UNIT_DOMAINS).get(domain or "", None)
        if allowed is None:
            return np.arange(len(self.names))
        return np.array([i for i, d in enumerate(self.domains) if d is None or d in allowed], dtype=np.int64)

    def search(self, prompt_vectors: np.ndarray, domains: Sequence[str | None], k: int,
               unit_domains: dict[str, Sequence[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most similar eligible units of each prompt, best first: (indices [n, k], similarities [n, k]).

        Rows with fewer than k eligible units are padded with index -1 and similarity -inf.
        """
        n = len(prompt_vectors)
        idx = np.full((n, k), -1, dtype=np.int64)
        sim = np.full((n, k), -np.inf, dtype=np.float32)
        by_domain: dict[str | None, list[int]] = {}
        for i, d in enumerate(domains):
            by_domain.setdefault(d, []).append(i)
        for domain, rows in by_domain.items():
            cols = self.eligible(domain, unit_domains)
            if len(cols) == 0:
                continue
            vecs = self.vectors[cols]
            kk = min(k, len(cols))
            rows_arr = np.asarray(rows)
            for start in range(0, len(rows_arr), _BLOCK):
                block = rows_arr[start : start + _BLOCK]
                s = prompt_vectors[block] @ vecs.T
                if kk < len(cols):
                    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
                else:
                    part = np.tile(np.arange(len(cols)), (len(block), 1))
                ps = np.take_along_axis(s, part, axis=1)
                # Best first; equal similarities in unit order, so the result does not depend on the partition.
                order = np.lexsort((part, -ps), axis=1)
                top = np.take_along_axis(part, order, axis=1)
                idx[block, :kk] = cols[top]
                sim[block, :kk] = np.take_along_axis(ps, order, axis=1)
        return idx, sim


def select_by_similarity(indices: np.ndarray, sims: np.ndarray, max_units: int, min_similarity: float,
                         margin: float) -> list[list[int]]:
    """The embedding tagger's rule: per row, the nearest units with similarity >= min_similarity and within
    `margin` of the row's best, at most `max_units` (an empty list when even the best is under min_similarity)."""
    out: list[list[int]] = []
    for row_idx, row_sim in zip(indices, sims):
        keep: list[int] = []
        if len(row_sim) and row_idx[0] >= 0 and row_sim[0] >= min_similarity:
            floor = max(min_similarity, float(row_sim[0]) - margin)
            for j, s in zip(row_idx, row_sim):
                if j < 0 or s < floor or len(keep) >= max_units:
                    break
                keep.append(int(j))
        out.append(keep)
    return out
