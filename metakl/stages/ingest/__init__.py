"""Ingest: prompts from Hub datasets and local files into the MetaKL row schema (metakl.schema).

A *mapping* (a preset from annotations/presets/*.yaml, or the user's own YAML file) says which fields hold the
question (with an optional passage), the choices, the gold answer and the metadata to keep, and how to turn the
answer into a `reference` (GSM8K `#### n`, MATH's last `\\boxed{}`, choice index -> letter, yes/no, safety
behaviour). Each source is read record by record, mapped, validated and deduplicated; the kept rows are built as
columns and turned into one Dataset at the end, which keeps the per-row Python work small.

Problems are reported with their place: `file line N` (1-based) for text files, `file row N` (0-based, as `ds[N]`)
for parquet files and JSON arrays, `hub-id [split] row N` for Hub datasets.

The package, one concern a module:
- `mapping`: which fields hold what (presets, the user's YAML) -> `Mapping`
- `readers`: SOURCE arguments (files, folders, Hub ids) -> records, each with its location
- `extract`: one record -> the row's core columns (question, choices, reference, meta)
- `stage`: `IngestConfig` and the `ingest` stage: map, validate, deduplicate, sample, report

Code that needs a source's rows without a stage folder (gdpo's evaluation data) calls `ingest_rows`.
"""

from metakl.readers import Problem
from metakl.stages.ingest.extract import map_record
from metakl.stages.ingest.mapping import Mapping, list_presets, load_mapping, load_preset, parse_mapping
from metakl.stages.ingest.readers import SourceSpec, read_source
from metakl.stages.ingest.stage import IngestConfig, OnError, ingest, ingest_rows, source_specs, split_source

__all__ = [
    "IngestConfig",
    "Mapping",
    "OnError",
    "Problem",
    "SourceSpec",
    "ingest",
    "ingest_rows",
    "list_presets",
    "load_mapping",
    "load_preset",
    "map_record",
    "parse_mapping",
    "read_source",
    "source_specs",
    "split_source",
]
