"""`gdpo ref-logps` and `gdpo train` end to end on CPU: a tiny model from SmolLM2's config, real MATH groups."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from datasets import Dataset
from typer.testing import CliRunner

from conftest import run_cli, shared_data
from gdpo.cli import app
from metakl.errors import UserError
from metakl.io import save_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_inherited_mixed_precision(monkeypatch):
    """transformers 4.x's TrainingArguments(bf16=True) writes ACCELERATE_MIXED_PRECISION into the process environment
    and later TrainingArguments read it: keep each test's precision its own."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def qwen_math_release(n_groups: int, group_size: int, reward: str = "score") -> Dataset:
    """Groups of MATH solutions from ../shared/data: mixed-correctness, short problems first; reward = correctness or RM score."""
    path = shared_data("qwen25math_rm_maj_example", "math_cot_100.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows.sort(key=lambda r: (not 0 < sum(r["score"]) < len(r["score"]), len(r["question"])))
    out = []
    for r in rows[:n_groups]:
        responses = []
        for text, correct, rm in list(zip(r["response"], r["score"], r["pred_score"]))[:group_size]:
            value = float(correct) if reward == "score" else float(rm[0])
            responses.append({"text": text, "reasoning": "", "answer": "", "reward": value, "advantage": 0.0, "model": "qwen2.5-math", "finish_reason": "stop"})
        out.append({"question": r["question"], "responses": responses})
    return Dataset.from_list(out)


@pytest.fixture(scope="module")
def tiny_dir(smollm2_path, tmp_path_factory):
    from gdpo_testing import save_tiny_smollm2

    return save_tiny_smollm2(smollm2_path, tmp_path_factory.mktemp("tiny-smollm2"))


def test_ref_logps_then_train_and_refuse_mismatch(tiny_dir, tmp_path):
    release = save_stage(qwen_math_release(3, 4), tmp_path / "release")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"model: {tiny_dir}\nmax_length: 160\nloss: gdpo\npairing: block\nlearning_rate: 1.0e-4\n"
        f"per_device_train_batch_size: 2\nreport_to: none\nuse_cpu: true\nsave_strategy: 'no'\nlogging_steps: 1\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    runner = CliRunner()
    from metakl import hardware

    hardware._announced.clear()  # the choice is printed once per process: earlier in-process tests may have printed it
    res = runner.invoke(app, ["ref-logps", "--config", str(cfg), "--data", str(release), "--out", str(tmp_path / "ref")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["groups"] == 3 and summary["truncated_responses"] > 0  # MATH solutions are longer than 160 tokens
    stored = Dataset.from_parquet(str(tmp_path / "ref" / "data.parquet"))
    assert len(stored["ref_logps"][0]) == 4 and all(v < 0 for v in stored["ref_logps"][0])
    fp = json.loads(stored["ref_logps_fingerprint"][0])
    assert fp["max_length"] == 160
    # dtype auto (the default): float32 weights, bf16 autocast exactly where metakl.hardware picks bfloat16 here.
    from metakl.hardware import auto_dtype

    assert fp["dtype"] == "float32" and fp["autocast"] == ("bfloat16" if auto_dtype("cpu").dtype == "bfloat16" else "none")
    assert "dtype auto:" in res.stderr

    res = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(tmp_path / "ref"), "--max_steps", "2", "--pairing=all"])
    assert res.exit_code == 0, res.output
    done = json.loads(res.stdout.strip().splitlines()[-1])
    assert done["global_step"] == 2
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert "reference: precomputed ref_logps column, checked to be computed with the policy at step 0" in res.stderr
    assert "recipe paper: loss gdpo, beta 0.1, weighting minmax, pairing all (given)" in res.stderr
    assert "3 groups (0 = 0% without a reward preference, skipped)" in res.stderr

    # Training with an explicit float32 precision against the auto reference: refused where auto chose bf16 autocast.
    if fp["autocast"] != "none":
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)  # transformers 4.x leaks it from the commands above (one process here)
        res = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(tmp_path / "ref"), "--max_steps", "1", "--bf16", "false"])
        assert isinstance(res.exception, UserError) and "autocast: stored 'bfloat16', now 'none'" in str(res.exception)

    # Unknown settings are refused with the file/field named.
    res = runner.invoke(app, ["train", "--config", str(cfg), "--data", str(release), "--learning-rat", "1"])
    assert isinstance(res.exception, UserError) and "unknown setting '--learning-rat'" in str(res.exception)

    # Through the console entry point: a mismatched max_length ends in one line and exit code 2.
    proc = run_cli("train", "--config", cfg, "--data", tmp_path / "ref", "--max_length", "128", "--max_steps", "1",
                   module="gdpo.cli", env={"OMP_NUM_THREADS": "2"}, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "max_length: stored 160, now 128" in lines[0] and "Traceback" not in proc.stderr


def test_accelerate_example_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    kinds = {}
    for name in ("one_gpu", "deepspeed_zero2", "fsdp"):
        kinds[name] = ClusterConfig.from_yaml_file(str(ROOT / "examples" / "gdpo" / "accelerate" / f"{name}.yaml"))
    assert str(kinds["deepspeed_zero2"].distributed_type) == "DistributedType.DEEPSPEED"
    assert kinds["deepspeed_zero2"].deepspeed_config["zero_stage"] == 2
    assert str(kinds["fsdp"].distributed_type) == "DistributedType.FSDP"


def test_example_training_config_parses():
    from gdpo.cli import Settings

    script, model, cfg = Settings("train").parse(["--config", str(ROOT / "examples" / "gdpo" / "gdpo_smollm2.yaml"),
                                                  "--use_peft", "true", "--lora_r", "8", "--beta", "0.2"])
    assert model.model_name_or_path == "smollm2-135m-instruct" and model.use_peft and model.lora_r == 8 and model.dtype == "auto"
    assert cfg.beta == 0.2 and cfg.recipe == "paper" and cfg.pairing == "block" and cfg.weighting == "minmax"
    assert cfg.learning_rate == 2e-6 and cfg.gradient_accumulation_steps == 8


def test_dtype_auto_and_explicit_precision(monkeypatch):
    import metakl.hardware
    from gdpo.cli import Settings
    from metakl.hardware import DtypeChoice

    monkeypatch.setattr(metakl.hardware, "auto_dtype", lambda device=None: DtypeChoice("bfloat16", "test: native bf16"))
    monkeypatch.setattr(metakl.hardware, "cuda_available", lambda: False)
    parse = lambda *argv: Settings("train").parse(list(argv))  # noqa: E731
    _, model, cfg = parse("--output_dir", "/tmp/x")
    assert model.dtype == "auto" and cfg.bf16 and not cfg.fp16 and cfg.use_cpu  # float32 weights + bf16 autocast
    _, _, cfg = parse("--use_cpu", "true", "--output_dir", "/tmp/x", "--bf16", "false")
    assert not cfg.bf16  # an explicit choice wins
    _, _, cfg = parse("--use_cpu", "true", "--output_dir", "/tmp/x", "--dtype", "float32")
    assert not cfg.bf16
    monkeypatch.setattr(metakl.hardware, "auto_dtype", lambda device=None: DtypeChoice("float32", "test: no native bf16"))
    _, _, cfg = parse("--use_cpu", "true", "--output_dir", "/tmp/x")
    assert not cfg.bf16 and not cfg.fp16
    with pytest.raises(UserError, match="setting 'dtype'"):
        parse("--dtype", "float64")


# ---- recipes through `gdpo train`: printed, saved, in the model card, reaching the loss --------------------------------

SHORT_RELEASE = [  # binary rewards with ties: block pairs 2 per group, the paper's G − 1 = 3
    {"question": "What is 2 + 3?", "responses": [{"text": "2 + 3 = 5.", "reward": 1.0}, {"text": "It is 6.", "reward": 0.0},
                                                 {"text": "5.", "reward": 1.0}, {"text": "Maybe 7.", "reward": 0.0}]},
    {"question": "Is 7 prime?", "responses": [{"text": "Yes, 7 is prime.", "reward": 1.0}, {"text": "No.", "reward": 0.0},
                                              {"text": "Yes.", "reward": 1.0}, {"text": "7 = 3 * 2, no.", "reward": 0.0}]},
]


def short_release(tmp_path) -> Path:
    return save_stage(Dataset.from_list(SHORT_RELEASE), tmp_path / "release")


def train_args(model, release, out, *extra) -> list[str]:
    return ["train", "--model", str(model), "--data", str(release), "--output_dir", str(out), "--max_steps", "1",
            "--max_length", "64", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--dtype", "float32",
            "--per_device_train_batch_size", "2", "--logging_steps", "1", *extra]


def test_default_run_is_the_paper_recipe_printed_saved_and_in_the_model_card(tiny_dir, tmp_path):
    res = CliRunner().invoke(app, train_args(tiny_dir, short_release(tmp_path), tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert ("recipe paper: loss gdpo, beta 0.1, weighting minmax, pairing block, link sigmoid, group_normalization paper, "
            "rpo_alpha 0.0") in res.stderr
    saved = json.loads((tmp_path / "out" / "gdpo_settings.json").read_text())
    assert {k: saved[k] for k in ("recipe", "loss", "weighting", "pairing", "link", "group_normalization", "rpo_alpha", "given")} == {
        "recipe": "paper", "loss": "gdpo", "weighting": "minmax", "pairing": "block", "link": "sigmoid",
        "group_normalization": "paper", "rpo_alpha": 0.0, "given": []}
    assert saved["reference"] == "a frozen copy of the model, on the fly" and saved["autocast"] == "none"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## GDPO settings" in card and '"recipe": "paper"' in card and '"group_normalization": "paper"' in card
    # At step 0 the policy is the reference: every pair's loss is −σ(0) = −0.5. Each group has 2 block pairs between
    # its two tied blocks, divided by the paper's G − 1 = 3: −1/3 (the low-drift recipe's ÷ pairs gives −0.5).
    assert json.loads(res.stdout.strip().splitlines()[-1])["train_loss"] == pytest.approx(-1 / 3, rel=1e-4)


def test_recipe_flags_reach_the_loss(tiny_dir, tmp_path):
    release = short_release(tmp_path)
    res = CliRunner().invoke(app, train_args(tiny_dir, release, tmp_path / "a", "--recipe", "low-drift", "--rpo_alpha", "0"))
    assert res.exit_code == 0, res.output
    assert "recipe low-drift: loss gdpo, beta 0.1, weighting none, pairing block, link sigmoid, group_normalization pairs, rpo_alpha 0.0 (given)" in res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["train_loss"] == pytest.approx(-0.5, rel=1e-4)  # ÷ counted pairs
    saved = json.loads((tmp_path / "a" / "gdpo_settings.json").read_text())
    assert saved["recipe"] == "low-drift" and saved["given"] == ["rpo_alpha"]


def test_help_lists_every_field_with_its_help():
    res = CliRunner().invoke(app, ["train", "--help"])
    assert res.exit_code == 0
    text = re.sub(r"-\s+", "-", " ".join(res.stdout.split()))  # argparse wraps lines at hyphens
    for needle in ("--recipe RECIPE", "paper-literal", "--group_normalization", "--use_peft", "--lora_r LORA_R",
                   "--model_name_or_path", "--model MODEL_NAME_OR_PATH", "--learning_rate", "--allow_low_precision_weights"):
        assert needle in text, needle
    res = CliRunner().invoke(app, ["ref-logps", "--help"])
    assert res.exit_code == 0 and "--batch_size BATCH_SIZE, --batch-size BATCH_SIZE" in " ".join(res.stdout.split())


# ---- defect 1: the column is checked against the model that IS the reference --------------------------------------------


@pytest.fixture(scope="module")
def other_tiny_dir(smollm2_path, tmp_path_factory):
    """A second tiny model: same config and tokenizer, other weights (seed 1): the intended reference."""
    from gdpo_testing import save_tiny_smollm2

    return save_tiny_smollm2(smollm2_path, tmp_path_factory.mktemp("tiny-smollm2-ref"), seed=1)


def test_precomputed_column_is_checked_against_the_given_ref_model(tiny_dir, other_tiny_dir, tmp_path):
    release = short_release(tmp_path)
    common = ["--max_length", "64", "--dtype", "float32", "--use_cpu", "true", "--data", str(release)]
    runner = CliRunner()
    # The column computed with the intended reference: accepted, and used (before: refused, checked against the policy).
    res = runner.invoke(app, ["ref-logps", "--model", str(other_tiny_dir), *common, "--out", str(tmp_path / "by-ref")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, train_args(tiny_dir, tmp_path / "by-ref", tmp_path / "out1", "--ref_model", str(other_tiny_dir)))
    assert res.exit_code == 0, res.output
    assert "reference: precomputed ref_logps column, checked to be computed with ref_model" in res.stderr
    # `gdpo ref-logps` with the training settings (model + ref_model) computes the column with ref_model.
    res = runner.invoke(app, ["ref-logps", "--model", str(tiny_dir), "--ref_model", str(other_tiny_dir), *common, "--out", str(tmp_path / "by-ref2")])
    assert res.exit_code == 0, res.output
    fingerprints = [Dataset.from_parquet(str(tmp_path / d / "data.parquet"))["ref_logps_fingerprint"] for d in ("by-ref", "by-ref2")]
    assert fingerprints[0] == fingerprints[1]
    # A column computed from the policy, with another ref_model given: refused, naming the model part.
    res = runner.invoke(app, ["ref-logps", "--model", str(tiny_dir), *common, "--out", str(tmp_path / "by-policy")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, train_args(tiny_dir, tmp_path / "by-policy", tmp_path / "out2", "--ref_model", str(other_tiny_dir)))
    assert isinstance(res.exception, UserError), res.output
    assert "precomputed reference log-probs do not match this run (model: stored" in str(res.exception)
    assert not (tmp_path / "out2").exists()
    # Without ref_model the policy is the reference: the policy's column is accepted.
    res = runner.invoke(app, train_args(tiny_dir, tmp_path / "by-policy", tmp_path / "out3"))
    assert res.exit_code == 0, res.output


def test_ref_model_with_lora_is_refused(tiny_dir, other_tiny_dir, tmp_path):
    res = CliRunner().invoke(app, train_args(tiny_dir, short_release(tmp_path), tmp_path / "out", "--ref_model", str(other_tiny_dir),
                                             "--use_peft", "true", "--lora_r", "4"))
    assert isinstance(res.exception, UserError) and "ref_model with LoRA" in str(res.exception)
    assert not (tmp_path / "out").exists()


# ---- issue 20 items 8 and 9: bad inputs end in one line, nothing left behind -------------------------------------------


def bad_files(tmp_path) -> dict[str, Path]:
    good = save_stage(Dataset.from_list(SHORT_RELEASE), tmp_path / "good") / "data.parquet"
    files = {}
    files["malformed.jsonl"] = tmp_path / "malformed.jsonl"
    files["malformed.jsonl"].write_text(json.dumps(SHORT_RELEASE[0]) + "\n" + '{"question": "Q", "responses": [\n')
    files["empty.parquet"] = tmp_path / "empty.parquet"
    files["empty.parquet"].write_bytes(b"")
    files["truncated.parquet"] = tmp_path / "truncated.parquet"
    files["truncated.parquet"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["corrupt.parquet"] = tmp_path / "corrupt.parquet"
    files["corrupt.parquet"].write_bytes(b"PAR1" + b"\x00garbage" * 64 + b"PAR1")
    return files


EXPECTED_LINE = {
    "malformed.jsonl": "malformed.jsonl line 2: field '<line>': expected one complete JSON object per line",
    "empty.parquet": "not a readable stage file",
    "truncated.parquet": "not a readable stage file",
    "corrupt.parquet": "not a readable stage file",
}


@pytest.mark.parametrize("verb", ["train", "ref-logps"])
def test_bad_release_files_are_one_line_errors(tiny_dir, tmp_path, verb):
    for name, path in bad_files(tmp_path).items():
        out = tmp_path / f"out-{name}"
        argv = (train_args(tiny_dir, path, out) if verb == "train" else
                ["ref-logps", "--model", str(tiny_dir), "--data", str(path), "--out", str(out), "--dtype", "float32"])
        res = CliRunner().invoke(app, argv)
        assert isinstance(res.exception, UserError), (name, res.output)
        assert EXPECTED_LINE[name] in str(res.exception) and str(path) in str(res.exception), (name, str(res.exception))
        assert not out.exists(), name


def test_bad_release_through_the_console_entry_point(tiny_dir, tmp_path):
    path = bad_files(tmp_path)["truncated.parquet"]
    proc = run_cli(*train_args(tiny_dir, path, tmp_path / "out"), module="gdpo.cli", env={"OMP_NUM_THREADS": "2"},
                   cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a readable stage file" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def _damaged_release(draw, good: bytes) -> tuple[str, str, bytes]:
    """(what, file name, content) of a release file damaged at random: parquet that is empty, truncated or with a
    junk footer; JSONL with one broken line (syntax, not an object, a cut-off record)."""
    from hypothesis import strategies as st

    kind = draw(st.sampled_from(["empty", "truncated", "junk", "jsonl"]))
    if kind == "empty":
        return kind, "release.parquet", b""
    if kind == "truncated":
        return kind, "release.parquet", good[: draw(st.integers(1, len(good) - 1))]
    if kind == "junk":
        return kind, "release.parquet", good[:-4] + draw(st.binary(min_size=4, max_size=4).filter(lambda b: b != b"PAR1"))
    rows = [json.dumps(r) for r in SHORT_RELEASE]
    bad = draw(st.sampled_from(['{"question": "Q", "responses": [', "[1, 2]", '"text"', "{question: 1}", "\x00\x01"]))
    at = draw(st.integers(0, len(rows)))
    return kind, "release.jsonl", ("\n".join(rows[:at] + [bad] + rows[at:]) + "\n").encode()


def test_property_every_gdpo_verb_refuses_a_damaged_release_in_one_line(tiny_dir, tmp_path):
    """Issue 20's property test for the gdpo verbs: random damaged release files -> a UserError (the console entry
    prints it as one `error:` line with exit 2, test_bad_release_through_the_console_entry_point) naming the file,
    nothing written."""
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good = (short_release(tmp_path) / "data.parquet").read_bytes()

    @settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data(), verb=st.sampled_from(["train", "ref-logps"]))
    def check(data, verb):
        what, name, content = data.draw(st.composite(lambda draw: _damaged_release(draw, good))(), label="damaged")
        with tempfile.TemporaryDirectory() as tmp:
            path, out = Path(tmp) / name, Path(tmp) / "out"
            path.write_bytes(content)
            argv = (train_args(tiny_dir, path, out) if verb == "train" else
                    ["ref-logps", "--model", str(tiny_dir), "--data", str(path), "--out", str(out), "--dtype", "float32"])
            res = CliRunner().invoke(app, argv)
            assert isinstance(res.exception, UserError), (verb, what, res.output)
            message = str(res.exception)
            assert "\n" not in message.strip() and str(path) in message, (verb, what, message)
            assert sorted(p.name for p in Path(tmp).iterdir()) == [name], (verb, what)

    check()


@pytest.mark.parametrize("flags, expected", [
    (["--per_device_train_batch_size", "0"], "setting 'per_device_train_batch_size': expected a number >= 1, got 0"),
    (["--learning_rate=-1e-5"], "setting 'learning_rate': expected a number > 0, got -1e-05"),
    (["--learning_rate", "nan"], "setting 'learning_rate': expected a number > 0, got nan"),
    (["--gradient_accumulation_steps", "0"], "setting 'gradient_accumulation_steps': expected a number >= 1"),
    (["--lora_r", "-4"], "setting 'lora_r': expected a number >= 1, got -4"),  # before: a silent full fine-tune
    (["--use_peft", "true", "--lora_r", "0"], "setting 'lora_r': expected a number >= 1, got 0"),
    (["--lora_r", "8"], "setting lora_r given but use_peft is false, so LoRA is off and all weights would train"),
    (["--beta", "0"], "setting 'beta': expected a number > 0, got 0.0"),
    (["--max_length", "1"], "setting 'max_length': expected a number >= 2, got 1"),
])
def test_bad_numbers_are_one_line_errors_and_leave_no_output_dir(tiny_dir, tmp_path, flags, expected):
    argv = train_args(tiny_dir, short_release(tmp_path), tmp_path / "out", *flags)
    res = CliRunner().invoke(app, argv)
    assert isinstance(res.exception, UserError), res.output
    assert str(res.exception).startswith("command line: ") and expected in str(res.exception)
    assert "\n" not in str(res.exception)
    assert not (tmp_path / "out").exists()


def test_numbers_from_the_yaml_are_named_with_the_file(tiny_dir, tmp_path):
    cfg = tmp_path / "x.yaml"
    cfg.write_text("learning_rate: -0.001\n")
    res = CliRunner().invoke(app, [*train_args(tiny_dir, short_release(tmp_path), tmp_path / "out"), "--config", str(cfg)])
    assert isinstance(res.exception, UserError)
    assert str(res.exception) == f"{cfg}: setting 'learning_rate': expected a number > 0, got -0.001"


def test_ref_logps_negative_batch_size_is_refused(tiny_dir, tmp_path):
    res = CliRunner().invoke(app, ["ref-logps", "--model", str(tiny_dir), "--data", str(short_release(tmp_path)),
                                   "--out", str(tmp_path / "ref"), "--batch-size", "-1"])
    assert isinstance(res.exception, UserError) and "setting 'batch_size': expected a number >= 1, got -1" in str(res.exception)
    assert not (tmp_path / "ref").exists()


def test_nan_reference_log_probs_are_refused_naming_the_rows(tiny_dir, tmp_path):
    """A model whose weights hold a NaN (as a float16 overflow would) gives NaN log-probs: refused when they would be
    written, naming the rows, and nothing is written (before: NaN stored, exit 0, refused later for another reason)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    broken = tmp_path / "nan-model"
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(broken)
    res = CliRunner().invoke(app, ["ref-logps", "--model", str(broken), "--data", str(short_release(tmp_path)),
                                   "--out", str(tmp_path / "ref"), "--dtype", "float32", "--max_length", "64"])
    assert isinstance(res.exception, UserError), res.output
    assert "reference log-probs are not finite (NaN/inf) or missing for 2 of 2 groups (rows 0, 1)" in str(res.exception)
    assert not (tmp_path / "ref").exists()


def test_eval_device_cuda_without_cuda_and_flag_spellings(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    res = CliRunner().invoke(app, ["eval", "--model", SMOLLM2_NAME, "--device", "cuda", "--out", str(tmp_path / "e"),
                                   "--batch_size", "2", "--max_length", "128"])  # eval takes `_` spellings too
    assert isinstance(res.exception, UserError) and "--device cuda: no CUDA device" in str(res.exception)
    assert not (tmp_path / "e").exists()


SMOLLM2_NAME = "smollm2-135m-instruct"
