"""Where a stage's per-row work runs: in this process (`local`, the default and the reference) or on Ray (`ray`).

A stage that can be split is written once, as a per-batch function plus an aggregation step:

```python
def score_batch(rows: list[dict], *, config, progress=False, **resources) -> tuple[list[dict], dict]:
    ...                                   # pure: the same rows in, the same rows out, plus additive statistics
out, stats = executor.map_batches(ds, score_batch, out_features, kwargs={"config": cfg})
report = merge_stats(stats)               # the aggregation (sums; group-level steps run here, on the driver)
```

The executor decides where batches run, never what they compute. `local` calls the function once on the whole
dataset (today's behaviour, with its progress bars); `ray` cuts the dataset into blocks and runs the function as Ray
Data `map_batches` tasks, one CPU each, retried on another worker when a worker dies; the rows come back in order.
`executor.embed(texts, ...)` is the same for embeddings (annotate, dedup), with the model loaded once per Ray worker. `executor.backend(llm)` gives split stages their model access: locally the usual backend; under Ray a client of
one gateway actor that owns the request cache (metakl.llm.gateway), so that no request is sent twice.

Stages without a split run on the driver unchanged, under either executor.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from metakl.errors import UserError

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'metakl[ray]'"
STATS_COLUMN = "__metakl_batch_stats"  # carries a batch's statistics through Ray Data (on its first row)
MAX_BATCH_ROWS = 1000  # rows per block: enough to hide the per-task cost, small enough to spread and retry

BatchFn = Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]]


@dataclass
class ExecutorSpec:
    """The `executor:` key of a run config (`executor: ray`, or a mapping), overridden by --executor/--address."""

    kind: str = "local"
    address: str | None = None  # an existing Ray cluster (ray://host:10001, host:6379 or "auto"); None: start one
    num_cpus: int | None = None  # CPUs of the Ray started here (default: the usable cores)
    batch_rows: int | None = None  # rows per Ray block (default: rows / (4 x CPUs), at most MAX_BATCH_ROWS)

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise UserError(f"expected one of {', '.join(EXECUTORS)}, got {self.kind!r}")
        if self.address is not None and self.kind != "ray":
            raise UserError("--address needs --executor ray")
        for name in ("num_cpus", "batch_rows"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"'{name}' must be a positive integer, got {value!r}")


def executor_spec(raw: Any, where: str, *, kind: str | None = None, address: str | None = None) -> ExecutorSpec:
    """The executor a run asks for: the config's `executor:` value with the command line's on top."""
    from metakl.config import from_dict

    if raw is None:
        data: dict[str, Any] = {}
    elif isinstance(raw, str):
        data = {"kind": raw}
    elif isinstance(raw, dict):
        data = dict(raw)
    else:
        raise UserError(f"{where}: 'executor' must be local, ray, or a mapping (kind, address, num_cpus, batch_rows)")
    if kind is not None:
        data["kind"] = kind
    if address is not None:
        data["address"] = address
        data.setdefault("kind", "ray")
    return from_dict(ExecutorSpec, data, f"{where}: executor")


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch statistics added up: numbers summed, mappings merged key by key, lists joined without repeats."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key not in out:
                out[key] = merge_stats([value]) if isinstance(value, dict) else (
                    sorted(set(value)) if isinstance(value, list) else value)
            elif isinstance(value, dict):
                out[key] = merge_stats([out[key], value])
            elif isinstance(value, list):
                out[key] = sorted(set(out[key]) | set(value))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = out[key] + value
            elif out[key] != value:
                raise ValueError(f"batch statistic {key!r} differs between batches ({out[key]!r}, {value!r}) "
                                 "and cannot be added up")
    return out


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------------------------
# local


class LocalExecutor:
    """Everything in this process; one batch per stage, so a split stage behaves exactly as before the split."""

    kind = "local"

    def map_batches(self, ds: Any, fn: BatchFn, features: Any, *, kwargs: dict[str, Any] | None = None,
                    local_kwargs: dict[str, Any] | None = None, progress: bool = False, desc: str = "",
                    ) -> tuple[Any, list[dict[str, Any]]]:
        """`fn` over `ds` → (the dataset of its rows with `features`, [batch statistics]). `local_kwargs`: resources
        that cannot travel to another process (a process pool); only a batch run here receives them."""
        from datasets import Dataset

        rows, stats = fn(ds.to_list(), progress=progress, **(kwargs or {}), **(local_kwargs or {}))
        return Dataset.from_list(rows, features=features), [stats]

    def embed(self, texts: list[str], *, model: str, max_seq_length: int | None = None, batch_size: int = 64,
              dtype: str = "auto", cache_dir: str | None = None, embedder: Any = None, progress: bool = False,
              ) -> tuple[Any, dict[str, int]]:
        """(unit-length float32 vectors of `texts` [n, dim], embedding counts: encoded, cache hits, ...) through
        metakl.embed with these settings; `embedder` (an object the caller built) replaces loading `model`."""
        import numpy as np

        if embedder is None:
            from metakl.embed import load_embedder

            embedder = load_embedder(model, max_seq_length, batch_size, dtype, cache_dir)
        if not texts:
            return np.zeros((0, 1), dtype=np.float32), {}
        stats = getattr(embedder, "stats", None)
        before = stats.as_dict() if hasattr(stats, "as_dict") else None
        try:
            vectors = np.asarray(embedder(texts, progress=progress), dtype=np.float32)
        except TypeError:  # a plain callable without a progress argument (tests)
            vectors = np.asarray(embedder(texts), dtype=np.float32)
        if before is None:
            return vectors, {}
        after = stats.as_dict()
        return vectors, {k: after[k] - before.get(k, 0) for k in after}

    def backend(self, llm: Any) -> Any:
        return llm.build()

    def close(self) -> None:
        pass

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


LOCAL = LocalExecutor()


# ----------------------------------------------------------------------------------------------------------------
# ray


def require_ray() -> Any:
    """The `ray` module with Ray Data, or one UserError line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed here; install it with: {RAY_INSTALL}") from None
    return ray


def _run_batch(table: Any, *, fn: BatchFn, schema: Any, kwargs: dict[str, Any]) -> Any:
    """One Ray Data batch: Arrow rows → `fn` → Arrow rows with the batch's statistics on the first row."""
    import pyarrow as pa

    rows, stats = fn(table.to_pylist(), progress=False, **kwargs)
    if not rows:
        # Statistics ride on a row; split stages keep every row, so an empty batch out of a non-empty one is a bug.
        raise ValueError(f"{getattr(fn, '__name__', fn)} returned no rows for a batch of {table.num_rows}")
    out = pa.Table.from_pylist(rows, schema=schema)
    column = pa.array([json.dumps(stats)] + [None] * (len(rows) - 1), type=pa.string())
    return out.append_column(STATS_COLUMN, column)


def _embed_batch(table: Any, *, model: str, max_seq_length: int | None, batch_size: int = 64,
                 dtype: str = "auto", cache_dir: str | None = None) -> Any:
    """One Ray Data batch of texts → their vectors, and the batch's embedding counts on its first row. Plain tasks,
    not an actor pool: load_embedder keeps the model in the worker process, which Ray reuses, so it loads once per
    worker as in an actor, without actor restarts."""
    import pyarrow as pa

    vectors, counts = LOCAL.embed(table.column("text").to_pylist(), model=model, max_seq_length=max_seq_length,
                                  batch_size=batch_size, dtype=dtype, cache_dir=cache_dir)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    stats = pa.array([json.dumps(counts)] + [None] * (len(vectors) - 1), type=pa.string())
    return pa.table({"i": table.column("i"), "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
                     STATS_COLUMN: stats})


class RayExecutor:
    """Batches as Ray Data tasks on a Ray cluster: an existing one (`address`) or one started here and torn down.

    Ray's own logs stay out of the terminal (errors come back as exceptions); its temporary folder is under /tmp
    (a Unix socket path there must stay short, so not under the run folder), removed on close.
    """

    kind = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, batch_rows: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        ray = require_ray()
        import metakl

        self.batch_rows = batch_rows
        self._temp: str | None = None
        self._started = not ray.is_initialized()
        # Workers import the metakl this driver runs (a source checkout included), not another copy on their path,
        # and use the same caches.
        package_root = str(Path(metakl.__file__).resolve().parents[1])
        worker_env = {"PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p),
                      "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                      **{k: os.environ[k] for k in ("METAKL_CACHE_DIR", "METAKL_SHARED_DATA") if k in os.environ}}
        quiet = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
        if self._started:
            if address is None:
                self._temp = tempfile.mkdtemp(prefix="metakl-ray-", dir="/tmp")
                # A Ray started here: its processes inherit this environment (a runtime_env would make every worker
                # start wait on Ray's runtime-env agent, seconds on a busy machine).
                saved = {k: os.environ.get(k) for k in worker_env}
                os.environ.update(worker_env)
                try:
                    ray.init(num_cpus=num_cpus or _usable_cores(), _temp_dir=self._temp, **quiet)
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
            else:
                try:
                    ray.init(address=address, runtime_env={"env_vars": worker_env}, **quiet)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise UserError(f"--address {address}: cannot connect to a Ray cluster there "
                                    f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # our own bar counts rows; Ray's would interleave with the log
        ctx.print_on_execution_start = False
        ctx.execution_options.preserve_order = True  # rows come back in the input's order, as locally
        self.cpus = int(ray.cluster_resources().get("CPU", 1))
        if log is not None:
            where = f"the Ray cluster at {address}" if address else "a local Ray started for this run"
            log(f"executor: ray, {where}, {self.cpus} CPUs")

    def _rows_per_block(self, n: int) -> int:
        if self.batch_rows:
            return self.batch_rows
        # About 4 blocks per CPU: a slow block or a retried one does not leave the others idle for long.
        return max(1, min(MAX_BATCH_ROWS, math.ceil(n / (4 * self.cpus))))

    def map_batches(self, ds: Any, fn: BatchFn, features: Any, *, kwargs: dict[str, Any] | None = None,
                    local_kwargs: dict[str, Any] | None = None, progress: bool = False, desc: str = "",
                    ) -> tuple[Any, list[dict[str, Any]]]:
        import pyarrow as pa
        import ray

        if not len(ds):
            return LOCAL.map_batches(ds, fn, features, kwargs=kwargs, local_kwargs=local_kwargs)
        # The Arrow table itself (zero-copy); a dataset that is a selection of another is made contiguous first.
        table = (ds if ds._indices is None else ds.flatten_indices()).data.table
        step = self._rows_per_block(len(ds))
        blocks = [table.slice(i, step) for i in range(0, table.num_rows, step)]
        schema = features.arrow_schema
        mapped = ray.data.from_arrow(blocks).map_batches(
            _run_batch, batch_format="pyarrow", batch_size=None, zero_copy_batch=True, num_cpus=1,
            # Ray Data's task defaults: a block whose worker died runs again elsewhere (max_retries=-1, system
            # errors only); an exception raised by `fn` itself fails the stage at once.
            fn_kwargs={"fn": fn, "schema": schema, "kwargs": kwargs or {}})
        tables, stats = [], []
        bar = _bar(len(ds), desc, progress)
        try:
            for batch in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
                stats.extend(json.loads(s) for s in batch.column(STATS_COLUMN).to_pylist() if s is not None)
                tables.append(batch.drop_columns([STATS_COLUMN]))
                bar.update(batch.num_rows)
        finally:
            bar.close()
        out = pa.concat_tables(tables).cast(schema)
        if out.num_rows != len(ds):
            raise RuntimeError(f"{desc or 'map_batches'}: {out.num_rows} rows came back for {len(ds)}")
        return _dataset(out, features), stats

    def embed(self, texts: list[str], *, model: str, max_seq_length: int | None = None, batch_size: int = 64,
              dtype: str = "auto", cache_dir: str | None = None, embedder: Any = None, progress: bool = False,
              ) -> tuple[Any, dict[str, int]]:
        settings = {"model": model, "max_seq_length": max_seq_length, "batch_size": batch_size, "dtype": dtype,
                    "cache_dir": cache_dir}
        if embedder is not None or not texts:  # an object the caller built (tests) is used where it was built
            return LOCAL.embed(texts, **settings, embedder=embedder, progress=progress)
        import numpy as np
        import pyarrow as pa
        import ray

        from metakl.embed.embedder import _ENCODE_CHUNK, encode_order

        # The distinct texts in the embedder's own order, in blocks of whole encode chunks: each worker encodes the
        # very batches the local executor would, so the vectors (and every decision on them) match it bit for bit.
        distinct = encode_order(texts)
        step = math.ceil(self._rows_per_block(len(distinct)) / _ENCODE_CHUNK) * _ENCODE_CHUNK
        table = pa.table({"i": pa.array(range(len(distinct)), pa.int64()), "text": pa.array(distinct, pa.string())})
        blocks = [table.slice(i, step) for i in range(0, len(distinct), step)]
        mapped = ray.data.from_arrow(blocks).map_batches(
            _embed_batch, batch_format="pyarrow", batch_size=None, num_cpus=1, fn_kwargs=settings)
        parts: list[Any] = []
        order: list[Any] = []
        counts: list[dict[str, int]] = []
        bar = _bar(len(texts), "embed", progress)
        try:
            for batch in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
                order.append(batch.column("i").to_numpy())
                parts.append(np.stack(batch.column("vector").to_numpy(zero_copy_only=False)))
                counts.extend(json.loads(c) for c in batch.column(STATS_COLUMN).to_pylist() if c is not None)
                bar.update(batch.num_rows)
        finally:
            bar.close()
        vectors = np.concatenate(parts).astype(np.float32)
        out = np.empty_like(vectors)
        out[np.concatenate(order)] = vectors  # by index: the same order whatever order the blocks finished in
        row = {t: i for i, t in enumerate(distinct)}
        stats = merge_stats(counts)
        if "texts" in stats:  # the texts asked for, repeats included, as the local executor counts them
            stats["texts"] = len(texts)
        return out[[row[t] for t in texts]], stats

    def backend(self, llm: Any) -> Any:
        from metakl.llm.gateway import start_gateway

        return start_gateway(llm)

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()  # stops the Ray started here; with --address, only this driver's connection
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _dataset(table: Any, features: Any) -> Any:
    from datasets import Dataset, DatasetInfo
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features))


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from metakl.progress import bar

    return bar(total, f"{desc} (ray)" if desc else "ray", "row", enabled=enabled)


def make_executor(spec: ExecutorSpec, log: Callable[[str], None] | None = None) -> LocalExecutor | RayExecutor:
    if spec.kind == "local":
        return LocalExecutor()
    return RayExecutor(spec.address, num_cpus=spec.num_cpus, batch_rows=spec.batch_rows, log=log)
