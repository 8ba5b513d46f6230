"""The MMLU-Pro ingest preset on the real shared file, and gdpo eval's MMLU-Pro task reading its questions through
the same preset (one mapping for training and evaluation data)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import run_cli
from metakl.io import load_stage
from tests.conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
FILE = ("mmlu_pro_math_model_outputs", "model_outputs_Meta-Llama-3_1-70B-Instruct_5shots.math.json")
TASK = ROOT / "gdpo" / "eval" / "tasks" / "mmlu_pro_math_cloze.yaml"


def test_ingest_mmlu_pro_preset_on_the_shared_file(tmp_path):
    path = shared_data(*FILE)
    proc = run_cli("ingest", f"mmlu-pro={path}", "--out", tmp_path / "in", timeout=300)
    assert proc.returncode == 0, proc.stderr
    ds = load_stage(tmp_path / "in")
    report = json.loads((tmp_path / "in" / "ingest_report.json").read_text())
    assert report["totals"]["records"] == 1351 and report["totals"]["errors"] == 0 and len(ds) == 1351
    assert set(ds["source"]) == {"mmlu-pro"} and set(ds["domain"]) == {"math"}
    # the file's first record (read by hand): question 7687, 9 options, answer H, src ori_mmlu-abstract_algebra
    first = ds[0]
    assert first["question"].startswith("Statement 1 | A ring homomorphism is one to one")
    assert first["reference"] == "H" and len(first["choices"]) == 9 and first["choices"][7] == "False, True"
    assert json.loads(first["meta"]) == {"question_id": 7687, "src": "ori_mmlu-abstract_algebra", "category": "math"}
    assert max(len(c) for c in ds["choices"]) == 10  # up to ten options (A-J)


def test_gdpo_eval_task_reads_the_ingest_preset(tmp_path):
    from gdpo.eval.data import load
    from metakl.stages.ingest import SourceSpec, ingest, load_preset

    path = shared_data(*FILE)

    class Tagged(yaml.SafeLoader):  # the task YAML's lm-eval tags (!function) are not needed here
        pass

    Tagged.add_multi_constructor("!", lambda loader, suffix, node: None)
    kwargs = yaml.load(TASK.read_text(), Loader=Tagged)["dataset_kwargs"]
    assert kwargs["preset"] == "mmlu-pro" and "mapping" not in kwargs  # one mapping: the ingest preset
    rows = load(**kwargs, data_root=str(path.parents[1]), task="gdpo_mmlu_pro_math_cloze")["test"]
    ingested = ingest([SourceSpec(str(path), load_preset("mmlu-pro"))]).dataset
    assert rows["id"] == ingested["id"] and rows["reference"] == ingested["reference"]
    assert rows[0]["gold"] == 7 and rows[0]["answer_text"] == "False, True"  # H is the eighth option
