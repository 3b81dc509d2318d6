"""Worker for tests/test_distributed.py::test_device_batch_*: two training steps of PaCo,
GPaCo and multi-task on a fixed global batch of 32, as 1, 2 or 4 processes.

Usage: [torchrun --nproc_per_node=W] tests/device_batch_worker.py OUT_FILE DEVICE_BATCH|none

Every process takes its rank's 32 / W samples of each step; with DEVICE_BATCH the model
splits them into groups of that size (``--device-batch``). Rank 0 writes OUT_FILE with,
per method: the global loss of each step (mean over processes), the loss of every virtual
device (rank order), the DDP-averaged gradients of each step, and rank 0's state dict after
the two steps (parameters, BatchNorm running statistics, queue).
"""
from __future__ import annotations

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from gpaco import distributed as gdist
from gpaco.methods import get_method
from gpaco.models.contrastive import ContrastiveOutput

GLOBAL_BATCH = 32
NUM_CLASSES = 5
QUEUE = 64  # two steps fill it exactly once: step 2 contrasts against step 1's keys
STEPS = 2
COUNTS = [40, 20, 10, 5, 2]  # the log prior of the long-tailed recipes


def device_losses(criterion, out: ContrastiveOutput, labels: torch.Tensor) -> torch.Tensor:
    """The loss of each virtual device of this process ([G]): one group's output at a time."""
    if out.features.ndim == 2:
        return criterion(out, labels).detach()[None]
    groups = out.features.shape[0]
    return torch.stack([criterion(ContrastiveOutput(out.features[g], out.labels[g], out.logits[g], out.num_anchors),
                                  labels.chunk(groups)[g]).detach() for g in range(groups)])


def main(out_file: str, device_batch: str) -> None:
    info = gdist.init_distributed(timeout=60.0)
    rank, world = info.rank, info.world_size
    local = GLOBAL_BATCH // world
    mine = slice(rank * local, (rank + 1) * local)
    result = {"world_size": world}
    for name in ("paco", "gpaco", "multitask"):
        method = get_method(name)
        torch.manual_seed(0)  # same model, queue and shuffle-BN permutations in every configuration
        model = method.build_model("resnet8", NUM_CLASSES, proj_dim=8, queue_size=QUEUE, global_batch=GLOBAL_BATCH,
                                   device_batch=None if device_batch == "none" else int(device_batch),
                                   **({"momentum": 0.9} if name == "paco" else {}))
        criterion = method.build_criterion(num_classes=NUM_CLASSES, class_counts=COUNTS, alpha=0.5, temperature=0.2)
        net = DistributedDataParallel(model) if info.distributed else model
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        data = torch.Generator().manual_seed(123)
        rec = {"loss": [], "device_losses": [], "grads": []}
        for _ in range(STEPS):
            im_q = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=data)[mine]
            im_k = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=data)[mine]
            labels = torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=data)[mine]
            out = net(im_q, im_k, labels)
            loss = criterion(out, labels)
            opt.zero_grad()
            loss.backward()
            total = loss.detach().clone()
            if info.distributed:
                torch.distributed.all_reduce(total)
            rec["loss"].append(total / world)
            rec["device_losses"].append(gdist.all_gather_nograd(device_losses(criterion, out, labels)))
            rec["grads"].append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            opt.step()
        rec["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        result[name] = rec
    if rank == 0:
        torch.save(result, out_file)
    gdist.barrier()  # no rank tears the group down while another still uses it
    gdist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
