"""ResLT, ResCom and MiSLAS (label-aware smoothing) losses against the original code's numbers.

The vectors in data/refvectors-methods/ were produced by running the original loss code
on CPU (float64 and float32 inputs); each file records its source commit and stubs.
Tolerances: float64 1e-7 relative, float32 1e-5 relative.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpaco.losses.mislas import (
    LabelAwareSmoothingLoss, expected_calibration_error, label_aware_smoothing, las_loss,
)
from gpaco.losses.rescom import (
    ClassBalancedQueue, ResComLoss, effective_number_weights, rescom_contrastive_loss, rescom_loss,
    rescom_loss_terms, rescom_mine,
)
from gpaco.losses.reslt import ResLTLoss, reslt_branch_masks, reslt_loss, reslt_loss_terms

VECTORS = Path(__file__).resolve().parent / "data" / "refvectors-methods"
DTYPES = {"float64": (torch.float64, 1e-7), "float32": (torch.float32, 1e-5)}


def load(name):
    with open(VECTORS / f"{name}.json") as f:
        return json.load(f)


def check(actual, expected, rtol, atol=0.0):
    """Relative comparison; ``atol`` only for entries that are ~0."""
    actual = torch.as_tensor(actual).detach()
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------- ResLT
RESLT = load("reslt_loss")


def cifar_lt_counts(num_classes, imbalance=0.01):
    n_max = 5000 if num_classes == 10 else 500
    return [int(n_max * imbalance ** (i / (num_classes - 1))) for i in range(num_classes)]


# the original's CIFAR branches: classes 2..9 / 4..9 (CIFAR-10), 35..99 / 70..99 (CIFAR-100)
RESLT_SIZES = {10: (8, 6), 100: (65, 30)}
RESLT_FIRST = {10: (2, 4), 100: (35, 70)}


@pytest.mark.parametrize("num_classes", [10, 100])
def test_reslt_branch_masks_match_original_cifar_slices(num_classes):
    masks = reslt_branch_masks(cifar_lt_counts(num_classes), RESLT_SIZES[num_classes])
    assert masks.shape == (3, num_classes) and masks.dtype == torch.bool
    assert masks[0].all()
    for row, first in zip(masks[1:], RESLT_FIRST[num_classes]):
        expected = torch.zeros(num_classes, dtype=torch.bool)
        expected[first:] = True
        assert torch.equal(row, expected)


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("case", range(len(RESLT["cases"])), ids=[c["driver"].split("_")[-1][:-3]
                                                                 for c in RESLT["cases"]])
def test_reslt_reference_vectors(case, dtype_name):
    c = RESLT["cases"][case]
    dtype, rtol = DTYPES[dtype_name]
    ref = c[dtype_name]
    logits = [torch.tensor(c["inputs"][k], dtype=dtype, requires_grad=True) for k in ("logitH", "logitM", "logitT")]
    target = torch.tensor(c["inputs"]["target"])
    crit = ResLTLoss(cifar_lt_counts(c["num_classes"]), RESLT_SIZES[c["num_classes"]], beta=c["beta"])
    terms = crit.terms(logits, target)
    terms.loss.backward()
    assert terms.loss.dtype == dtype
    check(terms.loss, ref["loss"], rtol)
    check(terms.individual, ref["loss_ice"], rtol)
    check(terms.fused, ref["loss_fce"], rtol)
    for z, key in zip(logits, ("grad_logitH", "grad_logitM", "grad_logitT")):
        check(z.grad, ref[key], rtol)
    # the plain function and the module's forward agree with terms()
    stacked = torch.stack([z.detach() for z in logits])
    assert torch.equal(crit(stacked, target), terms.loss.detach())
    assert torch.equal(reslt_loss(stacked, target, crit.branch_masks, beta=c["beta"]), terms.loss.detach())


def test_reslt_hand_computed():
    # C = 2, two branches: H (both classes) and M (class 1 only); B = 2
    zh = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    zm = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([0, 1])
    masks = torch.tensor([[True, True], [False, True]])
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731  p(class a) = sig(z_a - z_b) for C = 2
    lh0 = -math.log(sig(1.0) + 1e-7)
    lh1 = -math.log(sig(2.0) + 1e-7)
    lm1 = -math.log(sig(-1.0) + 1e-7)  # sample 1 is class 1: in M
    individual = (lh0 + lh1 + lm1) / 3
    fused = (-math.log(sig(1.0)) - math.log(sig(1.0))) / 2  # summed logits [1.5, .5] and [1, 2]
    terms = reslt_loss_terms([zh, zm], target, masks, beta=0.8)
    assert terms.individual.item() == pytest.approx(individual, rel=1e-12)
    assert terms.fused.item() == pytest.approx(fused, rel=1e-12)
    assert terms.loss.item() == pytest.approx(0.8 * individual + 0.2 * fused, rel=1e-12)
    # eps = 0 is exactly log-softmax CE; fused_eps adds the same eps to the fused term
    assert reslt_loss_terms([zh, zm], target, masks, beta=0.8, eps=0.0).individual.item() == pytest.approx(
        (-math.log(sig(1.0)) - math.log(sig(2.0)) - math.log(sig(-1.0))) / 3, rel=1e-12)
    assert reslt_loss_terms([zh, zm], target, masks, beta=0.8, fused_eps=1e-7).fused.item() == pytest.approx(
        -math.log(sig(1.0) + 1e-7), rel=1e-12)
    # beta = 1: only the individual term; beta = 0: only the fused one
    assert reslt_loss([zh, zm], target, masks, beta=1.0).item() == pytest.approx(individual, rel=1e-12)
    assert reslt_loss([zh, zm], target, masks, beta=0.0).item() == pytest.approx(fused, rel=1e-12)
    # from_masks: same numbers
    assert ResLTLoss.from_masks(masks, beta=0.8)([zh, zm], target).item() == pytest.approx(terms.loss.item())


def test_reslt_branch_masks_ties_and_order():
    counts = [5, 50, 5, 20, 5]  # unsorted; three classes tie at the cut
    masks = reslt_branch_masks(counts, (4, 2))
    # stable ascending order by (count, index): 0, 2, 4, 3, 1
    assert masks[1].tolist() == [True, False, True, True, True]
    assert masks[2].tolist() == [True, False, True, False, False]
    assert torch.equal(reslt_branch_masks(counts, (4, 2)), masks)  # deterministic
    assert reslt_branch_masks(counts, (3,)).shape == (2, 5)  # iNaturalist: H and M only


def test_reslt_errors():
    z = torch.zeros(4, 3)
    t = torch.tensor([0, 1, 2, 0])
    masks = reslt_branch_masks([9, 5, 1], (2, 1))
    with pytest.raises(ValueError, match="one shape"):
        reslt_loss([z, z, torch.zeros(4, 4)], t, masks, beta=0.9)
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        reslt_loss([torch.zeros(4)], t, masks[:1], beta=0.9)
    with pytest.raises(ValueError, match="branch_masks must be"):
        reslt_loss([z, z], t, masks, beta=0.9)
    with pytest.raises(ValueError, match="target must be"):
        reslt_loss([z, z, z], t[:3], masks, beta=0.9)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        reslt_loss([z, z, z], torch.tensor([0, 1, 3, 0]), masks, beta=0.9)
    with pytest.raises(ValueError, match="beta"):
        reslt_loss([z, z, z], t, masks, beta=1.5)
    with pytest.raises(ValueError, match="empty"):
        reslt_loss([], t, masks, beta=0.9)
    with pytest.raises(ValueError, match="non-increasing"):
        reslt_branch_masks([9, 5, 1], (1, 2))
    with pytest.raises(ValueError, match="1..3"):
        reslt_branch_masks([9, 5, 1], (4,))


# ------------------------------------------------------------------------------------ ResCom
RESCOM = load("rescom")


def rescom_inputs(dtype):
    p, inp = RESCOM["params"], RESCOM["inputs"]
    c, k, d = p["num_classes"], p["queue_size_per_cls"], p["dim"]
    img = torch.tensor(inp["img_rows_view1_then_view2"], dtype=dtype, requires_grad=True)
    w = torch.tensor(inp["W"], dtype=dtype, requires_grad=True)
    b = torch.tensor(inp["b"], dtype=dtype, requires_grad=True)
    labels = torch.tensor(inp["labels_2B"])
    queue = ClassBalancedQueue(c, k, d).to(dtype)
    # the original stores the keys as columns of a [D, C*K] matrix, class c owning columns c*K..c*K+K-1
    queue.keys.copy_(torch.tensor(inp["queue_list_DxKC"], dtype=dtype).T.reshape(c, k, d))
    return img, w, b, labels, queue


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("setting", range(len(RESCOM["loss_settings"])))
def test_rescom_reference_vectors(setting, dtype_name):
    p = RESCOM["params"]
    s = RESCOM["loss_settings"][setting]
    dtype, rtol = DTYPES[dtype_name]
    ref = RESCOM["results"][dtype_name][f"setting{setting}"]
    img, w, b, labels, queue = rescom_inputs(dtype)
    crit = ResComLoss(p["cls_num_list"], temperature=s["temperature"], num_positives=p["select_num_pos"],
                      num_negatives=p["select_num_neg"], con_weight=s["con_weight"],
                      effective_num_beta=s["effective_num_beta"])
    check(crit.class_weight, ref["class_weight"], 1e-7)
    # identity encoder and projection: features = normalize(img), logits = img W^T + b
    feats = F.normalize(img, dim=1)
    logits = img @ w.T + b
    terms = crit.terms(feats, logits, labels, queue)
    if "sim_con" in ref:
        check(logits, ref["logits"], rtol)
        sims, targets = rescom_mine(feats, labels, queue, num_positives=p["select_num_pos"],
                                    num_negatives=p["select_num_neg"])
        check(sims, ref["sim_con"], rtol)
        assert torch.equal(targets, torch.tensor(ref["labels_con"], dtype=dtype))
    # the first view goes into the queue before backward, as in the original's forward
    bsz = p["batch_per_view"]
    queue.enqueue(feats[:bsz].detach(), labels[:bsz])
    terms.loss.backward()
    if "queue_after" in ref:
        c, k, d = queue.keys.shape
        check(queue.keys.reshape(c * k, d).T, ref["queue_after"], rtol)
        assert queue.ptr.tolist() == ref["queue_ptr_after"]
    assert terms.loss.dtype == dtype
    check(terms.cls, ref["loss_cls"], rtol)
    check(terms.con, ref["loss_con"], rtol)
    check(terms.loss, ref["loss"], rtol)
    check(img.grad, ref["grad_img"], rtol)
    check(w.grad, ref["grad_W"], rtol)
    check(b.grad, ref["grad_b"], rtol)
    # the module's forward and the plain function give the same loss
    with torch.no_grad():
        img2, _, _, _, queue2 = rescom_inputs(dtype)
        f2 = F.normalize(img2, dim=1)
        l2 = img2 @ w.T + b
        assert torch.equal(crit(f2, l2, labels, queue2), terms.loss)
        assert torch.equal(rescom_loss(f2, l2, labels, queue2.keys, temperature=s["temperature"],
                                       num_positives=p["select_num_pos"], num_negatives=p["select_num_neg"],
                                       log_prior=crit.log_prior, class_weight=crit.class_weight,
                                       con_weight=s["con_weight"]), terms.loss)


def test_queue_enqueue_matches_one_at_a_time():
    g = torch.Generator().manual_seed(0)
    queue = ClassBalancedQueue(3, 2, 4, generator=g)
    keys = queue.keys.clone()
    ptr = queue.ptr.clone()
    for step in range(3):
        feats = F.normalize(torch.randn(7, 4, generator=g), dim=1)
        labels = torch.tensor([0, 2, 0, 0, 1, 0, 2]) if step != 1 else torch.tensor([1, 1, 1, 1, 1, 0, 2])
        for f, c in zip(feats, labels):  # the obviously-right sequential ring buffer
            keys[c, ptr[c]] = f
            ptr[c] = (ptr[c] + 1) % 2
        queue.enqueue(feats, labels)
        assert torch.equal(queue.keys, keys)
        assert torch.equal(queue.ptr, ptr)
    assert torch.allclose(ClassBalancedQueue(5, 3, 8).keys.norm(dim=-1), torch.ones(5, 3))
    assert set(queue.state_dict()) == {"keys", "ptr"}


def test_rescom_hand_computed_contrast():
    # one row, two columns: one positive and one negative at T = 1
    sims = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    loss = rescom_contrastive_loss(sims, targets, torch.tensor([1]), temperature=1.0,
                                   class_weight=torch.tensor([1.0, 3.0]))
    expected = 3.0 * -math.log(math.e / (math.e + 1.0)) / (1.0 + 1e-9)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # mining: the least similar own-class keys and the most similar other-class keys
    keys = torch.eye(3, dtype=torch.float64)[torch.tensor([[0, 1], [2, 1]])]  # class 0: e0, e1; class 1: e2, e1
    feat = F.normalize(torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.5]], dtype=torch.float64), dim=1)
    sims, targets = rescom_mine(feat, torch.tensor([0, 0]), keys, num_positives=1, num_negatives=1)
    assert sims.shape == (2, 3)
    assert sims[0, 1].item() == pytest.approx(feat[0, 1].item())  # hardest positive: e1 (0.53 < 0.80)
    assert sims[0, 2].item() == pytest.approx(feat[0, 1].item())  # hardest negative: e1 of class 1
    assert targets.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]


def test_effective_number_weights():
    assert torch.equal(effective_number_weights([100, 30, 8, 2], 0.0), torch.ones(4))
    w = effective_number_weights([100, 30, 8, 2], 0.999).double()
    e = torch.tensor([(1 - 0.999 ** n) / 0.001 for n in (100, 30, 8, 2)], dtype=torch.float64)
    torch.testing.assert_close(w, (e.mean() / e).float().double(), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        effective_number_weights([1, 2], 1.0)
    with pytest.raises(ValueError, match="count > 0"):
        effective_number_weights([0, 2], 0.9)


def test_rescom_errors_and_queue_update_before_backward():
    _, _, _, labels, queue = rescom_inputs(torch.float32)
    feats = F.normalize(torch.randn(8, 5), dim=1).requires_grad_()
    logits = torch.randn(8, 4, requires_grad=True)
    with pytest.raises(ValueError, match="num_positives must be in 0..3"):
        rescom_mine(feats, labels, queue, num_positives=4, num_negatives=1)
    with pytest.raises(ValueError, match="num_negatives must be in 0..9"):
        rescom_mine(feats, labels, queue, num_positives=1, num_negatives=10)
    with pytest.raises(ValueError, match=r"queue must be \[C, K, D\] with D = 4"):
        rescom_mine(feats[:, :4], labels, queue, num_positives=1, num_negatives=1)
    with pytest.raises(ValueError, match="labels must be"):
        rescom_mine(feats, labels[:7], queue, num_positives=1, num_negatives=1)
    with pytest.raises(ValueError, match="one row per feature"):
        rescom_loss(feats, logits[:7], labels, queue, temperature=0.1, num_positives=1, num_negatives=1)
    with pytest.raises(ValueError, match="temperature"):
        rescom_loss(feats, logits, labels, queue, temperature=0.0, num_positives=1, num_negatives=1)
    with pytest.raises(ValueError, match="features must be"):
        queue.enqueue(feats[:, :4].detach(), labels)
    # the loss reads a snapshot: writing the queue before backward is allowed
    terms = rescom_loss_terms(feats, logits, labels, queue, temperature=0.1, num_positives=2, num_negatives=4)
    queue.enqueue(feats[:4].detach(), labels[:4])
    terms.loss.backward()
    assert torch.isfinite(feats.grad).all() and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------ MiSLAS
MISLAS = load("mislas_las")


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("case", range(len(MISLAS["cases"])), ids=[c["shape"] for c in MISLAS["cases"]])
def test_mislas_reference_vectors(case, dtype_name):
    c = MISLAS["cases"][case]
    inp = MISLAS["inputs"]
    dtype, rtol = DTYPES[dtype_name]
    ref = c[dtype_name]
    crit = LabelAwareSmoothingLoss(inp["cls_num_list"], head=c["head"], tail=c["tail"], shape=c["shape"],
                                   power=c["power"])
    assert crit.smoothing.dtype == torch.float32
    check(crit.smoothing, ref["smooth_per_class"], 1e-7)
    target = torch.tensor(inp["target"])

    x = torch.tensor(inp["x"], dtype=dtype, requires_grad=True)
    loss = crit(x, target)
    loss.backward()
    assert loss.dtype == dtype
    check(loss, ref["loss"], rtol)
    check(x.grad, ref["grad_x"], rtol)

    # stage-1 style mixup on learnable-weight-scaled logits: lam LAS(s x, y) + (1 - lam) LAS(s x, y[perm])
    x = torch.tensor(inp["x"], dtype=dtype, requires_grad=True)
    scale = torch.tensor(inp["lws_scale"], dtype=dtype, requires_grad=True)
    lam = inp["mixup_lam"]
    logits = scale * x
    loss = lam * crit(logits, target) + (1 - lam) * las_loss(logits, target[inp["mixup_perm"]], crit.smoothing)
    loss.backward()
    check(loss, ref["loss_lws_mixup"], rtol)
    check(x.grad, ref["grad_x_lws_mixup"], rtol)
    check(scale.grad, ref["grad_lws_scale"], rtol)


def test_las_special_cases():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 3, 0])
    counts = [50, 20, 10, 5]
    # no smoothing: plain CE; equal smoothing: torch's label smoothing
    zero = label_aware_smoothing(counts, head=0.0, tail=0.0)
    assert las_loss(logits, target, zero).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-12)
    const = torch.full((4,), 0.25)
    assert las_loss(logits, target, const).item() == pytest.approx(
        F.cross_entropy(logits, target, label_smoothing=0.25).item(), rel=1e-12)
    # hand-computed smoothing: r = (n - 5) / 45
    r = torch.tensor([1.0, 15 / 45, 5 / 45, 0.0], dtype=torch.float64)
    for shape, gfun in (("concave", lambda r: torch.sin(math.pi / 2 * r)), ("linear", lambda r: r),
                        ("convex", lambda r: 1 - torch.cos(math.pi / 2 * r)), ("exp", lambda r: r ** 3)):
        eps = label_aware_smoothing(counts, head=0.3, tail=0.1, shape=shape, power=3)
        torch.testing.assert_close(eps, (0.1 + 0.2 * gfun(r)).float())
        assert eps[0].item() == pytest.approx(0.3) and eps[3].item() == pytest.approx(0.1)
    # one sample by hand (float64 factors: 1 - e is then exact too)
    logits1 = torch.tensor([[2.0, 0.0, -1.0, 0.5]], dtype=torch.float64)
    log_p = logits1.log_softmax(-1)[0]
    eps = label_aware_smoothing(counts, head=0.3, tail=0.1).double()
    e = float(eps[1])
    expected = (1 - e) * -log_p[1].item() + e * -log_p.mean().item()
    assert las_loss(logits1, torch.tensor([1]), eps).item() == pytest.approx(expected, rel=1e-15)
    # the float32 factors (as stored by the original) differ only by float32 rounding of 1 - e
    assert las_loss(logits1, torch.tensor([1]), eps.float()).item() == pytest.approx(expected, rel=1e-7)


def test_las_errors():
    counts = [50, 20, 10, 5]
    with pytest.raises(ValueError, match="power"):
        label_aware_smoothing(counts, head=0.3, tail=0.0, shape="exp")
    with pytest.raises(ValueError, match="unknown label-aware smoothing shape 'cubic'"):
        label_aware_smoothing(counts, head=0.3, tail=0.0, shape="cubic")
    with pytest.raises(ValueError, match="two distinct class counts"):
        label_aware_smoothing([7, 7, 7], head=0.3, tail=0.0)
    with pytest.raises(ValueError, match="head smoothing"):
        label_aware_smoothing(counts, head=1.3, tail=0.0)
    eps = label_aware_smoothing(counts, head=0.3, tail=0.0)
    with pytest.raises(ValueError, match=r"smoothing must be \[C\] = \[5\]"):
        las_loss(torch.zeros(2, 5), torch.tensor([0, 1]), eps)
    with pytest.raises(ValueError, match=r"target must be \[B\] = \[2\]"):
        las_loss(torch.zeros(2, 4), torch.tensor([0, 1, 2]), eps)
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\)"):
        las_loss(torch.zeros(2, 4), torch.tensor([0, 4]), eps)
    with pytest.raises(ValueError, match=r"logits must be \[B, C\]"):
        las_loss(torch.zeros(4), torch.tensor([0]), eps)


def slow_ece(probs, labels, n_bins):
    """Straight from the definition with numpy's right-closed bins."""
    conf, pred = probs.max(1), probs.argmax(1)
    idx = np.digitize(conf, np.linspace(0, 1, n_bins + 1), right=True)
    total, n = 0.0, 0
    for b in range(1, n_bins + 1):
        sel = idx == b
        if sel.any():
            total += sel.sum() * abs((pred[sel] == labels[sel]).mean() - conf[sel].mean())
            n += sel.sum()
    return total / n


def test_expected_calibration_error():
    # hand example, 2 bins: confidences .9 (right), .8 (wrong) in (.5, 1]; .4 (right) in (0, .5]
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.4, 0.3, 0.3]])
    labels = torch.tensor([0, 1, 0])
    expected = (2 / 3) * abs(0.5 - 0.85) + (1 / 3) * abs(1.0 - 0.4)
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(expected)
    # a bin edge belongs to the lower bin: 0.5 with 2 bins is in (0, .5]
    assert expected_calibration_error(torch.tensor([[0.5, 0.5]]), torch.tensor([0]), n_bins=2) == pytest.approx(0.5)
    # logits: softmax is applied (auto-detected or forced), matching the slow definition
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(500, 7, generator=g)
    labels = torch.randint(0, 7, (500,), generator=g)
    ref = slow_ece(logits.double().softmax(1).numpy(), labels.numpy(), 15)
    assert expected_calibration_error(logits, labels) == pytest.approx(ref, rel=1e-9)
    assert expected_calibration_error(logits, labels, from_logits=True) == pytest.approx(ref, rel=1e-9)
    assert expected_calibration_error(logits.softmax(1), labels) == pytest.approx(ref, rel=1e-5)
    # perfectly confident and right: 0
    assert expected_calibration_error(torch.eye(4), torch.arange(4)) == 0.0
    with pytest.raises(ValueError, match=r"labels must be \[N\] = \[4\]"):
        expected_calibration_error(torch.eye(4), torch.arange(3))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(torch.eye(4), torch.arange(4), n_bins=0)
