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

# The loss modules whose label-range checks run only where ``host_readable`` says a read is free
CHECKED = ("paco", "reslt", "mislas", "rescom", "pixel", "ceco")

CLASSIFICATION = ["ce", "balanced_ce", "paco", "gpaco", "multitask", "reslt", "rescom", "mislas", "mislas_stage2"]
# options a method needs that its defaults leave unset or size for 1000 classes
CRITERION_OPTIONS = {"reslt": {"branch_sizes": (6, 3)}, "rescom": {"num_positives": 1, "num_negatives": 4}}
CONTEXT_OPTIONS = {"mislas": {"mixup_alpha": 0.2}}
SEGMENTATION = ["ce", "gpaco", "ceco", "cecol", "rr"]


def as_on_a_gpu(monkeypatch):
    """Switch the CPU-only label-range checks off, so that any other read counts as on a GPU."""
    for name in CHECKED:
        monkeypatch.setattr(f"gpaco.losses.{name}.host_readable", lambda t: False)


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
                self.sites.append(f"{name} at {f.filename.split('/gpaco/')[-1]}:{f.lineno} ({f.name})")
            return real(t, *a, **k)
        return read


def _run(method, steps, print_freq, monkeypatch, *, accum_iter=1):
    torch.manual_seed(0)
    classes, batch = 10, 8
    model = build_model(method, "resnet8", classes, queue_size=4 * batch, proj_dim=16, global_batch=batch)
    criterion = build_criterion(method, class_counts=[10 - c for c in range(classes)],
                                **CRITERION_OPTIONS.get(method, {}))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(steps):
        views = [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)]
        data.append((views if get_method(method).views == 2 else views[0],
                     torch.randint(0, classes, (batch,), generator=g)))
    with monkeypatch.context() as m:
        counter = ReadCounter(m)
        ctx = FitContext(model=model, criterion=criterion, optimizer=opt, method=get_method(method),
                         device=torch.device("cpu"), print_freq=print_freq, accum_iter=accum_iter,
                         options=dict(CONTEXT_OPTIONS.get(method, {})))
        stats = train_epoch(ctx, data, epoch=0)
    return counter.sites, stats


def _run_seg(method, steps, monkeypatch):
    torch.manual_seed(0)
    classes, batch, size = 5, 2, 32
    spec = get_method(method, "segmentation")
    model = spec.build_model("r18", classes)
    options = {"num_pixels": 64} if method == "gpaco" else {}
    criterion = spec.build_criterion(num_classes=classes, class_counts=[4, 3, 2, 2, 1], **options)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(steps):
        masks = torch.randint(0, classes, (batch, size, size), generator=g)
        masks[:, :4] = 255  # some unlabelled pixels
        data.append((torch.randn(batch, 3, size, size, generator=g), masks))
    with monkeypatch.context() as m:
        counter = ReadCounter(m)
        ctx = FitContext(model=model, criterion=criterion, optimizer=opt, method=spec, device=torch.device("cpu"),
                         generator=torch.Generator().manual_seed(2))
        stats = train_epoch(ctx, data, epoch=0)
    return counter.sites, stats


@pytest.mark.parametrize("method", CLASSIFICATION)
def test_training_step_reads_nothing_from_the_device(method, monkeypatch):
    as_on_a_gpu(monkeypatch)
    few, _ = _run(method, 2, 0, monkeypatch)
    many, stats = _run(method, 6, 0, monkeypatch)
    # One read at the epoch's end (loss, accuracy, finiteness together), none per step.
    assert few == many and len(many) == 1, many
    assert stats["train_loss"] > 0 and 0 <= stats["train_top1"] <= 100


@pytest.mark.parametrize("method", SEGMENTATION)
def test_segmentation_step_reads_nothing_from_the_device(method, monkeypatch):
    as_on_a_gpu(monkeypatch)
    few, _ = _run_seg(method, 1, monkeypatch)
    many, stats = _run_seg(method, 3, monkeypatch)
    assert few == many and len(many) == 1, many
    assert stats["train_loss"] > 0


def test_progress_lines_are_the_only_reads(monkeypatch, capsys):
    as_on_a_gpu(monkeypatch)
    sites, _ = _run("gpaco", 6, 2, monkeypatch, accum_iter=2)
    assert len(sites) == 4, sites  # steps 2, 4, 6 print, then the epoch's sums
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[epoch")]
    assert len(lines) == 3 and all(" data " in x and " img/s eta " in x for x in lines), lines
