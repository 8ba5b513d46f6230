"""The ingest stage: each source read record by record, mapped, validated and deduplicated (exact duplicates by
normalized question and choices, within and across sources); the kept rows are built as columns and turned into one
Dataset at the end, which keeps the per-row Python work small. Then --domain, --limit and --sample, and the report.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from datasets import Dataset

from metakl import resources
from metakl.config import check_settings, setting
from metakl.errors import UserError
from metakl.readers import Problem
from metakl.schema import CORE_FEATURES, DOMAINS, features, id_from_normalized, normalize_text
from metakl.stage import StageResult, stage
from metakl.stages.ingest.extract import RowError, map_record, meta_from_file_name
from metakl.stages.ingest.mapping import load_mapping, load_preset
from metakl.stages.ingest.readers import SourceSpec, read_source

STAGE = "ingest"
MAX_REPORTED_PROBLEMS = 20


class OnError(str, Enum):
    """What a bad record does: fail (write nothing, exit 2, show the first problems) or skip (drop and report it)."""

    fail = "fail"
    skip = "skip"


@dataclass
class IngestConfig:
    """What `metakl ingest` arguments and flags and a config's `ingest:` section set (one declaration:
    metakl.config.setting)."""

    sources: tuple[str, ...] = setting((), argument=True, help=(
        "Local files/folders or Hub ids (owner/name, or hf:owner/name); PRESET=SOURCE picks a preset per source."))
    preset: str | None = setting(None, flags=("--preset", "-p"), help=(
        "Preset for sources without PRESET= (see --list-presets)."))
    mapping: str | None = setting(None, flags=("--mapping", "-m"), path=True, help=(
        "Your own mapping YAML (see README, Ingest)."))
    hub_config: str | None = setting(None, help="Hub config name (overrides the preset's).")
    split: str | None = setting(None, help="Hub split (overrides the preset's; 'all' reads every split).")
    on_error: OnError = setting(OnError.fail, help=(
        "fail: write nothing and exit 2 on any bad record; skip: drop and report them."))
    limit: int | None = setting(None, min=1, help="At most N rows per source (the first valid, distinct ones).")
    sample: int | None = setting(None, min=0, help="Keep N rows in all, stratified by source (after dedup).")
    seed: int = setting(0, help="Seed for --sample.")
    domains: tuple[str, ...] = setting((), flags=("--domain", "-d"), help=(
        "Keep only this domain (math, general, safety); repeatable."))

    def __post_init__(self) -> None:
        self.on_error = OnError(self.on_error)
        self.sources = tuple(str(s) for s in self.sources)
        self.domains = tuple(self.domains)
        check_settings(self, STAGE)
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown:
            raise UserError(f"--domain: expected one of {', '.join(DOMAINS)}, got {', '.join(unknown)}")
        if self.preset and self.mapping:
            raise UserError("give either a preset (--preset) or a mapping (--mapping), not both")


def split_source(arg: str) -> tuple[str | None, str]:
    """`PRESET=SOURCE` names the preset for one source; a bare SOURCE uses the config's preset/mapping."""
    if "=" in arg and not Path(arg).exists():
        name, _, spec = arg.partition("=")
        if name and spec:
            return name, spec
    return None, arg


def preset_data(name: str) -> str:
    """Where a preset given alone as a SOURCE reads from: its `local:` file (shipped with metakl, or on
    $METAKL_ANNOTATIONS), else its Hub dataset id."""
    mapping = load_preset(name)
    if mapping.local:
        path = resources.data_file(mapping.local)
        if path is None:
            raise UserError(f"{name}: the preset's data file {mapping.local} is not installed; give PRESET=FILE")
        return str(path)
    if mapping.hub.get("id"):
        return str(mapping.hub["id"])
    raise UserError(f"{name}: this preset names no data (neither `local:` nor `hub: {{id: ...}}`); write {name}=FILE")


def source_specs(config: IngestConfig) -> list[SourceSpec]:
    """The config's sources with their mappings resolved (a source without one is a UserError naming it)."""
    if not config.sources:
        raise UserError("no SOURCE given; e.g. `metakl ingest data/gsm8k/train.jsonl --preset gsm8k --out DIR`")
    default = load_mapping(config.mapping) if config.mapping else load_preset(config.preset) if config.preset else None
    specs = []
    for arg in config.sources:
        name, spec = split_source(arg)
        if name is None and default is None and not Path(arg).exists() and resources.preset(arg) is not None:
            name, spec = arg, preset_data(arg)  # a preset that names its own data: the demo's, or a Hub id
        m = load_preset(name) if name else default
        if m is None:
            raise UserError(f"{arg}: no mapping; pass --preset NAME or --mapping FILE.yaml, or write PRESET={arg}")
        specs.append(SourceSpec(spec, m, config=config.hub_config, split=config.split))
    return specs


def ingest_rows(source: str | Path, *, preset: str | None = None, mapping: str | Path | None = None,
                on_error: OnError | str = OnError.skip, hub_config: str | None = None,
                split: str | None = None) -> Dataset:
    """The rows of one source (file, folder or Hub id) read as `metakl ingest SOURCE --preset P` (or `--mapping M`)
    reads them, with nothing written: for code that needs the rows, not a stage folder (gdpo's evaluation data).
    Exactly one of `preset` or `mapping`; `on_error` "skip" drops bad records, "fail" raises on the first ones;
    `hub_config`/`split` pick the part of a Hub dataset (or of a local folder in its layout)."""
    if bool(preset) == bool(mapping):
        raise UserError(f"{source}: give exactly one of a preset or a mapping")
    config = IngestConfig(sources=(str(source),), preset=preset, mapping=str(mapping) if mapping else None,
                          on_error=on_error, hub_config=hub_config, split=split)
    return ingest(None, config).dataset


@dataclass
class _SourceStats:
    source: str
    input: str
    mapping: str
    records: int = 0
    kept: int = 0
    duplicates_within: int = 0
    duplicates_across: int = 0
    duplicates_conflicting: int = 0  # duplicates whose reference differs from the kept row's
    errors: int = 0
    other_domain: int = 0
    sampled_out: int = 0
    domains: dict[str, int] = field(default_factory=dict)


def _stratified(counts: list[int], n: int) -> list[int]:
    """Split n over sources in proportion to their sizes (largest remainder), never more than a source has."""
    total = sum(counts)
    if n >= total:
        return list(counts)
    quotas = [n * c / total for c in counts]
    take = [int(q) for q in quotas]
    order = sorted(range(len(counts)), key=lambda i: (-(quotas[i] - take[i]), i))
    for i in order[: n - sum(take)]:
        take[i] += 1
    return take


def source_files(config: IngestConfig) -> list[Path]:
    """The local files and folders the sources name (a path, or PRESET=PATH); Hub ids and preset names alone are not
    local files."""
    return [Path(split_source(str(arg))[1]).expanduser() for arg in getattr(config, "sources", ()) or ()]


@stage(STAGE, IngestConfig, provides=tuple(CORE_FEATURES), reads=source_files)  # reads its sources, not a dataset
def ingest(sources: list[SourceSpec] | None, config: IngestConfig, *, backend: Any = None, progress: bool = False) -> StageResult:
    """Read, map, validate and deduplicate every source (`sources`, or None: the config's).

    Raises UserError with the first problems when `on_error` is "fail" and any record fails.
    `progress` shows a tqdm bar per source on stderr.

    Why long: one streaming pass over every source; each record is mapped, filtered and deduplicated against the
    state (first-seen keys, columns, per-source counts) every step updates.
    """
    from tqdm.auto import tqdm

    opts = config
    if sources is None:
        sources = source_specs(config)
    cols: dict[str, list] = {k: [] for k in ("id", "source", "domain", "question", "reference", "choices", "meta")}
    row_source: list[int] = []
    seen: dict[bytes, int] = {}  # dedup key digest -> index of the kept row
    problems: list[Problem] = []
    n_problems = 0
    stats: list[_SourceStats] = []
    for s_index, src in enumerate(sources):
        mapping = src.mapping
        st = _SourceStats(source=mapping.source, input=src.spec, mapping=mapping.name)
        stats.append(st)
        current_file: Path | None = None
        fmeta: dict[str, str] = {}
        records = tqdm(read_source(src), desc=mapping.source, unit=" rows", disable=not progress, mininterval=0.5)
        for path, where, record in records:
            st.records += 1
            if path is not current_file:
                current_file, fmeta = path, meta_from_file_name(path, mapping)
            if isinstance(record, Problem):
                problem = record
            else:
                try:
                    row = map_record(record, mapping, fmeta)
                    problem = None
                except RowError as exc:
                    problem = Problem(where, exc.field, exc.expected, exc.actual)
            if problem is not None:
                st.errors += 1
                n_problems += 1
                if len(problems) < MAX_REPORTED_PROBLEMS:
                    problems.append(problem)
                continue
            if opts.domains and row["domain"] not in opts.domains:
                st.other_domain += 1
                continue
            norm_q = normalize_text(row["question"])
            norm_c = "\x1e".join(normalize_text(c) for c in row["choices"]) if row["choices"] else ""
            key = hashlib.blake2b(f"{norm_q}\x1f{norm_c}".encode("utf-8"), digest_size=16).digest()
            first = seen.get(key)
            if first is not None:
                if row_source[first] == s_index:
                    st.duplicates_within += 1
                else:
                    st.duplicates_across += 1
                if cols["reference"][first] != row["reference"]:
                    st.duplicates_conflicting += 1  # same prompt, another answer: the first one is kept
                continue
            seen[key] = len(row_source)
            cols["id"].append(id_from_normalized(norm_q, row["source"], norm_c))
            for k in ("source", "domain", "question", "reference", "choices", "meta"):
                cols[k].append(row[k])
            row_source.append(s_index)
            st.kept += 1
            st.domains[row["domain"]] = st.domains.get(row["domain"], 0) + 1
            if opts.limit is not None and st.kept >= opts.limit:
                break
        if st.records == 0:
            raise UserError(f"{src.spec}: no records (empty source)")
    seen.clear()
    if n_problems and opts.on_error is OnError.fail:
        shown = " | ".join(map(str, problems[:3])) + (" | ..." if n_problems > 3 else "")  # one line: the CLI's error line
        raise UserError(
            f"{n_problems} record(s) failed; nothing was written. First problems: {shown}. "
            "Fix the input or the mapping, or pass --on-error skip to drop these records."
        )
    if opts.sample is not None:
        keep = _sample_indices(row_source, len(sources), opts.sample, opts.seed)
        for i, st in enumerate(stats):
            before = st.kept
            st.domains = {}
            st.kept = 0
            for j in keep:
                if row_source[j] == i:
                    st.kept += 1
                    d = cols["domain"][j]
                    st.domains[d] = st.domains.get(d, 0) + 1
            st.sampled_out = before - st.kept
        cols = {k: [v[j] for j in keep] for k, v in cols.items()}
    n = len(cols["id"])
    cols["errors"] = [[]] * n
    ds = _to_dataset(cols)
    report = _report(stats, problems, n_problems, opts, n)
    return StageResult(ds, report)


def _to_dataset(cols: dict[str, list]) -> Dataset:
    """One Arrow table from the column lists (no per-value Python encoding), typed by the schema's Features."""
    import pyarrow as pa
    from datasets import DatasetInfo
    from datasets.table import InMemoryTable

    feats = features()
    table = pa.Table.from_pydict(cols, schema=feats.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=feats))


def _sample_indices(row_source: list[int], n_sources: int, n: int, seed: int) -> list[int]:
    by_source: list[list[int]] = [[] for _ in range(n_sources)]
    for j, s in enumerate(row_source):
        by_source[s].append(j)
    take = _stratified([len(b) for b in by_source], n)
    rng = random.Random(seed)
    keep: list[int] = []
    for rows, k in zip(by_source, take):
        keep.extend(sorted(rng.sample(rows, k)))
    return sorted(keep)


def _report(stats: list[_SourceStats], problems: list[Problem], n_problems: int, opts: IngestConfig, n: int) -> dict:
    domains: dict[str, int] = {}
    for st in stats:
        for d, c in st.domains.items():
            domains[d] = domains.get(d, 0) + c
    return {
        "rows_in": sum(st.records for st in stats),
        "domains": domains,
        "sources": [st.__dict__ for st in stats],
        "totals": {
            "records": sum(st.records for st in stats),
            "kept": n,
            "duplicates_within": sum(st.duplicates_within for st in stats),
            "duplicates_across": sum(st.duplicates_across for st in stats),
            "duplicates_conflicting": sum(st.duplicates_conflicting for st in stats),
            "errors": n_problems,
            "other_domain": sum(st.other_domain for st in stats),
            "sampled_out": sum(st.sampled_out for st in stats),
        },
        "error_samples": [p.as_dict() for p in problems],
    }
