"""Knowledge merge: raw skill names -> knowledge units, a `units` column per row and a reusable taxonomy.

Step 1 (normalization): names in lower snake case; names whose stem signature agrees (Snowball stems of the words
  without stop words, as a sorted set) are one group: `adding_fractions`, `add_fractions`, `fractions_adding`.
Step 2 (semantic merge): each group is embedded once (its name's words, optionally mixed with its most frequent
  reason's embedding, `reason_weight`) with a sentence-transformers model, and the groups are clustered by average linkage on cosine distance with a threshold. Average linkage never joins two
  clusters without a pair closer than the threshold, so the single-linkage components of the thresholded
  nearest-neighbour graph split the problem exactly; each component is clustered on its own (exactly up to
  `exact_limit` groups, with sklearn's graph-constrained linkage above). Memory stays O(n*k), not O(n^2).
Step 3 (optional LLM merge): each multi-member cluster is shown to an LLM that answers
  `{merged_name: [existing skills]}` (the paper's merge prompt); a valid answer splits/renames the cluster, an
  invalid one keeps step 2's result.
A unit is named by its most frequent member. With an existing taxonomy, known names and stem signatures map
directly, other groups join the unit whose members they are closest to on average (within the threshold), and the
rest are clustered into new units.

The package, one concern a module:
- `clustering`: steps 1 and 2 (skills, stem signatures, groups; embeddings of groups, average-linkage clusters)
- `taxonomy`: the taxonomy file (load, validate, save, build) and mapping skills onto an existing one
- `llm_merge`: step 3 (prompt, JSON schema, answer checks)
- `config`: `MergeConfig`, the stage's settings
- `stage`: `merge_skills` and the `merge` stage

Embeddings come from metakl.embed (`Embedder` and `load_embedder` are re-exported here as the stage's embedder).
"""

from metakl.embed import Embedder, load_embedder
from metakl.stages.merge.clustering import (
    STOP_WORDS,
    Group,
    Skill,
    cluster_embeddings,
    collect_skills,
    embed_skills,
    group_skills,
    skill_signature,
)
from metakl.stages.merge.llm_merge import LLMMerge, apply_merge_answer, check_merge_answer, llm_merger, merge_json_schema
from metakl.stages.merge.config import MergeConfig
from metakl.stages.merge.stage import STAGE, merge, merge_skills
from metakl.stages.merge.taxonomy import (
    TAXONOMY_FILE,
    TAXONOMY_FORMAT,
    TAXONOMY_VERSION,
    build_taxonomy,
    empty_taxonomy,
    load_taxonomy,
    save_taxonomy,
    validate_taxonomy,
)

__all__ = [
    "STAGE", "STOP_WORDS", "TAXONOMY_FILE", "TAXONOMY_FORMAT", "TAXONOMY_VERSION",
    "Embedder", "Group", "LLMMerge", "MergeConfig", "Skill",
    "apply_merge_answer", "build_taxonomy", "check_merge_answer", "cluster_embeddings", "collect_skills",
    "embed_skills", "empty_taxonomy", "group_skills", "llm_merger", "load_embedder", "load_taxonomy", "merge",
    "merge_json_schema", "merge_skills", "save_taxonomy", "skill_signature", "validate_taxonomy",
]
