"""``--compile``: the PaCo, GPaCo, multi-task and ViT training steps trace as one graph
(per-view BatchNorm is a module, view_bn.py; the queue pointer stays on the device) and a
compiled step equals the eager one within float32 rounding."""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo as dynamo

from conftest import sgd_step_
from gpaco.methods import get_method
from gpaco.methods import build_criterion
from gpaco.methods.rebuild import build_model

C, B = 10, 8
VIT = "mae_vit_tiny_d2_patch8"  # embed 64, depth 2, patch 8, 32 px


def _setup(method, arch="resnet8", size=16, **kw):
    torch.manual_seed(0)
    if arch == VIT:
        kw["backbone_kwargs"] = {"img_size": size}
    model = build_model(method, arch, C, queue_size=4 * B, proj_dim=16, global_batch=B, **kw)
    criterion = build_criterion(method, class_counts=[C - c for c in range(C)])
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(B, 3, size, size, generator=g) for _ in range(2)]
    labels = torch.randint(0, C, (B,), generator=g)
    return model, criterion, (views if method != "ce" else views[0]), labels


def _step(model, criterion, x, y):
    method = get_method("ce" if isinstance(x, torch.Tensor) else "gpaco")  # one view: CE; two: contrastive
    return criterion(method.forward_train(model, x, y), y)


@pytest.mark.parametrize("method,arch,kw,one_pass", [
    ("paco", "resnet8", {}, False), ("gpaco", "resnet8", {}, False), ("gpaco", "resnet8", {}, True),
    ("multitask", "resnet8", {}, True), ("gpaco", "resnet8", {"device_batch": 4}, False),
    ("gpaco", "resnet8", {"device_batch": 4}, True), ("paco", "resnet8", {"device_batch": 4}, False),
    ("ce", "resnet8", {"device_batch": 4}, False), ("gpaco", VIT, {}, True), ("ce", VIT, {}, False),
])
def test_training_step_is_one_graph(method, arch, kw, one_pass):
    """Forward + loss of one training step: one graph, no graph break (torch._dynamo.explain);
    GPaCo in its CPU (two passes) and accelerator (one pass) forms."""
    model, criterion, x, y = _setup(method, arch, 32 if arch == VIT else 16, **kw)
    model.one_pass_on_cpu = one_pass
    explained = dynamo.explain(_step)(model, criterion, x, y)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def _compare(method, backend, steps=2, one_pass=False):
    model, criterion, x, y = _setup(method)
    model.one_pass_on_cpu = one_pass  # GPaCo: True one pass (the default), False two passes (SyncBatchNorm)
    ref = copy.deepcopy(model)
    compiled = torch.compile(model, backend=backend)
    for step in range(steps):
        torch.manual_seed(step)  # PaCo's shuffle-BN permutation
        loss = _step(compiled, criterion, x, y)
        loss.backward()
        torch.manual_seed(step)
        loss_ref = _step(ref, criterion, x, y)
        loss_ref.backward()
        assert torch.allclose(loss, loss_ref, rtol=1e-5, atol=1e-6), (step, loss, loss_ref)
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5 * q.grad.abs().max().item()), name
        for (name, a), b in zip(model.named_buffers(), ref.buffers()):
            assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6), name  # BN statistics, queue, ptr
        sgd_step_(model, ref)
    return model


@pytest.mark.parametrize("method,one_pass", [("paco", False), ("gpaco", False), ("gpaco", True)])
def test_compiled_step_equals_eager(method, one_pass):
    """dynamo + AOTAutograd (the graphs inductor compiles): losses, gradients, BN statistics,
    queue and pointer equal to eager over two steps (the second sees the first's enqueue);
    GPaCo in both its CPU (two passes) and accelerator (one pass, per-view BN) forms."""
    model = _compare(method, "aot_eager", one_pass=one_pass)
    assert int(model.queue.ptr) == 2 * B


@pytest.mark.slow
@pytest.mark.full  # half a minute of C++ compilation; the graph and aot_eager tests check the capture
def test_inductor_gpaco_step_equals_eager():
    """The same through inductor's generated code (~1 minute of compilation on 2 cores)."""
    _compare("gpaco", "inductor", one_pass=True)


def test_momentum_update_equals_the_loop():
    """The foreach momentum update is bit for bit the per-parameter mul_/add_ loop."""
    model, *_ = _setup("paco")
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    ref = copy.deepcopy(model)
    model.momentum_update()
    m = ref.momentum
    with torch.no_grad():
        for p_q, p_k in zip(ref.encoder_q.parameters(), ref.encoder_k.parameters()):
            p_k.mul_(m).add_(p_q, alpha=1.0 - m)
    for a, b in zip(model.encoder_k.parameters(), ref.encoder_k.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(model.encoder_k.parameters()), next(model.encoder_q.parameters()))


def test_step_is_one_graph_under_ddp(tmp_path):
    """Under a 2-process gloo group PaCo's and GPaCo's training forward + loss are one graph:
    shuffle-BN's permutation comes from the method's step (the same on every rank, nothing
    broadcast) and the queue's all-gather traces."""
    import json
    from pathlib import Path

    from conftest import run_worker

    out = tmp_path / "graphs.json"
    run_worker(Path(__file__).with_name("compile_ddp_worker.py"), out, nproc=2)
    result = json.loads(out.read_text())
    for name in ("paco", "gpaco"):
        assert (result[name]["graphs"], result[name]["breaks"]) == (1, 0), (name, result[name]["reasons"])
    assert result["paco"]["same_perm_on_every_rank"]


def test_key_permutation_depends_only_on_seed_epoch_and_step():
    """A resumed run (same --seed, epoch and micro-batch) draws the uninterrupted run's permutation."""
    from gpaco.engine.step import FitContext

    def draw(seed, epoch, step, world=2):
        method = get_method("paco").for_run()
        ctx = FitContext(model=None, criterion=None, optimizer=None, method=method, device=torch.device("cpu"),
                         options={"seed": seed}, world_size=world)
        method.setup(ctx)
        ctx.epoch, ctx.step = epoch, step
        torch.manual_seed(step)  # the global generator plays no part
        return method.key_permutation(ctx, 8)

    a = draw(0, 3, 5)
    assert a.shape == (16,) and torch.equal(a.sort().values, torch.arange(16))
    assert torch.equal(a, draw(0, 3, 5))
    assert not torch.equal(a, draw(0, 3, 6)) and not torch.equal(a, draw(0, 4, 5)) and not torch.equal(a, draw(1, 3, 5))
