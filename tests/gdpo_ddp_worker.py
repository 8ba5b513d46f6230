"""Run by the multi-rank tests under `torchrun --nproc_per_node 2` (tests/test_gdpo_trust.py) or `accelerate launch
--num_processes 2 --cpu` with or without FSDP (tests/test_gdpo_multirank.py): GDPO optimizer steps on two CPU ranks
(gloo). Rank 0 saves the synchronized gradients of the first step (DDP; under FSDP they are sharded), the full weights
after training (gathered, so FSDP too), the logged metrics and each rank's reference fingerprint.

spec (JSON): model, ref_model (optional: a separate reference; without it a precomputed column or a frozen copy),
release (rows) or release_path (a saved dataset with a precomputed reference), placeholders (rank > 0 loads zeros, as
under FSDP's cpu_ram_efficient_loading), args (GDPOConfig), out."""

from __future__ import annotations

import json
import os
import sys

import torch

torch.set_num_threads(1)


def gather(value: list) -> list:
    """Every rank's list, concatenated in rank order (torch.distributed directly: no accelerate state needed)."""
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, value)
    return [x for part in parts for x in part]


def main(spec_path: str) -> None:
    from accelerate import PartialState

    state = PartialState()  # the process group first: with FSDP's cpu_ram_efficient_loading, loading depends on the rank
    from datasets import Dataset, load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from gdpo.trainer import GDPOConfig, GDPOTrainer

    spec = json.loads(open(spec_path).read())
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if spec.get("placeholders"):
        # transformers' FSDP cpu_ram_efficient_loading: ranks > 0 get zeros, rank 0's weights reach them when the model
        # is wrapped. Only for loading: accelerate's FSDP plugin itself needs GPUs, so training here stays DDP.
        os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    for key in ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING"):
        os.environ.pop(key, None) if spec.get("placeholders") else None
    ref = AutoModelForCausalLM.from_pretrained(spec["ref_model"], dtype=torch.float32) if spec.get("ref_model") else None
    grads: dict[str, torch.Tensor] = {}

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if not grads:
                grads.update({k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None})

    # What each rank loaded, before any wrapper syncs it (with FSDP_CPU_RAM_EFFICIENT_LOADING, rank > 0 holds zeros).
    from gdpo.reference import _local_digest

    loaded = gather([_local_digest(model)])
    release = load_from_disk(spec["release_path"]) if spec.get("release_path") else Dataset.from_list(spec["release"])
    args = GDPOConfig(**spec["args"])
    trainer = GDPOTrainer(model, args, train_dataset=release, processing_class=tokenizer, ref_model=ref, callbacks=[Capture()])
    fingerprints = gather([json.dumps(trainer._ref_fingerprint)])
    trainer.train()
    weights = trainer.accelerator.get_state_dict(trainer.model)  # full weights on rank 0, FSDP included
    if state.process_index == 0:
        names = sorted(grads)
        torch.save({"grads": {k.removeprefix("module."): grads[k] for k in names}, "log": trainer.state.log_history,
                    "world": trainer.accelerator.num_processes, "fsdp": trainer.is_fsdp_enabled, "fingerprints": fingerprints, "loaded": loaded,
                    "weights": {k: v.detach().clone() for k, v in weights.items()}}, spec["out"])


if __name__ == "__main__":
    main(sys.argv[1])
