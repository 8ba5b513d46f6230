"""`metakl run --executor ray` (metakl.executors, metakl.llm.gateway): on a two-node Ray cluster started here, the
same release as the local executor; Ray workers killed during reward and generate change nothing and send no request
twice; without Ray installed, one line says how to install it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from metakl.errors import UserError
from metakl.executors import ExecutorSpec, executor_spec, merge_stats

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "annotations" / "demo"
DEMO_SOURCES = ["demo-math", "demo-general", "demo-safety"]  # presets that name their own data
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _need_ray() -> None:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        if CI:  # CI installs the ray extra (make install): a missing Ray there is a failure, not a skip
            pytest.fail("ray is not installed; `make install` installs metakl[ray]", pytrace=False)
        pytest.skip("ray is not installed (pip install 'metakl[ray]')")


# ----------------------------------------------------------------------------------------------------------------
# no Ray needed


def test_merge_stats_adds_numbers_merges_mappings_and_joins_lists():
    parts = [{"rows": 2, "per_domain": {"math": {"n": 1, "sum": 0.5}}, "templates": ["b@1"]},
             {"rows": 3, "per_domain": {"math": {"n": 2, "sum": 1.0}, "safety": {"n": 1, "sum": 0.0}},
              "templates": ["a@1", "b@1"]}]
    assert merge_stats(parts) == {"rows": 5, "per_domain": {"math": {"n": 3, "sum": 1.5}, "safety": {"n": 1, "sum": 0.0}},
                                  "templates": ["a@1", "b@1"]}
    with pytest.raises(ValueError, match="'mode' differs"):
        merge_stats([{"mode": "a"}, {"mode": "b"}])


@pytest.mark.parametrize("raw, kind, address, expected", [
    (None, None, None, ExecutorSpec()),
    ("ray", None, None, ExecutorSpec("ray")),
    ({"kind": "ray", "batch_rows": 50}, None, None, ExecutorSpec("ray", batch_rows=50)),
    ("ray", "local", None, ExecutorSpec("local")),  # the command line wins
    (None, None, "10.0.0.5:6379", ExecutorSpec("ray", address="10.0.0.5:6379")),
])
def test_executor_spec_from_config_and_command_line(raw, kind, address, expected):
    assert executor_spec(raw, "p.yaml", kind=kind, address=address) == expected


@pytest.mark.parametrize("raw, kind, address, message", [
    ("spark", None, None, "expected one of local, ray, got 'spark'"),
    (None, "local", "h:6379", "--address needs --executor ray"),
    ({"kind": "ray", "batch_rows": 0}, None, None, "'batch_rows' must be a positive integer"),
    ({"kind": "ray", "cpus": 2}, None, None, "unknown setting(s) 'cpus'"),
    (3, None, None, "'executor' must be local, ray, or a mapping"),
])
def test_bad_executor_settings_are_one_clear_error(raw, kind, address, message):
    with pytest.raises(UserError, match=".*" + message.replace("(", r"\(").replace(")", r"\)")):
        executor_spec(raw, "p.yaml", kind=kind, address=address)


def test_without_ray_executor_ray_says_how_to_install_it_in_one_line(tmp_path):
    import yaml

    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "ingest": {"sources": DEMO_SOURCES[:1]}}))
    # `ray` as an uninstalled package: Python raises ImportError for a None entry in sys.modules.
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['metakl', 'run', sys.argv[1], '--executor', 'ray']; "
            "from metakl.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "pip install 'metakl[ray]'" in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()  # checked before anything runs


# ----------------------------------------------------------------------------------------------------------------
# a Ray cluster: a head and a second node on this machine, one CPU each


@pytest.fixture(scope="module")
def ray_cluster():
    _need_ray()
    from ray.cluster_utils import Cluster

    store = 256 * 2**20  # per node: this machine is shared, the default is 30% of its memory
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
    cluster.add_node(num_cpus=1, object_store_memory=store)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def demo_like_config(base_url: str, cache_dir: Path) -> dict[str, Any]:
    """The demo pipeline (annotations/demo/pipeline.yaml: its presets, every stage, guided annotation with the seed
    taxonomy, dedup, publish) pointed at `base_url` instead of a server of its own, with shorter answers."""
    import yaml

    raw = yaml.safe_load((DEMO / "pipeline.yaml").read_text())
    raw.pop("serve", None)
    raw["llm"] = {**(raw.get("llm") or {}), "base_url": base_url, "concurrency": 4, "cache_dir": str(cache_dir)}
    raw["generate"] = {**raw["generate"], "n": 2, "max_tokens": 32}
    raw["annotate"] = {**raw["annotate"], "max_tokens": 64}
    raw["score"] = {**raw["score"], "k": 1, "max_tokens": 32}
    return raw


def _run(raw: dict[str, Any], run_dir: Path, **executor: Any):
    from metakl.pipeline import load_plan, run_plan

    lines: list[str] = []
    plan = run_plan(load_plan(None, raw, run_dir=run_dir, **executor), echo=lines.append)
    return plan, lines


def _rows(folder: Path) -> tuple[list[str], list[dict[str, Any]]]:
    from metakl.io import load_stage

    ds = load_stage(folder)
    return ds.column_names, ds.to_list()


def _assert_no_request_twice(proxy) -> None:
    digests = [digest for _, _, digest, _ in proxy.posts()]
    assert len(digests) == len(set(digests)), "a request reached the server twice"


@pytest.mark.slow
def test_ray_run_gives_the_same_release_as_local(ray_cluster, fault_proxy, tmp_path):
    proxy = fault_proxy()  # no faults: it counts what reaches the server
    raw = demo_like_config(proxy.url, tmp_path / "cache")
    on_ray, ray_log = _run(raw, tmp_path / "ray", executor="ray", address=ray_cluster.address)
    sent = len(proxy.posts())
    assert sent > 0
    _assert_no_request_twice(proxy)
    assert any("executor: ray, the Ray cluster at" in line for line in ray_log)

    local, _ = _run(raw, tmp_path / "local")  # the reference; model answers from the cache the Ray run filled
    assert len(proxy.posts()) == sent
    assert [s.status for s in on_ray.stages] == [s.status for s in local.stages] == ["ran"] * len(local.stages)
    for r, l in zip(on_ray.stages, local.stages):
        # Every stage is deterministic here (model answers come from the same cache): identical rows and columns.
        assert _rows(r.folder) == _rows(l.folder), f"{r.name}: the Ray run's rows differ from the local run's"
        for key in ("rows_in", "rows_out", "errors"):
            assert r.report[key] == l.report[key], (r.name, key)
        tokens = [(s.report["llm"] or {}).get(k) for s in (r, l) for k in ("prompt_tokens", "completion_tokens")]
        assert tokens[:2] == tokens[2:], f"{r.name}: token counts differ"  # the closing table's columns agree


def _kill_a_map_worker(when: Callable[[], bool], killed: list[int]) -> threading.Thread:
    """Once `when()` holds, SIGKILL one Ray worker process of this test's cluster that is running a map task."""
    import psutil

    me = psutil.Process(os.getpid())

    def watch() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            if when():
                for proc in me.children(recursive=True):  # only processes this test started
                    try:
                        if "MapBatches" in " ".join(proc.cmdline()):
                            os.kill(proc.pid, signal.SIGKILL)
                            killed.append(proc.pid)
                            return
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_worker_killed_during_generate_sends_no_request_twice(ray_cluster, fault_proxy, tmp_path):
    a, b = fault_proxy(), fault_proxy()  # two endpoints of the same model: the gateway balances between them
    n_rows = 10
    raw = {"llm": {"base_url": [a.url, b.url], "concurrency": 2, "cache_dir": str(tmp_path / "cache")},
           "executor": {"kind": "ray", "batch_rows": 2},  # 5 blocks: the kill hits one, the others go on
           "ingest": {"sources": DEMO_SOURCES[:1], "limit": n_rows},
           "generate": {"n": 2, "max_tokens": 48, "seed": 7}}
    killed: list[int] = []
    at_kill: list[int] = []

    def generating() -> bool:
        at_kill[:] = [len(a.posts()) + len(b.posts())]
        return 1 <= at_kill[0] < n_rows - 2

    watcher = _kill_a_map_worker(generating, killed)
    plan, _ = _run(raw, tmp_path / "run", address=ray_cluster.address)
    watcher.join(timeout=5)
    assert killed, "no map worker was killed during generate"
    assert at_kill[0] < n_rows  # it landed while requests were still going out
    columns, rows = _rows(plan.stages[-1].folder)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in _rows(plan.stages[0].folder)[1])
    assert all(len(r["responses"]) == 2 for r in rows)  # every row exactly once, with its answers
    posts = a.posts() + b.posts()
    assert len(posts) == n_rows  # one request per row, none sent again for the retried block
    assert len({digest for _, _, digest, _ in posts}) == n_rows
    assert a.posts() and b.posts()  # both endpoints served
    llm = plan.stages[-1].report["llm"]
    assert llm["extra"]["endpoint_0_requests"] + llm["extra"]["endpoint_1_requests"] == n_rows
    # The retried block's requests are counted once: the closing table shows one request per row.
    assert llm["requests"] == n_rows and llm["samples"] == 2 * n_rows


def _reward_input(folder: Path, n: int) -> Path:
    """A stage folder of `n` math rows with 4 responses each (half of them right): work for math-verify."""
    from datasets import Dataset

    from metakl.io import save_stage
    from metakl.schema import features

    rows = []
    for i in range(n):
        answers = [f"\\frac{{{i + 1}}}{{2}}", str((i + 1) / 2), f"{i}.5", f"{i}"]
        rows.append({"id": f"row{i:05d}", "source": "synthetic", "domain": "math", "question": f"What is ({i} + 1) / 2?",
                     "reference": f"\\frac{{{i + 1}}}{{2}}", "choices": [], "meta": "{}", "errors": [],
                     "responses": [{"text": f"<think>Add one, halve.</think> So \\boxed{{{a}}}", "reasoning": None,
                                    "answer": None, "reward": None, "advantage": None, "model": "m",
                                    "finish_reason": "stop"} for k, a in enumerate(answers)]})
    save_stage(Dataset.from_list(rows, features=features("responses")), folder)
    return folder


@pytest.mark.slow
def test_worker_killed_during_reward_changes_nothing(ray_cluster, tmp_path):
    from metakl.io import load_stage
    from metakl.stages.reward import reward

    source = _reward_input(tmp_path / "input", 3000)
    raw = {"input": str(source), "executor": {"kind": "ray", "batch_rows": 150}, "reward": {}}
    killed: list[int] = []
    watcher = _kill_a_map_worker(lambda: True, killed)
    plan, _ = _run(raw, tmp_path / "run", address=ray_cluster.address)
    watcher.join(timeout=5)
    assert killed, "no map worker was killed during reward"
    columns, rows = _rows(plan.stages[0].folder)
    reference = reward(load_stage(source))  # the local executor, in this process
    assert columns == reference.dataset.column_names
    assert [r["id"] for r in rows] == [f"row{i:05d}" for i in range(3000)]  # every row exactly once, in order
    assert rows == reference.dataset.to_list()
    assert plan.stages[0].report["groups"] == 3000 == reference.report["groups"]


@pytest.mark.slow
def test_gateway_sends_a_request_asked_by_several_blocks_once(ray_cluster, fault_proxy, tmp_path):
    """Three blocks asking the same requests at once (what a retried block does): one POST per request."""
    import ray

    from metakl.llm.options import LLMOptions
    from metakl.executors import RayExecutor
    from metakl.llm import ChatRequest

    proxy = fault_proxy()
    requests = [ChatRequest(messages=[{"role": "user", "content": f"Count to {i + 3}."}], max_tokens=24, seed=i)
                for i in range(4)]
    with RayExecutor(ray_cluster.address) as executor:
        client = executor.backend(LLMOptions(base_url=proxy.url, cache_dir=str(tmp_path / "cache")))
        try:
            answers = ray.get([client.actor.complete.remote(requests) for _ in range(3)])
            stats = client.stats
        finally:
            client.close()
    assert len(proxy.posts()) == 4
    _assert_no_request_twice(proxy)
    texts = [[r.completion.texts for r in results] for results in answers]
    assert all(r.ok for results in answers for r in results) and texts[0] == texts[1] == texts[2]
    assert stats.backend_calls == 4
    # The same call three times (a batch and two retries of it): counted once, the repeats beside.
    assert stats.requests == 4 and stats.samples == 4
    assert stats.extra["repeated_calls"] == 2 and stats.extra["repeated_requests"] == 8


@pytest.mark.slow
def test_cli_starts_a_quiet_local_ray_and_tears_it_down(tmp_path):
    """`metakl run --executor ray` without --address: a Ray with this machine's cores, its files under /tmp and gone
    at the end, no Ray log lines in the terminal; the rows are the local executor's."""
    import glob

    import yaml

    from conftest import run_cli, shared_data

    _need_ray()
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({
        "run_dir": "run",
        "max_error_rate": 1.0,  # the answer file holds none of these prompts: reward marks every row `no_responses`
        "ingest": {"sources": [f"math={ROOT / 'tests' / 'fixtures' / 'ingest' / 'local' / 'math_test.jsonl'}"]},
        "import-responses": {"files": [str(shared_data("qwen25math_rm_maj_example", "math_cot_100.jsonl"))],
                             "preset": "qwen25math"},
        "reward": {}}))
    before = set(glob.glob("/tmp/metakl-ray-*"))
    proc = run_cli("run", cfg, "--executor", "ray", "--out", tmp_path / "ray")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cores = len(os.sched_getaffinity(0))
    assert f"executor: ray, a local Ray started for this run, {cores} CPUs" in proc.stderr
    noise = [line for line in proc.stderr.splitlines()
             if "ray" in line.lower() and not line.startswith(("executor: ray", "run ", "stage"))]
    assert not noise, noise  # Ray's own INFO/WARNING lines stay out of the terminal
    assert set(glob.glob("/tmp/metakl-ray-*")) == before  # its temporary folder is removed
    assert not list(ROOT.glob("**/ray_*.log")) and not (ROOT / "session_latest").exists()  # nothing in the repo
    local = run_cli("run", cfg, "--out", tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    assert _rows(tmp_path / "ray" / "04-reward") == _rows(tmp_path / "local" / "04-reward")


def _mmlu_pro_rows(limit: int) -> "Any":
    """`limit` MMLU-Pro math questions (shared data) as scoring rows: 8 models' answers per question to import."""
    import json

    from datasets import Dataset

    from conftest import shared_data
    from metakl.schema import features, make_id

    folder = shared_data("mmlu_pro_math_model_outputs")
    records = json.loads(next(iter(sorted(folder.glob("*Llama-2-7b-hf*.json")))).read_text())[:limit]
    rows = [{"id": make_id(r["question"], "mmlu-pro"), "source": "mmlu-pro", "domain": "math", "question": r["question"],
             "reference": r["answer"], "choices": r["options"], "meta": json.dumps({"question_id": r["question_id"]}),
             "errors": [], "units": [r["src"]], "proficiency": []} for r in records]
    return folder, Dataset.from_list(rows, features=features("units", "proficiency"))


@pytest.mark.slow
def test_score_on_ray_equals_local(ray_cluster):
    """The imported answers of 8 models checked in Ray blocks: the same proficiency column, errors and tables as
    the local executor's single batch."""
    from metakl.executors import RayExecutor
    from metakl.stages.score import ScoreConfig, score

    folder, ds = _mmlu_pro_rows(400)
    cfg = ScoreConfig(responses=(str(folder),), preset="mmlu-pro", plots=False)
    with RayExecutor(ray_cluster.address, batch_rows=60) as executor:  # 7 blocks
        on_ray = score(ds, cfg, executor=executor)
    local = score(ds, cfg)
    assert on_ray.dataset.to_list() == local.dataset.to_list()
    assert sum(len(p) for p in local.dataset["proficiency"]) >= 8 * 390  # every model on (almost) every row
    assert on_ray.artifacts == local.artifacts
    for key in ("models", "rows_scored", "units", "weakest_units", "agreement", "import", "errors"):
        assert on_ray.report[key] == local.report[key], key
    for key in ("answers_checked", "no_answer", "safety_judged"):  # additive counts summed over the blocks
        assert on_ray.report["verify"][key] == local.report["verify"][key], key
    assert local.report["verify"]["answers_checked"] == sum(e["samples"] for p in local.dataset["proficiency"] for e in p)


@pytest.mark.slow
def test_merge_embeds_on_ray_and_clusters_like_local(ray_cluster, minilm_path):
    """Merge's skill embeddings computed in Ray blocks: the same units and taxonomy as locally."""
    from datasets import Dataset

    from metakl.executors import RayExecutor
    from metakl.schema import features, make_id
    from metakl.stages.merge import MergeConfig, merge

    skills = [("adding_fractions", "Sum 1/2 and 1/3."), ("fraction_addition", "Add two fractions."),
              ("add_fractions", "Common denominator."), ("circle_area", "Pi r squared."),
              ("area_of_a_circle", "The garden is round."), ("refusal_of_weapon_instructions", "A gun at home."),
              ("refusing_weapon_instructions", "Declined."), ("photosynthesis", "Light into sugar."),
              ("unit_conversion", "Kilometres to miles."), ("converting_units", "Grams to kilograms.")] * 3
    rows = [{"id": make_id(f"q{i} {s}", "t"), "source": "t", "domain": "math", "question": f"q{i} {s}",
             "reference": "1", "choices": [], "meta": "{}", "errors": [], "knowledge": [{"skill": s, "reason": r}]}
            for i, (s, r) in enumerate(skills)]
    ds = Dataset.from_list(rows, features=features("knowledge"))
    cfg = MergeConfig(reason_weight=0.3)  # names and reasons: two embedding calls
    with RayExecutor(ray_cluster.address, batch_rows=4) as executor:
        on_ray = merge(ds, cfg, executor=executor)
    local = merge(ds, cfg)
    assert on_ray.dataset["units"] == local.dataset["units"]
    assert on_ray.artifacts["taxonomy.json"]["units"] == local.artifacts["taxonomy.json"]["units"]
    counts = on_ray.report["embedding"]  # what the Ray workers embedded: the name and reason of each skill group
    assert counts["texts"] == 2 * on_ray.report["step1_groups"] and counts["encoded"] + counts["cache_hits"] == counts["distinct"]
    assert len(set(u for us in local.dataset["units"] for u in us)) <= 6  # the variants did merge


@pytest.mark.slow
def test_embed_on_ray_gives_the_local_vectors_bit_for_bit(ray_cluster, tmp_path):
    """A vector depends on its batch-mates (padding to the batch's longest text rounds differently in bfloat16), and
    the Ray blocks used to batch other texts together than the local executor: at 10K prompts one tag crossed the
    embedding tagger's floor and filter kept 1,156 prompts on Ray against 1,155 locally (issue 26). Both executors now
    encode the same batches: the vectors are equal, not close."""
    import json

    import numpy as np

    from metakl.executors import LOCAL, RayExecutor

    checkset = ROOT / "tests" / "fixtures" / "annotate" / "checkset.jsonl"
    questions = [json.loads(line)["question"] for line in checkset.read_text().splitlines()]
    # 108 prompts x 2 endings: 216 distinct texts, asked twice in another order (the repeats come back at their
    # places); 50 rows per block used to make 5 blocks, each batched on its own
    texts = [q + " (why?)" * k for k in range(2) for q in questions]
    texts = texts + texts[::-1]
    settings = {"model": "all-minilm-l6-v2", "max_seq_length": 128, "dtype": "bfloat16"}  # bf16: where it showed
    local, local_counts = LOCAL.embed(texts, **settings, cache_dir=str(tmp_path / "local"))
    with RayExecutor(ray_cluster.address, batch_rows=50) as executor:
        on_ray, ray_counts = executor.embed(texts, **settings, cache_dir=str(tmp_path / "ray"))
    assert on_ray.shape == local.shape == (len(texts), 384)
    assert np.array_equal(on_ray, local)
    assert ray_counts["texts"] == local_counts["texts"] == 432
    assert ray_counts["distinct"] == ray_counts["encoded"] == local_counts["encoded"] == 216
