"""Log-likelihood requests that share a context run that context once.

A cloze multiple-choice item asks lm-eval for log P(option | context) once per option, and lm-eval's HFLM runs the
whole context again for every option (its own code carries a TODO for exactly this). On MMLU-Pro's ten options with a
long question that is ~10x the forward passes, and the full-vocabulary log-softmax over every context position as
well. This HFLM subclass groups requests by their context tokens, runs the context once with the KV cache, and runs
only the continuations as a batch on that cache: the same numbers (float noise aside; tested against HFLM), a
fraction of the work. Requests that need left truncation, and non-causal models, go through HFLM unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

Request = tuple[tuple[str, str], list[int], list[int]]


def group_by_context(requests: list[Request], max_length: int) -> tuple[dict[tuple[int, ...], list[int]], list[int]]:
    """{context tokens: indices of the requests with that context}, in first-seen order, and the indices that must go
    through HFLM (context + continuation longer than the window: HFLM truncates them from the left)."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    plain: list[int] = []
    for i, (_, ctx, cont) in enumerate(requests):
        if len(ctx) + len(cont) > max_length + 1:
            plain.append(i)
        else:
            groups[tuple(ctx)].append(i)
    return dict(groups), plain


class SharedPrefixHFLM(HFLM):
    """lm-eval's HFLM; log-likelihood runs each distinct context once (see the module docstring)."""

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None) -> list[tuple[float, bool]]:
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        groups, plain = group_by_context(requests, self.max_length)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        if plain:
            for i, answer in zip(plain, super()._loglikelihood_tokens([requests[i] for i in plain], disable_tqdm=True, override_bs=override_bs)):
                results[i] = answer
        width = self.batch_size if isinstance(self.batch_size, int) and self.batch_size > 0 else (override_bs or 8)
        with tqdm(total=len(requests) - len(plain), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests (shared contexts)") as bar:
            for ctx, members in groups.items():
                for start in range(0, len(members), width):
                    chunk = members[start:start + width]
                    answers = self._score_continuations(list(ctx), [requests[i][2] for i in chunk])
                    for i, answer in zip(chunk, answers):
                        results[i] = answer
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                    bar.update(len(chunk))
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _score_continuations(self, ctx: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
        """(sum of log P(cont | ctx), greedy?) for each continuation, the context run once."""
        cache = None
        if len(ctx) > 1:
            # logits of the context are not needed: its last token is the first input of every continuation
            out = self.model(torch.tensor([ctx[:-1]], device=self.device), use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(conts))  # in place: one copy of the context's keys/values per continuation
        width = max(len(c) for c in conts)
        inputs = torch.zeros((len(conts), width), dtype=torch.long, device=self.device)
        for row, cont in enumerate(conts):
            # right padding: a causal model's earlier positions never see it
            inputs[row, :len(cont)] = torch.tensor([ctx[-1]] + cont[:-1], device=self.device)
        kwargs: dict[str, Any] = {"past_key_values": cache, "use_cache": cache is not None}
        logits = self.model(inputs, **kwargs).logits
        logprobs = F.log_softmax(logits[:, :, : self.vocab_size], dim=-1, dtype=self.softmax_dtype)
        answers = []
        for row, cont in enumerate(conts):
            target = torch.tensor(cont, device=self.device)
            lp = logprobs[row, : len(cont)]
            answers.append((float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())))
        return answers
