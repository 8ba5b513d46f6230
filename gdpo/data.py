"""A MetaKL release -> tokenized groups, and the collator that keeps each prompt's responses together.

A release has one row per prompt: `question` and `responses` (a list of {text, reasoning, answer, reward, advantage,
model, finish_reason}, metakl/schema.py). One dataset row here is one group (a prompt and all its responses), so a
micro-batch of `per_device_train_batch_size` rows holds whole groups and the distributed sampler never splits a
group across ranks.

Truncation policy (`max_length` counts prompt + response tokens): the prompt is never cut; a response that does not
fit is cut at the right (counted in `truncated_responses`); a group whose prompt leaves no room for a response token
is dropped (counted in `dropped_long_prompts`). Responses without a text or with a null reward are left out of their
group (counted in `dropped_responses`); the `response_index` column says which of the row's responses were kept. A
reward that is not a finite number (NaN, ±inf, a string) is a data error naming the row and the response.

Ties: each response gets a `tie_keys` value, a seeded hash of its prompt and response tokens; the losses order tied
responses by it, so which of two equally rewarded responses comes first depends on their content and the seed, not
on the order in which the release stores them.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from metakl.errors import UserError
from metakl.io import load_stage
from metakl.readers import Problem, read_file
from metakl.schema import ZERO_VARIANCE_EPS
from metakl.verify import split_reasoning

# What the assistant turn holds (the paper trains on the teacher's reasoning and its answer):
#   reasoning+answer  "<think>\n{reasoning}\n</think>\n\n{answer}" when the response has reasoning (its `reasoning`
#                     field, or a <think> block in its text), else the text as stored
#   answer            the answer alone (the text without its <think> block)
#   text              the `text` column exactly as stored
RESPONSE_FORMATS = ("reasoning+answer", "answer", "text")
REF_COLUMN = "ref_logps"
FINGERPRINT_COLUMN = "ref_logps_fingerprint"


def load_release(source: str | Path, split: str = "train") -> Dataset:
    """A MetaKL release from a stage folder (data.parquet), a parquet/jsonl file, a dataset folder or a Hub id."""
    import datasets

    path = Path(source)
    # Local files go through metakl's loader guards, so a 0-byte, truncated or corrupt parquet file and a malformed
    # JSON line end in the same one-line errors as in `metakl` (file, line, what was expected).
    if path.is_dir() and (path / "data.parquet").exists():
        ds = load_stage(path)
    elif path.is_file() and path.suffix == ".parquet":
        ds = load_stage(path)
    elif path.is_file() and path.suffix in (".jsonl", ".json"):
        for _, record in read_file(path):
            if isinstance(record, Problem):
                raise UserError(str(record))
        try:
            ds = Dataset.from_json(str(path))
        except Exception as exc:  # valid JSON lines that arrow cannot put in one table (a field changing type)
            raise UserError(f"{path}: not a readable release ({str(exc).strip().splitlines()[0][:200]})") from None
    else:
        if not path.exists() and (str(source).startswith((".", "/")) or str(source).count("/") > 1):
            raise UserError(f"{source}: no such folder or file (expected a MetaKL release folder, a parquet file or a Hub id)")
        try:
            loaded = datasets.load_dataset(str(source), split=split)
        except Exception as exc:  # the datasets library raises many kinds for a missing/unreachable source
            raise UserError(f"{source}: cannot load split '{split}' as a dataset ({type(exc).__name__}: {exc})") from None
        ds = loaded
    check_release(ds, str(source))
    return ds


def check_release(ds: Dataset, where: str = "dataset") -> None:
    """Raise UserError naming the column or row when `ds` is not a release with question + responses."""
    missing = [c for c in ("question", "responses") if c not in ds.column_names]
    if missing:
        raise UserError(
            f"{where}: missing column(s) {', '.join(missing)}; expected a MetaKL release with 'question' and "
            f"'responses' (list of {{text, reward, ...}}), found columns {', '.join(ds.column_names)}"
        )
    for i, responses in enumerate(ds["responses"]):
        if not isinstance(responses, list):
            raise UserError(f"{where}: row {i}, field 'responses': expected a list of responses, got {type(responses).__name__}")
        for k, resp in enumerate(responses):
            if not isinstance(resp, dict) or "text" not in resp or "reward" not in resp:
                raise UserError(f"{where}: row {i}, responses[{k}]: expected an object with 'text' and 'reward', got {str(resp)[:80]}")
            reward = resp["reward"]
            if reward is None:
                continue
            if isinstance(reward, bool) or not isinstance(reward, numbers.Real) or not math.isfinite(reward):
                raise UserError(
                    f"{where}: row {i}, responses[{k}]: reward {reward!r} is not a finite number "
                    "(fix the reward stage's output, or set it to null to leave this response out)"
                )


def prompt_messages(question: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": question}]


def response_content(response: dict[str, Any], response_format: str) -> str:
    """The assistant turn of one response (see RESPONSE_FORMATS). A reasoning server's answer arrives with the
    reasoning in its own field and only the answer in `text`; tagged text carries both: either way the reasoning is
    kept once, in the <think> form that reasoning models' chat templates use."""
    if response_format not in RESPONSE_FORMATS:
        raise UserError(f"response_format '{response_format}': expected one of {', '.join(RESPONSE_FORMATS)}")
    text = response.get("text") or ""
    if response_format == "text":
        return text
    tagged_reasoning, tagged_answer = split_reasoning(text)
    answer = tagged_answer if tagged_reasoning else text  # untagged text stays as stored
    reasoning = response.get("reasoning") or tagged_reasoning
    if response_format == "answer" or not reasoning:
        return answer
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def template_digest(tokenizer, system_prompt: str | None, response_format: str) -> str:
    """What decides the token sequences besides the tokenizer: chat template, system prompt, response format."""
    template = getattr(tokenizer, "chat_template", None) or ""
    key = "\x1f".join([template, system_prompt or "", response_format])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _encode_group(tokenizer, question: str, contents: list[str], system_prompt: str | None) -> tuple[list[int], list[list[int]]]:
    messages = prompt_messages(question, system_prompt)
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    responses = []
    for content in contents:
        full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": content}], tokenize=False)
        if full_text.startswith(prompt_text):
            # Tokenize the response part on its own: the prompt tokens stay exactly those of the generation prompt.
            ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
        else:  # a template that renders the prompt differently once an answer follows: plain text + EOS
            ids = tokenizer(content, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        responses.append(ids)
    return prompt_ids, responses


def tie_key(seed: int, prompt_ids: list[int], response_ids: list[int]) -> int:
    """A 63-bit seeded hash of a response's tokens (and its prompt's): the order of tied responses."""
    h = hashlib.blake2b(digest_size=8, key=int(seed).to_bytes(8, "little", signed=True))
    h.update(len(prompt_ids).to_bytes(4, "little"))
    h.update(b"".join(t.to_bytes(4, "little") for t in prompt_ids))
    h.update(b"".join(t.to_bytes(4, "little") for t in response_ids))
    return int.from_bytes(h.digest(), "little") >> 1


def is_zero_variance(rewards: list[float]) -> bool:
    """No preference in the group: fewer than two responses, or population std <= ZERO_VARIANCE_EPS (the reward
    stage's threshold; gdpo.losses.group_advantages applies the same rule to tensors)."""
    if len(rewards) < 2:
        return True
    mean = sum(rewards) / len(rewards)
    return math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)) <= ZERO_VARIANCE_EPS


def tokenize_groups(
    ds: Dataset,
    tokenizer,
    *,
    max_length: int,
    system_prompt: str | None = None,
    response_format: str = "reasoning+answer",
    tie_seed: int = 0,
    progress: bool = False,
) -> tuple[Dataset, dict[str, int]]:
    """Tokenize a release into groups: row, prompt_ids, response_ids (one list per kept response), rewards,
    response_index, tie_keys, and ref_logps when the release carries them (NaN where a kept response has none).

    Returns (groups, report): rows, groups, responses, truncated_responses, dropped_responses (no text or a null
    reward), dropped_long_prompts, dropped_empty_groups (no response left), zero_variance_groups (kept groups without a
    preference: one response, or all rewards equal)."""
    from tqdm.auto import tqdm

    check_release(ds)
    has_ref = REF_COLUMN in ds.column_names
    report = {
        "rows": len(ds), "groups": 0, "responses": 0, "truncated_responses": 0, "dropped_responses": 0,
        "dropped_long_prompts": 0, "dropped_empty_groups": 0, "zero_variance_groups": 0,
    }
    out: dict[str, list] = {"row": [], "prompt_ids": [], "response_ids": [], "rewards": [], "response_index": [], "tie_keys": []}
    if has_ref:
        out[REF_COLUMN] = []
    rows = ds.select_columns(["question", "responses"] + ([REF_COLUMN] if has_ref else []))
    for row_index, row in enumerate(tqdm(rows, desc="tokenizing groups", disable=not progress)):
        kept = [k for k, r in enumerate(row["responses"]) if r.get("text") and r.get("reward") is not None]
        report["dropped_responses"] += len(row["responses"]) - len(kept)
        if not kept:
            report["dropped_empty_groups"] += 1
            continue
        contents = [response_content(row["responses"][k], response_format) for k in kept]
        prompt_ids, response_ids = _encode_group(tokenizer, row["question"], contents, system_prompt)
        room = max_length - len(prompt_ids)
        if room < 1:
            report["dropped_long_prompts"] += 1
            continue
        truncated = [ids[:room] for ids in response_ids]
        rewards = [float(row["responses"][k]["reward"]) for k in kept]
        report["truncated_responses"] += sum(len(ids) > room for ids in response_ids)
        report["groups"] += 1
        report["responses"] += len(kept)
        report["zero_variance_groups"] += is_zero_variance(rewards)
        out["row"].append(row_index)
        out["prompt_ids"].append(prompt_ids)
        out["response_ids"].append(truncated)
        out["rewards"].append(rewards)
        out["response_index"].append(kept)
        out["tie_keys"].append([tie_key(tie_seed, prompt_ids, ids) for ids in truncated])
        if has_ref:
            values = row[REF_COLUMN] or []
            picked = [values[k] if k < len(values) and values[k] is not None else math.nan for k in kept]
            out[REF_COLUMN].append([float(v) for v in picked])
    return Dataset.from_dict(out), report


class GroupCollator:
    """Pads a list of groups into one batch of sequences (right padding) plus [groups, G] tensors.

    Keys: input_ids, attention_mask, response_mask ([N, T], 1 on response tokens), group_mask ([B, G], which cells
    hold a real response; sequences are laid out group by group in that order), rewards, tie_keys and ref_logps when
    present.
    For the shared-prompt path (gdpo.logps.shared_prompt_logps) the same tokens split: prompt_input_ids /
    prompt_attention_mask ([B, P], one prompt per group, left padded) and response_input_ids /
    response_attention_mask ([N, R], right padded).
    """

    def __init__(self, pad_token_id: int | None):
        # Padded positions are masked out everywhere, so any id works where the tokenizer defines no pad token.
        self.pad_token_id = 0 if pad_token_id is None else pad_token_id

    def __call__(self, groups: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs, response_masks = [], []
        G = max(len(g["response_ids"]) for g in groups)
        group_mask = torch.zeros(len(groups), G, dtype=torch.bool)
        rewards = torch.zeros(len(groups), G, dtype=torch.float64)  # exact ties
        has_keys = all("tie_keys" in g for g in groups)
        tie_keys = torch.zeros(len(groups), G, dtype=torch.long)
        has_ref = all(REF_COLUMN in g and g[REF_COLUMN] is not None for g in groups)
        ref = torch.zeros(len(groups), G, dtype=torch.float64)
        for b, g in enumerate(groups):
            n = len(g["response_ids"])
            group_mask[b, :n] = True
            rewards[b, :n] = torch.tensor(g["rewards"], dtype=torch.float64)
            if has_keys:
                tie_keys[b, :n] = torch.tensor(g["tie_keys"], dtype=torch.long)
            if has_ref:
                ref[b, :n] = torch.tensor(g[REF_COLUMN], dtype=torch.float64)
            for ids in g["response_ids"]:
                seqs.append(list(g["prompt_ids"]) + list(ids))
                response_masks.append([0] * len(g["prompt_ids"]) + [1] * len(ids))
        T = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), T), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(seqs), T, dtype=torch.long)
        response_mask = torch.zeros(len(seqs), T, dtype=torch.long)
        for i, (s, m) in enumerate(zip(seqs, response_masks)):
            input_ids[i, : len(s)] = torch.tensor(s)
            attention_mask[i, : len(s)] = 1
            response_mask[i, : len(m)] = torch.tensor(m)
        P = max(len(g["prompt_ids"]) for g in groups)
        prompt_input_ids = torch.full((len(groups), P), self.pad_token_id, dtype=torch.long)
        prompt_attention_mask = torch.zeros(len(groups), P, dtype=torch.long)
        for b, g in enumerate(groups):
            n = len(g["prompt_ids"])
            prompt_input_ids[b, P - n :] = torch.tensor(g["prompt_ids"], dtype=torch.long)
            prompt_attention_mask[b, P - n :] = 1
        responses = [ids for g in groups for ids in g["response_ids"]]
        R = max(len(ids) for ids in responses)
        response_input_ids = torch.full((len(responses), R), self.pad_token_id, dtype=torch.long)
        response_attention_mask = torch.zeros(len(responses), R, dtype=torch.long)
        for i, ids in enumerate(responses):
            response_input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            response_attention_mask[i, : len(ids)] = 1
        batch = {
            "prompt_input_ids": prompt_input_ids,
            "prompt_attention_mask": prompt_attention_mask,
            "response_input_ids": response_input_ids,
            "response_attention_mask": response_attention_mask,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "group_mask": group_mask,
            "rewards": rewards,
        }
        if has_keys:
            batch["tie_keys"] = tie_keys
        if has_ref:
            batch[REF_COLUMN] = ref
        return batch
