"""MergeConfig: the merge stage's settings, in a module of their own so that every step of the package (stage,
llm_merge, taxonomy) can read them without importing each other in a circle."""

from __future__ import annotations

from dataclasses import dataclass

from metakl.config import check_settings, setting
from metakl.hardware import DTYPES

EMBEDDING = "Embedding"
LLM_MERGE = "LLM merge (step 3)"


@dataclass
class MergeConfig:
    """What `metakl merge` flags and a config's `merge:` section set (one declaration: metakl.config.setting)."""

    embedding_model: str = setting("all-minilm-l6-v2", option={"rich_help_panel": EMBEDDING}, help=(
        "sentence-transformers model: embedded name or folder."))
    threshold: float = setting(0.15, min=0.0, max=2.0, help=(
        "Cosine distance under which clusters merge (average linkage)."))
    reason_weight: float = setting(0.0, min=0.0, max=1.0, help="Share of the reason in a skill's embedding (0: name only).")
    neighbors: int = setting(30, min=1, help="Nearest neighbours per skill in the graph that bounds merges.")
    exact_limit: int = setting(5000, min=0, help=(
        "Groups of skills up to this size get exact average linkage (graph-constrained linkage above)."))
    max_seq_length: int = setting(32, min=1, option={"rich_help_panel": EMBEDDING}, help=(
        "Tokens per embedded text (names are short; reasons are cut here)."))
    # `--batch-size` is the model options' requests per batch file (--llm-merge), hence another flag
    batch_size: int = setting(64, min=1, flags=("--embedding-batch-size",), option={"rich_help_panel": EMBEDDING},
                              help="Texts per embedding call.")
    embedding_dtype: str = setting("float32", choices=DTYPES, option={"rich_help_panel": EMBEDDING}, help=(
        "Embedding weights: float32 gives the same vectors on every machine; bfloat16 is faster on CPUs with "
        "AVX512-BF16/AMX; auto picks for this machine."))
    examples_per_unit: int = setting(3, min=0, help="Example prompts kept per unit in the taxonomy.")
    seed: int = setting(0, help="Seed recorded with the taxonomy and sent with LLM-merge requests.")
    llm_merge: bool = setting(False, flags=("--llm-merge",), option={"rich_help_panel": LLM_MERGE}, help=(
        "Step 3: ask an LLM to confirm, split and name each cluster."))
    llm_max_cluster: int = setting(30, min=1, option={"rich_help_panel": LLM_MERGE}, help=(
        "Larger clusters are not shown to the LLM (step 2's cluster is kept)."))
    llm_max_tokens: int = setting(400, min=1, option={"rich_help_panel": LLM_MERGE}, help=(
        "Token limit of each LLM-merge answer."))
    taxonomy: str | None = setting(None, flags=("--taxonomy",), path=True, help=(
        "Existing taxonomy to map skills onto (a file, or a shipped name such as seed); skills it does not cover "
        "form new units."))
    # the verb's default is its output folder's name (run_verb's `defaults`), hence no default in --help
    name: str = setting("taxonomy", option={"show_default": False}, help=(
        "Taxonomy name (default: the output folder's name)."))
    templates_dir: str | None = setting(None, path=True, option={"rich_help_panel": LLM_MERGE}, help=(
        "Your own templates folder (merge/merge.j2)."))

    def __post_init__(self) -> None:
        check_settings(self, "merge")
