"""Training-step overhead on ResNet-50: PaCo / GPaCo / our CE recipe against CE and a bare loop.

Every configuration runs the real engine pieces: ``gpaco.models.build_model`` +
``gpaco.engine.criterion.Criterion`` + ``gpaco.engine.loop.train_one_epoch`` (which does
the device move, autocast, forward, loss, finiteness check, backward, SGD step and the
loss/accuracy bookkeeping), fed pre-made batches from memory so that only the step is
timed. The bare loop is what one writes by hand: timm ``resnet50`` (the same network as
our backbone + fc) + ``F.cross_entropy`` + ``torch.optim.SGD``, nothing else.

Ratios (each side the median over interleaved rounds; ratio = median of per-round ratios):

* PaCo step (two views of B) / CE step (B): the key encoder's extra no-grad forward puts
  the floor near 4/3 (forward ~1/3 of forward+backward).
* GPaCo step (two views of B) / CE step (2B): the same images through the network.
* our CE recipe step / bare CE loop step, same B.
* the loss's share of the GPaCo/PaCo step at ImageNet-LT (C=1000) and iNaturalist
  (C=8142) sizes, queue K=8192: loss forward+backward on the step's own tensors,
  over the step.

Defaults: B=8, 224 px (quick: 112 px), K=8192, C=1000, one step per timed unit, 5
interleaved rounds (quick: 3), one thread (the most stable ratios on a shared machine).
Before timing, the one-pass GPaCo prototype (see below) is checked to compute the same
loss, gradients and BatchNorm buffers as GPaCoModel.

    python bench/train_step.py [--quick] [--batch 8] [--image-size 224] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from gpaco.engine.criterion import Criterion  # noqa: E402
from gpaco.engine.loop import forward_train, train_one_epoch  # noqa: E402
from gpaco.models import build_model  # noqa: E402

TARGET_PACO, TARGET_GPACO, TARGET_CE = 1.45, 1.05, 1.03
DEVICE = torch.device("cpu")


def long_tail_counts(num_classes: int, imbalance: float = 256.0, head: int = 1280):
    """Exponential profile like ImageNet-LT (1280 -> 5 images per class)."""
    return [max(1, int(head * imbalance ** (-c / max(num_classes - 1, 1)))) for c in range(num_classes)]


class Engine:
    """One gpaco configuration: model + criterion + SGD, stepped with train_one_epoch."""

    def __init__(self, method, batch, size, num_classes, queue, steps, one_pass=False):
        torch.manual_seed(0)
        self.model = build_model(method, "resnet50", num_classes, queue_size=queue, proj_dim=128,
                                 global_batch=batch).to(DEVICE)
        if one_pass:
            self.model = OnePassModel(self.model)
        counts = long_tail_counts(num_classes)
        self.criterion = Criterion(method, class_counts=counts).to(DEVICE)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4)
        self.data = C.batches(method, batch, size, num_classes, steps)

    def __call__(self) -> float:
        t0 = time.perf_counter()
        train_one_epoch(self.model, self.criterion, self.data, self.opt, None, epoch=0, device=DEVICE,
                        print_freq=0)
        return (time.perf_counter() - t0) / len(self.data)


# ----------------------------------------------------------------------------- one-pass prototype
#
# A prototype of the model change recommended in docs/benchmarks.md: GPaCo runs both views
# through the encoder as ONE 2B batch, with every BatchNorm normalising each view's half
# separately (and updating its running statistics twice, view 1 then view 2), which is
# the same arithmetic as the two passes the original makes (per-view BN statistics).
# It is checked against GPaCoModel (loss, gradients, BN buffers) before it is timed.

class _ViewSplitBN:
    """Context manager: training-mode BatchNorm2d/1d layers under ``module`` normalise the
    ``views`` equal chunks of their batch separately, in order."""

    def __init__(self, module, views=2):
        self.bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self.views = views

    def __enter__(self):
        for bn in self.bns:
            bn.forward = self._forward(bn)
        return self

    def __exit__(self, *exc):
        for bn in self.bns:
            del bn.forward  # back to the class's forward

    def _forward(self, bn):
        views = self.views

        def forward(x):
            if not bn.training or not bn.track_running_stats:
                return type(bn).forward(bn, x)
            outs = []
            for chunk in x.chunk(views):
                bn.num_batches_tracked.add_(1)
                momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                outs.append(F.batch_norm(chunk, bn.running_mean, bn.running_var, bn.weight, bn.bias, True,
                                         momentum, bn.eps))
            return torch.cat(outs)
        return forward


def one_pass_forward(model, im_q, im_k, labels):
    """GPaCoModel's two-view training forward with one encoder pass over cat(im_q, im_k)."""
    from gpaco.models import ContrastiveOutput

    labels = labels.long()
    with _ViewSplitBN(model.encoder, 2):
        pooled, z = model.encoder(torch.cat([im_q, im_k]))
    q, k = F.normalize(z, dim=1).chunk(2)
    queue_feats, queue_labels = model.queue.snapshot()
    out = ContrastiveOutput(torch.cat([q, k, queue_feats]), torch.cat([labels, labels, queue_labels]),
                            model.fc(pooled), 2 * q.shape[0])
    model.queue.enqueue(k.detach(), labels)
    return out


class OnePassModel(torch.nn.Module):
    """Wraps a GPaCoModel so that train_one_epoch runs the one-pass forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, im_q, im_k=None, labels=None):
        if not self.training or im_k is None or labels is None:
            return self.model(im_q, im_k, labels)
        return one_pass_forward(self.model, im_q, im_k, labels)


def check_one_pass(size=32, batch=4, classes=10):
    """The prototype computes what GPaCoModel computes: same loss, gradients, BN buffers."""
    torch.manual_seed(0)
    a = build_model("gpaco", "resnet50", classes, queue_size=4 * batch, global_batch=batch).train()
    b = build_model("gpaco", "resnet50", classes, queue_size=4 * batch, global_batch=batch).train()
    b.load_state_dict(a.state_dict())
    crit = Criterion("gpaco", class_counts=list(range(1, classes + 1)))
    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(batch, 3, size, size, generator=g) for _ in range(2))
    y = torch.randint(0, classes, (batch,), generator=g)
    la = crit(a(x1, x2, y), y)
    lb = crit(one_pass_forward(b, x1, x2, y), y)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb, rtol=1e-5, atol=1e-6), (la.item(), lb.item())
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        scale = pa.grad.abs().max().clamp_min(1e-12)
        assert (pa.grad - pb.grad).abs().max() <= 1e-4 * scale, f"gradient of {n} differs"
    for (n, ba), bb in zip(a.named_buffers(), b.buffers()):
        assert torch.allclose(ba.float(), bb.float(), rtol=1e-4, atol=1e-5), f"buffer {n} differs"


def loss_time(engine: Engine, repeats: int) -> float:
    """Median seconds of the criterion's forward+backward on one step's own output tensors."""
    engine.model.train()
    x, y = engine.data[0]
    with torch.no_grad():
        out = forward_train(engine.model, x, y)
    ts = []
    for _ in range(repeats + 1):
        feats = out.features.detach().requires_grad_(True)
        logits = out.logits.detach().requires_grad_(True)
        o = out._replace(features=feats, logits=logits)
        t0 = time.perf_counter()
        engine.criterion(o, y).backward()
        ts.append(time.perf_counter() - t0)
    return C.median(ts[1:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=8, help="B: CE/PaCo/GPaCo batch (CE also runs at 2B)")
    p.add_argument("--image-size", type=int, default=None, help="default 224 (quick: 112)")
    p.add_argument("--share-image-size", type=int, default=None,
                   help="image size of the loss-share steps (default: --image-size)")
    p.add_argument("--queue", type=int, default=8192)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=1, help="steps per timed unit")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5, quick 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: most stable ratios on a shared machine)")
    p.add_argument("--no-prototype", action="store_true", help="skip the one-pass GPaCo prototype")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    size = args.image_size or (112 if args.quick else 224)
    share_size = args.share_image_size or size
    repeats = args.repeats or (3 if args.quick else 5)
    B, K, Cn, S = args.batch, args.queue, args.classes, args.steps
    C.set_threads(args.threads)
    load = C.LoadMeter()

    fns = {
        "bare_ce_B": C.Bare(B, size, Cn, S),
        "ce_B": Engine("ce", B, size, Cn, K, S),
        "paco_B": Engine("paco", B, size, Cn, K, S),
        "gpaco_B": Engine("gpaco", B, size, Cn, K, S),
        "ce_2B": Engine("ce", 2 * B, size, Cn, K, S),
    }
    if not args.no_prototype:
        check_one_pass()
        fns["gpaco_1pass_B"] = Engine("gpaco", B, size, Cn, K, S, one_pass=True)
    times = C.interleave(fns, repeats, warmup=1)
    med = {k: C.median(v) for k, v in times.items()}
    ms = {k: f"{1e3 * v:.0f}" for k, v in med.items()}
    rows = [
        C.Row("train", f"PaCo step / CE step (B={B})", C.paired_ratio(times["paco_B"], times["ce_B"]),
              TARGET_PACO, "<=", f"{ms['paco_B']} vs {ms['ce_B']} ms; floor ~1.33"),
        C.Row("train", f"GPaCo step (B={B}) / CE step (2B={2 * B})",
              C.paired_ratio(times["gpaco_B"], times["ce_2B"]), TARGET_GPACO, "<=",
              f"{ms['gpaco_B']} vs {ms['ce_2B']} ms"),
        C.Row("train", f"our CE recipe / bare CE loop (B={B})", C.paired_ratio(times["ce_B"], times["bare_ce_B"]),
              TARGET_CE, "<=", f"{ms['ce_B']} vs {ms['bare_ce_B']} ms"),
    ]
    if "gpaco_1pass_B" in times:
        rows.append(C.Row("train", f"GPaCo one-pass prototype (B={B}) / CE step (2B={2 * B})",
                          C.paired_ratio(times["gpaco_1pass_B"], times["ce_2B"]), None, "<=",
                          f"{ms['gpaco_1pass_B']} vs {ms['ce_2B']} ms; the recommended model change, "
                          "checked equal to GPaCoModel; not the engine"))
    del fns

    # The loss's share of the step, at ImageNet-LT and iNaturalist class counts.
    share_repeats = max(2, repeats // 2)
    for label, classes in (("ImageNet-LT", 1000), ("iNaturalist", 8142)):
        for method in ("gpaco", "paco"):
            eng = Engine(method, B, share_size, classes, K, 1)
            step = C.median(C.interleave({"s": eng}, share_repeats, warmup=1)["s"])
            lt = loss_time(eng, 5)
            rows.append(C.Row("train", f"{method} loss share of step, {label} (C={classes}, K={K})", lt / step,
                              None, "<=", f"loss fwd+bwd {1e3 * lt:.1f} ms of {1e3 * step:.0f} ms "
                              f"(B={B}, {share_size}px)"))
            del eng
    info = load.stop()
    print(f"train step: ResNet-50, B={B}, {size}px (loss share at {share_size}px), K={K}, C={Cn}, {S} steps per "
          f"unit, {repeats} rounds, {args.threads} thread(s); other processes used "
          f"{info['other_cores'] or 0:.2f} cores meanwhile")
    C.print_rows(rows)
    C.rows_to_json(rows, args.json, {"load": info, "step_ms": {k: 1e3 * v for k, v in med.items()}})
    return C.exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
