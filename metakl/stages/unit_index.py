"""Candidate knowledge units for a prompt: embedding retrieval over a taxonomy's units.

Each unit is embedded once as `name in words: description` (a unit without a description: its name and its other
member names) through metakl.embed, whose on-disk cache makes a second run over the same taxonomy encode nothing.
A unit may also carry `example_prompts`, short prompts the taxonomy's authors wrote for it; a prompt's similarity to
such a unit is the mean of its similarities to its two closest examples (a nearest-neighbour vote in place of the
description: MiniLM compares a prompt with another prompt far more reliably than with a one-line definition, so
"Sam has 3 dogs and 2 hens. How many legs do they have?" lands on word problems, not on the pigeonhole principle).
A prompt (question + options) is embedded the same way and its candidates are the units with the highest cosine
similarity (one matrix product per block of prompts; exact, so no approximate index is needed: 20K prompts against
10K units is ~80 GFLOP, seconds on two cores).

A unit may carry a `domain`; a row then only sees the units of the domains `UNIT_DOMAINS` allows for it (general
questions may need math units, math and safety rows keep to their own), plus units without a domain.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from metakl import resources
from metakl.errors import UserError

SEED_TAXONOMY = "seed"

# Which unit domains a row of each domain may be tagged with (units without a domain suit every row). A general
# prompt with no sign of mathematics in it (no digit, operator or formula: "A hotel always has at least one guest.")
# is retrieved as `general_words` and keeps to general units: otherwise its wording alone ("at least one", "boxes")
# drew it to pigeonhole_principle or stars_and_bars.
UNIT_DOMAINS: dict[str, tuple[str, ...]] = {"math": ("math",), "general": ("general", "math"), "safety": ("safety",),
                                            "general_words": ("general",)}
_MATH_SIGN = re.compile(r"[0-9=+*/^<>%$\\]|\b(?:percent|equation|probability|integer|sum of|solve)\b", re.IGNORECASE)


def retrieval_domain(domain: str | None, question: str) -> str | None:
    """The key of UNIT_DOMAINS a row is retrieved under: its domain, or `general_words` (see UNIT_DOMAINS)."""
    return "general_words" if domain == "general" and not _MATH_SIGN.search(question or "") else domain

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


LONG_PROMPT_CHARS = 400  # past this, the question's last sentence is put first (see prompt_text)
_SENTENCE_END = re.compile(r"(?<=[.?!:])\s+")


def prompt_text(question: str, choices: Sequence[str] | None = None) -> str:
    """The text a prompt is retrieved by: the question, then its options on one line.

    A long question (a LogiQA passage, an MMLU law case) starts with its last sentence, which is where such prompts
    ask what they ask ("which one most weakens the argument?"): the embedder reads only the first 128 tokens, and
    the passage alone pulls the prompt towards its topic (biology, history) instead of the skill asked for.
    """
    text = (question or "").strip()
    if len(text) > LONG_PROMPT_CHARS:
        sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
        if len(sentences) > 1:
            text = f"{sentences[-1]}\n{text}"
    opts = [str(c).strip() for c in choices or [] if str(c).strip()]
    return f"{text}\nOptions: {' / '.join(opts)}" if opts else text


def taxonomy_digest(tax: dict[str, Any]) -> str:
    """A short digest of the unit names, texts and examples, and of the floor (what a UnitIndex holds)."""
    h = hashlib.sha256(json.dumps(tax.get("min_similarity")).encode())
    for name, entry in tax["units"].items():
        h.update(json.dumps([name, unit_text(name, entry), entry.get("domain"), example_prompts(entry)]).encode())
    return h.hexdigest()[:16]


def example_prompts(entry: dict[str, Any]) -> list[str]:
    """The unit's `example_prompts` (non-empty strings; anything else is ignored here, reported by validation)."""
    given = entry.get("example_prompts")
    return [p.strip() for p in given if isinstance(p, str) and p.strip()] if isinstance(given, list) else []


@dataclass
class UnitIndex:
    names: list[str]
    texts: list[str]
    descriptions: list[str | None]
    domains: list[str | None]
    areas: list[str | None]
    vectors: np.ndarray  # [units, dim] float32, unit rows
    digest: str
    example_vectors: np.ndarray | None = None  # [examples, dim] float32: the units' example prompts, by unit
    example_units: np.ndarray | None = None  # [examples] int64: the unit of each example (non-decreasing)
    min_similarity: float | None = None  # the taxonomy's calibrated floor for the embedding tagger, if it has one

    @classmethod
    def build(cls, tax: dict[str, Any], embedder: Callable[..., np.ndarray], progress: bool = False) -> "UnitIndex":
        units = tax["units"]
        if not units:
            raise UserError("the taxonomy has no units to choose from")
        names = list(units)
        texts = [unit_text(n, units[n]) for n in names]
        examples = [(u, p) for u, n in enumerate(names) for p in example_prompts(units[n])]
        all_texts = texts + [p for _, p in examples]
        try:
            vectors = embedder(all_texts, progress=progress)
        except TypeError:  # a plain callable without a progress argument (tests)
            vectors = embedder(all_texts)
        vectors = np.asarray(vectors, dtype=np.float32)
        vectors, example_vectors = vectors[: len(texts)], vectors[len(texts):]
        return cls(
            names=names,
            texts=texts,
            descriptions=[(units[n].get("description") or None) for n in names],
            domains=[units[n].get("domain") for n in names],
            areas=[units[n].get("area") for n in names],
            vectors=vectors,
            digest=taxonomy_digest(tax),
            example_vectors=example_vectors if examples else None,
            example_units=np.array([u for u, _ in examples], dtype=np.int64) if examples else None,
            min_similarity=tax.get("min_similarity"),
        )

    def __len__(self) -> int:
        return len(self.names)

    def similarities(self, prompt_vectors: np.ndarray) -> np.ndarray:
        """[n, units]: each prompt's similarity to each unit: the mean of its two closest example prompts where the
        unit has examples, else its text. (On the dev split of benchmarks/data/tag_labels.jsonl, every prompt
        tagged: the first unit right for 66-70% of the prompts, vs 38% by the text alone, 50% by the better of text
        and closest example, 57% by their mean; weighting the text in at 15% was within noise of this rule.)"""
        s = prompt_vectors @ self.vectors.T
        if self.example_vectors is not None and len(self.example_vectors):
            owners, best = _two_closest_mean(prompt_vectors @ self.example_vectors.T, self.example_units)
            s[:, owners] = best
        return s

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
            kk = min(k, len(cols))
            rows_arr = np.asarray(rows)
            for start in range(0, len(rows_arr), _BLOCK):
                block = rows_arr[start : start + _BLOCK]
                s = self.similarities(prompt_vectors[block])[:, cols]
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


def _two_closest_mean(sims: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the mean of the two largest similarities among each owner's columns (the one, where an owner has
    one); `owners` non-decreasing. Returns (owners, [n, owners])."""
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    ends = np.r_[starts[1:], len(owners)]
    out = np.empty((len(sims), len(starts)), dtype=np.float32)
    for k, (a, b) in enumerate(zip(starts, ends)):
        block = sims[:, a:b]
        if b - a == 1:
            out[:, k] = block[:, 0]
        else:
            top2 = np.partition(block, b - a - 2, axis=1)[:, -2:]
            out[:, k] = top2.mean(axis=1)
    return owners[starts], out


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
