"""Run by tests/test_gdpo_multirank.py under `torchrun --nproc_per_node 2`: the policy sharded with torch FSDP2
(`fully_shard`, 2 CPU ranks over gloo: every parameter a DTensor holding half of the rows), then
1. its reference fingerprint (gdpo.reference.model_digest: must be the full weights' digest on both ranks);
2. the step-0 check of a precomputed column on each rank's groups (gdpo.reference.step0_disagreements);
3. the GDPO gradient of each rank's groups, normalized as GDPOTrainer does (by the informative groups of all ranks,
   times the world size), reduced by FSDP and gathered to full tensors.
Rank 0 saves the results. spec (JSON): model, release_path, loss (gdpo_loss keyword arguments), out."""

from __future__ import annotations

import json
import sys

import torch
from gdpo_ddp_worker import gather  # the DDP worker's: every rank's list, in rank order (this folder is on sys.path)

torch.set_num_threads(1)


def main(spec_path: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    from datasets import load_from_disk
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gdpo.data import GroupCollator, tokenize_groups
    from gdpo.logps import batch_logps, with_host_indices
    from gdpo.losses import gdpo_loss, informative_groups
    from gdpo.reference import model_digest, step0_disagreements

    spec = json.loads(open(spec_path).read())
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = all(type(p).__name__ == "DTensor" for p in model.parameters())
    local_rows = sum(p.to_local().shape[0] for p in model.parameters())

    digest = model_digest(model)
    release = load_from_disk(spec["release_path"])
    groups, _ = tokenize_groups(release, tok, max_length=64)
    mine = [groups[i] for i in range(len(groups)) if i % world == rank]
    batch = with_host_indices(GroupCollator(tok.pad_token_id)(mine))
    model.train()
    flat, counts = batch_logps(model, batch, shared_prompt=False)
    mask = batch["group_mask"]
    rows = torch.tensor([g["row"] for g in mine])[:, None].expand_as(mask)[mask]
    bad = step0_disagreements(batch["ref_logps"][mask].tolist(), flat.detach().double().tolist(), counts.tolist(), rows.tolist(),
                              precision="float32", average=False)
    policy = torch.zeros(mask.shape, dtype=flat.dtype).masked_scatter(mask, flat)
    count = informative_groups(batch["rewards"], mask).sum().double()
    torch.distributed.all_reduce(count)
    loss, _ = gdpo_loss(policy, batch["ref_logps"].to(policy.dtype), batch["rewards"], mask=mask, tie_keys=batch["tie_keys"],
                        num_groups=count, **spec["loss"])
    (loss * world).backward()  # FSDP averages gradients over ranks, like DDP
    grads = {n.replace("_fsdp_wrapped_module.", ""): p.grad.full_tensor() for n, p in model.named_parameters()}
    result = {"digests": gather([digest]), "bad": gather(bad), "checked": gather([len(rows)]), "sharded": gather([sharded]),
              "local_rows": gather([local_rows]), "grads": grads}
    if rank == 0:
        torch.save(result, spec["out"])
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
