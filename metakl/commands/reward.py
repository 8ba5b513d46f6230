"""`metakl reward`: rewards in [0, 1] and group advantages (metakl.stages.reward)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metakl.commands._llm_options import LLMGiven, llm_options, verb
from metakl.commands._runner import config_options, run_verb, stage_folders
from metakl.stages.reward import RewardConfig


@verb
@stage_folders("reward", "Stage folder with a `responses` column (generate / import-responses).")
@llm_options(model_help="Safety judge model for --judge llm: embedded name, HF folder, or the name an openai "
                        "server serves.")
@config_options(RewardConfig)
def reward(*, input: Path, out: Path, config: Optional[Path], llm: LLMGiven, settings: dict) -> None:
    """Score every response: reward = weighted correctness (or safe behaviour), format and length, in [0, 1];
    add group advantages (r - mean) / std per prompt and flag groups whose rewards are all equal.

    Examples:

      metakl reward runs/x/generate --out runs/x/reward

      metakl reward runs/x/generate --out runs/x/reward --config reward.yaml --judge llm --base-url http://127.0.0.1:8000/v1
    """
    run_verb("reward", input=input, out=out, config_path=config, options=settings, llm=llm, summary=format_summary)


def format_summary(result) -> list[str]:
    report = result.report
    lines = [f"{'domain':8}  {'mean reward':>11}  {'correct':>7}"]
    for domain, mean in sorted(report["mean_reward_per_domain"].items()):
        correct = report["correct_rate_per_domain"].get(domain)
        lines.append(f"{domain:8}  {mean if mean is not None else '-':>11}  {correct if correct is not None else '-':>7}")
    lines.append(
        f"{report['responses']} responses in {report['groups']} groups; zero-variance groups: "
        f"{report['zero_variance_share']}; answer extraction failures: {report['extraction_failure_rate']}; "
        f"math timeouts: {report['math'].get('timeouts', 0)}; rows with errors: {report['rows_with_errors']}"
    )
    return lines


def register(app: typer.Typer) -> None:
    app.command("reward")(reward)
