"""`metakl publish`: the release folder loads with `datasets`, the card parses and matches the data, and the upload
is one commit to a Hub endpoint (a local recording server stands in for the Hub, which is unreachable here)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from datasets import Dataset, load_dataset

from conftest import run_cli
from metakl.errors import UserError
from metakl.io import save_stage
from metakl.schema import features
from metakl.stages.publish import PublishConfig, proficiency_table, publish, write_release

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_test_secret_token_1234567890"


def _resp(text: str, reward: float, model: str = "teacher-a") -> dict:
    return {"text": text, "reasoning": None, "answer": None, "reward": reward, "advantage": None, "model": model,
            "finish_reason": "stop"}


def _rows() -> list[dict]:
    rows = []
    specs = [("m1", "gsm8k", "math", ["arithmetic", "word_problems"], [("b1", 1.0), ("b2", 0.0)], ""),
             ("m2", "gsm8k", "math", ["arithmetic"], [("b1", 0.5), ("b2", 0.5)], ""),
             ("m3", "math", "math", ["fractions"], [("b1", 0.0)], "m1"),  # a duplicate: left out
             ("g1", "mmlu", "general", ["biology"], [], ""),
             ("s1", "xstest", "safety", ["refuse_weapons"], [("b1", 1.0)], ""),
             ("s2", "advbench", "safety", ["refuse_weapons", "refuse_violence"], [("b1", 0.0), ("b2", 1.0)], "")]
    for rid, source, domain, units, prof, dup in specs:
        rows.append({
            "id": rid, "source": source, "domain": domain, "question": f"Question {rid}?", "reference": "1",
            "choices": [], "meta": "{}", "errors": [],
            "responses": [_resp(f"answer {rid} a", 0.9), _resp(f"answer {rid} b", 0.2, "teacher-b")],
            "knowledge": [{"skill": u, "reason": "needed"} for u in units], "units": units,
            "proficiency": [{"model": m, "accuracy": a, "samples": 2} for m, a in prof],
            "cluster": 0, "duplicate_of": dup,
        })
    return rows


def _as_run(run: Path, folders: list[str]) -> None:
    """Make `folders` (in order) the stages of a `metakl run` folder: its manifest, config and fingerprints."""
    from metakl.pipeline import FINGERPRINT_FILE, MANIFEST

    stages = []
    for name in folders:
        stage = name.split("-", 1)[1]
        (run / name / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": f"fp-{name}", "stage": stage}))
        stages.append({"stage": stage, "status": "ran", "folder": name, "fingerprint": f"fp-{name}"})
    (run / MANIFEST).write_text(json.dumps({"metakl_run": 1, "stages": stages, "versions": {"metakl": "test"}}))
    (run / "config.yaml").write_text("".join(f"{n.split('-', 1)[1]}: {{}}\n" for n in folders))


@pytest.fixture
def stage_dir(tmp_path) -> Path:
    ds = Dataset.from_list(_rows(), features=features("responses", "knowledge", "units", "proficiency", "cluster",
                                                      "duplicate_of"))
    run = tmp_path / "run"
    save_stage(ds, run / "08-dedup", {"stage": "dedup", "rows_in": 6, "rows_out": 6, "removed": 1,
                                      "llm": {}, "templates": [], "seconds": 1.0}, "dedup_report.json")
    save_stage(ds, run / "02-generate", {"stage": "generate", "rows_in": 6, "rows_out": 6, "seconds": 3.0,
                                         "templates": ["generate/math@1"],
                                         "llm": {"model": "teacher-a (openai)", "prompt_tokens": 100,
                                                 "completion_tokens": 50}}, "generate_report.json")
    _as_run(run, ["02-generate", "08-dedup"])
    return run / "08-dedup"


def test_release_loads_per_config_with_expected_rows(stage_dir, tmp_path):
    from metakl.io import load_stage

    result = publish(load_stage(stage_dir), PublishConfig(name="Test release"), input_dir=stage_dir)
    out = write_release(result, tmp_path / "release")
    expected = {"all": 5, "math": 2, "general": 1, "safety": 2}
    for config, n in expected.items():
        ds = load_dataset(str(out), config, split="train")
        assert len(ds) == n, config
        assert ds.features["responses"] == features("responses")["responses"]
    assert "m3" not in load_dataset(str(out), "all", split="train")["id"]  # duplicate left out
    units = load_dataset(str(out), "taxonomy", split="train")
    assert dict(zip(units["unit"], units["prompts"])) == {"arithmetic": 2, "word_problems": 1, "biology": 1,
                                                          "refuse_weapons": 2, "refuse_violence": 1}
    prof = load_dataset(str(out), "proficiency", split="train")
    table = {(u, m): (p, n) for u, m, p, n in zip(prof["unit"], prof["model"], prof["proficiency"], prof["prompts"])}
    # arithmetic: prompts m1 (b1 1.0, b2 0.0) and m2 (0.5, 0.5): b1 mean 0.75, average of prompt means 0.5.
    assert table["arithmetic", "b1"] == (0.75, 2) and table["arithmetic", "b2"] == (0.25, 2)
    assert table["arithmetic", "average"] == (0.5, 2) and table["refuse_weapons", "average"] == (0.75, 2)
    assert ("biology", "b1") not in table  # no base-model answers for it
    for png in ("domains.png", "top_units.png", "units_per_prompt.png", "rewards.png", "proficiency.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_card_yaml_parses_and_its_numbers_match_the_data(stage_dir, tmp_path):
    from huggingface_hub import DatasetCard

    from metakl.io import load_stage

    result = publish(load_stage(stage_dir), PublishConfig(name="Test release", license="cc-by-4.0", test_size=0.5),
                     input_dir=stage_dir)
    out = write_release(result, tmp_path / "release")
    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["pretty_name"] == "Test release"
    assert data["size_categories"] == ["n<1K"] and "openai/gsm8k" in data["source_datasets"]
    configs = {c["config_name"]: c for c in data["configs"]}
    assert set(configs) == {"all", "math", "general", "safety", "taxonomy", "proficiency"}
    assert configs["all"]["default"] is True
    info = {i["config_name"]: i for i in data["dataset_info"]}
    for name in ("all", "math", "safety"):
        loaded = load_dataset(str(out), name)
        assert {s["name"]: s["num_examples"] for s in info[name]["splits"]} == {k: len(v) for k, v in loaded.items()}
    text = card.text
    assert "| math | 2 |" in text and "| safety | 2 |" in text and "| general | 1 |" in text
    assert "| gsm8k | 2 |" in text and "5 knowledge units" in text
    assert "1 rows marked as duplicates were left out" in text
    assert "| generate | 6 | 6 | teacher-a (openai) | 150 | generate/math@1 |" in text
    assert "gdpo train" in text and "![domains.png](plots/domains.png)" in text
    build = json.loads((out / "metakl_build.json").read_text())
    assert set(build["reports"]) == {"dedup", "generate"}


def test_card_shows_the_knowledge_gap_report_as_tables(stage_dir, tmp_path):
    from metakl.io import load_stage

    gap = {"base_model": "b1",
           "coverage": {"units": 5, "before": {"prompts": 6, "units_with_prompts": 5, "units_at_target": 1,
                                               "weak_units_at_target": 0, "mean_proficiency_of_prompts": 0.4},
                        "after": {"prompts": 4, "units_with_prompts": 5, "units_at_target": 3,
                                  "weak_units_at_target": 2, "mean_proficiency_of_prompts": 0.25}},
           "short_of_target": {"not_enough_prompts": 2, "budget": 0},
           "lacking": [{"unit": "fractions", "proficiency": 0.0, "prompts": 1, "target": 6, "pool": 1, "selected": 1,
                        "status": "not_enough_prompts"}]}
    save_stage(load_stage(stage_dir), stage_dir.parent / "09-filter",
               {"stage": "filter", "rows_in": 6, "rows_out": 4, "knowledge_gap": gap}, "filter_report.json")
    _as_run(stage_dir.parent, ["02-generate", "08-dedup", "09-filter"])
    result = publish(load_stage(stage_dir.parent / "09-filter"), PublishConfig(), input_dir=stage_dir.parent / "09-filter")
    text = (write_release(result, tmp_path / "release") / "README.md").read_text()
    section = text[text.index("## Knowledge gaps"):]
    assert "for **b1**" in section and "```json" not in section
    assert "| prompts | 6 | 4 |" in section and "| units with prompts (of 5) | 5 | 5 |" in section
    assert "| weak units at their target | 0 | 2 |" in section
    assert "| mean proficiency of the prompts | 0.40 | 0.25 |" in section
    assert "| fractions | 0.00 | 1 | 6 | 1 | not_enough_prompts |" in section
    assert "by reason: not_enough_prompts 2" in section and "budget 0" not in section


def test_bad_input_is_one_clear_error(tmp_path):
    empty = Dataset.from_dict({k: [] for k in features()}, features=features())
    with pytest.raises(UserError, match="no rows"):
        publish(empty)
    no_domain = Dataset.from_dict({"id": ["a"], "question": ["q"]})
    with pytest.raises(UserError, match="stage publish: input has no column 'domain'"):
        publish(no_domain)
    with pytest.raises(UserError, match="test_size"):
        PublishConfig(test_size=1.5)
    assert len(proficiency_table(Dataset.from_dict({"id": ["a"]}))) == 0


class _FakeHub(BaseHTTPRequestHandler):
    """Answers the huggingface_hub calls an upload makes and records them."""

    calls: list[dict] = []

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _reply(self, obj, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.calls.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
        self._reply({"error": "not here"}, 404)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        call = {"method": "POST", "path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        self.calls.append(call)
        path = self.path.split("?")[0]
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if path == "/api/repos/create":
            payload = json.loads(body)
            self._reply({"url": f"{base}/datasets/{payload.get('organization') or ''}/{payload['name']}"})
        elif path == "/api/validate-yaml":
            self._reply({"errors": [], "warnings": []})
        elif "/preupload/" in path:
            files = json.loads(body)["files"]
            self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                   for f in files]})
        elif "/branch/" in path:
            self._reply({})
        elif "/commit/" in path:
            self._reply({"commitUrl": f"{base}/datasets/me/rel/commit/" + "a" * 40, "commitOid": "a" * 40,
                         "pullRequestUrl": None})
        else:
            self._reply({"error": f"unexpected {path}"}, 404)


@pytest.fixture
def fake_hub():
    _FakeHub.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _FakeHub.calls
    server.shutdown()


def test_push_is_one_commit_with_every_file_and_no_token_anywhere(stage_dir, tmp_path, fake_hub):
    endpoint, calls = fake_hub
    env = {"HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": tmp_path / "hf-home"}
    out = tmp_path / "release"
    proc = run_cli("publish", stage_dir, "--out", out, "--push-to-hub", "me/rel", "--private", "--revision", "v1",
                   "--commit-message", "First MetaKL release", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pushed to me/rel" in proc.stdout
    commits = [c for c in calls if "/commit/" in c["path"]]
    assert len(commits) == 1 and commits[0]["path"] == "/api/datasets/me/rel/commit/v1"
    lines = [json.loads(line) for line in commits[0]["body"].splitlines()]
    header = next(item["value"] for item in lines if item["key"] == "header")
    assert header["summary"] == "First MetaKL release"
    sent = {item["value"]["path"]: base64.b64decode(item["value"]["content"]) for item in lines if item["key"] == "file"}
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    local.pop("publish_report.json")  # the local report is not part of the release
    local.pop(".metakl-output.json")  # nor the marker that lets metakl replace the folder later
    assert sent == local
    create = next(c for c in calls if c["path"] == "/api/repos/create")
    created = json.loads(create["body"])
    assert created["type"] == "dataset" and (created.get("private") is True or created.get("visibility") == "private")
    assert any("/branch/v1" in c["path"] for c in calls)
    # The token went to the endpoint, and nowhere else.
    assert all(c["auth"] == f"Bearer {TOKEN}" for c in calls)
    assert TOKEN not in proc.stdout + proc.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_failure_is_one_clear_error(stage_dir, tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HOME": tmp_path / "hf-home",
           "HF_HUB_ETAG_TIMEOUT": "2"}
    proc = run_cli("publish", stage_dir, "--out", tmp_path / "r", "--push-to-hub", "me/rel", env=env, timeout=300)
    assert proc.returncode == 2 and "error: push to me/rel failed" in proc.stderr
    assert "Traceback" not in proc.stderr and TOKEN not in proc.stderr
    assert (tmp_path / "r" / "README.md").exists()  # the release itself was written before the upload


# --- issue 20 item 5: duplicate ids, the input's own lineage, the columns present --------------------------------


def test_duplicate_ids_are_refused_naming_the_first_few(tmp_path):
    rows = [r for r in _rows() for _ in range(2)]  # every id twice
    ds = Dataset.from_list(rows, features=features("responses", "knowledge", "units", "proficiency", "cluster",
                                                   "duplicate_of"))
    with pytest.raises(UserError, match=r"^publish: 6 id\(s\) occur on more than one row \(12 rows\), e.g. 'm1', 'm2', "
                                        r"'m3'; each row needs its own id"):
        publish(ds)
    save_stage(ds, tmp_path / "in")
    proc = run_cli("publish", str(tmp_path / "in"), "--out", str(tmp_path / "rel"), in_process=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "6 id(s) occur on more than one row" in proc.stderr and not (tmp_path / "rel").exists()


def test_card_describes_only_the_inputs_own_stages(tmp_path):
    """The issue's case: stage folders of other runs next to the input were described as its build."""
    ds = Dataset.from_list(_rows(), features=features("responses", "knowledge", "units", "proficiency", "cluster",
                                                      "duplicate_of"))
    work = tmp_path / "work"
    save_stage(ds, work / "other-ingest", {"stage": "ingest", "rows_in": 20607, "rows_out": 20607}, "ingest_report.json")
    save_stage(ds, work / "other-filter", {"stage": "filter", "rows_in": 45366, "rows_out": 5600,
                                           "knowledge_gap": {"base_model": "someone-else"}}, "filter_report.json")
    (work / "other-filter" / "taxonomy.json").write_text(json.dumps({"units": {"arithmetic": {"description": "X"}}}))
    save_stage(ds, work / "mine", {"stage": "dedup", "rows_in": 6, "rows_out": 6, "removed": 1}, "dedup_report.json")
    proc = run_cli("publish", str(work / "mine"), "--out", str(tmp_path / "rel"), in_process=True)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "rel" / "README.md").read_text()
    built = text[text.index("## How it was built"):text.index("## Statistics")]
    assert "| dedup | 6 | 6 |" in built and "Only the published stage is described" in built
    assert "20607" not in text and "45366" not in text and "someone-else" not in text and "| filter |" not in text
    build = json.loads((tmp_path / "rel" / "metakl_build.json").read_text())
    assert set(build["reports"]) == {"dedup"} and build["manifest"] is None and "run_dir" not in build["publish"]
    assert "stage reports described: dedup" in proc.stdout

    # In a run folder: the chain up to the input; a stage left from an older run (its fingerprint is not the
    # manifest's) or not planned in this run is not part of it.
    run = tmp_path / "run"
    for name, report in (("01-ingest", {"rows_in": 9, "rows_out": 6}), ("02-generate", {"rows_in": 6, "rows_out": 6}),
                         ("08-dedup", {"rows_in": 6, "rows_out": 6}), ("09-filter", {"rows_in": 45366, "rows_out": 5600})):
        stage = name.split("-", 1)[1]
        save_stage(ds, run / name, {"stage": stage, **report}, f"{stage}_report.json")
    _as_run(run, ["01-ingest", "02-generate", "08-dedup", "09-filter"])
    from metakl.pipeline import FINGERPRINT_FILE

    (run / "09-filter" / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": "an-older-run", "stage": "filter"}))
    from metakl.stages.publish import lineage, read_run

    assert lineage(run, run / "02-generate") == ([run / "01-ingest", run / "02-generate"], True)
    assert lineage(run) == ([run / "01-ingest", run / "02-generate", run / "08-dedup"], True)  # the pipeline's own
    assert lineage(run, run / "09-filter") == ([run / "09-filter"], False)  # not this run's output
    assert lineage(run, work / "mine") == ([work / "mine"], False)  # --run-dir that the input is no stage of
    (run / "config.yaml").write_text("ingest: {}\ndedup: {}\n")  # generate no longer planned
    assert lineage(run, run / "08-dedup") == ([run / "01-ingest", run / "08-dedup"], True)
    assert set(read_run(run, run / "08-dedup")["reports"]) == {"ingest", "dedup"}


def test_card_describes_only_the_columns_present(tmp_path):
    full = Dataset.from_list(_rows(), features=features("responses", "knowledge", "units", "proficiency", "cluster",
                                                        "duplicate_of"))
    text = (write_release(publish(full, PublishConfig()), tmp_path / "full") / "README.md").read_text()
    assert "`responses` (list of" in text and "a group of teacher responses" in text and "gdpo train" in text
    assert "Teacher responses are model outputs" in text and "`proficiency` (per base model" in text
    bare = full.remove_columns(["responses", "proficiency", "knowledge", "cluster"])
    text = (write_release(publish(bare, PublishConfig()), tmp_path / "bare") / "README.md").read_text()
    assert "responses" not in text.lower() and "gdpo train" not in text and "proficiency` (" not in text
    assert "`knowledge`" not in text and "`cluster`" not in text
    assert ("Columns: `question`, `reference` (gold answer, choice letter or expected behaviour `refuse`/`comply`), "
            "`choices`, `units` (knowledge units), `duplicate_of`, `errors` (what each stage could not do, per row).") in text
    assert "safety sources, each with the metacognitive knowledge units needed to solve it." in text


def test_a_pipeline_publish_describes_its_own_run(tmp_path):
    """A real `metakl run` (ingest → import-responses → reward → publish, no model), with stage folders of another
    run left in its folder: the card lists exactly the run's three stages before publish."""
    from conftest import shared_data

    math = shared_data("qwen25math_rm_maj_example", "math_cot_100.jsonl")
    local = ROOT / "tests" / "fixtures" / "ingest" / "local" / "math_test.jsonl"
    run = tmp_path / "run"
    ds = Dataset.from_list(_rows(), features=features("responses", "knowledge", "units", "proficiency", "cluster",
                                                      "duplicate_of"))
    save_stage(ds, run / "09-filter", {"stage": "filter", "rows_in": 45366, "rows_out": 5600}, "filter_report.json")
    save_stage(ds, run / "02-generate", {"stage": "generate", "rows_in": 20607, "rows_out": 20607}, "generate_report.json")
    config = tmp_path / "p.yaml"
    # the answers belong to other problems: reward's no_responses errors on every row are expected here
    config.write_text(json.dumps({"run_dir": str(run), "max_error_rate": 1.0, "ingest": {"sources": [f"math={local}"]},
                                  "import-responses": {"files": [str(math)], "preset": "qwen25math"},
                                  "reward": {}, "publish": {"name": "Lineage test"}}))
    proc = run_cli("run", str(config), in_process=True)
    assert proc.returncode == 0, proc.stderr
    text = (run / "11-publish" / "release" / "README.md").read_text()
    built = text[text.index("## How it was built"):text.index("## Statistics")]
    stages = [line.split("|")[1].strip() for line in built.splitlines() if line.startswith("| ") and "---" not in line]
    assert stages == ["stage", "ingest", "import-responses", "reward"], built
    assert "45366" not in text and "20607" not in text and "Only the published stage" not in text
    # publishing the reward folder by hand describes the same three stages; the ingest folder, itself alone
    proc = run_cli("publish", str(run / "04-reward"), "--out", str(tmp_path / "rel"), in_process=True)
    assert proc.returncode == 0 and "stage reports described: import-responses, ingest, reward" in proc.stdout, proc.stderr
    proc = run_cli("publish", str(run / "01-ingest"), "--out", str(tmp_path / "rel-ingest"), in_process=True)
    assert proc.returncode == 0 and "stage reports described: ingest\n" in proc.stdout, proc.stderr
