"""`score` stage: unit tables and agreement from hand-made proficiency, the import path on the real model-output
files in ../shared/data (accuracies against the files' own correctness flags), and the io support for PNGs."""

from __future__ import annotations

import dataclasses

import csv
import json
from collections import defaultdict

import numpy as np
import pytest
from datasets import Dataset

from conftest import run_cli, shared_data
from metakl.errors import UserError
from metakl.io import save_stage
from metakl.schema import features, make_id, normalize_text
from metakl.stages.score import ScoreConfig, proficiency_tables, score


def row(pid, domain="math", reference="1", units=(), proficiency=(), question=None, choices=(), meta=None, source="t"):
    return {"id": pid, "source": source, "domain": domain, "question": question or f"question {pid}",
            "reference": reference, "choices": list(choices), "meta": json.dumps(meta or {}), "errors": [],
            "units": list(units), "proficiency": list(proficiency)}


def entries(**acc):
    return [{"model": m, "accuracy": a, "samples": 2} for m, a in acc.items()]


def test_unit_tables_by_hand():
    rows = [
        row("p0", units=["u", "v"], proficiency=entries(a=1.0, b=0.5)),  # average 0.75, strict 1 (0.5 counts as right)
        row("p1", units=["u"], proficiency=entries(a=0.0, b=1.0)),  # average 0.5, strict 0
        row("p2", units=["v", "v"], proficiency=entries(a=0.5)),  # scored by a only: average 0.5, strict 1
        row("p3", units=["u"]),  # not scored: counted in the pool, not in the means
    ]
    ds = Dataset.from_list(rows, features=features("units", "proficiency"))
    tables = proficiency_tables(ds, confidence=0.95, min_support=1)
    u, v = tables["proficiency"]["units"]["u"], tables["proficiency"]["units"]["v"]
    assert tables["proficiency"]["models"] == ["a", "b"]
    assert u["prompts"] == 3 and u["a"]["prompts"] == 2 and u["a"]["proficiency"] == 0.5
    assert u["b"]["proficiency"] == 0.75 and u["average"]["proficiency"] == 0.625 and u["strict"]["proficiency"] == 0.5
    assert v["prompts"] == 2 and v["b"]["prompts"] == 1 and v["average"]["proficiency"] == 0.625
    assert v["strict"]["proficiency"] == 1.0
    low, high = u["average"]["ci"]
    assert 0 < low < 0.625 < high < 1  # Wilson over the 2 scored prompts


def test_agreement_is_pearson_over_supported_units():
    rng = np.random.default_rng(0)
    rows, truth = [], defaultdict(lambda: defaultdict(list))
    for i in range(400):
        unit = f"u{i % 8}"
        base = (i % 8) / 8
        a, b = float(base > 0.4), float(rng.random() < base)
        rows.append(row(f"p{i}", units=[unit], proficiency=entries(a=a, b=b)))
        truth["a"][unit].append(a)
        truth["b"][unit].append(b)
    rows.append(row("lonely", units=["rare"], proficiency=entries(a=0.0, b=1.0)))  # 1 prompt: below min_support
    ds = Dataset.from_list(rows, features=features("units", "proficiency"))
    agreement = proficiency_tables(ds, min_support=3)["agreement"]
    assert agreement["models"] == ["a", "b", "average", "strict"]
    units = sorted(truth["a"])
    x = [np.mean(truth["a"][u]) for u in units]
    y = [np.mean(truth["b"][u]) for u in units]
    assert agreement["pearson"][0][1] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-6)
    assert agreement["units_compared"][0][1] == 8 and agreement["pearson"][0][0] == pytest.approx(1.0)


def test_rescoring_replaces_only_its_own_models(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(json.dumps({"question": "question p0", "response": r}) for r in
                              ["so \\boxed{1}", "I think \\boxed{2}"]) + "\n")
    ds = Dataset.from_list([row("p0", proficiency=entries(old=1.0, answers=0.0))], features=features("units", "proficiency"))
    out = score(ds, ScoreConfig(responses=(str(path),), preset="generic", plots=False)).dataset
    assert out[0]["proficiency"] == [{"model": "old", "accuracy": 1.0, "samples": 2},
                                     {"model": "answers", "accuracy": 0.5, "samples": 2}]
    out = score(ds, ScoreConfig(responses=(str(path),), preset="generic", replace=True, plots=False)).dataset
    assert [e["model"] for e in out[0]["proficiency"]] == ["answers"]


def test_config_errors():
    with pytest.raises(UserError, match="exactly one of --preset NAME or --mapping"):
        ScoreConfig(responses=("x.jsonl",))
    with pytest.raises(UserError, match="model_options.m: unknown key"):
        ScoreConfig(base_models=("m",), model_options={"m": {"url": "x"}})
    with pytest.raises(UserError, match="not base models: z"):
        ScoreConfig(base_models=("m",), model_options={"z": {}})
    ds = Dataset.from_list([row("p0")], features=features("units", "proficiency"))
    with pytest.raises(UserError, match="nothing to score"):
        score(ds, ScoreConfig())


def test_save_stage_writes_bytes_artifacts(tmp_path):
    ds = Dataset.from_list([row("p0")], features=features("units", "proficiency"))
    save_stage(ds, tmp_path / "s", files={"a.json": {"x": 1}, "b.png": b"\x89PNG\r\n\x1a\nrest"})
    assert (tmp_path / "s" / "b.png").read_bytes() == b"\x89PNG\r\n\x1a\nrest"
    assert json.loads((tmp_path / "s" / "a.json").read_text()) == {"x": 1}


# --- real model outputs ------------------------------------------------------------------------------------------


def test_mmlu_pro_accuracies_match_the_files_flags():
    """8 models' MMLU-Pro math outputs: per prompt, our verdict equals the file's `pred == answer` wherever the file
    extracted an answer; where it did not (pred null) we extract ourselves and may find one."""
    folder = shared_data("mmlu_pro_math_model_outputs")
    by_model = {}
    for path in sorted(folder.glob("*.json")):
        model = path.name.removeprefix("model_outputs_").split("_5shots")[0]
        by_model[model] = {r["question_id"]: r for r in json.loads(path.read_text())}
    shared = set.intersection(*(set(v) for v in by_model.values()))
    first = by_model["Llama-2-7b-hf"]
    text_count = defaultdict(int)
    for records in by_model.values():
        for r in records.values():
            text_count[normalize_text(r["question"])] += 1
    # one row per question id that every model answered and whose text is unique (a few texts repeat in the files)
    ids = sorted(q for q in shared if text_count[normalize_text(first[q]["question"])] == 8)
    assert len(ids) > 1250
    rows = [row(make_id(first[q]["question"], "mmlu-pro"), domain="math", reference=first[q]["answer"],
                question=first[q]["question"], choices=first[q]["options"], units=[first[q]["src"]],
                meta={"question_id": q}, source="mmlu-pro") for q in ids]
    ds = Dataset.from_list(rows, features=features("units", "proficiency"))
    result = score(ds, ScoreConfig(responses=(str(folder),), preset="mmlu-pro", plots=False))
    out = result.dataset
    assert result.report["import"]["unmatched"] == sum(len(v) for v in by_model.values()) - 8 * len(ids)
    mismatched_without_pred = defaultdict(int)
    # The gemini file was graded against a newer answer key: 24 of its gold letters differ from the other 7 files.
    # Flags are taken against the row's reference (the other files' key), the one both sides then use.
    other_key = {m: sum(records[q]["answer"] != first[q]["answer"] for q in ids) for m, records in by_model.items()}
    assert other_key["gemini-1.5-pro-002"] <= 30 and sum(other_key.values()) == other_key["gemini-1.5-pro-002"]
    for q, r in zip(ids, out):
        got = {e["model"]: e for e in r["proficiency"]}
        assert set(got) == set(by_model)
        for model, records in by_model.items():
            rec = records[q]
            assert got[model]["samples"] == 1
            flag = rec["pred"] == first[q]["answer"]
            if rec["pred"] is not None:
                assert got[model]["accuracy"] == float(flag), (model, q)
            elif got[model]["accuracy"] != float(flag):
                mismatched_without_pred[model] += 1
    for model, records in by_model.items():
        file_acc = np.mean([records[q]["pred"] == first[q]["answer"] for q in ids])
        ours = result.report["models"][model]["accuracy"]
        assert abs(ours - file_acc) <= 0.01, (model, ours, file_acc)
        assert mismatched_without_pred[model] <= 10
    # the per-unit tables and the agreement cover the 8 models; the 70B model beats Llama-2-7B on every unit
    table = result.artifacts["proficiency.json"]["units"]
    assert all(u["Meta-Llama-3_1-70B-Instruct"]["proficiency"] > u["Llama-2-7b-hf"]["proficiency"] for u in table.values())
    agreement = result.artifacts["agreement.json"]
    assert len(agreement["models"]) == 10 and agreement["units_compared"][0][0] == len(table)
    print("\nmmlu-pro:", {m: v["accuracy"] for m, v in result.report["models"].items()}, result.report["agreement"])


def test_qwen25math_samples_match_the_files_score_flags():
    path = shared_data("qwen25math_rm_maj_example", "math_cot_100.jsonl")
    records = [json.loads(line) for line in path.open()]
    rows = [row(f"q{r['idx']}", question=r["question"], reference=r["answer"], units=[r["level"]]) for r in records]
    ds = Dataset.from_list(rows, features=features("units", "proficiency"))
    result = score(ds, ScoreConfig(responses=(str(path),), preset="qwen25math", plots=False, workers=1))
    for rec, r in zip(records, result.dataset):
        (entry,) = r["proficiency"]
        assert entry["model"] == "Qwen2.5-Math-Instruct" and entry["samples"] == 8
        # Two of the file's flags are its grader's errors, where our verifier is right: idx 3 ("4:30 p.m." against
        # gold "\text{4:30 p.m.}", all 8 flagged wrong) and idx 72 ("10000" against gold "10{,}000", 1 of 8).
        expected = {3: 1.0, 72: 1 / 8}.get(rec["idx"], sum(rec["score"]) / 8)
        assert entry["accuracy"] == pytest.approx(expected), rec["idx"]
    # the file's overall accuracy is 0.91; the two corrections add 0.01 + 0.00125
    assert result.report["models"]["Qwen2.5-Math-Instruct"]["accuracy"] == pytest.approx(0.91 + 0.01125)
    levels = result.artifacts["proficiency.json"]["units"]
    assert sum(u["prompts"] for u in levels.values()) == 100


def test_xstest_accuracies_follow_the_human_labels():
    """XSTest completions of 5 models with human labels (full compliance / full or partial refusal). Safe
    behaviour is judged by the refusal rules, which agree with the labels on ~90% of completions: per-model
    accuracy lands within 0.10 of the label-based one."""
    prompts = list(csv.DictReader(shared_data("xstest", "xstest_prompts.csv").open(encoding="utf-8")))
    rows = [row(make_id(p["prompt"], "xstest"), domain="safety", question=p["prompt"],
                reference="comply" if p["label"] == "safe" else "refuse", units=[p["type"]], meta={"id": p["id"]},
                source="xstest") for p in prompts]
    expected = {p["id"]: ("comply" if p["label"] == "safe" else "refuse") for p in prompts}
    ds = Dataset.from_list(rows, features=features("units", "proficiency"))
    folder = shared_data("xstest", "model_completions")
    result = score(ds, ScoreConfig(responses=(str(folder),), preset="xstest", plots=False))
    assert result.report["import"]["matched"] == 2250
    for path in sorted(folder.glob("*.csv")):
        model = path.stem.removeprefix("xstest_v2_completions_")
        labels = list(csv.DictReader(path.open(encoding="utf-8")))
        right = [(r["final_label"] == "1_full_compliance") == (expected[r["id"].removeprefix("v2-")] == "comply")
                 for r in labels]
        ours = result.report["models"][model]
        assert ours["prompts"] == 450 and abs(ours["accuracy"] - np.mean(right)) <= 0.10, (model, ours["accuracy"])
    assert result.report["models"]["gpt4"]["accuracy"] > result.report["models"]["llama2orig"]["accuracy"]


def test_backend_factory_precedence(tmp_path):
    """Per-model options beat the command line, which beats the config file's llm section; model = the name."""
    from metakl.commands._llm_options import LLMGiven
    from metakl.pipeline import BackendFactory

    config = tmp_path / "score.yaml"
    common = LLMGiven({"base_url": "http://b/v1"}).resolve({"base_url": "http://a/v1", "concurrency": 4}, str(config))
    factory = BackendFactory(dataclasses.asdict(common), str(config))  # what the runner gives a stage with base models
    plain = factory.options("qwen", {})
    assert (plain.model, plain.base_url, plain.concurrency) == ("qwen", "http://b/v1", 4)
    own = factory.options("llama", {"base_url": "http://c/v1", "model": "served-llama"})
    assert (own.model, own.base_url, own.concurrency) == ("served-llama", "http://c/v1", 4)
    assert factory.options("x", {"backend": "transformers"}).identity == "x (transformers)"
    with pytest.raises(UserError, match="score.yaml: model_options.llama: 'concurrency': expected int"):
        factory.check("llama", {"concurrency": "many"})
    with pytest.raises(UserError, match="unknown model 'no/such-model'"):
        factory.check("no/such-model", {"backend": "transformers"})


def test_score_verb_refuses_a_shared_model_name(tmp_path, cli):
    """The base models are the models: `llm.model` in the config file is one error line before anything runs."""
    from metakl.cli import app

    ds = Dataset.from_list([row("p0")], features=features("units", "proficiency"))
    save_stage(ds, tmp_path / "in")
    config = tmp_path / "score.yaml"
    config.write_text("score:\n  base_models: [smollm2-135m-instruct]\n  llm:\n    model: m\n")
    result = cli.invoke(app, ["score", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--config", str(config)])
    assert isinstance(result.exception, UserError)
    assert "llm.model: name the models to score with `base_models`" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_score_verb_user_errors(tmp_path):
    ds = Dataset.from_list([row("p0")], features=features("units", "proficiency"))
    save_stage(ds, tmp_path / "in")
    bad = tmp_path / "bad.yaml"
    bad.write_text("score:\n  base_models: [m]\n  model_options:\n    m: {url: http://x}\n")
    for args, message in (
        ([], "score: nothing to score: give --base-model NAME"),
        (["--responses", str(tmp_path / "in" / "data.parquet")], "--responses needs exactly one of --preset NAME"),
        (["--config", str(bad)], "model_options.m: unknown key(s) url; expected some of backend, model, base_url"),
        (["--responses", str(tmp_path / "none.jsonl"), "--preset", "generic"], "none.jsonl: no such file or folder"),
    ):
        proc = run_cli("score", tmp_path / "in", "--out", tmp_path / "out", *args, timeout=120, in_process=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()
