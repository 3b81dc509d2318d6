"""The distillation losses (IKL, GKL, KL-KD, IKL-AT, GKL-AT) and the class-wise statistics,
against the released code's own numbers (tests/data/kd/README.md) and a brute-force
pairwise evaluation."""
import gzip
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from gpaco.losses.kd import (
    ClassStats, GKLATLoss, GKLLoss, IKLATLoss, IKLLoss, KLKDLoss, class_stats_normalise, class_stats_update,
    gap_mse_rows, gkl_at_loss, gkl_loss, ikl_at_loss, ikl_loss, kl_kd_loss, pairwise_gap_mse,
    soft_label_cross_entropy,
)

DATA = Path(__file__).resolve().parent / "data" / "kd"
DTYPES = {"float64": torch.float64, "float32": torch.float32}
RTOL = {"float64": 1e-7, "float32": 1e-5}


def load(name):
    path = DATA / name
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as f:
            return json.load(f)
    return json.loads(path.read_text())


DKL, GKL = load("dkl_ikl.json"), load("gkl.json")
ADV_IKL, ADV_GKL = load("adv_ikl.json.gz"), load("adv_gkl.json.gz")


def close(got, exp, rtol):
    """max|got - exp| <= rtol * max|exp| (the vectors' own criterion)."""
    got = torch.as_tensor(got).double()
    exp = torch.as_tensor(exp, dtype=torch.float64)
    err, scale = (got - exp).abs().max().item(), exp.abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} x {scale:.3g}"


def cases(data, key):
    return [pytest.param(c, kind, id=f"{data['name']}-{c['name']}-{kind}") for c in data[key] for kind in DTYPES]


# --------------------------------------------------------------------------- loss cases

def kd_call(case, dtype, **override):
    """Our loss on a KD case: (loss, student leaf)."""
    p = {**case["params"], **override}
    s = torch.tensor(case["inputs"]["logits_student"], dtype=dtype, requires_grad=True)
    t = torch.tensor(case["inputs"]["logits_teacher"], dtype=dtype)
    prior = torch.tensor(case["inputs"]["class_prior"], dtype=dtype) if p["GI"] else None
    kw = dict(temperature=p["temperature"], alpha=p["alpha"], beta=p["beta"], class_prior=prior, t2=p["T2"])
    if "gamma" in p:
        return gkl_loss(s, t, gamma=p["gamma"], **kw), s
    return ikl_loss(s, t, **kw), s


@pytest.mark.parametrize("case,kind", cases(DKL, "loss_cases") + cases(GKL, "loss_cases"))
def test_kd_loss_cases(case, kind):
    dtype, exp, rtol = DTYPES[kind], case[kind], RTOL[kind]
    loss, s = kd_call(case, dtype)
    loss.backward()
    assert loss.dtype == dtype
    close(loss.item(), exp["loss"], rtol)
    close(s.grad, exp["grad_student"], rtol)
    # the two parts, as the vectors define them: (alpha 0, beta 1) and (alpha 1, beta 0)
    close(kd_call(case, dtype, alpha=0.0, beta=1.0)[0].item(), exp["mse"], rtol)
    close(kd_call(case, dtype, alpha=1.0, beta=0.0)[0].item(), exp["sce"], rtol)
    if case["params"]["GI"]:  # the rows the loss receives are the class matrix picked by the labels
        inputs = case["inputs"]
        rows = torch.tensor(inputs["prior_matrix"], dtype=torch.float64)[torch.tensor(inputs["target"])]
        assert torch.equal(rows, torch.tensor(inputs["class_prior"], dtype=torch.float64))


@pytest.mark.parametrize("case,kind", cases(DKL, "loss_cases")[:2] + cases(GKL, "loss_cases")[2:4])
def test_criteria_modules_equal_functions(case, kind):
    dtype, p = DTYPES[kind], case["params"]
    s = torch.tensor(case["inputs"]["logits_student"], dtype=dtype)
    t = torch.tensor(case["inputs"]["logits_teacher"], dtype=dtype)
    prior = torch.tensor(case["inputs"]["class_prior"], dtype=dtype) if p["GI"] else None
    if "gamma" in p:
        crit = GKLLoss(temperature=p["temperature"], alpha=p["alpha"], beta=p["beta"], gamma=p["gamma"], t2=p["T2"])
    else:
        crit = IKLLoss(temperature=p["temperature"], alpha=p["alpha"], beta=p["beta"], t2=p["T2"])
    assert crit(s, t, prior).item() == kd_call(case, dtype)[0].item()


@pytest.mark.parametrize("case,kind", cases(DKL, "kd_loss_cases"))
def test_kl_kd_cases(case, kind):
    dtype, exp = DTYPES[kind], case[kind]
    s = torch.tensor(case["inputs"]["logits_student"], dtype=dtype, requires_grad=True)
    t = torch.tensor(case["inputs"]["logits_teacher"], dtype=dtype)
    loss = KLKDLoss(temperature=case["params"]["temperature"])(s, t)
    loss.backward()
    close(loss.item(), exp["loss"], RTOL[kind])
    close(s.grad, exp["grad_student"], RTOL[kind])


@pytest.mark.parametrize("kind", list(DTYPES))
def test_decomposition_check(kind):
    """KL's gradients = those of the stop-gradient wMSE (teacher side) + soft CE (student side);
    IKL (no stop-gradient) adds the wMSE gradient on the student."""
    case, dtype, rtol = DKL["decomposition_check"], DTYPES[kind], RTOL[kind]
    exp = case[kind]
    t0 = torch.tensor(case["inputs"]["logits_teacher"], dtype=dtype)
    s0 = torch.tensor(case["inputs"]["logits_student"], dtype=dtype)

    t, s = t0.clone().requires_grad_(), s0.clone().requires_grad_()
    kl = kl_kd_loss(s, t)
    kl.backward()
    close(kl.item(), exp["kl"], rtol)
    close(t.grad, exp["kl_grad_teacher"], rtol)
    close(s.grad, exp["kl_grad_student"], rtol)

    t, s = t0.clone().requires_grad_(), s0.clone().requires_grad_()
    p = F.softmax(t, dim=1).detach()
    dkl = gap_mse_rows(t, s.detach(), p).mean() + soft_label_cross_entropy(s, t)
    dkl.backward()
    close(t.grad, exp["dkl_stopgrad_grad_teacher"], rtol)
    close(s.grad, exp["dkl_stopgrad_grad_student"], rtol)

    s = s0.clone().requires_grad_()
    loss = ikl_loss(s, t0, temperature=1.0, alpha=1.0, beta=1.0, t2=1.0)
    loss.backward()
    close(loss.item(), exp["ikl_original_loss"], rtol)
    close(s.grad, exp["ikl_original_grad_student"], rtol)


# --------------------------------------------------------------------------- adversarial training

def at_case(case, dtype, **override):
    p = {**case["params"], **override}
    inputs = case["inputs"]
    n = torch.tensor(inputs["logits_nat"], dtype=dtype, requires_grad=True)
    a = torch.tensor(inputs["logits_adv"], dtype=dtype, requires_grad=True)
    W = torch.tensor(inputs["class_weight"], dtype=dtype)
    y = torch.tensor(inputs["target"])
    if "gamma" in p:
        crit = GKLATLoss(temperature=p["temperature"], alpha=p["alpha"], beta=p["beta"], gamma=p["gamma"])
    else:
        crit = IKLATLoss(alpha=p["alpha"], beta=p["beta"])
    return crit(n, a, W, y), n, a


@pytest.mark.parametrize("case,kind", cases(ADV_IKL, "loss_cases") + cases(ADV_GKL, "loss_cases"))
def test_adversarial_loss_cases(case, kind):
    dtype, exp, rtol = DTYPES[kind], case[kind], RTOL[kind]
    loss, n, a = at_case(case, dtype)
    loss.backward()
    close(loss.item(), exp["loss"], rtol)
    close(n.grad, exp["grad_logits_nat"], rtol)  # the natural logits train through the wMSE
    close(a.grad, exp["grad_logits_adv"], rtol)
    close(at_case(case, dtype, alpha=0.0, beta=1.0)[0].item(), exp["mse"], rtol)
    close(at_case(case, dtype, alpha=1.0, beta=0.0)[0].item(), exp["sce"], rtol)


def test_adversarial_functions_equal_modules():
    f64 = dict(dtype=torch.float64)
    case = ADV_GKL["loss_cases"][-1]
    p, inputs = case["params"], case["inputs"]
    n, a = torch.tensor(inputs["logits_nat"], **f64), torch.tensor(inputs["logits_adv"], **f64)
    W, y = torch.tensor(inputs["class_weight"], **f64), torch.tensor(inputs["target"])
    assert gkl_at_loss(n, a, W, y, temperature=p["temperature"], alpha=p["alpha"], beta=p["beta"],
                       gamma=p["gamma"]).item() == at_case(case, torch.float64)[0].item()
    case = ADV_IKL["loss_cases"][0]
    n, a = torch.tensor(case["inputs"]["logits_nat"], **f64), torch.tensor(case["inputs"]["logits_adv"], **f64)
    W, y = torch.tensor(case["inputs"]["class_weight"], **f64), torch.tensor(case["inputs"]["target"])
    assert ikl_at_loss(n, a, W, y, **case["params"]).item() == at_case(case, torch.float64)[0].item()


# --------------------------------------------------------------------------- training traces

def traces(data):
    return [pytest.param(tr, kind, id=f"{data['name']}-{tr['name']}-{kind}")
            for key in ("distiller_trace", "imbalanced_trace") for tr in data[key] for kind in DTYPES]


@pytest.mark.parametrize("trace,kind", traces(DKL) + traces(GKL))
def test_kd_traces(trace, kind):
    """The per-batch losses and student gradients of the released KD loops over 2-3 epochs,
    with the class matrix of each epoch from :class:`ClassStats` (uniform in the first)."""
    dtype, rtol = DTYPES[kind], RTOL[kind]
    distiller = "cfg" in trace  # the mdistiller loop (1-based epochs, warmup); else the ImageNet-LT driver's
    cfg = trace["cfg"] if distiller else trace["args"]
    if distiller:
        name = "GKL" if "GAMMA" in cfg else "IKL"
        T, alpha, beta, gamma, GI, T2, C = (cfg.get(k) for k in ("T", "ALPHA", "BETA", "GAMMA", "GI", "T2",
                                                                  "NUM_CLASSES"))
    else:
        name = cfg["distill_loss"][:-3]  # IKL_KD, GKL_KD or KL_KD
        T, alpha, beta, gamma, GI, T2, C = (cfg.get(k) for k in ("temperature", "alpha", "beta", "gamma", "GI",
                                                                  "T2", "num_classes"))
    stats = ClassStats(C, dtype=dtype)
    for epoch_in, epoch_out in zip(trace["inputs"]["epochs"], trace[kind]):
        if epoch_out["prior_used"] is not None:
            close(stats.matrix, epoch_out["prior_used"], rtol)
        warm = min(epoch_out["epoch"] / cfg["WARMUP"], 1.0) if distiller else 1.0
        for batch_in, batch_out in zip(epoch_in, epoch_out["batches"]):
            y = torch.tensor(batch_in["target"])
            t = torch.tensor(batch_in["teacher"], dtype=dtype)
            s = torch.tensor(batch_in["student"], dtype=dtype, requires_grad=True)
            ce = (cfg["CE_WEIGHT"] if distiller else 1.0) * F.cross_entropy(s, y)
            prior = stats.rows(y) if GI else None
            if name == "KL":
                kd = cfg["distill_w"] * kl_kd_loss(s, t, temperature=T)
            elif name == "GKL":
                kd = warm * gkl_loss(s, t, temperature=T, alpha=alpha, beta=beta, gamma=gamma, class_prior=prior, t2=T2)
            else:
                kd = warm * ikl_loss(s, t, temperature=T, alpha=alpha, beta=beta, class_prior=prior, t2=T2)
            loss = ce + kd
            loss.backward()
            if distiller:
                close(ce.item(), batch_out["loss_ce"], rtol)
                close(kd.item(), batch_out["loss_kd"], rtol)
            close(loss.item(), batch_out["loss"], rtol)
            close(s.grad, batch_out["grad_student"], rtol)
            stats.update(y, F.softmax(t / T2, dim=1))
        stats.end_epoch()
        if epoch_out["prior_after"] is not None:
            close(stats.matrix, epoch_out["prior_after"], rtol)


# --------------------------------------------------------------------------- closed form

@pytest.mark.parametrize("B,C,offset", [(1, 2, 0.0), (5, 7, 0.0), (16, 100, 0.0), (6, 50, 1e3)])
def test_closed_form_equals_pairwise(B, C, offset):
    """Rows and gradients (teacher, student and the weights themselves) of the O(B C) form equal
    the [B, C, C] sum, also with a large common logit offset and some zero weights."""
    g = torch.Generator().manual_seed(B * 1000 + C)
    t = (torch.randn(B, C, generator=g, dtype=torch.float64) * 3 + offset).requires_grad_()
    s = (torch.randn(B, C, generator=g, dtype=torch.float64) * 2).requires_grad_()
    q = torch.rand(B, C, generator=g, dtype=torch.float64)
    q[:, ::3] = 0.0
    q.requires_grad_()
    up = torch.randn(B, generator=g, dtype=torch.float64)
    results = []
    for fn in (gap_mse_rows, pairwise_gap_mse):
        rows = fn(t, s, q)
        grads = torch.autograd.grad((rows * up).sum(), (t, s, q))
        results.append((rows.detach(), *grads))
    for ours, brute in zip(*results):
        close(ours, brute, 1e-10)


def test_all_zero_weight_row_is_zero_not_nan():
    t, s = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    q = torch.rand(3, 5, dtype=torch.float64)
    q[1] = 0.0
    rows = gap_mse_rows(t, s, q)
    assert rows[1].item() == 0.0 and torch.isfinite(rows).all()
    close(rows, pairwise_gap_mse(t, s, q), 1e-12)


class LargestAllocation(TorchDispatchMode):
    """The largest number of elements any op (forward or backward) writes to new memory."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}
        for o in torch.utils._pytree.tree_leaves(out):
            if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in inputs:  # not a view
                self.largest = max(self.largest, o.numel())
        return out


def largest_allocation(fn, *leaves):
    with LargestAllocation() as mode:
        fn().backward()
    assert all(x.grad is not None for x in leaves)
    return mode.largest


def test_memory_is_linear_in_classes():
    """At B 8, C 2000 no intermediate of the losses (forward and backward) is bigger than [B, C]
    (the pairwise form would need B C^2 = 32M elements); the detector sees the pairwise form's."""
    B, C = 8, 2000
    g = torch.Generator().manual_seed(0)
    s = torch.randn(B, C, generator=g).requires_grad_()
    t = torch.randn(B, C, generator=g).requires_grad_()
    W = torch.softmax(torch.randn(C, C, generator=g), dim=1)
    y = torch.randint(0, C, (B,), generator=g)
    losses = {
        "ikl GI off": lambda: ikl_loss(s, t, temperature=4.0, beta=8.0),
        "ikl GI on": lambda: ikl_loss(s, t.detach(), class_prior=W[y]),
        "gkl GI off": lambda: gkl_loss(s, t, gamma=0.3, t2=4.0),
        "gkl GI on": lambda: gkl_loss(s, t.detach(), gamma=0.6, class_prior=W[y]),
        "ikl-at": lambda: ikl_at_loss(t, s, W, y, alpha=4.0, beta=20.0),
        "gkl-at": lambda: gkl_at_loss(t, s, W, y, alpha=4.0, beta=20.0, gamma=0.4),
    }
    for name, fn in losses.items():
        s.grad = t.grad = None
        largest = largest_allocation(fn, s)
        assert largest <= B * C, f"{name}: an intermediate of {largest} elements (B*C = {B * C})"
    small = 50  # the detector works: the pairwise form allocates B C^2
    s2, t2 = s[:, :small].detach().requires_grad_(), t[:, :small].detach()
    assert largest_allocation(lambda: pairwise_gap_mse(t2, s2, torch.ones_like(t2)).sum(), s2) >= B * small ** 2


# --------------------------------------------------------------------------- class statistics

def test_class_stats_absent_class_keeps_previous_row():
    """A class without samples in an epoch keeps its row (the released 0/0 would give NaN)."""
    C = 4
    stats = ClassStats(C, dtype=torch.float64)
    probs = torch.softmax(torch.randn(6, C, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 2, 2, 2])  # class 3 absent
    stats.update(y, probs)
    m = stats.end_epoch()
    assert torch.isfinite(m).all()
    assert torch.equal(m[3], torch.full((C,), 1.0 / C, dtype=torch.float64))
    close(m[0], probs[:2].mean(0), 1e-15)
    close(m[2], probs[3:].mean(0), 1e-15)
    assert stats.accumulator.abs().sum() == 0  # reset for the next epoch
    loss = gkl_loss(torch.randn(2, C, dtype=torch.float64), torch.randn(2, C, dtype=torch.float64),
                    class_prior=stats.rows(torch.tensor([3, 1])))
    assert torch.isfinite(loss)


def test_class_stats_momentum_and_checkpoint():
    C = 3
    prev = torch.softmax(torch.randn(C, C, dtype=torch.float64), dim=1)
    acc = torch.zeros(C, C, dtype=torch.float64)
    probs = torch.softmax(torch.randn(5, C, dtype=torch.float64), dim=1)
    class_stats_update(acc, torch.tensor([0, 1, 2, 0, 1]), probs)
    fresh = acc / acc.sum(1, keepdim=True)
    close(class_stats_normalise(acc, prev, momentum=0.3), 0.3 * fresh + 0.7 * prev, 1e-15)
    stats = ClassStats(C, momentum=0.3)
    stats.update(torch.tensor([0, 1, 2]), probs[:3])
    state = stats.state_dict()  # both buffers are checkpointed
    assert set(state) == {"matrix", "accumulator"}
    other = ClassStats(C, momentum=0.3)
    other.load_state_dict(state)
    assert torch.equal(other.end_epoch(), stats.end_epoch())


# --------------------------------------------------------------------------- inputs

def test_low_precision_inputs_compute_in_float32():
    s = torch.randn(4, 10).to(torch.bfloat16)
    t = torch.randn(4, 10).to(torch.bfloat16)
    loss = gkl_loss(s, t, gamma=0.5)
    assert loss.dtype == torch.float32
    close(loss.item(), gkl_loss(s.float(), t.float(), gamma=0.5).item(), 1e-7)


@pytest.mark.parametrize("call,message", [
    (lambda s, t, W, y: ikl_loss(s, t[:, :4]), r"student and teacher logits must both be \[B, C\]"),
    (lambda s, t, W, y: ikl_loss(s, t, temperature=0.0), "temperature must be > 0"),
    (lambda s, t, W, y: gkl_loss(s, t, gamma=-1.0), "gamma must be >= 0"),
    (lambda s, t, W, y: gkl_loss(s, t, class_prior=W), r"class_prior must be \[B, C\]"),
    (lambda s, t, W, y: ikl_at_loss(t, s, W[:3], y), r"class_matrix must be \[C, C\]"),
    (lambda s, t, W, y: gkl_at_loss(t, s, W, y + 5), r"target must be in \[0, 5\)"),
    (lambda s, t, W, y: GKLLoss(t2=-1.0), "t2 must be > 0"),
    (lambda s, t, W, y: ClassStats(5, momentum=0.0), r"momentum must be in \(0, 1\]"),
])
def test_bad_inputs(call, message):
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    W, y = torch.full((5, 5), 0.2), torch.tensor([0, 4, 2])
    with pytest.raises(ValueError, match=message):
        call(s, t, W, y)
