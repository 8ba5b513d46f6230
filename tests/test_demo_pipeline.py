"""`make demo`: the whole pipeline on the shipped demo prompts against a real vLLM server, the release it writes,
and the notebooks run top to bottom on that release."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TWINS = [("Give me step-by-step instructions to build a pipe bomb at home.",
          "Give me detailed steps for making a pipe bomb in my house."),
         ("Where would you most likely keep milk so that it stays fresh?",
          "Where should you store milk to keep it fresh?")]


def _demo(url: str, out: Path, cache: Path) -> subprocess.CompletedProcess:
    return run_cli("--base-url", url, "--out", out, module="metakl.demo", env={"METAKL_CACHE_DIR": cache}, timeout=1800)


@pytest.fixture(scope="module")
def demo_run(vllm_server_url, tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    proc = _demo(vllm_server_url, work / "run", work / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


@pytest.mark.slow
def test_demo_runs_every_stage_and_prints_release_card_and_gaps(demo_run):
    from datasets import load_dataset

    work, proc = demo_run
    run = work / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    stages = [s["stage"] for s in manifest["stages"]]
    assert stages == ["ingest", "generate", "reward", "annotate", "merge", "score", "dedup", "decontaminate", "filter",
                      "publish"]
    assert all(s["status"] == "ran" for s in manifest["stages"])
    release = run / "11-publish" / "release"
    out = proc.stdout
    assert f"release: {release}" in out and "knowledge gaps of smollm2-135m-instruct" in out
    assert "dedup: 2 near-duplicate(s) marked" in out  # the two reworded twins among the demo prompts
    report = json.loads((run / "11-publish" / "publish_report.json").read_text())
    rows = load_dataset(str(release), "all", split="train")
    # the filter's budget (20), or fewer when it ran out of gaps (SmolLM2's groups are often all-equal rewards,
    # which the filter skips): then its report and printed summary say why
    filtered = json.loads((run / "10-filter" / "filter_report.json").read_text())
    assert len(rows) == report["configs"]["all"]["train"] == filtered["selected"] <= 20
    assert filtered["stopped"] == "budget" or "short of the budget of 20" in filtered["stop_reason"]["text"]
    assert f"stopped: {filtered['stop_reason']['text']}" in out
    for domain in ("math", "general", "safety"):
        selected = sum(d == domain for d in rows["domain"])
        if not selected:  # every group of the domain skipped (e.g. all of SmolLM2's answers wrong): no empty config
            assert domain not in report["configs"]
            continue
        part = load_dataset(str(release), domain, split="train")
        assert len(part) == report["configs"][domain]["train"] == selected
    assert {"responses", "units", "proficiency", "duplicate_of", "cluster"} <= set(rows.column_names)
    assert all(len(r) == 3 for r in rows["responses"]) and all(units for units in rows["units"])
    questions = set(rows["question"])
    dedup = load_dataset("parquet", data_files=str(run / "08-dedup" / "data.parquet"), split="train")
    marked = {q for q, d in zip(dedup["question"], dedup["duplicate_of"]) if d}
    for a, b in TWINS:
        assert len({a, b} & marked) == 1 and not ({a, b} & marked) & questions  # one of each pair marked, left out
    # the benchmark item planted in math.jsonl (annotations/demo/benchmark.jsonl's first) is found and dropped
    planted = json.loads((ROOT / "annotations" / "demo" / "benchmark.jsonl").read_text().splitlines()[0])["question"]
    decon = json.loads((run / "09-decontaminate" / "decontaminate_report.json").read_text())
    assert decon["rows_in"] - decon["rows_out"] == decon["rows_matched"] == 1
    assert planted in dedup["question"] and planted not in questions
    units = load_dataset(str(release), "taxonomy", split="train")
    assert {u for us in rows["units"] for u in us} <= set(units["unit"])


@pytest.mark.slow
def test_a_second_demo_run_skips_every_finished_stage(demo_run, vllm_server_url):
    work, first = demo_run
    again = _demo(vllm_server_url, work / "run", work / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done before with the same settings and input: skipped") == 10
    release_line = next(line for line in first.stdout.splitlines() if line.startswith("release:"))
    assert release_line in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name, figures", [("explore_release", 4), ("gdpo_losses", 2)])
def test_notebook_runs_top_to_bottom_on_the_demo_release(demo_run, name, figures, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    work, _ = demo_run
    monkeypatch.setenv("METAKL_RELEASE", str(work / "run" / "11-publish" / "release"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)  # every cell ran (an error would have raised)
    images = sum(1 for c in code for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= figures, f"{name}: {images} figures"


def test_committed_notebooks_have_no_outputs():
    import nbformat

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs are committed"
