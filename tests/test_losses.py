"""The loss family against the original code's own numbers and a slow reference."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpaco.losses import (
    balanced_cross_entropy, cross_entropy, log_prior_from_counts, multitask_loss, paco_loss, pixel_paco_loss,
)

CLS_COUNTS = [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]

# case -> how to call our implementation (refvectors/README.md maps the same cases)
CASES = {
    "paco_lt_default": dict(kind="paco", n=8, alpha=0.05, T=0.2, prior=True),
    "paco_lt_weights": dict(kind="paco", n=8, alpha=0.5, beta=0.7, gamma=1.3, T=0.07, prior=True),
    "paco_full_noprior": dict(kind="paco", n=8, alpha=0.05, T=0.2),
    "gpaco_lt_prior": dict(kind="paco", n=16, alpha=0.05, T=0.2, prior=True),
    "gpaco_full_smooth": dict(kind="paco", n=16, alpha=0.05, T=0.2, smoothing=0.1),
    "gpaco_weights_prior_smooth": dict(kind="paco", n=16, alpha=0.3, beta=0.8, gamma=1.5, T=0.1, prior=True,
                                       smoothing=0.05),
    "gpaco_vit": dict(kind="paco", n=16, alpha=0.2, T=0.2, smoothing=0.1),
    "multitask_lt": dict(kind="multitask", n=16, alpha=0.5, T=0.2, prior=True),
    "multitask_cifar": dict(kind="multitask", n=16, alpha=0.5, T=0.07),
    "multitask_vit": dict(kind="multitask", n=16, alpha=0.5, T=0.2, label_smoothing=0.1),
    "gpaco_seg": dict(kind="pixel", alpha=0.01, T=0.07, ignore_index=6),
}


def call_case(case, features, labels, logits):
    c = CASES[case]
    prior = None
    if c.get("prior"):
        prior = torch.log(torch.tensor(CLS_COUNTS, dtype=torch.float64) / sum(CLS_COUNTS) + 1e-9).to(features.dtype)
    if c["kind"] == "paco":
        return paco_loss(features, labels, logits, c["n"], alpha=c["alpha"], temperature=c["T"],
                         beta=c.get("beta", 1.0), gamma=c.get("gamma", 1.0), log_prior=prior,
                         smoothing=c.get("smoothing", 0.0))
    if c["kind"] == "multitask":
        return multitask_loss(features, labels, logits, c["n"], alpha=c["alpha"], temperature=c["T"],
                              log_prior=prior, label_smoothing=c.get("label_smoothing", 0.0))
    return pixel_paco_loss(features, labels, logits, alpha=c["alpha"], temperature=c["T"],
                           ignore_index=c["ignore_index"])


@pytest.mark.parametrize("suffix", ["", "_f32"], ids=["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_vectors(refvectors, case, suffix):
    ref = np.load(refvectors / f"{case}{suffix}.npz")
    features = torch.tensor(ref["features"], requires_grad=True)
    logits = torch.tensor(ref["sup_logits"], requires_grad=True)
    labels = torch.tensor(ref["labels"])
    loss = call_case(case, features, labels, logits)
    loss.backward()
    assert loss.dtype == features.dtype
    assert abs(loss.item() - float(ref["loss"])) <= 1e-6
    rtol = 1e-5 if suffix else 0.0
    np.testing.assert_allclose(features.grad.numpy(), ref["grad_features"], atol=1e-6, rtol=rtol)
    np.testing.assert_allclose(logits.grad.numpy(), ref["grad_sup_logits"], atol=1e-6, rtol=rtol)
    # The classifier (class centers) gradients follow by the chain rule through logits = h W^T + b.
    g = logits.grad.double().numpy()
    np.testing.assert_allclose(g @ ref["W"], ref["grad_h"], atol=1e-6, rtol=rtol)
    np.testing.assert_allclose(g.T @ ref["h"], ref["grad_W"], atol=1e-6, rtol=rtol)
    np.testing.assert_allclose(g.sum(0), ref["grad_b"], atol=1e-6, rtol=rtol)


def test_log_prior_from_counts():
    lp = log_prior_from_counts(CLS_COUNTS)
    expected = np.log(np.array(CLS_COUNTS) / sum(CLS_COUNTS) + 1e-9)
    np.testing.assert_allclose(lp.numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError):
        log_prior_from_counts([])


# ---------------------------------------------------------------- slow, obviously-right reference
def slow_paco(features, labels, logits, n, *, alpha, T, beta=1.0, gamma=1.0, log_prior=None, smoothing=0.0):
    """One anchor at a time, in float64, straight from the formula (docs/method.md#paco-loss)."""
    f = features.double()
    z = logits.double()
    C = z.shape[1]
    losses = []
    for i in range(n):
        centers = z[i] + (log_prior.double() if log_prior is not None else 0.0)
        sims = f[i] @ f.T / T
        others = torch.ones(f.shape[0], dtype=torch.bool)
        others[i] = False
        log_den = torch.log(centers.exp().sum() + gamma * sims[others].exp().sum())
        w_c = torch.full((C,), smoothing / (C - 1) if C > 1 else 0.0, dtype=torch.float64)
        w_c[labels[i]] = 1.0 - smoothing
        w_c = beta * w_c
        w_s = alpha * ((labels == labels[i]) & others).double()
        num = (w_c * (centers - log_den)).sum() + (w_s * (sims - log_den)).sum()
        losses.append(-num / (w_c.sum() + w_s.sum()))
    return torch.stack(losses).mean()


def slow_supcon(features, labels, n, T):
    f = features.double()
    out = []
    for i in range(n):
        sims = f[i] @ f.T / T
        others = torch.ones(f.shape[0], dtype=torch.bool)
        others[i] = False
        pos = (labels == labels[i]) & others
        log_den = torch.logsumexp(sims[others], 0)
        out.append(-(sims[pos] - log_den).mean() if pos.any() else torch.zeros((), dtype=torch.float64))
    return torch.stack(out).mean()


def random_inputs(M, n, C, D=16, seed=0, label_high=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(M, D, generator=g, dtype=torch.float64), dim=1).to(dtype)
    labels = torch.randint(0, label_high or C, (M,), generator=g)
    logits = (3 * torch.randn(n, C, generator=g, dtype=torch.float64)).to(dtype)
    return features, labels, logits


@pytest.mark.parametrize(
    "name,M,n,C,kw",
    [
        ("temperature_0.05", 48, 16, 10, dict(alpha=0.05, T=0.05)),
        ("weights_and_smoothing", 48, 16, 10, dict(alpha=0.3, T=0.1, beta=0.8, gamma=1.5, smoothing=0.05)),
        ("classes_8142", 96, 32, 8142, dict(alpha=0.05, T=0.2)),
        ("queue_65536", 65536 + 16, 8, 100, dict(alpha=0.05, T=0.2)),
    ],
)
def test_against_slow_reference(name, M, n, C, kw):
    features, labels, logits = random_inputs(M, n, C, seed=hash(name) % 1000)
    prior = log_prior_from_counts(torch.randint(1, 500, (C,)).tolist())
    kw = dict(kw)
    T = kw.pop("T")
    ours = paco_loss(features, labels, logits, n, temperature=T, log_prior=prior, **kw)
    ref = slow_paco(features, labels, logits, n, T=T, log_prior=prior, **kw)
    assert torch.isfinite(ours)
    assert abs(ours.item() - ref.item()) <= 2e-5 * max(1.0, abs(ref.item()))


def test_all_anchors_one_class():
    features, _, logits = random_inputs(40, 8, 10)
    labels = torch.zeros(40, dtype=torch.long)
    ours = paco_loss(features, labels, logits, 8, alpha=0.05, temperature=0.07)
    ref = slow_paco(features, labels, logits, 8, alpha=0.05, T=0.07)
    assert torch.isfinite(ours) and abs(ours.item() - ref.item()) < 1e-5


def test_anchor_without_any_same_class_sample():
    # Every anchor is the only row of its class: the loss is the center term alone, i.e. a CE over
    # [centers; other samples] with gamma-weighted sample terms.
    features, _, logits = random_inputs(6, 6, 10)
    labels = torch.arange(6)
    features.requires_grad_(True)
    ours = paco_loss(features, labels, logits, 6, alpha=0.5, temperature=0.2)
    ref = slow_paco(features, labels, logits, 6, alpha=0.5, T=0.2)
    assert abs(ours.item() - ref.item()) < 1e-5
    ours.backward()
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_low_precision_inputs_compute_in_float32(dtype):
    features, labels, logits = random_inputs(48, 16, 10, dtype=dtype)
    features.requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        loss = paco_loss(features, labels, logits, 16, alpha=0.05, temperature=0.05)
        mt = multitask_loss(features, labels, logits, 16, alpha=0.5, temperature=0.05)
    assert loss.dtype == torch.float32 and mt.dtype == torch.float32
    ref = paco_loss(features.detach().float(), labels, logits.float(), 16, alpha=0.05, temperature=0.05)
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 1e-6
    loss.backward()
    assert features.grad.dtype == dtype and torch.isfinite(features.grad.float()).all()


def test_pixel_loss_autocast_and_batching():
    g = torch.Generator().manual_seed(3)
    B, N, D, C = 3, 50, 8, 5
    feats = F.normalize(torch.randn(B, N, D, generator=g), dim=-1)
    labels = torch.randint(0, C, (B, N), generator=g)
    labels[0, :10] = 255
    labels[2] = 255  # an image with no labelled pixel contributes 0
    logits = torch.randn(B, N, C, generator=g)
    batched = pixel_paco_loss(feats, labels, logits, alpha=0.01, temperature=0.07)
    per_image = [pixel_paco_loss(feats[b], labels[b], logits[b], alpha=0.01, temperature=0.07) for b in range(B)]
    assert per_image[2].item() == 0.0
    assert abs(batched.item() - torch.stack(per_image).mean().item()) < 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = pixel_paco_loss(feats.bfloat16(), labels, logits.bfloat16(), alpha=0.01, temperature=0.07)
    assert low.dtype == torch.float32 and torch.isfinite(low)


def test_pixel_loss_matches_slow_reference_on_valid_pixels():
    g = torch.Generator().manual_seed(4)
    N, D, C = 30, 8, 4
    feats = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, C, (N,), generator=g)
    labels[::7] = 255
    logits = torch.randn(N, C, generator=g, dtype=torch.float64)
    ours = pixel_paco_loss(feats, labels, logits, alpha=0.01, temperature=0.07, ignore_index=255)
    # Ignored pixels are negatives in every denominator but never anchors: reorder so the valid
    # pixels come first, then the slow reference over the valid anchors is the same quantity.
    valid = labels != 255
    order = torch.cat([valid.nonzero().flatten(), (~valid).nonzero().flatten()])
    lab = torch.where(valid, labels, torch.full_like(labels, C))[order]
    ref = slow_paco(feats[order], lab, logits[order][: int(valid.sum())], int(valid.sum()), alpha=0.01, T=0.07)
    assert abs(ours.item() - ref.item()) < 1e-9


def test_pixel_loss_rejects_unknown_labels():
    feats = F.normalize(torch.randn(10, 4), dim=-1)
    with pytest.raises(ValueError, match="ignore_index=255"):
        pixel_paco_loss(feats, torch.full((10,), 7), torch.randn(10, 5), alpha=0.01, temperature=0.07)


def test_multitask_is_ce_plus_supcon():
    features, labels, logits = random_inputs(48, 16, 10, dtype=torch.float64)
    prior = log_prior_from_counts(CLS_COUNTS).double()
    ours = multitask_loss(features, labels, logits, 16, alpha=0.5, temperature=0.1, log_prior=prior)
    ref = F.cross_entropy(logits + prior, labels[:16]) + 0.5 * slow_supcon(features, labels, 16, 0.1)
    assert abs(ours.item() - ref.item()) < 1e-9


def test_paco_reduces_to_logit_adjusted_ce_without_samples():
    # alpha -> 0 and gamma -> 0: only the center (balanced-softmax) term remains (docs/method.md#paco-loss).
    features, labels, logits = random_inputs(48, 16, 10, dtype=torch.float64)
    prior = log_prior_from_counts(CLS_COUNTS).double()
    ours = paco_loss(features, labels, logits, 16, alpha=0.0, gamma=0.0, temperature=0.2, log_prior=prior)
    ref = balanced_cross_entropy(logits, labels[:16], prior)
    assert abs(ours.item() - ref.item()) < 1e-9


def test_cross_entropy_variants():
    g = torch.Generator().manual_seed(5)
    logits, target = torch.randn(12, 7, generator=g), torch.randint(0, 7, (12,), generator=g)
    prior = log_prior_from_counts([50, 30, 10, 5, 3, 2, 1])
    assert torch.allclose(cross_entropy(logits, target), F.cross_entropy(logits, target))
    assert torch.allclose(balanced_cross_entropy(logits, target, prior), F.cross_entropy(logits + prior, target))
    assert torch.allclose(cross_entropy(logits, target, log_prior=prior, tau=2.0),
                          F.cross_entropy(logits + 2.0 * prior, target))
    assert torch.allclose(cross_entropy(logits, target, label_smoothing=0.1),
                          F.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)
    soft = F.one_hot(target, 7).float()
    assert torch.allclose(cross_entropy(logits, soft), F.cross_entropy(logits, target), atol=1e-6)


def test_bad_arguments_name_the_problem():
    features, labels, logits = random_inputs(48, 16, 10)
    with pytest.raises(ValueError, match="num_anchors"):
        paco_loss(features, labels, logits, 8, alpha=0.05, temperature=0.2)
    with pytest.raises(ValueError, match="temperature"):
        paco_loss(features, labels, logits, 16, alpha=0.05, temperature=0.0)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        paco_loss(features, labels + 10, logits, 16, alpha=0.05, temperature=0.2)
    with pytest.raises(ValueError, match="log_prior"):
        paco_loss(features, labels, logits, 16, alpha=0.05, temperature=0.2, log_prior=torch.zeros(3))


def test_gradients_only_reach_rows_that_carry_them():
    # GPaCo: q and k carry gradient, the queue is detached by the model; the loss itself
    # gives every row a gradient, so detaching is the model's job, not the loss's.
    features, labels, logits = random_inputs(48, 16, 10)
    q = features[:16].clone().requires_grad_(True)
    loss = paco_loss(torch.cat([q, features[16:]]), labels, logits, 16, alpha=0.05, temperature=0.2)
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert math.isfinite(loss.item())


@pytest.mark.parametrize("method,device_batch", [("paco", None), ("gpaco", None), ("gpaco", 2), ("multitask", None)])
def test_contrastive_loss_refuses_targets_unlike_the_models_labels(method, device_batch):
    """PaCoLoss / MultiTaskLoss read the labels in the model's output: targets that differ
    (or have another shape) are an error, not silently ignored; the same labels pass."""
    from gpaco.methods import get_method
    from gpaco.methods.rebuild import build_model

    torch.manual_seed(0)
    m = get_method(method)
    model = build_model(method, "resnet8", 5, queue_size=16, proj_dim=8, global_batch=4, device_batch=device_batch)
    crit = m.build_criterion(num_classes=5, class_counts=[5, 4, 3, 2, 1])
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    y = torch.tensor([0, 1, 2, 3])
    out = m.forward_train(model, views, y)
    assert torch.equal(crit(out, y), crit(out, None))
    with pytest.raises(ValueError, match="targets differ from the labels the model was given"):
        crit(out, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"targets have shape \(4, 5\), expected \[B\]"):
        crit(out, torch.eye(5)[y])
