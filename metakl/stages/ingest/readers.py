"""Ingest sources: a SOURCE argument (file, folder or Hub id) -> (file, location, record) for each of its records.

Local files are read by metakl.readers (the reader stack import-responses uses too); Hub datasets, and local folders
in Hub layout, through `datasets.load_dataset`. A record that cannot be read comes as a Problem in its place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metakl.errors import UserError
from metakl.readers import SUFFIXES, check_columns, data_files, read_file
from metakl.stages.ingest.mapping import Mapping


def _columns(mapping: Mapping) -> tuple[list[str], str]:
    """The columns every record must have, and who needs them (for the message when one is missing)."""
    return mapping.required_columns(), f"mapping '{mapping.name}'"


def _hub_layout(folder: Path) -> bool:
    return (folder / "README.md").is_file() or (folder / "data").is_dir() or any(folder.glob("*.parquet"))


def _read_hub(spec: str, mapping: Mapping, config: str | None, split: str | None) -> Iterator[tuple[str, Any]]:
    """A Hub dataset id (or a local folder in Hub layout) through datasets.load_dataset, split by split."""
    import datasets

    hub = mapping.hub
    config = config if config is not None else hub.get("config")
    split = split if split is not None else hub.get("split")
    split = None if split == "all" else split
    kwargs = dict(hub.get("options") or {})
    if hub.get("data_dir"):
        kwargs.setdefault("data_dir", hub["data_dir"])
    what = f"{spec}" + (f" (config {config})" if config else "")
    try:
        loaded = datasets.load_dataset(spec, config, split=split, **kwargs)
    except Exception as exc:  # the Hub client raises many kinds (offline, not found, bad split/config)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what}: cannot load with datasets.load_dataset (split {split or 'all'}): {msg}") from None
    splits = {split: loaded} if split else dict(loaded)
    for name, ds in splits.items():
        check_columns(f"{what} [{name}]", ds.column_names, *_columns(mapping))
        i = 0
        for batch in ds.iter(batch_size=4096):
            keys = list(batch)
            for values in zip(*batch.values()):
                yield f"{spec} [{name}] row {i}", dict(zip(keys, values))
                i += 1


_HUB_ID = re.compile(r"^(hf:|hub:)?[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class SourceSpec:
    """One SOURCE argument: a local file/folder or a Hub id, with its mapping and Hub config/split overrides.

    `split` None takes the mapping's Hub split (every split when it has none); "all" reads every split.
    """

    spec: str
    mapping: Mapping
    config: str | None = None
    split: str | None = None


def read_source(src: SourceSpec) -> Iterator[tuple[Path | None, str, Any]]:
    """(file, location, record-or-Problem) for every record of a source, file by file."""
    spec = src.spec
    path = Path(spec)
    if not spec.startswith(("hf:", "hub:")) and path.exists():
        if path.is_file():
            for where, rec in read_file(path, *_columns(src.mapping)):
                yield path, where, rec
            return
        if _hub_layout(path):
            for where, rec in _read_hub(str(path), src.mapping, src.config, src.split):
                yield None, where, rec
            return
        for f in data_files(path):
            for where, rec in read_file(f, *_columns(src.mapping)):
                yield f, where, rec
        return
    if _HUB_ID.match(spec) and path.suffix.lower() not in SUFFIXES:
        hub_id = spec.split(":", 1)[1] if spec.startswith(("hf:", "hub:")) else spec
        for where, rec in _read_hub(hub_id, src.mapping, src.config, src.split):
            yield None, where, rec
        return
    raise UserError(f"{spec}: no such file or folder, and not a Hub dataset id (owner/name)")
