"""RR (region rebalance) and CeCo (center collapse) segmentation branches and losses
against the original code's numbers (tests/data/refvectors-methods/{rr,ceco}.json).

Tolerances: relative error ``max|ours - ref| / max|ref|`` per tensor, 1e-7 for float64
(the originals build their smoothed targets in float32) and 1e-5 for float32.
"""
import json
from pathlib import Path

import pytest
import torch

from gpaco.losses.ceco import (
    CECO_VARIANTS, CeCoBranch, CeCoLoss, ceco_log_prior, ceco_loss, class_centers, class_centers_full, simplex_etf,
)
from gpaco.losses.rr import (
    RR_OUTPUT_KEYS, RegionBranch, RegionRebalanceLoss, image_class_counts, read_class_counts, region_log_prior,
    region_rebalance_loss, smoothed_region_ce, write_class_counts,
)

DATA = Path(__file__).resolve().parent / "data" / "refvectors-methods"
TOL = {"float64": 1e-7, "float32": 1e-5}
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# our loss-dict key -> the original's loss name
RR_TERMS = {"seg": "loss_seg_seg", "seg_bias": "loss_seg_all", "seg_bias_mask": "loss_seg_all_mask",
            "region": "loss_region_p_cls", "gt_region": "loss_img_cls", "total": "total"}
WORST = {}  # (file, dtype) -> worst relative error seen (printed with -s)


def _load(name):
    return json.loads((DATA / f"{name}.json").read_text())


RR = _load("rr")
CECO = _load("ceco")


def rel_err(ours, ref) -> float:
    ours = torch.as_tensor(ours).detach().to(torch.float64)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def check(file, dtype_name, what, ours, ref):
    err = rel_err(ours, ref)
    key = (file, dtype_name)
    WORST[key] = max(WORST.get(key, 0.0), err)
    assert err <= TOL[dtype_name], f"{file} {dtype_name} {what}: relative error {err:.2e} > {TOL[dtype_name]:.0e}"


def tensor(values, dtype):
    return torch.tensor(values, dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------- RR


def rr_branch(dtype):
    p, inp = RR["params"], RR["inputs"]
    branch = RegionBranch(p["channels"], p["num_classes"]).to(dtype).eval()  # the vectors ran without dropout
    with torch.no_grad():
        branch.region_cls[0].weight.copy_(tensor(inp["region_seg_bn_w"], dtype))
        branch.region_cls[0].bias.copy_(tensor(inp["region_seg_bn_b"], dtype))
        branch.region_cls[3].weight.copy_(tensor(inp["region_conv_seg_w"], dtype))
        branch.region_cls[3].bias.copy_(tensor(inp["region_conv_seg_b"], dtype))
    return branch


def rr_run(dtype, neg_w, *, bug, use_module=True):
    p, inp = RR["params"], RR["inputs"]
    o = tensor(inp["output"], dtype).requires_grad_(True)
    z = tensor(inp["final_output"], dtype).requires_grad_(True)
    labels = torch.tensor(inp["seg_label"])
    out = rr_branch(dtype)(o, z, labels)
    out["logits"] = z
    kwargs = dict(main_w=p["main_w"], region_w=p["region_w"], smooth=p["smooth"], neg_w=neg_w,
                  ignore_index=p["ignore_index"], neg_w_precedence_bug=bug, align_corners=p["align_corners"])
    if use_module:
        crit = RegionRebalanceLoss(p["num_classes"], class_counts=p["frequency_counts"], prior=p["prior"], **kwargs)
        total, parts = crit(out, labels)
        parts = dict(parts, total=total)
    else:
        parts = region_rebalance_loss(z, labels, *(out[k] for k in RR_OUTPUT_KEYS),
                                      log_prior=region_log_prior(p["frequency_counts"]), **kwargs)
        total = parts["total"]
    total.backward()
    return out, parts, o.grad, z.grad


RR_CASES = [(d, c) for d in ("float64", "float32") for c in RR["results"][d]]


@pytest.mark.parametrize("dtype_name,case", RR_CASES)
def test_rr_vectors(dtype_name, case):
    ref = RR["results"][dtype_name][case]
    dtype = DTYPES[dtype_name]
    neg_w = float(case.split("=")[1])
    for use_module in (True, False):
        out, parts, grad_o, grad_z = rr_run(dtype, neg_w, bug=True, use_module=use_module)
        for ours, theirs in RR_TERMS.items():
            assert parts[ours].dtype == dtype
            check("rr", dtype_name, f"{case} {theirs}", parts[ours], ref[theirs])
        check("rr", dtype_name, f"{case} grad_output", grad_o, ref["grad_output"])
        check("rr", dtype_name, f"{case} grad_final_output", grad_z, ref["grad_final_output"])
    if "region_bias" in ref:  # intermediate tensors: B, b, G and the ground-truth region labels
        check("rr", dtype_name, f"{case} region_bias", out["region_logits"], ref["region_bias"])
        check("rr", dtype_name, f"{case} res_output", out["region_bias"], ref["res_output"])
        check("rr", dtype_name, f"{case} logits_img", out["gt_region_logits"], ref["logits_img"])
        assert out["gt_region_labels"].tolist() == ref["labels_img"]


def test_rr_neg_w_switch():
    """Bug on: neg_w 0.5 == neg_w 1.0 (the vectors). Bug off (default): 0 and 1 are unchanged,
    0.5 weights the absent rows by 0.5 -- predicted from the 0 and 1 vectors alone."""
    ref = RR["results"]["float64"]
    region_w = RR["params"]["region_w"]
    bug_half = rr_run(torch.float64, 0.5, bug=True)[1]
    bug_one = rr_run(torch.float64, 1.0, bug=True)[1]
    for key in RR_TERMS:
        assert torch.equal(bug_half[key], bug_one[key])
    for neg_w in (0.0, 1.0):
        fixed = rr_run(torch.float64, neg_w, bug=False)[1]
        for ours, theirs in RR_TERMS.items():
            check("rr", "float64", f"default neg_w={neg_w} {theirs}", fixed[ours], ref[f"neg_w={neg_w}"][theirs])
    fixed_half = rr_run(torch.float64, 0.5, bug=False)[1]
    # rows: soft regions = 2 images x 4 classes, each image lacks one class -> 6 present, 2 absent;
    # ground-truth regions = values {0, 1, 2, 3, 255} -> 4 present, 1 absent (255).
    rows = (("region", "loss_region_p_cls", 6, 2), ("gt_region", "loss_img_cls", 4, 1))
    for ours, theirs, n_present, n_absent in rows:
        mean_present = ref["neg_w=0.0"][theirs] / region_w
        mean_all = ref["neg_w=1.0"][theirs] / region_w
        sum_absent = mean_all * (n_present + n_absent) - mean_present * n_present
        expected = region_w * (mean_present * n_present + 0.5 * sum_absent) / (n_present + 0.5 * n_absent)
        assert abs(fixed_half[ours].item() - expected) <= 1e-7 * expected
        assert abs(fixed_half[ours].item() - bug_half[ours].item()) > 1e-3


def test_rr_branch_inference_and_dropout():
    inp = RR["inputs"]
    ref = RR["results"]["float64"]["neg_w=0.5"]
    branch = rr_branch(torch.float64)
    o, z = tensor(inp["output"], torch.float64), tensor(inp["final_output"], torch.float64)
    out = branch(o, z)
    assert set(out) == {"region_logits", "region_bias"}
    biased = z + out["region_bias"][:, :, None, None]  # what inference returns (before upsampling)
    expected = z + torch.tensor(ref["res_output"], dtype=torch.float64)[:, :, None, None]
    assert torch.allclose(biased, expected, rtol=1e-12, atol=1e-12)
    # [n, 1, H, W] and [n, H, W] labels are the same
    labels = torch.tensor(inp["seg_label"])
    a, b = branch(o, z, labels), branch(o, z, labels[:, 0])
    assert all(torch.equal(a[k], b[k]) for k in a)
    # training mode: dropout is active on the classified regions
    branch.train()
    torch.manual_seed(0)
    assert not torch.equal(branch(o, z)["region_logits"], out["region_logits"])


def test_rr_criterion_pads_labels_and_runs_under_autocast():
    p, inp = RR["params"], RR["inputs"]
    o, z = tensor(inp["output"], torch.float32), tensor(inp["final_output"], torch.float32)
    labels = torch.tensor(inp["seg_label"])[:, 0]
    padded = labels.clone()
    padded[:, 6:] = 255
    crit = RegionRebalanceLoss(p["num_classes"], class_counts=p["frequency_counts"], main_w=1.0, region_w=0.5,
                               smooth=0.9, neg_w=0.5)
    branch = rr_branch(torch.float32)
    want = crit(dict(branch(o, z, padded), logits=z), padded)[0]
    got = crit(dict(branch(o, z, padded), logits=z, padded_size=(8, 8)), labels[:, :6])[0]
    assert torch.equal(got, want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = crit(dict(branch(o, z, labels), logits=z), labels)
    assert total.dtype == torch.float32 and torch.isfinite(total) and set(parts) == set(RR_TERMS) - {"total"}


def test_smoothed_region_ce_matches_definition():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 4, 2, 4, 1, 3, 0])
    prior = torch.randn(5, generator=g, dtype=torch.float64)
    got = smoothed_region_ce(logits, targets, smooth=0.8, log_prior=prior, neg_w=0.3)
    logp = (logits + prior).log_softmax(-1)
    rows = []
    for i, k in enumerate(targets.tolist()):
        t = torch.full((5,), 0.2 / 4, dtype=torch.float64)
        t[k] = 0.8
        rows.append(-(t * logp[i]).sum())
    w = torch.tensor([0.3 if k == 4 else 1.0 for k in targets.tolist()], dtype=torch.float64)
    assert torch.allclose(got, (w * torch.stack(rows)).sum() / w.sum(), rtol=1e-14)


# --------------------------------------------------------------------------- class counts


def test_read_class_counts_roundtrip(tmp_path):
    path = tmp_path / "counts.txt"
    write_class_counts(path, [41, 11588, 0, 7])
    assert read_class_counts(path, num_classes=4) == [41, 11588, 0, 7]
    path.write_text(" 3\n5 \n\n\n")  # surrounding spaces and trailing empty lines are fine
    assert read_class_counts(path) == [3, 5]


@pytest.mark.parametrize("text,pattern", [
    ("3\n5\nabc\n", r"counts\.txt:3: 'abc' is not an integer"),
    ("3\n4.5\n", r"counts\.txt:2: '4\.5' is not an integer"),
    ("3\n\n5\n", r"counts\.txt:2: empty line"),
    ("3\n-2\n", r"counts\.txt:2: class counts must be >= 0, got -2"),
    ("1 2\n", r"counts\.txt:1: '1 2' is not an integer"),
    ("\n\n", r"counts\.txt: the class-count file is empty"),
    ("0\n0\n", r"counts\.txt: all 2 class counts are 0"),
    ("1\n2\n3\n", r"counts\.txt: has 3 class counts \(lines\), expected num_classes=2"),
])
def test_read_class_counts_errors(tmp_path, text, pattern):
    path = tmp_path / "counts.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=pattern):
        read_class_counts(path, num_classes=2 if "expected" in pattern else None)


def test_read_class_counts_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt does not exist"):
        read_class_counts(tmp_path / "nope.txt")


def test_image_class_counts_and_priors():
    masks = [torch.tensor([[0, 0], [2, 255]]), torch.tensor([[2, 2], [2, 2]]).numpy(), torch.tensor([[255]])]
    assert image_class_counts(masks, 3) == [1, 0, 2]
    with pytest.raises(ValueError, match=r"mask 0: labels must be in \[0, 2\)"):
        image_class_counts(masks, 2)
    counts = [3, 1]
    assert torch.allclose(region_log_prior(counts), torch.log(torch.tensor([0.75, 0.25, 1.0], dtype=torch.float64)))
    assert torch.allclose(ceco_log_prior(counts), torch.log(torch.tensor([0.75, 0.25], dtype=torch.float64)))
    with pytest.raises(ValueError, match="prior=True needs class_counts"):
        RegionRebalanceLoss(2, main_w=1, region_w=1, smooth=0.9, neg_w=1)


# --------------------------------------------------------------------------- CeCo


def ceco_branch(variant, dtype):
    inp, v = CECO["inputs"], CECO["variants"][variant]
    num_classes = len(inp["frequency_counts"])
    branch = CeCoBranch(8, num_classes, variant=variant, reduce_channels=4, hidden_channels=8, scale=v["scale"],
                        dropout=0.0).to(dtype).train()
    with torch.no_grad():
        branch.reduce[0].weight.copy_(tensor(inp["reduce_w"], dtype))
        branch.gain[0].weight.copy_(tensor(inp["gain_w"], dtype))
        branch.gain[0].bias.copy_(tensor(inp["gain_b"], dtype))
        if v["etf"]:
            branch.img_cls.weight.copy_(tensor(inp["ceco_etf_w"], dtype))
        else:
            branch.img_cls.weight.copy_(tensor(inp["cecol_img_cls_w"], dtype))
            branch.img_cls.bias.copy_(tensor(inp["cecol_img_cls_b"], dtype))
    return branch


CECO_CASES = [(d, v) for d in ("float64", "float32") for v in CECO["results"][d]]


@pytest.mark.parametrize("dtype_name,variant", CECO_CASES)
def test_ceco_vectors(dtype_name, variant):
    ref = CECO["results"][dtype_name][variant]
    inp, v = CECO["inputs"], CECO["variants"][variant]
    dtype = DTYPES[dtype_name]
    for use_module in (True, False):
        o = tensor(inp["output"], dtype).requires_grad_(True)
        labels = torch.tensor(inp["seg_label"])
        out = ceco_branch(variant, dtype)(o, labels)
        if use_module:
            crit = CeCoLoss(len(inp["frequency_counts"]), class_counts=inp["frequency_counts"],
                            weight=v["img_cls_weight"], smooth=v["smooth"])
            loss = crit(out)
        else:
            loss = ceco_loss(out["center_logits"], out["center_labels"],
                             log_prior=ceco_log_prior(inp["frequency_counts"]), smooth=v["smooth"],
                             weight=v["img_cls_weight"])
        loss.backward()
        assert loss.dtype == dtype
        assert out["center_labels"].tolist() == ref["scene_label"]
        check("ceco", dtype_name, f"{variant} region_features", out["centers"], ref["region_features"])
        check("ceco", dtype_name, f"{variant} logits_img", out["center_logits"], ref["logits_img"])
        check("ceco", dtype_name, f"{variant} loss_img_cls", loss, ref["loss_img_cls"])
        check("ceco", dtype_name, f"{variant} grad_output", o.grad, ref["grad_output"])


def test_ceco_runs_under_autocast():
    inp = CECO["inputs"]
    o = tensor(inp["output"], torch.float32).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ceco_branch("ceco", torch.float32)(o, torch.tensor(inp["seg_label"]))
        loss = CeCoLoss(5, class_counts=inp["frequency_counts"], weight=0.8, smooth=1.0)(out)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(o.grad).all()
    assert abs(loss.item() - CECO["results"]["float32"]["ceco"]["loss_img_cls"]) < 0.05


def test_ceco_branch_is_frozen_and_variants():
    for variant in CECO_VARIANTS:
        branch = CeCoBranch(16, 6, variant=variant, reduce_channels=8, hidden_channels=12)
        assert not any(p.requires_grad for p in branch.parameters())
        assert branch.scale == CECO_VARIANTS[variant]["scale"]
    etf = CeCoBranch(16, 6, variant="ceco", reduce_channels=8, hidden_channels=12, etf_seed=4)
    expected = simplex_etf(6, 12, generator=torch.Generator().manual_seed(4))
    assert torch.equal(etf.img_cls.weight, expected) and not etf.img_cls.bias.any()
    with pytest.raises(ValueError, match="variant must be one of"):
        CeCoBranch(16, 6, variant="etf")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_simplex_etf_property(dtype):
    c, d = 150, 512
    w = simplex_etf(c, d, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert w.shape == (c, d) and w.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    w64 = w.double()
    assert (w64.norm(dim=1) - 1).abs().max() < tol
    cos = w64 @ w64.T
    off = cos[~torch.eye(c, dtype=torch.bool)]
    assert (off + 1.0 / (c - 1)).abs().max() < tol
    assert torch.equal(w, simplex_etf(c, d, generator=torch.Generator().manual_seed(0), dtype=dtype))
    assert not torch.equal(w, simplex_etf(c, d, generator=torch.Generator().manual_seed(1), dtype=dtype))
    with pytest.raises(ValueError, match="needs dim >= num_classes"):
        simplex_etf(10, 8)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("low,high", [((5, 7), (37, 29)), ((4, 4), (16, 16)), ((6, 3), (6, 3)), ((1, 3), (4, 9))])
def test_class_centers_shortcut_equals_full_resolution(align_corners, low, high):
    g = torch.Generator().manual_seed(11)
    n, r, c = 3, 6, 7
    feats = torch.randn(n, r, *low, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, c, (n, *high), generator=g)
    labels[torch.rand(n, *high, generator=g) < 0.3] = 255
    labels[labels == 3] = 255  # one class absent everywhere
    fast, classes = class_centers(feats, labels, num_classes=c, align_corners=align_corners)
    full, classes_full = class_centers_full(feats, labels, num_classes=c, align_corners=align_corners)
    assert torch.equal(classes, classes_full) and 3 not in classes.tolist()
    assert torch.allclose(fast, full, rtol=1e-12, atol=1e-12)
    probe = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    (g_fast,) = torch.autograd.grad((fast * probe).sum(), feats)
    (g_full,) = torch.autograd.grad((full * probe).sum(), feats)
    assert torch.allclose(g_fast, g_full, rtol=1e-12, atol=1e-12)


def test_class_centers_edge_cases():
    feats = torch.randn(2, 3, 4, 4, requires_grad=True)
    empty, classes = class_centers(feats, torch.full((2, 8, 8), 255))
    assert empty.shape == (0, 3) and classes.numel() == 0
    branch = CeCoBranch(3, 5, reduce_channels=2, hidden_channels=6)
    out = branch(feats, torch.full((2, 8, 8), 255))
    loss = CeCoLoss(5, class_counts=[5, 4, 3, 2, 1], weight=0.8, smooth=1.0)(out)
    assert loss.item() == 0.0
    loss.backward()  # attached to the features: a batch without labels still backpropagates (zeros)
    assert feats.grad is not None and not feats.grad.any()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        class_centers(feats, torch.full((2, 8, 8), 6), num_classes=5)


def test_worst_errors_summary():
    """Runs last in this file: prints the worst relative errors (``pytest -s``)."""
    for key, err in sorted(WORST.items()):
        print(f"worst relative error {key[0]} {key[1]}: {err:.2e}")
    assert all(err <= TOL[key[1]] for key, err in WORST.items())
