"""`python -m metakl.demo` (what `make demo` runs): the whole MetaKL pipeline on the team's demo prompts.

The demo config (annotations/demo/pipeline.yaml, shipped with metakl) serves the embedded SmolLM2-135M-Instruct with
vLLM as teacher, annotator and base model, runs every stage from ingest to publish into a run folder, and prints
where the release is, a summary of its card and the base model's knowledge-gap table. Run again, it skips the
stages that finished with the same settings.

`--backends` shows the model layer instead: the embedded model answers a few prompts through each backend.

Examples:
    python -m metakl.demo                                  # serve SmolLM2, run every stage into runs/demo
    python -m metakl.demo --base-url http://127.0.0.1:8011/v1 --out /tmp/demo   # a server you already run
    python -m metakl.demo --dtype float32                  # dtype auto: bfloat16 only where the CPU has it natively
    python -m metakl.demo --backends transformers,vllm,openai --max-tokens 32
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from metakl.errors import UserError, run_cli
from metakl.hardware import announce_dtype, auto_dtype, check_dtype, cuda_available
from metakl.llm import BACKENDS, ChatRequest
from metakl.llm.options import DEFAULT_MODEL, build_backend, format_stats

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "explanation": {"type": "string", "maxLength": 80}},
    "required": ["answer", "explanation"],
    "additionalProperties": False,
}


def demo_requests(max_tokens: int) -> list[ChatRequest]:
    def user(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    return [
        ChatRequest(messages=user("What is 12 + 30? Answer briefly."), max_tokens=max_tokens, tag="greedy"),
        ChatRequest(messages=user("Give one tip for learning to cook."), n=2, temperature=0.8, seed=1,
                    max_tokens=max_tokens, tag="two samples"),
        ChatRequest(messages=user("Why is the sky blue? One sentence."), max_tokens=max_tokens, tag="greedy"),
        ChatRequest(messages=user("What is 7 times 6? Reply as JSON."), json_schema=ANSWER_SCHEMA,
                    max_tokens=max_tokens + 16, tag="JSON schema"),
    ]


def run_backend(kind: str, model: str, base_url: str | None, max_tokens: int, use_cache: bool,
                dtype: str = "auto") -> None:
    typer.echo(f"\n== {kind} ==")
    # In-process backends load the model in `dtype`; torch threads follow metakl.hardware.torch_threads() (1 while
    # the demo's own vLLM server runs on CPU, so the two do not fight for the cores).
    options = {"dtype": dtype} if kind != "openai" else {}
    with build_backend(kind, model, base_url, no_cache=not use_cache, **options) as llm:
        for result in llm.generate_all(demo_requests(max_tokens), progress=False):
            question = result.request.messages[-1]["content"]
            typer.echo(f"Q ({result.request.tag}): {question}")
            if not result.ok:
                typer.echo(f"  error: {result.error}")
                continue
            for text in result.completion.texts:
                typer.echo(textwrap.indent(textwrap.shorten(" ".join(text.split()), 160) or "(empty)", "  A: "))
        typer.echo(f"{kind}: {format_stats(llm.stats)}")


DEMO_CONFIG = "demo/pipeline.yaml"


def demo_config(base_url: str | None = None, model: str = DEFAULT_MODEL, dtype: str = "auto") -> tuple[Path, dict]:
    """The shipped demo config (its path and its contents), pointed at `base_url` instead of its own server."""
    from metakl import resources
    from metakl.io import read_yaml_mapping

    path = resources.data_file(DEMO_CONFIG)
    if path is None:
        raise UserError(f"the demo config {DEMO_CONFIG} is not installed with metakl; reinstall it")
    raw = dict(read_yaml_mapping(path, "pipeline config"))
    if base_url:
        raw.pop("serve", None)
        raw["llm"] = {**(raw.get("llm") or {}), "base_url": base_url, "model": model}
    elif dtype != "auto":
        raw["serve"] = {**raw["serve"], "dtype": dtype}
    return path, raw


def release_summary(run_dir: Path) -> list[str]:
    """Where the release is, its card in brief and the knowledge-gap table, from the run folder's stage reports."""
    from metakl.stages.filter import gap_summary

    def report(folder: str, name: str) -> dict[str, Any]:
        path = next(iter(sorted(run_dir.glob(f"*-{folder}"))), None)
        return json.loads((path / name).read_text()) if path is not None and (path / name).is_file() else {}

    publish_dir = next(iter(sorted(run_dir.glob("*-publish"))))
    pub = report("publish", "publish_report.json")
    stats = pub.get("statistics", {})
    release = publish_dir / "release"
    lines = [f"release: {release}  (Hub layout; dataset card: {release / 'README.md'})",
             f"  load it: datasets.load_dataset({str(release)!r}, 'all', split='train')",
             "  configs: " + ", ".join(f"{n} {sum(s.values()):,}" for n, s in pub.get("configs", {}).items())]
    if stats:
        rewards = ", ".join(f"{d} {v:.2f}" for d, v in (stats.get("mean_reward") or {}).items())
        lines.append(f"  {stats.get('rows', 0):,} prompts ({', '.join(f'{d} {n}' for d, n in stats.get('domains', {}).items())}); "
                     f"{stats.get('distinct_units', 0):,} knowledge units" + (f"; mean teacher reward {rewards}" if rewards else ""))
    dedup = report("dedup", "dedup_report.json")
    if dedup:
        lines.append(f"  dedup: {dedup.get('removed', 0)} near-duplicate(s) marked and left out of the release")
    filt = report("filter", "filter_report.json")
    gap = report("filter", "gap_report.json")
    if filt and gap:
        lines.append("")
        lines += gap_summary(filt, gap)
    return lines


def run_pipeline_demo(out: Path, base_url: str | None, model: str, dtype: str, progress: bool) -> Path:
    from metakl.pipeline import load_plan, run_plan
    from metakl.progress import quiet_library_progress

    path, raw = demo_config(base_url, model, dtype)
    plan = load_plan(path, raw, run_dir=out)
    quiet_library_progress()
    run_plan(plan, echo=lambda line: typer.echo(line, err=True), progress=progress)
    typer.echo("")
    for line in release_summary(plan.run_dir):
        typer.echo(line)
    return plan.run_dir


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder of the pipeline demo.")] = Path("runs/demo"),
    base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint to use instead of a vLLM server "
                                                        "the demo starts (pipeline; and the openai backend).")] = None,
    model: Annotated[str, typer.Option(help="Embedded model name or HF folder (with --base-url: the served name).")] = DEFAULT_MODEL,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16 for the demo's own server and the "
                                            "in-process backends (auto: bfloat16 only with native support).")] = "auto",
    backends: Annotated[Optional[str], typer.Option(help=f"Show the model layer instead of the pipeline: "
                                                         f"comma-separated, from {', '.join(BACKENDS)}.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="--backends: tokens per answer.")] = 32,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="--backends: use the request cache (off: honest tok/s).")] = False,
) -> None:
    """The whole MetaKL pipeline on the team's demo prompts, with the embedded SmolLM2 as every model.

    Serves SmolLM2-135M-Instruct with vLLM (or uses --base-url), runs ingest → generate → reward → annotate → merge →
    score → dedup → filter → publish into --out, and prints the release's place, its card in brief and the base
    model's knowledge gaps. With --backends, the embedded model answers a few prompts through each backend instead.
    """
    check_dtype(dtype)
    if backends is None:
        from metakl.progress import show_progress

        run_pipeline_demo(out, base_url, model, dtype, show_progress())
        return
    kinds = [k.strip() for k in backends.split(",") if k.strip()]
    for kind in kinds:
        if kind not in BACKENDS:
            raise UserError(f"--backends: unknown backend '{kind}'; expected some of: {', '.join(BACKENDS)}")
    if kinds != ["openai"] or not base_url:  # a model is loaded here: say which dtype and why
        if dtype == "auto":  # said once, here on stdout; the backends and the server then say nothing more
            announce_dtype(auto_dtype("cuda" if cuda_available() else "cpu"), file=sys.stdout)
        else:
            typer.echo(f"dtype: {dtype}")
    server = None
    if "openai" in kinds and not base_url:
        from metakl.llm.serve import VLLMServer

        # Started first, so that it boots while the in-process backends run.
        typer.echo("starting a local vLLM server for the openai backend (in the background) ...")
        server = VLLMServer(model, dtype=dtype).start(wait=False)
    try:
        for kind in sorted(kinds, key=lambda k: k == "vllm"):  # the offline engine last, after the server stops
            if kind == "openai" and server is not None:
                server.wait_ready()
                run_backend(kind, server.served_name, server.url, max_tokens, cache)
                server.stop()
            else:
                run_backend(kind, model, base_url if kind == "openai" else None, max_tokens, cache, dtype)
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(demo)
    run_cli(app)


if __name__ == "__main__":  # the vllm backend spawns processes: keep this guard
    main()
