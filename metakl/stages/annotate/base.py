"""What every annotator shares: the settings, the error kinds, the rows they read, what they return, and the
interface (`Strategy`) each annotator module implements."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from datasets import Dataset

from metakl.config import check_settings, setting
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


TAXONOMY_PANEL = "Taxonomy (guided, embedding)"
TEMPLATES_PANEL = "Templates"


@dataclass
class AnnotateConfig:
    """What `metakl annotate` flags and a config's `annotate:` section set (one declaration: metakl.config.setting)."""

    annotator: Annotator = setting(Annotator.guided, help=(
        "guided: the model picks units of a taxonomy among the retrieved candidates; embedding: the nearest units, "
        "no model; open: the model names skills freely (a strong teacher building a taxonomy)."))
    taxonomy: str | None = setting(None, flags=("--taxonomy",), option={"rich_help_panel": TAXONOMY_PANEL}, help=(
        "Taxonomy file (merge's taxonomy.json format) or the name of one in annotations/taxonomies/. Default: the "
        "seed taxonomy (340 hand-written units over math, general reasoning and safety)."))
    max_skills: int | None = setting(None, min=1, help=(
        "K: at most this many skills or units per prompt. Default: 8 open-set, 3 with a taxonomy."))
    min_skills: int = setting(1, min=1, help="At least this many skills or units per prompt (fewer is invalid).")
    candidates: int = setting(5, min=1, option={"rich_help_panel": TAXONOMY_PANEL}, help=(
        "M: units retrieved per prompt and offered to the model (guided)."))
    min_similarity: float | None = setting(None, min=-1.0, max=1.0, option={"rich_help_panel": TAXONOMY_PANEL}, help=(
        "embedding: a unit's cosine similarity to the prompt must reach this (default: the taxonomy's own, else "
        f"{MIN_SIMILARITY})."))
    similarity_margin: float = setting(SIMILARITY_MARGIN, min=0.0, option={"rich_help_panel": TAXONOMY_PANEL}, help=(
        "embedding: ... and lie within this of the prompt's best unit."))
    embedding_model: str = setting("all-minilm-l6-v2", option={"rich_help_panel": TAXONOMY_PANEL}, help=(
        "sentence-transformers model for retrieval: embedded name or folder."))
    embedding_max_seq_length: int = setting(128, min=1, option={"rich_help_panel": TAXONOMY_PANEL}, help=(
        "Tokens of a prompt that retrieval reads (the topic is in its start)."))
    retries: int = setting(2, min=0, help="Extra attempts for an invalid answer, with the error fed back.")
    max_tokens: int = setting(256, min=1, help="Token limit of each answer.")
    temperature: float = setting(0.0, min=0.0, help="Sampling temperature of the first attempt.")
    # Retries see the error in the conversation, so they differ even at temperature 0.
    retry_temperature: float | None = setting(None, min=0.0, help=(
        "Sampling temperature of the retries (default: the first attempt's)."))
    seed: int = setting(0, help="Sampling seed (recorded; with the request cache a re-run is identical).")
    structured: bool = setting(True, help="Ask for JSON-schema structured output.")
    templates: dict[str, str] = setting({d: d for d in DOMAINS}, flags=("--template",), option={
        "metavar": "DOMAIN=NAME", "rich_help_panel": TEMPLATES_PANEL}, help=(
        "open: the template of one domain's prompts, annotate/NAME.j2 (repeatable; default: the domain's own)."))
    retry_template: str = setting("retry", option={"rich_help_panel": TEMPLATES_PANEL}, help=(
        "open: the template of a retry (annotate/NAME.j2)."))
    guided_template: str = setting("guided", option={"rich_help_panel": TEMPLATES_PANEL}, help=(
        "guided: the template of the first attempt (annotate/NAME.j2)."))
    guided_retry_template: str = setting("guided_retry", option={"rich_help_panel": TEMPLATES_PANEL}, help=(
        "guided: the template of a retry (annotate/NAME.j2)."))
    templates_dir: str | None = setting(None, path=True, option={"rich_help_panel": TEMPLATES_PANEL}, help=(
        "Your own templates folder: <dir>/annotate/{math,general,safety,retry,guided,guided_retry}.j2."))

    def __post_init__(self) -> None:
        try:
            self.annotator = Annotator(self.annotator.value if isinstance(self.annotator, Enum) else self.annotator)
        except ValueError:
            raise UserError(f"annotate: annotator must be one of {', '.join(a.value for a in Annotator)}, "
                            f"got {self.annotator!r}") from None
        check_settings(self, STAGE)
        if self.max_units < self.min_skills:
            raise UserError(f"annotate: need min_skills <= max_skills, got min_skills {self.min_skills}, "
                            f"max_skills {self.max_units}")
        self.templates = domain_mapping(self.templates, "annotate: templates")

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
