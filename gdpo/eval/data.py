"""Local evaluation data for lm-eval tasks: any file a metakl ingest preset (or mapping YAML) reads.

The Hub is unreachable here, so every shipped task YAML sets `custom_dataset: !function gdpo.eval.data.load` and
names a preset and a path relative to the data root (../shared/data by default). lm-eval calls
`load(**metadata, **dataset_kwargs)` and gets a DatasetDict with one `test` split whose rows are MetaKL rows
(`id`, `question`, `reference`, `choices`, `meta`) plus `gold` (the 0-based index of the reference choice, -1 when
there are no choices) and `answer_text` (the reference choice's text, or the reference).

Rows are read with metakl's own ingest (one reader for training and evaluation data), then optionally filtered
(`keep: {reference: comply}`), restricted to one side of a hash split (`holdout`), and sampled (`n`, `seed`).

Hash splits: `part_of(row_id, salt, fraction)` puts a row on the "eval" side when
sha256(salt + ":" + id) / 2^256 < fraction. The forgetting experiment trains only on the "train" side and
evaluates on the "eval" side, so no evaluation item can reach training whatever order the files are read in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from metakl.errors import UserError

DATA_ENV = "METAKL_SHARED_DATA"


def default_data_root() -> Path:
    """$METAKL_SHARED_DATA, else ../shared/data from the current folder, else next to the project checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def part_of(row_id: str, salt: str, fraction: float) -> str:
    """"eval" or "train": a deterministic split of row ids, independent of file order."""
    digest = hashlib.sha256(f"{salt}:{row_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "eval" if u < fraction else "train"


def resolve_path(path: str, data_root: str | Path | None, task: str) -> Path:
    """`path` (absolute, or relative to the data root) that must exist; else a UserError naming the task and path."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(data_root or default_data_root()) / p
    if not p.exists():
        raise UserError(
            f"task {task}: data file {p} not found (set --data-dir or ${DATA_ENV} to the folder holding "
            f"{path}; see the task's YAML for the layout it reads)"
        )
    return p


@functools.lru_cache(maxsize=None)
def hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers here: not when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, else a TCP
    connection to its host within 3 s (datasets would retry for ~30 s per dataset before failing)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def data_source(task: str, path: str | None, hub: dict[str, Any] | None, data_root: str | Path | None,
                preset: str | None = None) -> Path | dict:
    """Where a task's items come from: the local file (or Hub-layout folder) when it exists, else its Hub dataset
    when the Hub answers; else a UserError saying what to provide (the preset's description of the local layout)."""
    if path:
        p = Path(path).expanduser()
        p = p if p.is_absolute() else Path(data_root or default_data_root()) / p
        if p.exists():
            return p
    if hub and hub_reachable():
        return hub
    if not hub:
        return resolve_path(path or "", data_root, task)  # the error naming the missing file
    gated = " (gated: accept its terms on the Hub and set HF_TOKEN)" if hub.get("gated") else ""
    layout = ""
    if preset:
        from metakl.stages.ingest import load_preset

        layout = f" ({load_preset(preset).local or load_preset(preset).description})"
    raise UserError(f"task {task}: data file {p if path else '(none given)'} not found and the Hub dataset {hub['id']}"
                    f"{gated} cannot be reached; put the file there{layout}, set --data-dir or ${DATA_ENV} to the "
                    f"folder holding it, or run where the Hub answers")


def read_rows(
    *,
    task: str,
    path: str | None = None,
    preset: str | None = None,
    mapping: str | None = None,
    data_root: str | Path | None = None,
    keep: dict[str, Any] | None = None,
    holdout: dict[str, Any] | None = None,
    n: int | None = None,
    seed: int = 0,
    hub: dict[str, Any] | None = None,
):
    """The rows of one task as a datasets.Dataset (see the module docstring). `preset`: an ingest preset name (the
    one mapping of a source, shared with `metakl ingest`); `mapping`: a mapping YAML path (absolute or relative to the
    data root) for a file no preset reads. `hub: {id, config, split, preset}`: the benchmark's canonical Hub dataset,
    read (through `preset`, or the hub's own preset when the Hub release has another layout) when the local file is
    absent; its config/split also pick the part of a local Hub-layout folder."""
    from metakl.stages.ingest import ingest_rows

    if bool(preset) == bool(mapping):
        raise UserError(f"task {task}: give exactly one of `preset` or `mapping` in dataset_kwargs")
    source = data_source(task, path, hub, data_root, preset)
    mapping_file = resolve_path(mapping, data_root, task) if mapping else None
    on_hub = isinstance(source, dict)
    file = f"hf:{source['id']}" if on_hub else source
    try:
        ds = ingest_rows(file, preset=(hub.get("preset") or preset) if on_hub else preset, mapping=mapping_file,
                         on_error="skip", hub_config=(hub or {}).get("config"), split=(hub or {}).get("split"))
    except UserError as exc:
        raise UserError(f"task {task}: {exc}") from None
    if len(ds) == 0:
        raise UserError(f"task {task}: no usable rows in {file} (preset {preset or mapping})")
    for key, value in (keep or {}).items():
        wanted = set(value) if isinstance(value, list) else {value}
        ds = ds.filter(lambda r: _field(r, key) in wanted)
    if holdout:
        side = holdout.get("part", "eval")
        salt, fraction = str(holdout.get("salt", "gdpo-eval")), float(holdout["fraction"])
        if side not in ("eval", "train"):
            raise UserError(f"task {task}: holdout.part must be 'eval' or 'train', got {side!r}")
        ds = ds.filter(lambda r: part_of(r["id"], salt, fraction) == side)
    if n is not None and n < len(ds):
        ds = ds.shuffle(seed=seed).select(range(int(n)))
    if len(ds) == 0:
        raise UserError(f"task {task}: no rows left in {file} after keep/holdout filters")
    return ds.map(_derived, remove_columns=[c for c in ("errors",) if c in ds.column_names])


def _field(row: dict, key: str) -> Any:
    if key.startswith("meta."):
        return json.loads(row["meta"] or "{}").get(key[5:])
    return row[key]


def _derived(row: dict) -> dict:
    choices = list(row.get("choices") or [])
    ref = row["reference"] or ""
    gold = -1
    if choices and len(ref) == 1 and ref.isalpha():
        gold = ord(ref.upper()) - ord("A")
    elif not choices and ref.strip().lower() in ("yes", "no"):
        # yes/no items (CSQA2) become two options so that they score like any multiple-choice item
        choices = ["yes", "no"]
        gold = 0 if ref.strip().lower() == "yes" else 1
    return {
        "choices": choices,
        "gold": gold,
        "answer_text": choices[gold] if 0 <= gold < len(choices) else ref,
        "meta": row["meta"] or "{}",
    }


def load(**kwargs: Any):
    """lm-eval `custom_dataset` entry point: `load(**metadata, **dataset_kwargs)` → DatasetDict({"test": rows}).

    dataset_kwargs (task YAML / suite): path, preset | mapping, keep, holdout, n, seed; metadata (lm-eval
    `--metadata` / TaskManager): data_root, and the task name lm-eval passes along in `task`.
    """
    from datasets import DatasetDict

    task = kwargs.get("gdpo_task") or kwargs.get("task") or "?"
    args = {k: kwargs.get(k) for k in ("path", "preset", "mapping", "keep", "holdout", "n", "hub")}
    if not args["path"] and not args["hub"]:
        raise UserError(f"task {task}: dataset_kwargs.path (or hub) is missing")
    ds = read_rows(task=task, data_root=kwargs.get("data_root"), seed=int(kwargs.get("seed") or 0), **args)
    return DatasetDict({"test": ds})
