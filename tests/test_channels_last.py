"""``--channels-last``: its default per device (gpaco.engine.precision), and a training step in
channels-last memory order equals the contiguous one within float32 rounding (losses,
gradients, BatchNorm statistics and queue), per-view BatchNorm included."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import sgd_step_
from gpaco.engine.step import to_device
from gpaco.methods import get_method
from gpaco.engine.precision import resolve_channels_last
from gpaco.methods import build_criterion
from gpaco.methods.rebuild import build_model
from gpaco.models.view_bn import ViewBatchNorm2d

C, B = 10, 8
CL = torch.channels_last


def test_default_is_on_for_the_cpu_and_tensor_core_gpus(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_channels_last(None, cpu, "none") is True
    assert resolve_channels_last(False, cpu, "none") is False  # --no-channels-last
    for capability, amp, expected in [((7, 0), "none", False), ((7, 0), "bf16", True), ((6, 1), "fp16", False),
                                      ((8, 0), "none", True), ((9, 0), "none", True)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_channels_last(None, cuda, amp) is expected, (capability, amp)
    assert resolve_channels_last(True, cuda, "none") is True


@pytest.mark.parametrize("x_format,grad_format", [(torch.contiguous_format, CL), (CL, torch.contiguous_format),
                                                  (CL, CL)])
def test_view_batchnorm_in_either_memory_order(x_format, grad_format):
    """The per-view BatchNorm's out= kernels accept channels-last input and gradient."""
    torch.manual_seed(0)
    bn = ViewBatchNorm2d(6)
    bn.views = 2
    x, g = torch.randn(8, 6, 5, 5), torch.randn(8, 6, 5, 5)

    def run(x_fmt, g_fmt):
        xx = x.contiguous(memory_format=x_fmt).detach().requires_grad_(True)
        y = bn(xx)
        y.backward(g.contiguous(memory_format=g_fmt))
        return y.detach(), xx.grad

    y0, gx0 = run(torch.contiguous_format, torch.contiguous_format)
    y1, gx1 = run(x_format, grad_format)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,steps", [(torch.float64, 2), (torch.float32, 1)])
@pytest.mark.parametrize("method", ["ce", "paco", "gpaco"])
def test_channels_last_step_equals_the_contiguous_one(method, dtype, steps):
    """float64 over two steps (the second sees the first's enqueue and BatchNorm updates): the
    same maths to 1e-10. float32, oneDNN's kernels, one step: within float32 rounding. (Over
    more float32 steps a pre-activation within rounding of 0 can flip a ReLU, and with it one
    gradient element: a kink, not a difference in the maths.)"""
    torch.manual_seed(0)
    model = build_model(method, "resnet8", C, queue_size=4 * B, proj_dim=16, global_batch=B).to(dtype)
    criterion = build_criterion(method, class_counts=[C - c for c in range(C)])
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(B, 3, 16, 16, generator=g, dtype=dtype) for _ in range(2)]
    x = views if method != "ce" else views[0]
    y = torch.randint(0, C, (B,), generator=g)
    ref = copy.deepcopy(model)
    model.to(memory_format=CL)
    assert model.state_dict()[next(k for k in model.state_dict() if k.endswith("conv1.weight"))].is_contiguous(
        memory_format=CL)
    rtol, atol = (1e-10, 1e-12) if dtype == torch.float64 else (1e-4, 1e-5)
    for step in range(steps):
        losses = []
        for m, fmt in ((model, True), (ref, False)):
            torch.manual_seed(step)  # PaCo's shuffle-BN permutation
            loss = criterion(get_method(method).forward_train(m, to_device(x, torch.device("cpu"), fmt), y), y)
            loss.backward()
            losses.append(loss)
        torch.testing.assert_close(losses[0], losses[1], rtol=rtol, atol=atol)
        # on the step's gradient scale (a bias before a BatchNorm has a true gradient of 0, so
        # its own scale is rounding noise)
        scale = max(q.grad.abs().max().item() for q in ref.parameters() if q.grad is not None)
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            if q.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=atol * scale,
                                           msg=lambda m, name=name: f"{name}: {m}")
        for (name, a), b in zip(model.named_buffers(), ref.buffers()):
            torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol,
                                       msg=lambda m, name=name: f"{name}: {m}")
        sgd_step_(model, ref)


def test_optimizer_state_is_laid_out_like_its_parameter():
    """A momentum buffer saved in NCHW, loaded for a channels-last parameter, is re-laid: the
    fused SGD step then equals the float64 reference; left as loaded it would not be walked
    like its parameter."""
    from gpaco.engine.fit import lay_out_like_params

    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    grad, buf = torch.randn_like(w), torch.randn_like(w)
    ref = torch.optim.SGD([torch.nn.Parameter(w.double())], lr=0.1, momentum=0.9)
    ref.param_groups[0]["params"][0].grad = grad.double()
    ref.state[ref.param_groups[0]["params"][0]]["momentum_buffer"] = buf.double().clone()
    ref.step()
    p = torch.nn.Parameter(w.contiguous(memory_format=CL))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True)
    opt.load_state_dict({"state": {0: {"momentum_buffer": buf.clone()}},  # as saved by an NCHW run
                         "param_groups": [{**opt.state_dict()["param_groups"][0]}]})
    assert opt.state[p]["momentum_buffer"].stride() != p.stride()
    assert lay_out_like_params(opt) == 1 and opt.state[p]["momentum_buffer"].stride() == p.stride()
    p.grad = grad.contiguous(memory_format=CL)
    opt.step()
    torch.testing.assert_close(p.detach().double(), ref.param_groups[0]["params"][0].detach(), rtol=1e-6, atol=1e-7)
    assert lay_out_like_params(opt) == 0


@pytest.mark.slow
def test_a_resume_keeps_the_memory_format_its_checkpoint_recorded(demo_data, tmp_path, capsys):
    """A run started in NCHW (--no-channels-last), stopped after an epoch and resumed with no
    format flag (where channels-last is the default) ends bit-identical to the uninterrupted run."""
    from conftest import demo_flags
    from gpaco.classification import train as trainer

    def run(out, *extra):
        return trainer.main(demo_flags(demo_data) + ["--method", "ce", "--batch-size", "32", "--epochs", "2",
                                                     "--warmup-epochs", "0", "--lr", "0.05", "--output-dir",
                                                     str(out), *extra])

    straight = run(tmp_path / "a", "--no-channels-last")
    run(tmp_path / "b", "--no-channels-last", "--stop-after", "1")
    capsys.readouterr()
    resumed = run(tmp_path / "b", "--resume", "auto")
    assert "trains in NCHW memory order as its checkpoint recorded" in capsys.readouterr().out
    a = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)
    assert a["channels_last"] is False and b["channels_last"] is False
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed["top1"] == straight["top1"]
