"""`metakl run` (metakl.pipeline): config checks before any model, resume, re-run on change, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from metakl.errors import UserError
from metakl.io import MARKER, load_stage
from metakl.pipeline import FINGERPRINT_FILE, MANIFEST, dry_run_table, fingerprint_stages, load_plan, run_plan

from conftest import run_cli, shared_data

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "tests" / "fixtures" / "ingest" / "local"


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize("config, message", [
    ({"ingest": {"sources": ["x"]}, "genrate": {}}, "unknown key(s) 'genrate'"),
    ({"ingest": {"sources": ["gsm8k=tests"], "limt": 3}}, "ingest: unknown setting(s) 'limt'"),
    ({"stages": ["reward", "ingest"], "ingest": {}, "reward": {}}, "must follow the pipeline order"),
    ({"ingest": {"sources": ["gsm8k=/no/such/file.jsonl"]}}, "'sources': no such file or folder: /no/such/file.jsonl"),
    ({"ingest": {"sources": ["nopreset=a.jsonl"]}}, "nopreset"),
    ({"reward": {}}, "give 'input:'"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "generate": {"n": "many"}}, "generate: 'n': expected an integer"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "merge": {"taxonomy": "nope.json"}}, "'taxonomy': no such file"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "merge": {"taxonomy": "nope"}}, "'taxonomy': no such file"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "generate": {"llm": {"bakend": "openai"}}}, "llm: unknown setting(s) 'bakend'"),
    # issue 20, item 3: every part of the config, also what no stage of this run reads
    ({"ingest": {"sources": ["gsm8k=tests"]}, "serve": {"modle": "x"}}, "serve: unknown setting(s) 'modle'"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "serve": {"port": "high"}}, "serve: 'port': expected int (or null), got str 'high'"),
    ({"stages": ["ingest"], "ingest": {"sources": ["gsm8k=tests"]}, "reward": {"bogus": 1}},
     "reward: unknown setting(s) 'bogus'"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "llm": {"bakend": "openai"}}, "llm: unknown setting(s) 'bakend'"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "max_error_rate": 2}, "'max_error_rate': expected a number in [0, 1]"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "reward": {"max_error_rate": "low"}},
     "reward: 'max_error_rate': expected a number in [0, 1]"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "run_dir": ["a"]}, "'run_dir': expected a folder name"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "serve": {"model": "no-such-model"}}, "serve: unknown model 'no-such-model'"),
    ({"ingest": {"sources": ["gsm8k=tests"]}, "generate": {"llm": {"model": "no-such-model"}}},
     "generate: llm: unknown model 'no-such-model'"),
])
def test_config_problems_fail_before_anything_runs(tmp_path, config, message):
    config = {"run_dir": str(tmp_path / "run"), **config}
    with pytest.raises(UserError) as info:
        load_plan(_write(tmp_path / "p.yaml", config))
    assert message in str(info.value) and str(tmp_path / "p.yaml") in str(info.value)
    assert not (tmp_path / "run").exists()


def test_shipped_names_pass_the_checks(tmp_path):
    # a preset that names its own data as a source, a shipped taxonomy by name: neither is a file here
    # (annotate in between: load_plan checks the columns too, and merge reads annotate's `knowledge`)
    plan = load_plan(_write(tmp_path / "p.yaml", {"run_dir": "run", "ingest": {"sources": ["demo-math"]},
                                                  "annotate": {"annotator": "embedding", "taxonomy": "seed"},
                                                  "merge": {"taxonomy": "seed"}}))
    assert [s.name for s in plan.stages] == ["ingest", "annotate", "merge"]


def test_cli_bad_config_is_one_line_and_writes_nothing(tmp_path):
    cfg = _write(tmp_path / "p.yaml", {"run_dir": str(tmp_path / "run"), "ingest": {"sources": ["gsm8k=/nope.jsonl"]},
                                      "generate": {"llm": {"base_url": "http://127.0.0.1:9/v1"}}})
    proc = run_cli("run", str(cfg), in_process=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no such file or folder: /nope.jsonl" in proc.stderr
    assert not (tmp_path / "run").exists()


def _offline_config(tmp_path: Path, **reward) -> Path:
    """ingest → import-responses → reward on real files: no model needed."""
    math = shared_data("qwen25math_rm_maj_example", "math_cot_100.jsonl")
    return _write(tmp_path / "p.yaml", {
        "run_dir": "run",
        "max_error_rate": 1.0,  # the answer file holds none of these two prompts: reward marks both `no_responses`
        "ingest": {"sources": [f"math={LOCAL / 'math_test.jsonl'}"]},
        "import-responses": {"files": [str(math)], "preset": "qwen25math"},
        "reward": reward,
    })


def test_resume_skips_finished_stages_and_reruns_changed_ones(tmp_path):
    cfg = _offline_config(tmp_path)
    lines: list[str] = []
    first = run_plan(load_plan(cfg), echo=lines.append)
    assert [s.status for s in first.stages] == ["ran", "ran", "ran"]
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "01-ingest", "03-import-responses", "04-reward",
                                                     "config.yaml", MANIFEST, "run.log"]
    manifest = json.loads((run / MANIFEST).read_text())
    assert [s["status"] for s in manifest["stages"]] == ["ran", "ran", "ran"]
    assert manifest["versions"]["metakl"] and manifest["finished"] and manifest["totals"]["seconds"] >= 0
    rows = load_stage(run / "04-reward")
    assert manifest["stages"][2]["rows_out"] == len(rows)
    mtime = (run / "04-reward" / "data.parquet").stat().st_mtime_ns

    again = run_plan(load_plan(cfg), echo=lines.append)
    assert [s.status for s in again.stages] == ["cached", "cached", "cached"]
    assert (run / "04-reward" / "data.parquet").stat().st_mtime_ns == mtime
    assert any("skipped" in line for line in lines)

    _offline_config(tmp_path, length_budget=10)  # a changed reward setting re-runs reward only
    changed = run_plan(load_plan(cfg), echo=lines.append)
    assert [s.status for s in changed.stages] == ["cached", "cached", "ran"]
    assert json.loads((run / "04-reward" / "reward_report.json").read_text())["config"]["length_budget"] == 10
    log = (run / "run.log").read_text()
    assert log.count("reward: running") == 2 and "ingest: done before" in log


def test_from_until_and_dry_run(tmp_path):
    cfg = _offline_config(tmp_path)
    proc = run_cli("run", str(cfg), "--dry-run", in_process=True)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[1] for line in proc.stdout.splitlines()[1:]] == ["run", "run", "run"]
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    with pytest.raises(UserError, match="--from: stage ingest has no finished output"):
        run_plan(load_plan(cfg, start="import-responses"), echo=lambda line: None)
    plan = run_plan(load_plan(cfg, until="import-responses"), echo=lambda line: None)
    assert [s.status for s in plan.stages] == ["ran", "ran", "after"]
    proc = run_cli("run", str(cfg), "--dry-run", in_process=True)
    assert [line.split()[1] for line in proc.stdout.splitlines()[1:]] == ["done:", "done:", "run"]
    plan = run_plan(load_plan(cfg, start="reward"), echo=lambda line: None)
    assert [s.status for s in plan.stages] == ["before", "before", "ran"]
    fingerprint_stages(plan)
    assert json.loads((tmp_path / "run" / "04-reward" / FINGERPRINT_FILE).read_text())["fingerprint"] == plan.stages[2].fingerprint


def test_kill_during_generate_then_resume_sends_only_missing_requests(vllm_server_url, fault_proxy, tmp_path):
    proxy = fault_proxy()  # no faults: it counts what reaches the server
    n_rows = 12
    cfg = _write(tmp_path / "p.yaml", {
        "run_dir": "run",
        "llm": {"base_url": proxy.url, "concurrency": 2, "cache_dir": str(tmp_path / "cache")},
        "ingest": {"sources": [f"gsm8k={shared_data('gsm8k', 'train.jsonl')}"], "limit": n_rows},
        "generate": {"n": 2, "max_tokens": 64, "seed": 7},
        "reward": {},
    })
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "metakl", "run", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while len(proxy.posts(200)) < n_rows // 3 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    from metakl.llm.cache import RequestCache

    finished = len(RequestCache(tmp_path / "cache"))  # answers the killed run received and committed
    assert 0 < finished < n_rows, "the kill must land during generate"
    assert not (tmp_path / "run" / "02-generate").exists()  # no half-written stage folder
    rerun_start = time.monotonic()  # the proxy stamps each request with its arrival on this clock
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr
    # The re-run asked exactly the prompts the first run had not finished (those in flight at the kill included).
    resent = [p for p in proxy.posts() if p[0] >= rerun_start]
    assert len(resent) == n_rows - finished
    assert len({digest for _, _, digest, _ in proxy.posts()}) == n_rows
    report = json.loads((tmp_path / "run" / "02-generate" / "generate_report.json").read_text())
    assert report["llm"]["cache_hits"] == finished and report["responses_stored"] == 2 * n_rows
    resumed = load_stage(tmp_path / "run" / "04-reward")
    assert len(resumed) == n_rows
    # An uninterrupted run of the same config (own cache) holds the same rows, prompts and group sizes. The texts are
    # not compared: vLLM on CPU is not batch-invariant, so a seeded request sampled next to other requests can
    # differ (measured: 4 of 12 seeded requests identical at concurrency 2 vs 12).
    clean = _write(tmp_path / "q.yaml", {**yaml.safe_load(cfg.read_text()), "run_dir": "run2",
                                         "llm": {"base_url": proxy.url, "concurrency": 2,
                                                 "cache_dir": str(tmp_path / "cache2")}})
    assert run_cli("run", str(clean)).returncode == 0
    straight = load_stage(tmp_path / "run2" / "04-reward")
    assert straight["id"] == resumed["id"] and straight["question"] == resumed["question"]
    assert [len(r) for r in straight["responses"]] == [len(r) for r in resumed["responses"]] == [2] * n_rows


def test_cli_unknown_serve_key_fails_before_ingest_writes_anything(tmp_path):
    """Issue 20, item 3: it ran ingest and wrote its folder, then failed at the server."""
    cfg = _write(tmp_path / "p.yaml", {"run_dir": str(tmp_path / "run"), "serve": {"model": "smollm2-135m-instruct",
                                                                                  "gpu": 1},
                                      "ingest": {"sources": [f"math={LOCAL / 'math_test.jsonl'}"]}, "generate": {}})
    proc = run_cli("run", str(cfg), in_process=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "serve: unknown setting(s) 'gpu'" in proc.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- the run folder and its inputs (item 1)


def test_run_folder_keeps_what_metakl_did_not_write_and_never_replaces_an_input(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    source = {"sources": [f"math={LOCAL / 'math_test.jsonl'}"]}
    cfg = _write(tmp_path / "p.yaml", {"run_dir": "run", "ingest": source})
    with pytest.raises(UserError, match=r"--out .*run: the folder holds files that are not a metakl run's "
                                        r"\(notes.txt\).*--overwrite"):
        load_plan(cfg)
    plan = run_plan(load_plan(cfg, overwrite=True), echo=lambda line: None)  # asked for: written beside the notes
    assert plan.stages[0].status == "ran" and (run / "notes.txt").read_text() == "mine"
    assert [s.status for s in run_plan(load_plan(cfg), echo=lambda line: None).stages] == ["cached"]  # ours now

    # A stage folder holding someone's file, and a stage folder that holds an input of this run.
    (run / "01-ingest" / "mine.txt").write_text("x")
    with pytest.raises(UserError, match=r"ingest's folder .*01-ingest: the folder exists and holds files metakl did "
                                        r"not write \(mine.txt\)"):
        load_plan(cfg)
    (run / "01-ingest" / "mine.txt").unlink()
    copy = run / "01-ingest" / "math.jsonl"
    copy.write_text((LOCAL / "math_test.jsonl").read_text())
    cfg = _write(tmp_path / "p.yaml", {"run_dir": "run", "ingest": {"sources": [f"math={copy}"]}})
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"ingest's folder .*01-ingest: holds the input .*math.jsonl"):
            load_plan(cfg, overwrite=overwrite)
    inside = _write(run / "config.yaml", {"run_dir": ".", "ingest": source})  # the config where the run writes its own
    with pytest.raises(UserError, match=r"the run writes .*config.yaml, which is an input of the run"):
        load_plan(inside)
    assert (run / "notes.txt").read_text() == "mine" and copy.exists()


# ---------------------------------------------------------------- fingerprints of preset sources (item 2)


def test_an_edited_preset_source_reruns_ingest_and_everything_after_it(tmp_path, monkeypatch):
    """The demo config names its sources by preset (demo-math, ...): the fingerprint follows the files they resolve
    to. Copies of the demo's files in $METAKL_ANNOTATIONS take the place of the packaged ones."""
    demo = ROOT / "annotations" / "demo"
    mine = tmp_path / "annotations" / "demo"
    mine.mkdir(parents=True)
    for f in demo.glob("*.jsonl"):
        (mine / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("METAKL_ANNOTATIONS", str(tmp_path / "annotations"))
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text((demo / "pipeline.yaml").read_text())
    quiet = {"echo": lambda line: None}

    first = run_plan(load_plan(cfg, run_dir=tmp_path / "run", until="ingest"), **quiet)
    assert [s.status for s in first.stages][:2] == ["ran", "after"]
    before = {s.name: s.fingerprint for s in first.stages}
    assert [s.status for s in run_plan(load_plan(cfg, run_dir=tmp_path / "run", until="ingest"), **quiet).stages][0] == "cached"

    records = (mine / "math.jsonl").read_text().splitlines()
    edited = json.loads(records[0])
    edited["question"] = edited["question"] + " Show every step."  # the same file size would do as well: content
    (mine / "math.jsonl").write_text("\n".join([json.dumps(edited), *records[1:]]) + "\n")
    again = run_plan(load_plan(cfg, run_dir=tmp_path / "run", until="ingest"), **quiet)
    assert again.stages[0].status == "ran"
    after = {s.name: s.fingerprint for s in again.stages}
    assert all(after[name] != before[name] for name in before), "every stage after ingest must re-run too"
    assert edited["question"] in load_stage(tmp_path / "run" / "01-ingest")["question"]
    plan = load_plan(cfg, run_dir=tmp_path / "run")
    fingerprint_stages(plan)
    assert [line.split()[1] for line in dry_run_table(plan)[1:3]] == ["done:", "run"]


def test_source_fingerprint_sees_an_edit_of_the_same_size_within_the_same_second(tmp_path):
    data = tmp_path / "math.jsonl"
    data.write_text((LOCAL / "math_test.jsonl").read_text())
    cfg = _write(tmp_path / "p.yaml", {"run_dir": "run", "ingest": {"sources": [f"math={data}"]}})
    plan = load_plan(cfg)
    fingerprint_stages(plan)
    first = plan.stages[0].fingerprint
    stat = data.stat()
    text = data.read_text()
    data.write_text(text.replace("1", "2", 1) if "1" in text else text.replace("a", "b", 1))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time: only the content differs
    assert data.stat().st_size == stat.st_size
    fingerprint_stages(plan)
    assert plan.stages[0].fingerprint != first


# ---------------------------------------------------------------- a stage whose rows mostly fail (item 3)


def test_server_dying_mid_generate_stops_the_run_non_zero_with_rows_kept(fault_proxy, tmp_path):
    """The server goes away after a few answers: generate's failed rows carry `llm_error`; the run stops with exit 3,
    the count and the command to resume, keeps every row, and does not build reward on them. It exited 0 before."""
    proxy = fault_proxy()
    n_rows = 8
    cfg = _write(tmp_path / "p.yaml", {
        "run_dir": "run",
        "llm": {"base_url": proxy.url, "concurrency": 2, "cache_dir": str(tmp_path / "cache")},
        "ingest": {"sources": [f"gsm8k={shared_data('gsm8k', 'train.jsonl')}"], "limit": n_rows},
        "generate": {"n": 1, "max_tokens": 16, "seed": 7},
        "reward": {},
    })
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METAKL_PROGRESS": "0"}
    child = subprocess.Popen([sys.executable, "-m", "metakl", "run", str(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while len(proxy.posts(200)) < 2 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    proxy.stop()  # every later request fails after its retries
    proxy.stop = lambda: None  # stopped once: the fixture's teardown has nothing left to stop
    _, stderr = child.communicate(timeout=300)
    answered = len(proxy.posts(200))
    assert 0 < answered < n_rows, "the server must die during generate"
    run = tmp_path / "run"
    last = stderr.strip().splitlines()[-1]
    assert child.returncode == 3, stderr
    assert last.startswith(f"error: generate: {n_rows - answered} of {n_rows} rows") and "(llm_error" in last, last
    assert last.count(f"resume with: metakl run {cfg} --out {run}") == 1
    kept = load_stage(run / "02-generate")
    assert len(kept) == n_rows and sum(bool(r["responses"]) for r in kept) == answered
    assert "fingerprint" not in json.loads((run / "02-generate" / FINGERPRINT_FILE).read_text())
    assert not (run / "03-reward").exists()
    manifest = json.loads((run / MANIFEST).read_text())
    assert [(s["stage"], s["status"]) for s in manifest["stages"]] == [("ingest", "ran"), ("generate", "failed")]
    # The resume does generate again (its answered requests come from the cache), then the rest.
    # The dry run still prints the plan, and names the endpoint that died (exit 2) before anything is resent.
    proc = run_cli("run", str(cfg), "--dry-run")
    assert [line.split()[1] for line in proc.stdout.splitlines()[1:]] == ["done:", "re-run", "run"], proc.stdout
    assert proc.returncode == 2 and proxy.url.split("/v1")[0] in proc.stderr, proc.stderr


def test_max_error_rate_flag_over_stage_section_over_top_level_over_default(tmp_path):
    source = {"sources": [f"math={LOCAL / 'math_test.jsonl'}"]}
    cfg = _write(tmp_path / "p.yaml", {"run_dir": "run", "ingest": source, "generate": {"max_error_rate": 0.5},
                                      "dedup": {}})
    assert [s.max_error_rate for s in load_plan(cfg).stages] == [0.05, 0.5, 0.05]
    _write(cfg, {"run_dir": "run", "max_error_rate": 0.2, "ingest": source, "generate": {"max_error_rate": 0.5}})
    assert [s.max_error_rate for s in load_plan(cfg).stages] == [0.2, 0.5]
    assert [s.max_error_rate for s in load_plan(cfg, max_error_rate=1.0).stages] == [1.0, 1.0]


def test_a_stage_named_in_stages_needs_no_section(tmp_path):
    cfg = _write(tmp_path / "p.yaml", {"run_dir": "run", "stages": ["ingest", "generate"],
                                      "ingest": {"sources": [f"math={LOCAL / 'math_test.jsonl'}"]}, "dedup": {}})
    assert [s.name for s in load_plan(cfg).stages] == ["ingest", "generate"]


def test_an_edited_benchmark_file_of_the_suite_reruns_decontaminate(tmp_path):
    """decontaminate declares what it reads (`@stage(reads=...)`): its benchmarks and the data files of its suite's
    tasks. The suite's data was not in the fingerprint before (issue 24): an edited benchmark file left a finished
    decontaminate 'done'. Now its fingerprint (and only it and what follows) changes; ingest's stays."""
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    bench = data / "gsm8k" / "train.jsonl"
    bench.write_text((LOCAL / "gsm8k_train.jsonl").read_text())
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: mine\ndescription: one task\ntasks:\n  - task: gsm8k\n    n: 2\n")
    source = tmp_path / "math.jsonl"
    source.write_text((LOCAL / "math_test.jsonl").read_text())
    cfg = _write(tmp_path / "p.yaml", {"run_dir": "run", "ingest": {"sources": [f"math={source}"]},
                                       "decontaminate": {"suite": str(suite), "data_dir": str(data)}})
    plan = load_plan(cfg)
    from metakl.stages import get_stage

    assert bench in get_stage("decontaminate").reads(plan.stages[1].config)
    fingerprint_stages(plan)
    before = [s.fingerprint for s in plan.stages]
    bench.write_text(bench.read_text().replace("a", "b", 1))
    fingerprint_stages(plan)
    after = [s.fingerprint for s in plan.stages]
    assert after[0] == before[0] and after[1] != before[1]
