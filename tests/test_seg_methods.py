"""The CeCo (``ceco``, ``cecol``) and Region Rebalance (``rr``) segmentation methods through the
registry: model branches, inference graph, image-level class counts, training on the demo
scenes with resume and evaluation. Their losses against the original's reference vectors are
in tests/test_seg_methods_losses.py."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from gpaco.data.seg_datasets import build_seg_dataset
from gpaco.data.seg_transforms import SegEvalTransform
from gpaco.losses.ceco import CECO_VARIANTS, CeCoSegmentationLoss, simplex_etf
from gpaco.losses.rr import RRSegmentationLoss, image_class_counts, read_class_counts, write_class_counts
from gpaco.methods import get_method, method_options
from gpaco.models.seg import build_seg_model
from gpaco.segmentation.inference import inference

COUNTS = [120 - 10 * c for c in range(11)]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from gpaco.data.demo_seg import build_demo_scenes

    root = tmp_path_factory.mktemp("demo_seg_methods")
    build_demo_scenes(root, num_train=12, num_val=4, num_test=4, size=32)
    return str(root)


def _batch(b=2, size=40, c=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g)
    y = torch.randint(0, c, (b, size, size), generator=g)
    y[:, :3] = 255
    return x, y


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", ["ceco", "cecol", "rr"])
def test_rows_build_their_branch_and_train_only_the_network(name):
    method = get_method(name, "segmentation")
    assert method.takes_labels and method.needs_class_counts
    model = method.build_model("r18", 11)
    criterion = method.build_criterion(num_classes=11, class_counts=COUNTS)
    x, y = _batch()
    out = model(x, train_outputs=True, labels=y)
    loss, parts = criterion(out, y)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-5)
    if name == "rr":
        assert set(parts) == {"seg", "seg_bias", "seg_bias_mask", "region", "gt_region", "aux"}
        assert all(p.grad is not None for p in model.region.parameters())
        assert model.ceco is None
    else:
        assert set(parts) == {"ce", "aux", "ceco"}
        assert model.region is None
        # The whole CeCo branch is frozen: no gradient, and the optimizer never sees it.
        assert all(not p.requires_grad and p.grad is None for p in model.ceco.parameters())
        from gpaco.engine.optim import build_seg_optimizer

        opt = build_seg_optimizer(model, name="adamw", lr=1e-3, wd=0.01)
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        assert not any(id(p) in in_opt for p in model.ceco.parameters())
        # The gradient reaches the decoder through the CeCo term alone.
        model.zero_grad()
        criterion.ceco(model(x, train_outputs=True, labels=y)).backward()
        assert model.decoder.parameters().__next__().grad.abs().sum() > 0


def test_ceco_classifier_is_a_seeded_etf_kept_in_the_state_dict():
    a = build_seg_model("r18", 11, method="ce", ceco="ceco", ceco_options={"etf_seed": 3})
    b = build_seg_model("r18", 11, method="ce", ceco="ceco", ceco_options={"etf_seed": 3})
    c = build_seg_model("r18", 11, method="ce", ceco="ceco", ceco_options={"etf_seed": 4})
    w = a.state_dict()["ceco.img_cls.weight"]
    assert torch.equal(w, b.state_dict()["ceco.img_cls.weight"])
    assert not torch.equal(w, c.state_dict()["ceco.img_cls.weight"])
    assert torch.equal(w, simplex_etf(11, 512, generator=torch.Generator().manual_seed(3)))
    assert torch.count_nonzero(a.state_dict()["ceco.img_cls.bias"]) == 0
    assert a.ceco.scale == CECO_VARIANTS["ceco"]["scale"]
    lin = build_seg_model("r18", 11, method="ce", ceco="cecol")
    assert lin.ceco.scale == 1.0 and not lin.ceco.normalize
    # cecol's random classifier is drawn from --etf-seed too (nn.Linear's distribution), not the global RNG
    lin3 = [build_seg_model("r18", 11, method="ce", ceco="cecol", ceco_options={"etf_seed": s}).ceco.img_cls.weight
            for s in (3, 3, 4)]
    assert torch.equal(lin3[0], lin3[1]) and not torch.equal(lin3[0], lin3[2])
    assert 0.9 / 512 ** 0.5 < lin3[0].abs().max() <= 1 / 512 ** 0.5
    assert build_seg_model("r18", 11, method="ce", ceco="ceco", ceco_options={"scale": 2.0}).ceco.scale == 2.0


@pytest.mark.parametrize("arch", ["r18", "swin_t"])
def test_ceco_is_absent_from_the_inference_graph(arch):
    """A CeCo model evaluates exactly as the plain model with the same weights, and never
    runs its branch outside training."""
    torch.manual_seed(0)
    ceco = build_seg_model(arch, 11, method="ce", ceco="ceco")
    plain = build_seg_model(arch, 11, method="ce")
    state = ceco.state_dict()
    missing = plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("ceco.")}, strict=True)
    assert not missing.missing_keys
    calls = []
    for module in ceco.ceco.modules():
        module.register_forward_hook(lambda *_: calls.append(1))
    ceco.eval(), plain.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ceco(x), plain(x))
        probs = [inference(m, x * 40 + 120, num_classes=11, scale=(64, 64), ratios=(0.75, 1.0), flip=True,
                           mode="slide", crop=(48, 48), stride=(32, 32)) for m in (ceco, plain)]
    assert torch.equal(*probs)
    assert calls == []
    # Train outputs without labels (no class centers) skip the branch too.
    ceco.train()
    assert "center_logits" not in ceco(x.expand(2, -1, -1, -1), train_outputs=True) and calls == []


@pytest.mark.parametrize("mode", ["whole", "slide", "ms"])
def test_rr_bias_is_added_at_inference_in_every_test_mode(mode):
    torch.manual_seed(0)
    model = build_seg_model("r18", 5, method="ce", region=True).eval()
    x = torch.rand(1, 3, 48, 40) * 255
    kw = dict(num_classes=5, scale=(40, 48), mode="whole")
    if mode == "slide":
        kw.update(mode="slide", crop=(32, 32), stride=(16, 16))
    if mode == "ms":
        kw.update(ratios=(0.5, 1.0, 1.5), flip=True)
    with torch.no_grad():
        before = inference(model, x, **kw).argmax(1)
        last = model.region.region_cls[-1]
        last.bias[3] += 1e4  # region logit of class 3 -> a huge class-3 bias on every pixel of every pass
        after = inference(model, x, **kw).argmax(1)
    assert not (before == 3).all() and (after == 3).all()


def test_rr_inference_logits_are_pixel_logits_plus_region_bias():
    torch.manual_seed(0)
    model = build_seg_model("r18", 5, method="ce", region=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, _, dec = model.features(x)
        z = model.cls_seg(dec)
        bias = model.region(dec, z)["region_bias"]
        expect = torch.nn.functional.interpolate(z + bias[:, :, None, None], size=(32, 32), mode="bilinear",
                                                 align_corners=False)
        assert torch.allclose(model(x), expect, atol=1e-5)
        assert bias.abs().sum() > 0


def test_branches_pad_the_labels_like_the_image():
    model = build_seg_model("r18", 5, method="ce", region=True)
    x, y = torch.randn(2, 3, 30, 27), torch.randint(0, 5, (2, 30, 27))
    out = model(x, train_outputs=True, labels=y)
    assert out["padded_size"] == (32, 32)
    assert 255 in out["gt_region_labels"].tolist()  # the padding is an ignore region
    with pytest.raises(ValueError, match="do not cover the image"):
        model(x, train_outputs=True, labels=y[:, :20])


# ----------------------------------------------------------------------------- criteria and flags


def test_ceco_criterion_defaults_follow_the_variant_and_flags_override():
    for variant, settings in CECO_VARIANTS.items():
        crit = CeCoSegmentationLoss(11, class_counts=COUNTS, variant=variant)
        assert (crit.ceco.weight, crit.ceco.smooth) == (settings["weight"], settings["smooth"])
    from gpaco.segmentation.train import parse_train_args

    args = parse_train_args(["--method", "ceco", "--ceco-weight", "0.2"])
    model_kw, loss_kw = method_options(get_method("ceco", "segmentation"), vars(args))
    assert model_kw == {"ceco_scale": None, "etf_seed": 0, "device_batch": None}
    assert loss_kw == {"aux_weight": 0.4, "ce_avg_non_ignore": False, "weight": 0.2, "smooth": None}
    assert get_method("ceco", "segmentation").build_criterion(num_classes=11, class_counts=COUNTS,
                                                              **loss_kw).ceco.weight == 0.2
    with pytest.raises(ValueError, match="class_counts"):
        CeCoSegmentationLoss(11, class_counts=None)


def test_rr_flags_reach_the_criterion_and_the_bug_switch_is_off_by_default():
    from gpaco.segmentation.train import parse_train_args

    method = get_method("rr", "segmentation")
    default = method_options(method, vars(parse_train_args(["--method", "rr"])))[1]
    assert default["neg_w_precedence_bug"] is False and default["prior"] is True
    _, kw = method_options(method, vars(parse_train_args(["--method", "rr", "--rr-neg-w", "0.5",
                                                          "--rr-neg-w-precedence-bug", "--rr-smooth", "0.9"])))
    assert kw["neg_w"] == 0.5 and kw["neg_w_precedence_bug"] is True and kw["smooth"] == 0.9
    torch.manual_seed(0)
    model = method.build_model("r18", 5)
    x, y = _batch(c=5, size=32)
    y[0][y[0] == 4] = 0  # class 4 absent from image 0: an 'absent' row
    out = model(x, train_outputs=True, labels=y)
    losses = {}
    for neg_w, bug in ((0.5, False), (0.5, True), (1.0, False)):
        crit = RRSegmentationLoss(5, class_counts=[5, 4, 3, 2, 1], neg_w=neg_w, neg_w_precedence_bug=bug)
        losses[(neg_w, bug)] = crit(out, y)[1]["region"].item()
    assert losses[(0.5, True)] == pytest.approx(losses[(1.0, False)])  # the bug: 0.5 acts as 1
    assert losses[(0.5, False)] != pytest.approx(losses[(1.0, False)])


def test_ceco_flags_belong_to_ceco_methods_only():
    from gpaco.engine.args import FlagError
    from gpaco.segmentation.train import parse_train_args

    with pytest.raises(FlagError, match="--ceco-weight is an option of --method ceco/cecol, not ce"):
        parse_train_args(["--method", "ce", "--ceco-weight", "0.2"])
    with pytest.raises(FlagError, match="--class-counts is an option of --method ceco/cecol/rr, not gpaco"):
        parse_train_args(["--method", "gpaco", "--class-counts", "x.txt"])


# ----------------------------------------------------------------------------- class counts


def test_image_class_counts_of_the_training_masks_and_the_tool(demo_root, tmp_path):
    from gpaco.segmentation import class_counts as cc

    ds = build_seg_dataset("demo", demo_root, "train", SegEvalTransform())
    expect = image_class_counts([ds.load(i)[1] for i in range(len(ds))], 11)
    assert cc.dataset_image_class_counts(ds, num_classes=11) == expect
    assert expect[10] == len(ds)  # background is in every scene
    out = tmp_path / "stats" / "demo_counts.txt"
    assert cc.main(["--dataset", "demo", "--data-root", demo_root, "--out", str(out), "--workers", "0"]) == expect
    assert read_class_counts(out, num_classes=11) == expect


def test_class_counts_file_errors_name_the_flag_file_and_line(demo_root, tmp_path):
    from gpaco.engine.args import FlagError
    from gpaco.segmentation import train as seg

    bad = tmp_path / "bad.txt"
    bad.write_text("3\nx\n")
    short = tmp_path / "short.txt"
    write_class_counts(short, [1, 2, 3])
    base = ["--dataset", "demo", "--data-root", demo_root, "--arch", "r18", "--method", "rr", "--dry-run",
            "--output-dir", str(tmp_path / "out")]
    with pytest.raises(FlagError, match=rf"--class-counts: {bad}:2: 'x' is not an integer"):
        seg.main(base + ["--class-counts", str(bad)])
    with pytest.raises(FlagError, match="has 3 class counts .* expected num_classes=11"):
        seg.main(base + ["--class-counts", str(short)])
    with pytest.raises(FlagError, match="does not exist"):
        seg.main(base + ["--class-counts", str(tmp_path / "absent.txt")])


# ----------------------------------------------------------------------------- training


def _argv(root, out, method, *extra):
    return ["--dataset", "demo", "--data-root", root, "--arch", "r18", "--method", method, "--img-scale", "32", "32",
            "--crop-size", "32", "32", "--batch-size", "2", "--workers", "0", "--print-freq", "1",
            "--eval-interval", "0", "--ckpt-interval", "2", "--test-split", "test", "--output-dir", str(out),
            "--resume", "auto", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ceco", "rr"])
def test_train_resume_and_evaluate_through_the_registry(name, demo_root, tmp_path, capsys):
    """Two iterations straight and 1 + (preempted, resumed) 1 give identical checkpoints
    (frozen CeCo BN statistics included); tools/eval_seg.py reproduces the final mIoU; a CeCo
    checkpoint also evaluates as the plain model (--method ce) with the same numbers."""
    from gpaco.checkpoint import load_checkpoint
    from gpaco.segmentation import evaluate as seg_eval, train as seg

    straight = seg.main(_argv(demo_root, tmp_path / "a", name, "--iters", "2"))
    assert seg.main(_argv(demo_root, tmp_path / "b", name, "--iters", "2", "--stop-after", "1"))["stopped_at_iter"] == 1
    assert "image-level class counts of" in capsys.readouterr().out  # counted from the masks once
    seg.main(_argv(demo_root, tmp_path / "b", name, "--iters", "2"))
    assert "image-level class counts of" not in capsys.readouterr().out  # the resume reads class_counts.txt
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pth") for d in "ab")
    assert a["iter"] == b["iter"] == 2 and a["method"] == name
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ds = build_seg_dataset("demo", demo_root, "train", SegEvalTransform())
    counts = read_class_counts(tmp_path / "a" / "class_counts.txt")
    assert counts == image_class_counts([ds.load(i)[1] for i in range(len(ds))], 11)
    if name == "ceco":
        assert torch.equal(a["model"]["ceco.img_cls.weight"],
                           simplex_etf(11, 512, generator=torch.Generator().manual_seed(0)))
        assert int(a["model"]["ceco.reduce.1.num_batches_tracked"]) == 2

    ckpt = str(tmp_path / "a" / "checkpoint.pth")
    ev = seg_eval.main(["--checkpoint", ckpt, "--split", "test", "--workers", "0", "--mode", "both",
                        "--output-dir", str(tmp_path / "ev")])
    assert ev["ss"]["miou"] == pytest.approx(straight["miou"])
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["miou"] == pytest.approx(straight["miou"])
    if name == "ceco":
        plain = seg_eval.main(["--checkpoint", ckpt, "--method", "ce", "--split", "test", "--workers", "0",
                               "--output-dir", str(tmp_path / "ev_plain")])
        assert plain["ss"]["miou"] == ev["ss"]["miou"]
        assert torch.equal(torch.tensor(plain["ss"]["per_class_iou"]).nan_to_num(-1),
                           torch.tensor(ev["ss"]["per_class_iou"]).nan_to_num(-1))


@pytest.mark.parametrize("name", ["ceco", "cecol", "rr"])
def test_dry_run_on_synthetic_data(name, tmp_path):
    from gpaco.segmentation import train as seg

    res = seg.main(["--dataset", "ade20k", "--data-root", str(tmp_path / "absent"), "--arch", "r18", "--method",
                    name, "--output-dir", str(tmp_path / "out"), "--dry-run", "--dry-run-crop", "32"])
    assert res["dry_run"] is True and torch.isfinite(torch.tensor(res["train_loss"]))
    assert ("gt_region" if name == "rr" else "ceco") in res and "aux" in res
    assert not (tmp_path / "out").exists()


def test_parse_keeps_namespace_types():
    from gpaco.segmentation.train import parse_train_args

    args = parse_train_args(["--method", "cecol", "--class-counts", "stats/x.txt", "--etf-seed", "5"])
    assert isinstance(args, argparse.Namespace) and args.class_counts == "stats/x.txt" and args.etf_seed == 5


# ----------------------------------------------------------------------------- recipes

CECO_RECIPES = {  # recipe stem -> (arch, method, ceco weight, scale, smooth): the original's four configs
    "upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_ceco": ("swin_t", "ceco", 0.8, 5.0, 1.0),
    "upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_cecol": ("swin_t", "cecol", 1.0, 1.0, 0.5),
    "upernet_swin_base_patch4_window12_512x512_160k_ade20k_pretrain_384x384_22K_ceco": ("swin_b", "ceco", 0.2, 5.0, 1.0),
    "upernet_swin_base_patch4_window12_512x512_160k_ade20k_pretrain_384x384_22K_cecol": ("swin_b", "cecol", 1.0, 1.0,
                                                                                         0.5),
}
RR_RECIPE = "sh/RR/Seg/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_rr.sh"
SHIPPED_ADE20K = "gpaco/data/stats/ade20k_image_label_stats.txt"


def _recipe_argv(recipe, **env):
    import os
    import subprocess

    e = {k: v for k, v in os.environ.items() if k not in ("CLASS_COUNTS", "EXTRA_ARGS", "DRY_RUN", "OUTPUT_DIR",
                                                            "DATA_ROOT", "PRETRAINED")}
    e.update(env, GPACO_PRINT_ARGV="1")
    proc = subprocess.run(["bash", str(ROOT / recipe)], env=e, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("GPACO_ARGV "))
    return json.loads(line[len("GPACO_ARGV "):])


def _check_common_ade20k_recipe(a):
    assert (a.dataset, a.iters, a.batch_size, a.optimizer, a.lr, a.wd) == ("ade20k", 160000, 16, "adamw", 6e-5, 0.01)
    assert (a.power, a.min_lr, a.warmup_iters, a.warmup_ratio, tuple(a.betas)) == (1.0, 0.0, 1500, 1e-6, (0.9, 0.999))
    assert set(a.no_decay_keys.split(",")) == {"absolute_pos_embed", "relative_position_bias_table", "norm"}
    assert a.img_scale == [2048, 512] and a.crop_size == [512, 512] and tuple(a.ratio_range) == (0.5, 2.0)
    assert a.aux_weight == 0.4 and a.eval_interval == 4000 and a.resume == "auto"
    assert a.class_counts == SHIPPED_ADE20K  # the original's image-level counts, shipped with gpaco


@pytest.mark.parametrize("stem", sorted(CECO_RECIPES))
def test_ceco_recipes_carry_the_original_configs(stem):
    from gpaco.segmentation.train import parse_train_args

    a = parse_train_args(_recipe_argv(f"sh/CeCo/Seg/{stem}.sh"))
    _check_common_ade20k_recipe(a)
    arch, method, weight, scale, smooth = CECO_RECIPES[stem]
    assert (a.arch, a.method, a.ceco_weight, a.ceco_scale, a.ceco_smooth, a.etf_seed) == (arch, method, weight, scale,
                                                                                          smooth, 0)
    assert a.output_dir == f"runs/CeCo/Seg/{stem}"
    # the original's 4 images per GPU: 4 virtual devices of the global 16, on 1, 2 or 4 GPUs
    assert a.device_batch == 4 and a.batch_size == 16
    header = (ROOT / f"sh/CeCo/Seg/{stem}.sh").read_text()
    assert "# GPUs: the original ran 4 images per GPU (the config's samples_per_gpu 4)" in header
    assert "same run on any GPU count" not in header
    assert f"diff runs/ade20k_image_label_stats.txt {SHIPPED_ADE20K}" in header
    assert a.pretrained.endswith("in1k.safetensors" if arch == "swin_t" else "in22k.safetensors")
    # The recipe's flags equal the variant's defaults except Swin-B ceco's weight.
    variant = CECO_VARIANTS[method]
    assert (scale, smooth) == (variant["scale"], variant["smooth"])
    assert (weight == variant["weight"]) == (stem != "upernet_swin_base_patch4_window12_512x512_160k_ade20k_"
                                                     "pretrain_384x384_22K_ceco")


def test_rr_recipe_and_class_counts_file():
    from gpaco.segmentation.train import parse_train_args

    a = parse_train_args(_recipe_argv(RR_RECIPE))
    _check_common_ade20k_recipe(a)
    assert (a.arch, a.method, a.rr_neg_w_precedence_bug, a.rr_prior) == ("swin_t", "rr", False, True)
    a = parse_train_args(_recipe_argv(RR_RECIPE, CLASS_COUNTS="stats/ade20k_image_label_stats.txt"))
    assert a.class_counts == "stats/ade20k_image_label_stats.txt"
    for recipe in (RR_RECIPE, f"sh/CeCo/Seg/{sorted(CECO_RECIPES)[0]}.sh"):  # empty: counted from the masks
        assert parse_train_args(_recipe_argv(recipe, CLASS_COUNTS="")).class_counts is None


def test_sync_batchnorm_leaves_the_ceco_branch_per_process():
    from torch import nn

    from gpaco.models.seg import convert_sync_batchnorm

    model = convert_sync_batchnorm(build_seg_model("r18", 5, method="ce", ceco="ceco"))
    assert type(model.ceco.reduce[1]) is nn.BatchNorm2d
    assert isinstance(model.aux_head.convs[0].bn, nn.SyncBatchNorm)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.decoder.modules())
