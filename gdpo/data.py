"""A MetaKL release -> tokenized groups, and the collator that keeps each prompt's responses together.

A release has one row per prompt: `question` and `responses` (a list of {text, reasoning, answer, reward, advantage,
model, finish_reason}, metakl/schema.py). One dataset row here is one group (a prompt and all its responses), so a
micro-batch of `per_device_train_batch_size` rows holds whole groups and the distributed sampler never splits a
group across ranks.

Truncation policy (`max_length` counts prompt + response tokens): the prompt is never cut; a response that does not
fit is cut at the right (counted in `truncated_responses`); a group whose prompt leaves no room for a response token
is dropped (counted in `dropped_long_prompts`). Responses without a text or a reward are left out of their group
(counted in `dropped_responses`); the `response_index` column says which of the row's responses were kept.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from metakl.errors import UserError

RESPONSE_FORMATS = ("text", "reasoning+text")
REF_COLUMN = "ref_logps"
FINGERPRINT_COLUMN = "ref_logps_fingerprint"


def load_release(source: str | Path, split: str = "train") -> Dataset:
    """A MetaKL release from a stage folder (data.parquet), a parquet/jsonl file, a dataset folder or a Hub id."""
    import datasets

    path = Path(source)
    if path.is_dir() and (path / "data.parquet").exists():
        ds = Dataset.from_parquet(str(path / "data.parquet"))
    elif path.is_file() and path.suffix == ".parquet":
        ds = Dataset.from_parquet(str(path))
    elif path.is_file() and path.suffix in (".jsonl", ".json"):
        ds = Dataset.from_json(str(path))
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


def prompt_messages(question: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": question}]


def response_content(response: dict[str, Any], response_format: str) -> str:
    text = response.get("text") or ""
    if response_format == "reasoning+text" and response.get("reasoning"):
        return f"{response['reasoning']}\n\n{text}"
    if response_format not in RESPONSE_FORMATS:
        raise UserError(f"response_format '{response_format}': expected one of {', '.join(RESPONSE_FORMATS)}")
    return text


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


def tokenize_groups(
    ds: Dataset,
    tokenizer,
    *,
    max_length: int,
    system_prompt: str | None = None,
    response_format: str = "text",
    progress: bool = False,
) -> tuple[Dataset, dict[str, int]]:
    """Tokenize a release into groups: prompt_ids, response_ids (one list per kept response), rewards,
    response_index, row, and ref_logps when the release carries them. Returns (groups, truncation report)."""
    from tqdm.auto import tqdm

    check_release(ds)
    has_ref = REF_COLUMN in ds.column_names
    report = {"rows": len(ds), "groups": 0, "responses": 0, "truncated_responses": 0, "dropped_responses": 0, "dropped_long_prompts": 0}
    out: dict[str, list] = {"row": [], "prompt_ids": [], "response_ids": [], "rewards": [], "response_index": []}
    if has_ref:
        out[REF_COLUMN] = []
    rows = ds.select_columns(["question", "responses"] + ([REF_COLUMN] if has_ref else []))
    for row_index, row in enumerate(tqdm(rows, desc="tokenizing groups", disable=not progress)):
        kept = [
            k for k, r in enumerate(row["responses"])
            if r.get("text") and r.get("reward") is not None and not math.isnan(float(r["reward"]))
        ]
        report["dropped_responses"] += len(row["responses"]) - len(kept)
        contents = [response_content(row["responses"][k], response_format) for k in kept]
        prompt_ids, response_ids = _encode_group(tokenizer, row["question"], contents, system_prompt)
        room = max_length - len(prompt_ids)
        if room < 1:
            report["dropped_long_prompts"] += 1
            continue
        if not kept:
            continue
        truncated = [ids[:room] for ids in response_ids]
        report["truncated_responses"] += sum(len(ids) > room for ids in response_ids)
        report["groups"] += 1
        report["responses"] += len(kept)
        out["row"].append(row_index)
        out["prompt_ids"].append(prompt_ids)
        out["response_ids"].append(truncated)
        out["rewards"].append([float(row["responses"][k]["reward"]) for k in kept])
        out["response_index"].append(kept)
        if has_ref:
            values = row[REF_COLUMN] or []
            picked = [values[k] if k < len(values) else None for k in kept]
            if any(v is None or math.isnan(v) for v in picked):
                raise UserError(
                    f"row {row_index}, column '{REF_COLUMN}': no reference log-prob for some kept responses; "
                    "recompute them with `gdpo ref-logps` using the same max_length, template and model"
                )
            out[REF_COLUMN].append(picked)
    return Dataset.from_dict(out), report


class GroupCollator:
    """Pads a list of groups into one batch of sequences (right padding) plus [groups, G] tensors.

    Keys: input_ids, attention_mask, response_mask ([N, T], 1 on response tokens), group_mask ([B, G], which cells
    hold a real response; sequences are laid out group by group in that order), rewards, and ref_logps when present.
    For the shared-prompt path (gdpo.logps.shared_prompt_logps) the same tokens split: prompt_input_ids /
    prompt_attention_mask ([B, P], one prompt per group, left padded) and response_input_ids /
    response_attention_mask ([N, R], right padded).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, groups: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs, response_masks = [], []
        G = max(len(g["response_ids"]) for g in groups)
        group_mask = torch.zeros(len(groups), G, dtype=torch.bool)
        rewards = torch.zeros(len(groups), G, dtype=torch.float64)  # exact ties
        has_ref = all(REF_COLUMN in g and g[REF_COLUMN] is not None for g in groups)
        ref = torch.zeros(len(groups), G, dtype=torch.float64)
        for b, g in enumerate(groups):
            n = len(g["response_ids"])
            group_mask[b, :n] = True
            rewards[b, :n] = torch.tensor(g["rewards"], dtype=torch.float64)
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
        if has_ref:
            batch[REF_COLUMN] = ref
        return batch
