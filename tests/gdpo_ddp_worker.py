"""Run by tests/test_gdpo_trust.py under `torchrun --nproc_per_node 2`: one GDPO optimizer step on two CPU ranks
(gloo), one group per rank; rank 0 saves the synchronized gradients and the logged metrics."""

from __future__ import annotations

import json
import sys

import torch

torch.set_num_threads(1)


def main(spec_path: str) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from gdpo.trainer import GDPOConfig, GDPOTrainer

    spec = json.loads(open(spec_path).read())
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(spec["ref_model"], dtype=torch.float32)
    grads: dict[str, torch.Tensor] = {}

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.update({k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None})

    args = GDPOConfig(**spec["args"])
    trainer = GDPOTrainer(model, args, train_dataset=Dataset.from_list(spec["release"]), processing_class=tokenizer, ref_model=ref, callbacks=[Capture()])
    trainer.train()
    if trainer.accelerator.process_index == 0:
        names = sorted(grads)
        torch.save({"grads": {k.removeprefix("module."): grads[k] for k in names}, "log": trainer.state.log_history,
                    "world": trainer.accelerator.num_processes}, spec["out"])


if __name__ == "__main__":
    main(sys.argv[1])
