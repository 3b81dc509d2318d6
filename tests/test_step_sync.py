"""A training step reads nothing back from the device (docs/benchmarks.md#gpu-readiness).

On a GPU every host read of a device value (``.item()``, ``bool(t)``, ``.tolist()``,
``.cpu()``...) waits for all queued kernels and breaks CUDA graphs and ``torch.compile``
graphs. On CPU nothing stalls, so these tests count the Python-level reads instead: the
count must not grow with the number of steps, only with the progress lines asked for.
"""
from __future__ import annotations

import traceback

import pytest
import torch

from gpaco.engine.step import FitContext, train_epoch
from gpaco.methods import build_criterion, get_method
from gpaco.methods.rebuild import build_model

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


class ReadCounter:
    """Wraps ``torch.Tensor``'s host-read methods; records the gpaco line behind each read."""

    def __init__(self, monkeypatch):
        self.sites = []
        for name in READS:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(real, name))

    def _wrap(self, real, name):
        def read(t, *a, **k):
            frames = [f for f in traceback.extract_stack()[:-1] if "/gpaco/" in f.filename]
            if frames:
                f = frames[-1]
                # paco_loss's label-range check runs on CPU tensors only, where a read stalls
                # nothing (gpaco/losses/paco.py); it is not a device sync.
                if not f.filename.endswith("losses/paco.py"):
                    self.sites.append(f"{name} at {f.filename.split('/gpaco/')[-1]}:{f.lineno} ({f.name})")
            return real(t, *a, **k)
        return read


def _run(method, steps, print_freq, monkeypatch, *, accum_iter=1):
    torch.manual_seed(0)
    classes, batch = 10, 8
    model = build_model(method, "resnet8", classes, queue_size=4 * batch, proj_dim=16, global_batch=batch)
    criterion = build_criterion(method, class_counts=[10 - c for c in range(classes)])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(steps):
        views = [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)]
        data.append((views if method != "ce" else views[0], torch.randint(0, classes, (batch,), generator=g)))
    with monkeypatch.context() as m:
        counter = ReadCounter(m)
        ctx = FitContext(model=model, criterion=criterion, optimizer=opt, method=get_method(method),
                         device=torch.device("cpu"), print_freq=print_freq, accum_iter=accum_iter)
        stats = train_epoch(ctx, data, epoch=0)
    return counter.sites, stats


@pytest.mark.parametrize("method", ["ce", "paco", "gpaco", "rescom"])
def test_training_step_reads_nothing_from_the_device(method, monkeypatch):
    # ResCom's label-range checks read only CPU tensors; switch them off as on a GPU so that
    # any other read in its queue or mining counts
    monkeypatch.setattr("gpaco.losses.rescom.host_readable", lambda labels: False)
    few, _ = _run(method, 2, 0, monkeypatch)
    many, stats = _run(method, 6, 0, monkeypatch)
    # One read at the epoch's end (loss, accuracy, finiteness together), none per step.
    assert few == many and len(many) == 1, many
    assert stats["train_loss"] > 0 and 0 <= stats["train_top1"] <= 100


def test_progress_lines_are_the_only_reads(monkeypatch, capsys):
    sites, _ = _run("gpaco", 6, 2, monkeypatch, accum_iter=2)
    assert len(sites) == 4, sites  # steps 2, 4, 6 print, then the epoch's sums
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[epoch")]
    assert len(lines) == 3 and all(" data " in x and " img/s eta " in x for x in lines), lines
