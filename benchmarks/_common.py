"""What the benchmark scripts share: where ../shared/data is, and a model server for the LLM annotators.

Each script puts the repository root on sys.path and imports this as `benchmarks._common`."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """$METAKL_SHARED_DATA, else ../shared/data beside the checkout, else beside the folder holding it (a git worktree
    kept in a folder of worktrees): the first that exists, or the first candidate (scripts then skip or say so)."""
    if os.environ.get("METAKL_SHARED_DATA"):
        return Path(os.environ["METAKL_SHARED_DATA"])
    candidates = [ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"]
    return next((p for p in candidates if p.exists()), candidates[0])


SHARED_DATA = shared_data_dir()


@contextlib.contextmanager
def llm_server(args, needed: bool):
    """The server at args.base_url, or (none given and `needed`) a local vLLM server serving args.model for this run
    and stopped after it, as `metakl demo` does: the scripts run on a fresh machine after `make install`. Sets
    args.base_url and args.model to what serves."""
    from metakl.llm.serve import server_for

    with server_for(args.model, args.base_url, needed=needed, log=lambda line: print(line, file=sys.stderr)) as (
            args.base_url, args.model):
        yield
