"""Worker for tests/test_distributed.py, launched with torchrun (CPU, gloo).

Usage: torchrun --nproc_per_node=N tests/ddp_worker.py OUT_DIR

Every rank writes OUT_DIR/rank{R}.pt with:
* ``shuffle``: its local batch, the shuffled chunk it received, the unshuffle indices
  and the restored batch (batch_shuffle / batch_unshuffle);
* for ``paco`` and ``gpaco``: one DDP training step on rank-specific data, then the
  queue (features, labels, ptr), the keys and labels this rank produced, the queue
  before the step, and one trained parameter;
* ``rescom``: one DDP ResCom step, rank r's samples all of class r: the class-balanced
  queue after and before it, its pointers, this rank's first-view features;
* ``paco_key_order``: PaCo keys computed through the cross-rank shuffle vs. a local pass.
"""
from __future__ import annotations

import os
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from gpaco import distributed as gdist
from gpaco.losses import paco_loss
from gpaco.losses.criteria import ResComCriterion
from gpaco.methods.rebuild import build_model

LOCAL_BATCH = 4
NUM_CLASSES = 5
QUEUE = 32
SHUFFLE_BATCH = 8


def main(out_dir: str) -> None:
    info = gdist.init_distributed(timeout=60.0)
    assert info.distributed and info.world_size == gdist.get_world_size() > 1, info
    rank, world = info.rank, info.world_size
    result = {"world_size": world}

    # Different local RNG on each rank: only the broadcast from rank 0 makes the
    # permutation common to all of them.
    torch.manual_seed(1000 + rank)
    x = (rank * SHUFFLE_BATCH + torch.arange(SHUFFLE_BATCH, dtype=torch.float32))[:, None].repeat(1, 3)
    shuffled, unshuffle_idx = gdist.batch_shuffle(x)
    result["shuffle"] = {
        "x": x, "shuffled": shuffled, "unshuffle_idx": unshuffle_idx,
        "restored": gdist.batch_unshuffle(shuffled, unshuffle_idx),
        "sum": gdist.all_reduce_counts([torch.tensor([rank + 1])])[0],
        "agree": gdist.agree([rank == 1, False], torch.device("cpu")),
    }

    for method in ("paco", "gpaco"):
        torch.manual_seed(0)  # same initial model and queue everywhere (DDP also syncs them)
        model = build_model(method, "resnet8", NUM_CLASSES, proj_dim=8, queue_size=QUEUE,
                            global_batch=LOCAL_BATCH * world, momentum=0.9)
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(100 + rank)  # different data per rank
        im_q = torch.randn(LOCAL_BATCH, 3, 32, 32, generator=g)
        im_k = torch.randn(LOCAL_BATCH, 3, 32, 32, generator=g)
        labels = torch.randint(0, NUM_CLASSES, (LOCAL_BATCH,), generator=g)
        queue_before = model.queue.features.clone()
        labels_before = model.queue.labels.clone()

        out = ddp(im_q, im_k, labels)
        loss = paco_loss(out.features, out.labels, out.logits, out.num_anchors, alpha=0.05, temperature=0.07)
        opt.zero_grad()
        loss.backward()
        opt.step()

        result[method] = {
            "queue": model.queue.features.clone(),
            "queue_labels": model.queue.labels.clone(),
            "ptr": model.queue.ptr.clone(),
            "keys": out.features[LOCAL_BATCH:2 * LOCAL_BATCH].detach().clone(),
            "labels": labels,
            "queue_before": queue_before,
            "labels_before": labels_before,
            "num_anchors": out.num_anchors,
            "fc_weight": model.fc.weight.detach().clone(),
            "loss": loss.detach(),
            "bn_mean": model.encoder_q.backbone.bn1.running_mean.clone() if method == "paco"
            else model.encoder.backbone.bn1.running_mean.clone(),
        }
        gdist.broadcast_buffers(model)
        result[method]["bn_mean_broadcast"] = dict(model.named_buffers())[
            "encoder_q.backbone.bn1.running_mean" if method == "paco" else "encoder.backbone.bn1.running_mean"].clone()

    # ResCom: every rank's first-view features go into the class-balanced queue of every rank.
    # Rank r's samples all have class r, so class r's K = LOCAL_BATCH slots must hold them in order.
    torch.manual_seed(0)
    model = build_model("rescom", "resnet8", NUM_CLASSES, proj_dim=8, queue_per_class=LOCAL_BATCH)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)
    labels = torch.full((LOCAL_BATCH,), rank)
    keys_before = model.balanced_queue.keys.clone()
    views = [torch.randn(LOCAL_BATCH, 3, 32, 32, generator=g) for _ in range(2)]
    out = ddp(*views, labels)
    loss = ResComCriterion(class_counts=[5] * NUM_CLASSES, num_positives=2, num_negatives=6)(out, labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    result["rescom"] = {"keys": model.balanced_queue.keys.clone(), "ptr": model.balanced_queue.ptr.clone(),
                        "keys_before": keys_before, "view1": out.features[:LOCAL_BATCH].detach().clone(),
                        "snapshot": out.keys}

    # Keys must come back to the rank that owns the images, in order. With the key
    # encoder's BN in eval mode every key depends on its own image only, so the keys
    # computed through the cross-rank shuffle must equal a local, unshuffled pass.
    torch.manual_seed(0)
    model = build_model("paco", "resnet8", NUM_CLASSES, proj_dim=8, queue_size=QUEUE, momentum=0.9)
    model.encoder_k.eval()
    g = torch.Generator().manual_seed(200 + rank)
    im_q, im_k = torch.randn(2, LOCAL_BATCH, 3, 32, 32, generator=g)
    out = model(im_q, im_k, torch.zeros(LOCAL_BATCH, dtype=torch.long))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encoder_k(im_k)[1], dim=1)
    result["paco_key_order"] = {"keys": out.features[LOCAL_BATCH:2 * LOCAL_BATCH].detach(), "expected": expected}

    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    gdist.barrier()
    gdist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
