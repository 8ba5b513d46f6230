"""What every annotator shares: the settings, the error kinds, the rows they read, what they return, and the
interface (`Strategy`) each annotator module implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from datasets import Dataset

from metakl.errors import UserError
from metakl.schema import DOMAINS, domain_mapping

STAGE = "annotate"
TAXONOMY_FILE = "taxonomy.json"  # the artifact of guided / embedding annotation (merge's file name and format)
BACKEND_ERROR = "backend_error"
BAD_DOMAIN = "bad_domain"
EMPTY_QUESTION = "empty_question"
UNKNOWN_UNIT = "unknown_unit"  # guided: the answer names no unit of the taxonomy

# The embedding tagger's floor for a taxonomy that does not carry its own `min_similarity`: calibrated on the dev
# split of tests/fixtures/annotate/checkset.jsonl with all-MiniLM-L6-v2 and unit descriptions (the best micro F1,
# `python benchmarks/annotate_quality.py --calibrate`). The seed taxonomy carries its own (0.40, calibrated on its
# example prompts: see README "Tags at scale"); under the floor the tagger abstains (counted in the report).
MIN_SIMILARITY = 0.20
SIMILARITY_MARGIN = 0.01


@dataclass
class Candidates:
    """Each prompt of `todo`'s `m` nearest units: `idx[row]` (index positions, -1 past the end) and `sim[row]`,
    the `index` they point into, and what finding them cost (the stage report's `retrieval`)."""

    index: Any
    idx: Any  # np.ndarray
    sim: Any  # np.ndarray
    report: dict[str, Any]


class Annotator(str, Enum):
    guided = "guided"
    embedding = "embedding"
    open = "open"


@dataclass
class AnnotateConfig:
    annotator: Annotator = Annotator.guided
    # guided / embedding: a taxonomy file, or the name of one in annotations/taxonomies/ (None: the seed taxonomy)
    taxonomy: str | None = None
    max_skills: int | None = None  # K: at most this many skills/units per prompt; None: 8 open-set, 3 otherwise
    min_skills: int = 1
    candidates: int = 5  # M: units retrieved per prompt and offered to the model (guided)
    # embedding: a unit's similarity to the prompt must reach this (None: the taxonomy's own, else MIN_SIMILARITY)
    min_similarity: float | None = None
    similarity_margin: float = SIMILARITY_MARGIN  # embedding: ... and lie within this of the prompt's best unit
    embedding_model: str = "all-minilm-l6-v2"
    embedding_max_seq_length: int = 128  # tokens of a prompt that retrieval reads (the topic is in its start)
    retries: int = 2  # extra attempts after the first, with the validation error fed back
    max_tokens: int = 256
    temperature: float = 0.0
    # Retries see the error in the conversation, so they differ even at temperature 0.
    retry_temperature: float | None = None  # None: the first attempt's temperature
    seed: int = 0
    structured: bool = True  # ask for JSON-schema structured output when the backend supports it
    templates: dict[str, str] = field(default_factory=lambda: {d: d for d in DOMAINS})
    retry_template: str = "retry"
    guided_template: str = "guided"
    guided_retry_template: str = "guided_retry"
    templates_dir: str | None = None

    def __post_init__(self) -> None:
        try:
            self.annotator = Annotator(self.annotator.value if isinstance(self.annotator, Enum) else self.annotator)
        except ValueError:
            raise UserError(f"annotate: annotator must be one of {', '.join(a.value for a in Annotator)}, "
                            f"got {self.annotator!r}") from None
        k = self.max_units
        if self.retries < 0 or self.min_skills < 1 or k < self.min_skills:
            raise UserError(f"annotate: need retries >= 0 and 1 <= min_skills <= max_skills, got retries "
                            f"{self.retries}, min_skills {self.min_skills}, max_skills {k}")
        if self.candidates < 1:
            raise UserError(f"annotate: candidates must be >= 1, got {self.candidates}")
        self.templates = domain_mapping(self.templates, "annotate: templates")
        if (self.min_similarity is not None and not -1.0 <= self.min_similarity <= 1.0) or self.similarity_margin < 0:
            raise UserError(f"annotate: need -1 <= min_similarity <= 1 and similarity_margin >= 0, got "
                            f"{self.min_similarity}, {self.similarity_margin}")

    @property
    def max_units(self) -> int:
        """K, with the annotator's default when `max_skills` is not set."""
        if self.max_skills is not None:
            return self.max_skills
        return 8 if self.annotator == Annotator.open else 3


Failure = tuple[str, str]  # (error kind, message)


@dataclass
class Rows:
    """The input columns the annotators read."""

    ids: list[str]
    domains: list[str]
    questions: list[str]
    choices: list[list[str]]

    @classmethod
    def of(cls, ds: Dataset) -> Rows:
        choices = ([list(c or []) for c in ds["choices"]] if "choices" in ds.column_names
                   else [[] for _ in range(len(ds))])
        return cls(ds["id"], ds["domain"], ds["question"], choices)

    def __len__(self) -> int:
        return len(self.ids)

    def check(self, known_domains) -> dict[int, Failure]:
        """The rows no annotator can work on: an unknown domain or an empty question."""
        failure: dict[int, Failure] = {}
        for i, (d, q) in enumerate(zip(self.domains, self.questions)):
            if d not in known_domains:
                failure[i] = (BAD_DOMAIN, f"domain {d!r} has no template; expected one of {', '.join(sorted(known_domains))}")
            elif not (q or "").strip():
                failure[i] = (EMPTY_QUESTION, "the question is empty")
        return failure


@dataclass
class Labels:
    """What an annotator found for the rows it was given: `knowledge` for every row of the input (empty where it
    found none), the failures of its rows, the attempts per row, and its own entries for the stage report."""

    knowledge: list[list[dict[str, str]]]
    failure: dict[int, Failure]
    attempts: list[int]
    report: dict[str, Any]
    seconds: float = 0.0  # spent waiting for the model


class Strategy(Protocol):
    """One annotator. Built from the settings (and the backend, for those that ask a model), so that a missing
    backend or a bad template is one error before any model loads; then `label` annotates the rows `todo`."""

    domains: Any  # the domains it has a template (or a use) for: rows of other domains fail with BAD_DOMAIN
    uses_taxonomy: bool  # whether it picks units of a taxonomy (and so needs the retrieval `Candidates`)
    candidates: int  # units retrieved per prompt (taxonomy annotators)

    def label(self, rows: Rows, todo: list[int], found: Candidates | None, progress: bool) -> Labels: ...


def supports_schema(backend: Any) -> bool:
    # Backends say so with `supports_json_schema`; the ones that do not say are asked anyway (the parser copes).
    return bool(getattr(backend, "supports_json_schema", True))
