"""Worker for tests/test_rescom.py::test_device_batch_equals_one_process_per_device: two
ResCom training steps on a fixed global batch of 16, as 1 or 2 processes.

Usage: [torchrun --nproc_per_node=W] tests/rescom_device_batch_worker.py OUT_FILE DEVICE_BATCH|none

Every process takes its rank's 16 / W samples of each step; with DEVICE_BATCH the model
splits them into virtual devices of that size (``--device-batch``). Rank 0 writes OUT_FILE
with the global loss of each step (mean over processes), the loss of every virtual device
(rank order), the DDP-averaged gradients of each step, and rank 0's state dict after the two
steps (parameters, BatchNorm running statistics, the class-balanced queue and its pointers).
"""
from __future__ import annotations

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from gpaco import distributed as gdist
from gpaco.methods import get_method
from gpaco.models.rescom import ResComOutput

GLOBAL_BATCH = 16
NUM_CLASSES = 4
QUEUE_PER_CLASS = 3  # 12 keys: step 1's 16 view-1 rows overwrite every class's ring at least once
STEPS = 2
COUNTS = [40, 20, 10, 5]


def device_losses(criterion, out: ResComOutput) -> torch.Tensor:
    """The loss of each virtual device of this process ([G]): one device's output at a time."""
    if out.features.ndim == 2:
        return criterion(out, None).detach()[None]
    return torch.stack([criterion(ResComOutput(out.features[g], out.logits[g], out.labels[g], out.keys), None).detach()
                        for g in range(out.features.shape[0])])


def main(out_file: str, device_batch: str) -> None:
    info = gdist.init_distributed(timeout=60.0)
    rank, world = info.rank, info.world_size
    local = GLOBAL_BATCH // world
    mine = slice(rank * local, (rank + 1) * local)
    method = get_method("rescom")
    torch.manual_seed(0)  # the same model and queue in every configuration
    model = method.build_model("resnet8", NUM_CLASSES, proj_dim=8, queue_per_class=QUEUE_PER_CLASS,
                               device_batch=None if device_batch == "none" else int(device_batch))
    criterion = method.build_criterion(num_classes=NUM_CLASSES, class_counts=COUNTS, temperature=0.2,
                                       num_positives=2, num_negatives=5, effective_num_beta=0.9,
                                       queue_per_class=QUEUE_PER_CLASS)
    net = DistributedDataParallel(model) if info.distributed else model
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    data = torch.Generator().manual_seed(123)
    result = {"world_size": world, "loss": [], "device_losses": [], "grads": []}
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
        result["loss"].append(total / world)
        result["device_losses"].append(gdist.all_gather_nograd(device_losses(criterion, out)))
        result["grads"].append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
    result["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save(result, out_file)
    gdist.barrier()  # no rank tears the group down while another still uses it
    gdist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
