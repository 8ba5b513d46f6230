"""What the GDPO tests share: a tiny model of SmolLM2's family (its config and tokenizer, 2 layers of width 64, random
weights from a seed) and a callback that captures the gradients of a training step."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback

TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16)


def tiny_smollm2(smollm2_path, seed: int = 0, **from_config):
    """A float32 model of SmolLM2's config shrunk to TINY, its weights drawn after torch.manual_seed(seed)."""
    config = AutoConfig.from_pretrained(smollm2_path)
    config.update(TINY)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, **from_config)


def save_tiny_smollm2(smollm2_path, path, seed: int = 0) -> Path:
    """tiny_smollm2(seed) and SmolLM2's tokenizer saved in `path` (a folder gdpo loads like any HF model)."""
    tiny_smollm2(smollm2_path, seed).save_pretrained(path)
    AutoTokenizer.from_pretrained(smollm2_path).save_pretrained(path)
    return Path(path)


class GradCapture(TrainerCallback):
    """The gradients of the last step, taken just before the optimizer applies them."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
