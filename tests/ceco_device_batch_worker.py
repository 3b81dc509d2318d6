"""Worker for tests/test_ceco_device_batch.py: two training steps of CeCo (``ceco`` and
``cecol``) on a fixed global batch of 4 images, either as 2 processes of 2 images (the
original's layout: one process per GPU) or as 1 process with ``device_batch`` 2.

Usage: torchrun --nproc_per_node=2 tests/ceco_device_batch_worker.py OUT_FILE none
(tests call :func:`train` in-process for the one-process layouts).

Only what ``--device-batch`` changes is compared, so everything else is made the same in
both layouts: dropout is off (its draws differ per process), and the main network's
BatchNorm normalises with its running statistics. On CUDA the main network runs
SyncBatchNorm, whose statistics are the global batch's in both layouts; on CPU the
processes would keep per-process BatchNorm instead, which is not the run being checked.
The CeCo branch's own BatchNorm stays in training mode: it is what ``--device-batch``
splits.

Rank 0 writes OUT_FILE with, per method: the global loss and loss parts of each step
(mean over processes), every virtual device's center logits / labels (device order), the
DDP-averaged gradients of each step, and rank 0's state dict after the two steps
(parameters and BatchNorm running statistics, the CeCo branch's included).
"""
from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

GLOBAL_BATCH = 4
NUM_CLASSES = 5
SIZE = 32
STEPS = 2
COUNTS = [400, 200, 90, 30, 7]
METHODS = ("ceco", "cecol")


def batch(step: int):
    """The global batch of ``step``: images [4, 3, 32, 32] and labels [4, 32, 32] whose class
    sets differ per image (so the per-device class centres differ from the batch's)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH, SIZE, SIZE), generator=g)
    y[:, :5] = 255  # an unlabelled band
    y[0][y[0] >= 3] = 0  # image 0: classes 0-2 only
    y[1][y[1] == 1] = 4
    y[3][y[3] == 0] = 2
    return x, y


def quiet(model: nn.Module) -> nn.Module:
    """Dropout off; the main network's BatchNorm on fixed running statistics (module
    docstring), taken from one forward of a calibration batch (the same in every layout and
    process), so that the decoder output keeps a normal scale (with the initial statistics,
    0 and 1, it fades to ~1e-4 and the branch's BatchNorm would normalise mostly its eps)."""
    branch = {id(m) for m in model.ceco.modules()}
    main = [m for m in model.modules() if isinstance(m, _BatchNorm) and id(m) not in branch]
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    momenta = [m.momentum for m in main]
    for m in main:
        m.momentum = 1.0  # running statistics := the calibration batch's
    with torch.no_grad():
        model(batch(-1)[0])  # inference outputs: the CeCo branch does not run
    for m, momentum in zip(main, momenta):
        m.momentum = momentum
        m.eval()
    return model


def train(device_batch: Optional[int], *, rank: int = 0, world: int = 1, distributed: bool = False) -> dict:
    from gpaco.methods import get_method

    local = GLOBAL_BATCH // world
    mine = slice(rank * local, (rank + 1) * local)
    result = {"world_size": world}
    for name in METHODS:
        method = get_method(name, "segmentation")
        torch.manual_seed(0)  # the same network (and cecol's random classifier) in every layout
        model = quiet(method.build_model("r18", NUM_CLASSES, device_batch=device_batch))
        criterion = method.build_criterion(num_classes=NUM_CLASSES, class_counts=COUNTS)
        net = DistributedDataParallel(model) if distributed else model
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        rec = {"loss": [], "parts": [], "center_logits": [], "center_labels": [], "grads": []}
        for step in range(STEPS):
            x, y = batch(step)
            out = net(x[mine], train_outputs=True, labels=y[mine])
            loss, parts = criterion(out, y[mine])
            opt.zero_grad()
            loss.backward()
            values = torch.stack([loss.detach(), *(parts[k] for k in sorted(parts))])
            centers = (out["center_logits"].detach(), out["center_labels"])
            if distributed:
                torch.distributed.all_reduce(values)
                gathered = [None] * world
                torch.distributed.all_gather_object(gathered, centers)
                centers = (torch.cat([c[0] for c in gathered]), torch.cat([c[1] for c in gathered]))
            values = values / world
            rec["loss"].append(values[0])
            rec["parts"].append(dict(zip(sorted(parts), values[1:])))
            rec["center_logits"].append(centers[0])
            rec["center_labels"].append(centers[1])
            rec["grads"].append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            opt.step()
        rec["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        result[name] = rec
    return result


def main(out_file: str, device_batch: str) -> None:
    from gpaco import distributed as gdist

    info = gdist.init_distributed(timeout=60.0)
    result = train(None if device_batch == "none" else int(device_batch), rank=info.rank, world=info.world_size,
                   distributed=info.distributed)
    if info.rank == 0:
        torch.save(result, out_file)
    gdist.barrier()  # no rank tears the group down while another still uses it
    gdist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
