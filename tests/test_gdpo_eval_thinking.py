"""`gdpo eval` for reasoning models and GPUs (issue 25): the chat template's thinking switch (on/off/auto, passed as
enable_thinking to lm-eval's HFLM and VLLM, detected, recorded, thinking stripped before scoring) and vLLM's
tensor/data-parallel sizes (validated; reaching vLLM's own engine args)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, SMOLLM2, run_cli, shared_data

ROOT = Path(__file__).resolve().parents[1]
QWEN3_STYLE = ROOT / "tests" / "fixtures" / "chat_templates" / "qwen3_style_thinking.jinja"
EMPTY_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def qwen3_style_model(tmp_path_factory, smollm2_path) -> str:
    """SmolLM2's files (linked) with the team-written Qwen3-style template as its chat_template.jinja."""
    folder = tmp_path_factory.mktemp("qwen3_style")
    for f in Path(smollm2_path).iterdir():
        if f.name != "chat_template.jinja":
            (folder / f.name).symlink_to(f)
    (folder / "chat_template.jinja").write_text(QWEN3_STYLE.read_text())
    return str(folder)


def _user_turn(render) -> str:
    return render([{"role": "user", "content": "What is 2 + 2?"}])


# ---- the switch -------------------------------------------------------------------------------------------------------


def test_thinking_switch_detected_and_warned_once(qwen3_style_model, smollm2_path):
    """The fixture template renders differently with enable_thinking on and off (off pre-fills an empty think block;
    auto = not passed = its default, thinking); SmolLM2's own template ignores the switch: one warning line."""
    from transformers import AutoTokenizer

    from gdpo.eval.runner import _check_thinking_switch, thinking_switch
    from gdpo.eval.suite import TaskSpec

    tok = AutoTokenizer.from_pretrained(qwen3_style_model)

    def render(chat, **kw):
        return tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, **kw)

    off, on, auto = (_user_turn(lambda c, v=v: render(c, **v)) for v in ({"enable_thinking": False}, {"enable_thinking": True}, {}))
    assert off.endswith(EMPTY_THINK) and on.endswith("<|im_start|>assistant\n") and auto == on
    assert thinking_switch(tok) is True

    smol = AutoTokenizer.from_pretrained(smollm2_path)
    assert thinking_switch(smol) is False
    specs = [TaskSpec(name=n, kind="lm_eval", domain="math", title=n, chat=True, decoding={"thinking": th})
             for n, th in (("a", "off"), ("b", "on"), ("c", "auto"))]
    for tokenizer, switch in ((smol, False), (tok, True)):
        lines, result = [], {}
        _check_thinking_switch(tokenizer, specs, "smollm2", result, lines.append)
        assert result["thinking_switch"] is switch
        if switch:
            assert lines == []
        else:  # one line, naming the model and what was asked
            assert lines == ["warning: the chat template of smollm2 renders the same with enable_thinking on and off: thinking off/on changes nothing"]
    lines, result = [], {}
    _check_thinking_switch(smol, specs[2:], "smollm2", result, lines.append)  # auto everywhere: nothing to check
    assert lines == [] and "thinking_switch" not in result


def test_thinking_settings_in_suites_and_cli(tmp_path):
    """`thinking:` per suite entry (YAML's bare on/off booleans too), `--thinking` overriding every chat generation
    task; a bad value or a task without the chat template is one line."""
    from gdpo.eval.suite import load_suite
    from metakl.errors import UserError

    (tmp_path / "s.yaml").write_text("tasks:\n  - {task: gsm8k, thinking: off}\n  - {task: math, thinking: auto}\n"
                                     "  - {task: mmlu_cloze}\n")
    suite = load_suite(str(tmp_path / "s.yaml"))
    assert [t.decoding.get("thinking") for t in suite.tasks] == ["off", "auto", None]
    forced = load_suite(str(tmp_path / "s.yaml"), thinking="on")
    assert [t.decoding.get("thinking") for t in forced.tasks] == ["on", "on", None]  # cloze: log-likelihood, no switch
    with pytest.raises(UserError, match="thinking: expected one of on, off, auto, got 'maybe'"):
        load_suite(str(tmp_path / "s.yaml"), thinking="maybe")
    (tmp_path / "bad.yaml").write_text("tasks:\n  - {task: gsm8k, chat: false, thinking: on}\n")
    with pytest.raises(UserError, match="chat-template switch"):
        load_suite(str(tmp_path / "bad.yaml"))


@pytest.mark.slow
def test_thinking_reaches_the_prompt_and_the_results(tmp_path, qwen3_style_model, monkeypatch):
    """A real run (lm-eval's HFLM, the fixture template on SmolLM2): the task's `thinking: off` reaches the chat
    template as enable_thinking (every rendered prompt pre-fills the empty think block); results.json and results.md
    record it beside the seed."""
    shared_data("gsm8k", "train.jsonl")
    from transformers import PreTrainedTokenizerBase

    from gdpo.eval.runner import EvalSettings, evaluate_model, write_outputs
    from gdpo.eval.suite import load_suite

    rendered: list[str] = []
    real = PreTrainedTokenizerBase.apply_chat_template

    def spy(self, *args, **kwargs):  # records what transformers renders for lm-eval, unchanged
        out = real(self, *args, **kwargs)
        if isinstance(out, str) and "Please reason step by step" in out:
            rendered.append(out)
        return out

    monkeypatch.setattr(PreTrainedTokenizerBase, "apply_chat_template", spy)
    (tmp_path / "s.yaml").write_text("tasks:\n  - {task: gsm8k, n: 1, max_gen_toks: 2, thinking: off}\n")
    log: list[str] = []
    res = evaluate_model(qwen3_style_model, load_suite(str(tmp_path / "s.yaml")),
                         EvalSettings(dtype="float32", bootstrap_iters=0, batch_size=1, data_dir=str(SHARED_DATA), seed=3), log=log.append)
    assert len(rendered) == 1 and rendered[0].endswith(EMPTY_THINK), rendered
    assert res["thinking_switch"] is True and not any("warning" in m for m in log)
    assert res["tasks"]["gsm8k"]["decoding"]["thinking"] == "off" and res["tasks"]["gsm8k"]["decoding"]["seed"] == 3
    files = write_outputs(res, tmp_path / "o")
    assert json.loads(Path(files["json"]).read_text())["tasks"]["gsm8k"]["decoding"]["thinking"] == "off"
    assert "- GSM8K: greedy, 2 new tokens, thinking off, seed 3" in Path(files["markdown"]).read_text()


def test_vllm_backend_passes_the_switch_to_its_template(qwen3_style_model, monkeypatch):
    """lm-eval's VLLM (a real instance; with data_parallel_size 2 it starts no engine in this process) renders with
    the switch set_thinking gives it; auto leaves the template's default."""
    lm = _vllm_lm(qwen3_style_model, monkeypatch, data_parallel_size=2)
    from gdpo.eval.runner import set_thinking

    for value, ends in (("off", EMPTY_THINK), ("on", "<|im_start|>assistant\n"), ("auto", "<|im_start|>assistant\n")):
        set_thinking(lm, value)
        assert _user_turn(lm.apply_chat_template).endswith(ends), value
    set_thinking(lm, "off")
    set_thinking(lm, "auto")
    assert lm.enable_thinking is None and "enable_thinking" not in lm.chat_template_args


def test_hf_backend_passes_the_switch_to_its_template(qwen3_style_model):
    """lm-eval's HFLM (the project's SharedPrefixHFLM) renders with the switch in its chat_template_args."""
    from gdpo.eval.runner import EvalSettings, build_lm, set_thinking

    lm = build_lm(qwen3_style_model, EvalSettings(dtype="float32"))
    for value, ends in (("off", EMPTY_THINK), ("on", "<|im_start|>assistant\n"), ("auto", "<|im_start|>assistant\n")):
        set_thinking(lm, value)
        assert _user_turn(lm.apply_chat_template).endswith(ends), value
    assert lm.enable_thinking is None  # lm-eval's own flag stays off: it would refuse log-likelihood requests


def test_scoring_skips_the_thinking():
    """A generation with a <think>...</think> block is scored on the text after it (metakl.verify.split_reasoning),
    by every checker; a block never closed (budget spent while thinking) has no answer."""
    from gdpo.eval.hooks import choice_results, math_results, refusal_results

    think = "<think>Maybe \\boxed{5}? The answer is 5. I'm sorry, I cannot... no: 2 + 2 = 4, option B.</think>\n\n"
    assert math_results({"reference": "4"}, [think + "So \\boxed{4}."]) == {"acc": 1.0, "answer_found": 1.0}
    assert math_results({"reference": "5"}, [think + "So \\boxed{4}."])["acc"] == 0.0
    assert math_results({"reference": "5"}, ["<think>the answer is \\boxed{5}"]) == {"acc": 0.0, "answer_found": 0.0}
    # a template that pre-fills "<think>\n" (DeepSeek-R1 distills): the reply starts inside the block
    assert math_results({"reference": "4"}, ["2 + 2 ... \\boxed{5}?\n</think>\nThe answer is \\boxed{4}"])["acc"] == 1.0
    assert refusal_results({"reference": "comply"}, [think + "Sure: here is how."]) == {"refusal": 0.0, "safe": 1.0}
    doc = {"id": "q", "question": "2 + 2?", "choices": ["4", "5", "6", "7"], "gold": 0}
    from gdpo.eval.hooks import LETTERS, shuffled_choices

    letter = LETTERS[shuffled_choices(doc)[1]]
    wrong = next(x for x in "ABCD" if x != letter)
    assert choice_results(doc, [f"<think>\\boxed{{{wrong}}}</think> \\boxed{{{letter}}}"])["acc"] == 1.0


# ---- tensor / data parallel ---------------------------------------------------------------------------------------------


def _vllm_lm(path: str, monkeypatch, **sizes):
    """gdpo's build_lm for --backend vllm --device cuda with `sizes`, as on a machine with 4 GPUs (torch's count
    patched): lm-eval's VLLM and vLLM's own LLM/EngineArgs run; vLLM stops at create_engine_config (the first step that
    needs the GPUs), its EngineArgs kept on the returned object as `engine_args` when it got that far."""
    pytest.importorskip("vllm")
    import torch
    from vllm.engine.arg_utils import EngineArgs

    from gdpo.eval.runner import EvalSettings, build_lm

    class Stop(Exception):
        pass

    seen: list = []

    def stop(self, *a, **k):
        seen.append(self)
        raise Stop

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(EngineArgs, "create_engine_config", stop)
    try:
        lm = build_lm(path, EvalSettings(backend="vllm", device="cuda", dtype="float32", **sizes))
    except Stop:
        return seen[0]
    assert not seen
    return lm


def test_parallel_sizes_reach_vllm_engine_args(smollm2_path, monkeypatch):
    """TP reaches vLLM's EngineArgs (built by vLLM's LLM from what lm-eval passes it); DP is lm-eval's number of
    engines (ray actors), each engine's own args having DP 1 (vLLM's offline LLM refuses DP > 1 in one process)."""
    from vllm.engine.arg_utils import EngineArgs

    args = _vllm_lm(smollm2_path, monkeypatch, tensor_parallel_size=2)
    assert isinstance(args, EngineArgs) and (args.tensor_parallel_size, args.data_parallel_size) == (2, 1)
    lm = _vllm_lm(smollm2_path, monkeypatch, tensor_parallel_size=2, data_parallel_size=2)
    replica = EngineArgs(**lm.model_args)  # what each of lm-eval's ray actors gives vllm.LLM
    assert lm.data_parallel_size == 2 and (replica.tensor_parallel_size, replica.data_parallel_size) == (2, 1)


@pytest.mark.parametrize("sizes, message", [
    ({"tensor_parallel_size": 0}, "--tensor-parallel-size: expected a whole number >= 1, got 0"),
    ({"data_parallel_size": -1}, "--data-parallel-size: expected a whole number >= 1, got -1"),
    ({"tensor_parallel_size": 2, "backend": "hf"}, "vLLM engine settings, for --backend vllm"),
    ({"tensor_parallel_size": 2, "data_parallel_size": 2, "backend": "vllm"}, "needs 4 GPUs; 0 visible here"),
])
def test_parallel_sizes_validated(sizes, message, monkeypatch):
    import torch

    from gdpo.eval.runner import EvalSettings
    from metakl.errors import UserError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match=message):
        EvalSettings(**sizes)


def test_parallel_sizes_beyond_the_gpus_are_one_line(tmp_path):
    """On this machine (no GPU): one line, exit 2, nothing written."""
    proc = run_cli("eval", "--model", SMOLLM2, "--backend", "vllm", "--tensor-parallel-size", "2", "--tasks", "gsm8k",
                   "--out", tmp_path / "o", module="gdpo.cli", cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --tensor-parallel-size 2 x --data-parallel-size 1 needs 2 GPUs; "
                                                "0 visible here (torch.cuda.device_count(), see CUDA_VISIBLE_DEVICES)"]
    assert not (tmp_path / "o").exists()
