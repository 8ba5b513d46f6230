"""Can a learning rate move low-precision weights? An Adam step changes each weight by about the learning rate; a
bfloat16 weight w only changes when that step exceeds half a unit in its last place, |w|·2^-8 or so (float16:
|w|·2^-11). On SmolLM2-135M's real weights 99.4% of the parameters stay put under a 2e-6 step in bfloat16, so
training pure bf16 weights at the paper's learning rate mostly does nothing; float32 master weights with bf16
autocast do not have the problem.
"""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def stalled_share(model, learning_rate: float) -> float:
    """Share of the trainable parameter elements that a step of size `learning_rate` cannot change: low-precision
    (bf16/fp16) weights whose half-ulp is at least the step (round to nearest keeps them). 0 for float32 weights."""
    total = stalled = 0
    for param in model.parameters():
        if not param.requires_grad:
            continue
        total += param.numel()
        if param.dtype not in LOW_PRECISION:
            continue
        w = param.detach().float().abs()
        _, exponent = torch.frexp(w)  # w = m·2^e with m in [0.5, 1): the ulp is 2^(e−1)·eps
        half_ulp = torch.ldexp(torch.full_like(w, torch.finfo(param.dtype).eps / 2), exponent - 1)
        stalled += int(((w > 0) & (half_ulp >= learning_rate)).sum())
    return stalled / total if total else 0.0
