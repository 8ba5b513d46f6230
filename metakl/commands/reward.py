"""`metakl reward`: rewards in [0, 1] and group advantages (metakl.stages.reward)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import (
    DEFAULT_MODEL,
    BackendOpt,
    BaseUrlOpt,
    CacheDirOpt,
    ConcurrencyOpt,
    ModelOpt,
    NoCacheOpt,
    build_backend,
    echo_stats,
)
from metakl.errors import UserError

REPORT_NAME = "reward_report.json"


def load_reward_config(path: Path | None, overrides: dict):
    """RewardConfig from a YAML file (top level, or under a `reward:` key), then the command-line overrides."""
    from metakl.io import read_yaml_mapping
    from metakl.stages.reward import RewardConfig

    data: dict = {}
    if path is not None:
        data = read_yaml_mapping(path, "reward settings")
        if isinstance(data.get("reward"), dict):
            data = data["reward"]
    data.update({k: v for k, v in overrides.items() if v is not None})
    return RewardConfig.from_dict(data, where=str(path) if path else "reward options")


def reward(
    input: Path = typer.Argument(..., help="Stage folder with a `responses` column (generate / import-responses)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (data.parquet + reward_report.json)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with reward settings: correctness_weight, format_weight, length_weight, length_budget, length_span, format_requires_reasoning, math_timeout, workers, zero_variance_eps."),
    correctness_weight: Optional[float] = typer.Option(None, min=0.0, help="Weight of correctness / safe behaviour (default 0.8)."),
    format_weight: Optional[float] = typer.Option(None, min=0.0, help="Weight of format (default 0.1)."),
    length_weight: Optional[float] = typer.Option(None, min=0.0, help="Weight of length (default 0.1)."),
    length_budget: Optional[int] = typer.Option(None, min=0, help="Characters before the length penalty starts (default 6000)."),
    math_timeout: Optional[float] = typer.Option(None, min=0.1, help="Seconds per math comparison (default 5)."),
    workers: Optional[int] = typer.Option(None, min=1, help="Math worker processes (default: available cores)."),
    judge: str = typer.Option("rules", help="Safety judge: rules (refusal phrases) or llm (structured verdict; rules as fallback)."),
    backend: BackendOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    base_url: BaseUrlOpt = None,
    concurrency: ConcurrencyOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Score every response: reward = weighted correctness (or safe behaviour), format and length, in [0, 1];
    add group advantages (r - mean) / std per prompt and flag groups whose rewards are all equal.

    Examples:

      metakl reward runs/x/generate --out runs/x/reward

      metakl reward runs/x/generate --out runs/x/reward --config reward.yaml --judge llm --base-url http://127.0.0.1:8000/v1
    """
    from metakl.io import load_stage, save_stage
    from metakl.stages.reward import reward as run_reward

    if judge not in ("rules", "llm"):
        raise UserError(f"--judge: expected rules or llm, got {judge!r}")
    cfg = load_reward_config(config, {
        "correctness_weight": correctness_weight, "format_weight": format_weight, "length_weight": length_weight,
        "length_budget": length_budget, "math_timeout": math_timeout, "workers": workers,
    })
    ds = load_stage(input)
    if judge == "llm":
        with build_backend(backend, model, base_url, concurrency, cache_dir, no_cache) as llm:
            out_ds, report = run_reward(ds, cfg, judge_backend=llm, progress=True)
            echo_stats(llm.stats)
    else:
        out_ds, report = run_reward(ds, cfg, progress=True)
    save_stage(out_ds, out, report, REPORT_NAME)
    typer.echo(format_summary(report))
    typer.echo(f"wrote {out}")


def format_summary(report: dict) -> str:
    lines = [f"{'domain':8}  {'mean reward':>11}  {'correct':>7}"]
    for domain, mean in sorted(report["mean_reward_per_domain"].items()):
        correct = report["correct_rate_per_domain"].get(domain)
        lines.append(f"{domain:8}  {mean if mean is not None else '-':>11}  {correct if correct is not None else '-':>7}")
    lines.append(
        f"{report['responses']} responses in {report['groups']} groups; zero-variance groups: "
        f"{report['zero_variance_share']}; answer extraction failures: {report['extraction_failure_rate']}; "
        f"math timeouts: {report['math'].get('timeouts', 0)}; rows with errors: {report['rows_with_errors']}"
    )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("reward")(reward)
