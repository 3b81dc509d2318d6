"""Segmentation: metrics, inference (multi-scale, flip, sliding window), pixel sampler, loss,
schedule, optimizer groups, models, training on the demo scenes, checkpoint round-trip."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn

from gpaco.data.seg_datasets import SyntheticSegDataset
from gpaco.data.seg_transforms import SEG_MEAN, SEG_STD, SegEvalTransform
from gpaco.data.samplers import IterationSampler
from gpaco.engine.optim import build_seg_optimizer
from gpaco.engine.schedule import poly_lr
from gpaco.losses.pixel import SegmentationLoss, sample_pixel_indices
from gpaco.segmentation.inference import evaluate_seg, format_iou_table, inference
from gpaco.metrics import SegMeter
from gpaco.models.seg import SegModel, build_seg_model, load_encoder_weights, pad_to_multiple



# ----------------------------------------------------------------------------- metrics


def test_seg_metrics_hand_computed_with_ignore_and_absent_class():
    # C = 4; class 3 never appears in the labels, and is predicted only on an ignored pixel.
    labels = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 255]])
    preds = torch.tensor([[0, 1, 1, 0], [1, 2, 0, 3]])
    m = SegMeter(4)
    m.update(preds[None], labels[None])
    # Confusion (rows = label): [[1,1,0,0],[0,2,0,0],[1,0,1,0],[0,0,0,0]]
    assert m.confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    r = m.compute()
    iou = r["per_class_iou"]
    assert iou[0] == pytest.approx(100 / 3) and iou[1] == pytest.approx(200 / 3) and iou[2] == pytest.approx(50)
    assert math.isnan(iou[3]) and math.isnan(r["per_class_acc"][3])
    assert r["miou"] == pytest.approx(50.0)                      # (1/3 + 2/3 + 1/2) / 3
    assert r["macc"] == pytest.approx(100 * (0.5 + 1 + 0.5) / 3)
    assert r["aacc"] == pytest.approx(100 * 4 / 6)
    assert r["num_pixels"] == 6


def test_seg_metrics_class_predicted_but_absent_from_labels_counts_as_zero_iou():
    m = SegMeter(4)
    m.update(torch.tensor([[0, 3]]), torch.tensor([[0, 0]]))
    r = m.compute()
    assert r["per_class_iou"][0] == pytest.approx(50) and r["per_class_iou"][3] == 0.0
    assert math.isnan(r["per_class_iou"][1]) and math.isnan(r["per_class_acc"][3])
    assert r["miou"] == pytest.approx(25.0) and r["macc"] == pytest.approx(50.0) and r["aacc"] == pytest.approx(50)


def test_format_iou_table_marks_absent_classes():
    m = SegMeter(3)
    m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    table = format_iou_table([("a", {**m.compute(), "class_names": ["x", "y", "z"]})])
    assert "| x | 100.00 |" in table and "| z | - |" in table and "**mIoU** | 100.00" in table


# ----------------------------------------------------------------------------- inference


class OneHotIdentity(nn.Module):
    """Returns its input's class map: the (un-normalised) image holds a one-hot of 3 classes."""

    def forward(self, x):
        mean = torch.tensor(SEG_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(SEG_STD).view(1, 3, 1, 1)
        return (x * std + mean) / 255.0 * 20.0


def _block_map(h, w, block, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 3, (h // block + 1, w // block + 1), generator=g)
    return coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_multiscale_flip_on_identity_model_is_identity(mode):
    cls = _block_map(40, 56, 8)
    img = torch.nn.functional.one_hot(cls, 3).permute(2, 0, 1)[None].float() * 255
    probs = inference(OneHotIdentity(), img, num_classes=3, scale=(56, 40), ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                      flip=True, mode=mode, crop=(24, 24), stride=(16, 16))
    assert probs.shape == (1, 3, 40, 56)
    assert torch.allclose(probs.sum(1), torch.ones(1, 40, 56), atol=1e-5)
    assert torch.equal(probs.argmax(1)[0], cls)


def test_flip_is_undone():
    """A model that is not flip-equivariant (predicts class 1 on the left half): flip averaging
    must map the flipped pass back before averaging, giving 0.5/0.5 everywhere."""

    class LeftHalf(nn.Module):
        def forward(self, x):
            w = x.shape[-1]
            out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            out[:, 1, :, : w // 2] = 50.0
            out[:, 0, :, w // 2:] = 50.0
            return out

    img = torch.zeros(1, 3, 8, 8)
    single = inference(LeftHalf(), img, num_classes=2, scale=(8, 8))
    assert single.argmax(1)[0, :, :4].eq(1).all() and single.argmax(1)[0, :, 4:].eq(0).all()
    both = inference(LeftHalf(), img, num_classes=2, scale=(8, 8), flip=True)
    assert torch.allclose(both, torch.full_like(both, 0.5), atol=1e-5)


def test_evaluate_seg_end_to_end_and_sharding():
    """evaluate_seg with the identity model scores 100%; two shards cover every image once."""

    class Data(torch.utils.data.Dataset):
        class_names = ("a", "b", "c")

        def __init__(self):
            self.maps = [_block_map(24, 32, 8, seed=s) for s in range(5)]

        def __len__(self):
            return 5

        def __getitem__(self, i):
            img = torch.nn.functional.one_hot(self.maps[i], 3).permute(2, 0, 1).to(torch.uint8) * 255
            label = self.maps[i].clone()
            label[0, 0] = 255
            return img, label, i

    kw = dict(device=torch.device("cpu"), num_classes=3, scale=(32, 24))
    full = evaluate_seg(OneHotIdentity(), Data(), **kw)
    assert full["miou"] == pytest.approx(100.0) and full["aacc"] == pytest.approx(100.0)
    assert full["num_pixels"] == 5 * (24 * 32 - 1)
    shards = [evaluate_seg(OneHotIdentity(), Data(), rank=r, world_size=2, **kw)["num_pixels"] for r in (0, 1)]
    assert sum(shards) == full["num_pixels"]


# ----------------------------------------------------------------------------- pixel sampler & loss


def test_pixel_sampler_shapes_uniqueness_and_determinism():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = sample_pixel_indices(4, 1000, 128, generator=g1)
    b = sample_pixel_indices(4, 1000, 128, generator=g2)
    assert a.shape == (4, 128) and a.dtype == torch.int64
    assert torch.equal(a, b)
    assert all(len(set(row.tolist())) == 128 for row in a)
    assert int(a.min()) >= 0 and int(a.max()) < 1000
    assert not torch.equal(a[0], a[1])  # each image draws its own pixels
    c = sample_pixel_indices(4, 1000, 128, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)
    assert torch.equal(sample_pixel_indices(2, 50, 8192)[1], torch.arange(50))  # K >= HW: all pixels
    assert sample_pixel_indices(2, 50, -1).shape == (2, 50)


def _fake_outputs(b=2, c=5, h=8, w=8, d=16, seed=0, padded=(32, 32)):
    g = torch.Generator().manual_seed(seed)
    embed = torch.nn.functional.normalize(torch.randn(b, d, h, w, generator=g), dim=1).requires_grad_()
    logits = torch.randn(b, c, h, w, generator=g).requires_grad_()
    aux = torch.randn(b, c, h // 2, w // 2, generator=g).requires_grad_()
    labels = torch.randint(0, c, (b, 30, 30), generator=g)
    labels[:, :3] = 255
    return {"logits": logits, "aux": aux, "embed": embed, "padded_size": padded}, labels


def test_criterion_parts_and_determinism():
    out, labels = _fake_outputs()
    crit = SegmentationLoss(5, paco=True, alpha=0.01, temperature=0.07, num_pixels=32)
    l1, p1 = crit(out, labels, generator=torch.Generator().manual_seed(0))
    l2, p2 = crit(out, labels, generator=torch.Generator().manual_seed(0))
    l3, _ = crit(out, labels, generator=torch.Generator().manual_seed(1))
    assert set(p1) == {"ce", "aux", "paco"}
    assert torch.equal(l1, l2) and not torch.equal(l1, l3)
    assert torch.allclose(l1, p1["ce"] + p1["aux"] + p1["paco"])
    l1.backward()
    assert out["embed"].grad is not None and out["logits"].grad.abs().sum() > 0
    ce_only, parts = SegmentationLoss(5, paco=False)(out, labels)
    assert set(parts) == {"ce", "aux"}


def test_criterion_paco_matches_pixel_loss_on_all_pixels():
    """With K >= h*w every pixel is used: the criterion equals pixel_paco_loss on the
    nearest-downsampled labels, and labels >= C count as ignored."""
    from gpaco.losses.pixel import pixel_paco_loss

    out, _ = _fake_outputs(b=1, h=4, w=4, padded=(16, 16))
    labels = torch.arange(16 * 16).view(1, 16, 16) % 7  # values 5, 6 are >= C: ignored
    crit = SegmentationLoss(5, num_pixels=-1)
    got = crit.paco(out["embed"], out["logits"], labels)
    small = labels[:, ::4, ::4].reshape(1, -1)
    small = torch.where(small >= 5, torch.full_like(small, 255), small)
    want = pixel_paco_loss(out["embed"].flatten(2).transpose(1, 2), small, out["logits"].flatten(2).transpose(1, 2),
                           alpha=0.01, temperature=0.07)
    assert torch.allclose(got, want, atol=1e-6)


def test_ce_average_over_all_pixels_vs_labelled_only():
    logits = torch.zeros(1, 2, 2, 2)
    labels = torch.tensor([[[0, 255], [255, 255]]])
    out = {"logits": logits, "padded_size": (2, 2)}
    mm = SegmentationLoss(2, paco=False, aux_weight=0)(out, labels)[0]
    assert mm.item() == pytest.approx(math.log(2) / 4)  # mmseg 0.x: ignored pixels count in the mean
    non = SegmentationLoss(2, paco=False, aux_weight=0, ce_avg_non_ignore=True)(out, labels)[0]
    assert non.item() == pytest.approx(math.log(2))


# ----------------------------------------------------------------------------- schedule, optimizer, sampler


def test_poly_lr_with_warmup():
    assert poly_lr(0, base_lr=0.01, max_iters=100, power=0.9, min_lr=1e-4) == pytest.approx(0.01)
    assert poly_lr(50, base_lr=0.01, max_iters=100, power=0.9, min_lr=1e-4) == pytest.approx(
        (0.01 - 1e-4) * 0.5 ** 0.9 + 1e-4)
    assert poly_lr(100, base_lr=0.01, max_iters=100, power=0.9, min_lr=1e-4) == pytest.approx(1e-4)
    kw = dict(base_lr=6e-5, max_iters=160000, power=1.0, min_lr=0.0, warmup_iters=1500, warmup_ratio=1e-6)
    assert poly_lr(0, **kw) == pytest.approx(6e-5 * 1e-6)
    regular = 6e-5 * (1 - 750 / 160000)
    assert poly_lr(750, **kw) == pytest.approx(regular * (1 - 0.5 * (1 - 1e-6)))
    assert poly_lr(1500, **kw) == pytest.approx(6e-5 * (1 - 1500 / 160000))


def test_adamw_groups_exclude_norms_and_relative_position_tables():
    model = build_seg_model("swin_t", 4, method="ce")
    opt = build_seg_optimizer(model, name="adamw", lr=6e-5, wd=0.01,
                              no_decay_keys=("absolute_pos_embed", "relative_position_bias_table", "norm"))
    no_decay = {id(p) for p in opt.param_groups[1]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["weight_decay"] == 0.01
    assert any("relative_position_bias_table" in n for n in names) and any("norm1" in n for n in names)
    assert all(any(k in n for k in ("relative_position_bias_table", "norm")) for n in names)
    # only normalisation parameters (and the relative position tables): no conv weight of the heads
    assert all(p.ndim == 1 for n, p in model.named_parameters() if id(p) in no_decay
               and "relative_position_bias_table" not in n)
    assert not any(n.startswith(("decoder.", "aux_head.", "cls_seg.")) for n in names)
    assert isinstance(opt, torch.optim.AdamW)
    sgd = build_seg_optimizer(model, name="sgd", lr=0.01, wd=5e-4)
    assert len(sgd.param_groups) == 1


def test_iteration_sampler_resumes_and_shards():
    full = list(IterationSampler(10, 2, seed=1, max_iters=12))
    assert len(full) == 24
    resumed = list(IterationSampler(10, 2, seed=1, start_iter=7, max_iters=12))
    assert resumed == full[14:]
    # Two ranks: disjoint halves of each global batch, same seeds layout.
    r0 = list(IterationSampler(10, 2, rank=0, world_size=2, seed=1, max_iters=2))
    r1 = list(IterationSampler(10, 2, rank=1, world_size=2, seed=1, max_iters=2))
    epoch0 = [i for i, _ in r0] + [i for i, _ in r1]
    assert len(set(epoch0)) == 8
    # Each epoch (5 iterations of 2) visits every image once.
    assert sorted(i for i, _ in full[:10]) == list(range(10))


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("arch", ["r18", "r50", "swin_t"])
def test_model_output_shapes(arch):
    model = build_seg_model(arch, 7, method="gpaco")
    x = torch.randn(2, 3, 50, 46)
    out = model(x, train_outputs=True)
    div = 32 if arch.startswith("swin") else 8
    hp, wp = math.ceil(50 / div) * div, math.ceil(46 / div) * div
    assert out["padded_size"] == (hp, wp)
    assert out["logits"].shape == (2, 7, hp // 4, wp // 4)
    assert out["embed"].shape == (2, 128, hp // 4, wp // 4)
    assert torch.allclose(out["embed"].norm(dim=1), torch.ones(2, hp // 4, wp // 4), atol=1e-4)
    assert out["aux"].shape[1] == 7
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7, 50, 46)
    assert build_seg_model(arch, 7, method="ce").embed is None


def test_r18_uses_original_skip_width_and_channels():
    model = SegModel("r18", 19)
    assert model.decoder.c1_bottleneck.conv.in_channels == 64 and model.decoder.c1_bottleneck.conv.out_channels == 12
    assert model.cls_seg[1].in_channels == 128
    assert model.aux_head.convs[0].conv.in_channels == 256 and model.aux_head.convs[0].conv.out_channels == 64


# Parameter counts of mmseg 0.x's EncoderDecoder for deeplabv3plus_r{18,50,101}-d8, by hand from
# its module definitions: mmcv ConvModule = conv without bias + BN (2 per channel);
# DepthwiseSeparableConvModule = depthwise ConvModule + pointwise ConvModule; ResNetV1c = deep
# stem 3->32->32->64, BasicBlock / Bottleneck with a 1x1 conv + BN shortcut on each stage's
# first block (BasicBlock stage 1: none); DepthwiseSeparableASPPHead = image_pool 1x1, a 1x1
# and three separable 3x3 ASPP branches, a dense 3x3 bottleneck over 5 x channels, the 1x1
# c1_bottleneck, two separable 3x3 sep_bottlenecks, conv_seg (with bias); FCNHead = one 3x3
# ConvModule + conv_seg.
def _mmseg_deeplabv3plus_params(depth: int, num_classes: int) -> int:
    def conv(cin, cout, k, groups=1):
        return cin // groups * cout * k * k + 2 * cout

    def sep(cin, cout):
        return conv(cin, cin, 3, cin) + conv(cin, cout, 1)

    total = conv(3, 32, 3) + conv(32, 32, 3) + conv(32, 64, 3)
    cin = 64
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    for i, n in enumerate(blocks):
        p = 64 * 2 ** i
        for b in range(n):
            if depth == 18:
                total += conv(cin, p, 3) + conv(p, p, 3) + (conv(cin, p, 1) if b == 0 and cin != p else 0)
                cin = p
            else:
                total += conv(cin, p, 1) + conv(p, p, 3) + conv(p, 4 * p, 1) + (conv(cin, 4 * p, 1) if b == 0 else 0)
                cin = 4 * p
    top, c1_in, ch, c1, aux_in, aux_ch = ((512, 64, 128, 12, 256, 64) if depth == 18 else
                                          (2048, 256, 512, 48, 1024, 256))
    total += conv(top, ch, 1) + conv(top, ch, 1) + 3 * sep(top, ch) + conv(5 * ch, ch, 3) + conv(c1_in, c1, 1)
    total += sep(ch + c1, ch) + sep(ch, ch) + ch * num_classes + num_classes
    total += conv(aux_in, aux_ch, 3) + aux_ch * num_classes + num_classes
    return total


@pytest.mark.parametrize("arch,depth,expected", [("r18", 18, 12_468_962), ("r50", 50, 43_589_878),
                                                 ("r101", 101, 62_582_006)])
def test_deeplabv3plus_parameter_count_equals_mmseg(arch, depth, expected):
    assert _mmseg_deeplabv3plus_params(depth, 19) == expected
    model = SegModel(arch, 19)
    assert sum(p.numel() for p in model.parameters()) == expected


def _mmseg_key_list(depth: int) -> list:
    """The state-dict keys of mmseg's deeplabv3plus_r{depth}-d8 EncoderDecoder (+ the original's
    GPaCo ``decode_head.mlp`` branch), written out from mmseg's module names."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = []

    def conv_module(prefix):
        keys.append(f"{prefix}.conv.weight")
        keys.extend(f"{prefix}.bn.{b}" for b in bn)

    for i in (0, 3, 6):
        keys.append(f"backbone.stem.{i}.weight")
        keys.extend(f"backbone.stem.{i + 1}.{b}" for b in bn)
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    for s, n in enumerate(blocks):
        for b in range(n):
            convs = 2 if depth == 18 else 3
            for c in range(1, convs + 1):
                keys.append(f"backbone.layer{s + 1}.{b}.conv{c}.weight")
                keys.extend(f"backbone.layer{s + 1}.{b}.bn{c}.{x}" for x in bn)
            if b == 0 and not (depth == 18 and s == 0):
                keys.append(f"backbone.layer{s + 1}.0.downsample.0.weight")
                keys.extend(f"backbone.layer{s + 1}.0.downsample.1.{x}" for x in bn)
    conv_module("decode_head.image_pool.1")
    conv_module("decode_head.aspp_modules.0")
    for i in (1, 2, 3):
        conv_module(f"decode_head.aspp_modules.{i}.depthwise_conv")
        conv_module(f"decode_head.aspp_modules.{i}.pointwise_conv")
    conv_module("decode_head.bottleneck")
    conv_module("decode_head.c1_bottleneck")
    for i in (0, 1):
        conv_module(f"decode_head.sep_bottleneck.{i}.depthwise_conv")
        conv_module(f"decode_head.sep_bottleneck.{i}.pointwise_conv")
    keys += ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]
    conv_module("decode_head.mlp.0")
    conv_module("decode_head.mlp.1")
    keys += ["decode_head.mlp.2.weight", "decode_head.mlp.2.bias"]
    conv_module("auxiliary_head.convs.0")
    keys += ["auxiliary_head.conv_seg.weight", "auxiliary_head.conv_seg.bias"]
    return keys


@pytest.mark.parametrize("arch,depth", [("r18", 18), ("r50", 50)])
def test_mmseg_named_state_dict_loads_key_for_key(arch, depth, tmp_path):
    from gpaco.models.mmseg import from_mmseg_state_dict, is_mmseg_state_dict

    model = build_seg_model(arch, 19, method="gpaco")
    own = model.state_dict()
    keys = _mmseg_key_list(depth)
    assert len(keys) == len(own)
    mapped_names = list(from_mmseg_state_dict({k: torch.zeros(1) for k in keys}))
    assert sorted(mapped_names) == sorted(own)  # every key has its place, none is missing
    # a checkpoint in mmseg's layout (``module.`` from DDP, tensors of the right shapes) loads strictly
    src = {k: own[n].clone().normal_() if own[n].is_floating_point() else own[n].clone()
           for k, n in zip(keys, mapped_names)}
    ckpt = {"meta": {"mmseg_version": "0.17.0"}, "state_dict": {f"module.{k}": v for k, v in src.items()}}
    from gpaco.checkpoint import unwrap_state_dict

    state = unwrap_state_dict(ckpt)
    assert is_mmseg_state_dict(state)
    model.load_state_dict(from_mmseg_state_dict(state), strict=True)
    assert torch.equal(model.encoder.stem[0].weight, src["backbone.stem.0.weight"])
    assert torch.equal(model.cls_seg[1].weight, src["decode_head.conv_seg.weight"])
    with pytest.raises(ValueError, match="has none of the prefixes"):
        from_mmseg_state_dict({"neck.lateral.weight": torch.zeros(1)})


def test_resnetv1c_output_stride_and_dilations():
    from gpaco.models.mmseg import ResNetV1c

    net = ResNetV1c(50)
    feats = net(torch.randn(2, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(256, 16, 16), (512, 8, 8), (1024, 8, 8), (2048, 8, 8)]
    # contract_dilation: each dilated stage's first block at half the dilation
    assert net.layer3[0].conv2.dilation == (1, 1) and net.layer3[1].conv2.dilation == (2, 2)
    assert net.layer4[0].conv2.dilation == (2, 2) and net.layer4[2].conv2.dilation == (4, 4)
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].downsample[0].stride == (2, 2)
    assert isinstance(net.layer3[0].downsample[0], torch.nn.Conv2d)  # plain shortcut, no avg-pool (V1d)


def test_smp_arch_for_users_models():
    model = build_seg_model("smp:deeplabv3plus:resnet18", 5, method="gpaco")
    out = model(torch.randn(2, 3, 48, 48), train_outputs=True)
    assert out["logits"].shape == (2, 5, 12, 12) and out["aux"].shape[1] == 5
    narrow = build_seg_model("smp:deeplabv3plus:resnet18:64", 5, method="ce")
    assert narrow.cls_seg[1].in_channels == 64
    with pytest.raises(ValueError, match="unknown segmentation arch 'smp:fpn:resnet18'"):
        build_seg_model("smp:fpn:resnet18", 5)
    with pytest.raises(ValueError, match="--encoder overrides the encoder of smp"):
        build_seg_model("r50", 5, encoder="resnet34")


def test_pad_to_multiple():
    x = torch.ones(1, 1, 5, 9)
    y = pad_to_multiple(x, 8)
    assert y.shape == (1, 1, 8, 16) and y[..., :5, :9].eq(1).all() and y[..., 5:, :].eq(0).all()


def test_load_encoder_weights_maps_timm_and_mmcv_names(tmp_path):
    import timm
    from safetensors.torch import save_file

    from gpaco.models.mmseg import ResNetV1c

    # open-mmlab's resnet50_v1c-style weights (stem.*, layer*.*, plus an ImageNet fc) into ResNetV1c
    src = ResNetV1c(18)
    state = {k: v.clone().normal_() if v.is_floating_point() else v for k, v in src.state_dict().items()}
    state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save({"state_dict": state}, tmp_path / "resnet18_v1c.pth")
    model = SegModel("r18", 3)
    report = load_encoder_weights(model, str(tmp_path / "resnet18_v1c.pth"), verbose=False)
    assert report["missing"] == 0 and report["unused"] == 2  # fc.weight, fc.bias
    assert torch.equal(model.encoder.stem[0].weight, state["stem.0.weight"])
    # timm names into an smp:tu-... encoder
    tsrc = timm.create_model("resnet18d", pretrained=False, num_classes=10)
    path = tmp_path / "resnet18d.safetensors"
    save_file({k: v.contiguous() for k, v in tsrc.state_dict().items()}, str(path))
    smp_model = SegModel("smp:deeplabv3plus:tu-resnet18d", 3)
    report = load_encoder_weights(smp_model, str(path), verbose=False)
    assert report["loaded"] > 50 and report["missing"] == 0 and report["unused"] == 2
    assert torch.equal(smp_model.encoder.model.conv1[0].weight, tsrc.conv1[0].weight)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from gpaco.data.demo_seg import build_demo_scenes

    root = tmp_path_factory.mktemp("demo_seg")
    build_demo_scenes(root, num_train=12, num_val=4, num_test=4, size=32)
    return str(root)


def test_demo_scenes_layout_and_long_tail(demo_root):
    from gpaco.data.seg_datasets import build_seg_dataset

    with open(os.path.join(demo_root, "meta.json")) as f:
        meta = json.load(f)
    assert meta["num_classes"] == 11 and meta["scenes"] == {"train": 12, "val": 4, "test": 4}
    ds = build_seg_dataset("demo", demo_root, "train", SegEvalTransform())
    img, label, _ = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8 and label.shape == (32, 32)
    assert set(label.unique().tolist()) <= set(range(11))
    assert meta["pixels"]["train"][10] > sum(meta["pixels"]["train"][:10])  # background dominates


def test_few_iterations_on_demo_scenes_lower_the_loss(demo_root):
    from gpaco.data.seg_datasets import build_seg_dataset
    from gpaco.data.seg_transforms import SegTrainTransform

    torch.manual_seed(0)
    ds = build_seg_dataset("demo", demo_root, "train", SegTrainTransform((32, 32), (32, 32), ratio_range=(1, 1),
                                                                         photometric=False))
    imgs, labels = map(torch.stack, zip(*[ds[i][:2] for i in range(4)]))
    model = build_seg_model("r18", 11, method="gpaco")
    crit = SegmentationLoss(11, paco=True, num_pixels=32)
    opt = build_seg_optimizer(model, name="sgd", lr=0.01, wd=5e-4)
    losses = []
    for it in range(8):
        loss, _ = crit(model(imgs, train_outputs=True), labels, generator=torch.Generator().manual_seed(it))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def _train_argv(root, out, *extra):
    return ["--dataset", "demo", "--data-root", root, "--arch", "r18", "--method", "gpaco", "--img-scale", "32", "32",
            "--crop-size", "32", "32", "--batch-size", "2", "--num-pixels", "16", "--workers", "0",
            "--print-freq", "1", "--eval-interval", "2", "--ckpt-interval", "2", "--test-split", "test",
            "--output-dir", str(out), "--resume", "auto", *extra]


@pytest.mark.slow
def test_checkpoint_round_trip_resume_and_eval(demo_root, tmp_path):
    """Train 4 iterations straight, and 2 + (preempted, resumed) 2: identical weights; the
    checkpoint loads weights-only and tools/eval_seg.py reproduces the final metrics."""
    from gpaco.segmentation import train as seg, evaluate as seg_eval
    from gpaco.checkpoint import load_checkpoint

    straight = seg.main(_train_argv(demo_root, tmp_path / "a", "--iters", "4"))
    first = seg.main(_train_argv(demo_root, tmp_path / "b", "--iters", "4", "--stop-after", "2"))
    assert first == {"stopped_at_iter": 2, "train_loss": first["train_loss"]}
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pth")["iter"] == 2
    resumed = seg.main(_train_argv(demo_root, tmp_path / "b", "--iters", "4"))
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pth")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pth")
    assert a["iter"] == b["iter"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed["miou"] == straight["miou"]
    assert (tmp_path / "a" / "best.pth").is_file() and (tmp_path / "a" / "metrics.json").is_file()
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["num_images"] == 4
    from gpaco.engine.logging import read_summary

    rows = read_summary(tmp_path / "b" / "summary.csv")  # the resumed run continued it: each iteration once
    assert [r["iter"] for r in rows] == ["1", "2", "3", "4"] and [bool(r["val_miou"]) for r in rows] == \
        [False, True, False, False]

    ev = seg_eval.main(["--checkpoint", str(tmp_path / "a" / "checkpoint.pth"), "--split", "test", "--workers", "0",
                        "--mode", "both", "--output-dir", str(tmp_path / "ev")])
    assert ev["ss"]["miou"] == pytest.approx(straight["miou"])
    assert ev["ms"]["num_images"] == 4 and ev["ms"]["flip"] is True
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(saved) >= {"ss", "ms", "checkpoint"}
    with pytest.raises(SystemExit, match=r"ev already holds results \(metrics.json of .*\); give another "
                                         r"--output-dir, or --overwrite to replace them"):
        seg_eval.main(["--checkpoint", str(tmp_path / "a" / "checkpoint.pth"), "--split", "test", "--workers", "0",
                       "--output-dir", str(tmp_path / "ev")])
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == saved
    table = seg_eval.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b")])["table"]
    assert "| background |" in table and "a IoU" in table and "b IoU" in table


def test_dry_run_writes_nothing(tmp_path):
    from gpaco.segmentation import train as seg

    res = seg.main(["--dataset", "cityscapes", "--data-root", str(tmp_path / "absent"), "--arch", "r18",
                    "--output-dir", str(tmp_path / "out"), "--dry-run", "--dry-run-crop", "32"])
    assert res["dry_run"] is True and math.isfinite(res["train_loss"]) and "paco" in res
    assert not (tmp_path / "out").exists()


def test_synthetic_dataset_is_deterministic():
    ds = SyntheticSegDataset(2, 5, (16, 16), transform=SegEvalTransform())
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _torchrun(script, argv, nproc):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc_per_node={nproc}",
           "--master_addr", "127.0.0.1", "--master_port", str(port), os.path.join(root, script), *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc.stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_train_and_evaluate_every_image_once(demo_root, tmp_path):
    """DDP training on 2 CPU processes (plain BN: SyncBN needs CUDA), then evaluation on 2
    processes gives exactly the single-process metrics (each image counted once). With
    --aux-weight 0 no aux head is built (one that gets no gradient stopped DDP at iteration 2)."""
    out = tmp_path / "run"
    stdout = _torchrun("tools/train_seg.py", _train_argv(demo_root, out, "--iters", "3", "--batch-size", "4",
                                                         "--aux-weight", "0"), 2)
    assert "processes 2 on cpu, global batch 4 = 2 per process" in stdout and "SyncBatchNorm needs CUDA" in stdout
    from gpaco.checkpoint import load_checkpoint

    saved = load_checkpoint(str(out / "checkpoint.pth"))
    assert saved["iter"] == 3 and not any(k.startswith("aux_head.") for k in saved["model"])
    assert saved["model_config"]["options"]["aux"] is False
    ckpt = str(out / "checkpoint.pth")
    ev = ["--checkpoint", ckpt, "--split", "test", "--workers", "0", "--mode", "both"]
    _torchrun("tools/eval_seg.py", ev + ["--output-dir", str(tmp_path / "ev2")], 2)
    from gpaco.segmentation import evaluate as seg_eval

    one = seg_eval.main(ev + ["--output-dir", str(tmp_path / "ev1")])
    two = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    for mode in ("ss", "ms"):
        assert two[mode]["num_pixels"] == one[mode]["num_pixels"] == 4 * 32 * 32
        assert two[mode]["miou"] == pytest.approx(one[mode]["miou"], abs=1e-9)
        assert two[mode]["aacc"] == pytest.approx(one[mode]["aacc"], abs=1e-9)


def test_convert_checkpoint_tool_reads_mmseg_layout(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from gpaco.checkpoint import load_checkpoint

    model = build_seg_model("r18", 19, method="gpaco")
    keys = _mmseg_key_list(18)
    from gpaco.models.mmseg import from_mmseg_state_dict

    names = list(from_mmseg_state_dict({k: torch.zeros(1) for k in keys}))
    own = model.state_dict()
    torch.save({"meta": {}, "state_dict": {k: own[n] for k, n in zip(keys, names)}}, tmp_path / "mmseg.pth")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "tools" / "convert_checkpoint.py"), str(tmp_path / "mmseg.pth"),
                           str(tmp_path / "ours.pth")], capture_output=True, text=True, cwd=root,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert "mmseg gpaco r18, 19 classes" in proc.stdout
    ours = load_checkpoint(tmp_path / "ours.pth")
    assert ours["arch"] == "r18" and ours["method"] == "gpaco" and set(ours["model"]) == set(own)


def test_lovasz_softmax_hand_computed():
    from gpaco.losses.lovasz import lovasz_grad, lovasz_softmax

    # 2 pixels, labels [0, 1], probabilities [0.8, 0.2] and [0.3, 0.7].
    # class 0: errors sorted [0.3 (pixel 1, bg), 0.2 (pixel 0, fg)], gt [0, 1]: Jaccard along the
    #   order 1 - [1/2, 0/2] = [0.5, 1.0] -> gradient [0.5, 0.5] -> 0.3*0.5 + 0.2*0.5 = 0.25
    # class 1: errors sorted [0.3 (pixel 1, fg), 0.2 (pixel 0, bg)], gt [1, 0]: Jaccard [1, 1]
    #   -> gradient [1, 0] -> 0.3;   mean over the two present classes: 0.275
    assert torch.allclose(lovasz_grad(torch.tensor([0.0, 1.0])), torch.tensor([0.5, 0.5]))
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    logits = probs.log().T.reshape(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    assert lovasz_softmax(logits, labels).item() == pytest.approx(0.275, abs=1e-6)
    # an ignored pixel changes nothing; a perfect prediction costs 0
    logits3 = torch.cat([logits, torch.zeros(1, 2, 1, 1)], dim=3)
    assert lovasz_softmax(logits3, torch.tensor([[[0, 1, 255]]])).item() == pytest.approx(0.275, abs=1e-6)
    sure = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])
    assert lovasz_softmax(sure, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_segmentation_loss_adds_lovasz_term():
    torch.manual_seed(0)
    out = {"logits": torch.randn(2, 3, 4, 4), "padded_size": (8, 8)}
    labels = torch.randint(0, 3, (2, 8, 8))
    base, _ = SegmentationLoss(3, paco=False, aux_weight=0)(out, labels)
    total, parts = SegmentationLoss(3, paco=False, aux_weight=0, lovasz_weight=1.0)(out, labels)
    assert set(parts) == {"ce", "lovasz"} and total.item() == pytest.approx(base.item() + parts["lovasz"].item())


def test_lr_scale_groups_keep_the_no_decay_split():
    """A method's per-prefix LR factors on the segmentation optimizer: one group per (decay, prefix)."""
    from gpaco.engine.schedule import apply_lr

    model = build_seg_model("r18", 4, method="ce")
    opt = build_seg_optimizer(model, name="adamw", lr=1e-3, wd=0.01, no_decay_keys=("norm", "bn"),
                              lr_scales={"decoder.": 0.1})
    by_scale = {(g["lr_scale"], g["weight_decay"]) for g in opt.param_groups}
    assert by_scale >= {(0.1, 0.01), (1.0, 0.01), (1.0, 0.0)}
    apply_lr(opt, 2e-3)
    assert sorted({g["lr"] for g in opt.param_groups}) == [pytest.approx(2e-4), 2e-3]
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        assert all(names[id(p)].startswith("decoder.") == (g["lr_scale"] == 0.1) for p in g["params"])
    plain = build_seg_optimizer(model, name="sgd", lr=0.01, wd=5e-4)
    assert len(plain.param_groups) == 1 and "lr_scale" not in plain.param_groups[0]  # the recipes' optimizer


@pytest.mark.slow
def test_segmentation_accumulates_and_clips_in_the_shared_loop(demo_root, tmp_path, monkeypatch):
    """--accum-iter 2: one optimizer step per two iterations (each one of --iters), with the
    gradient the mean of the two; --clip-grad caps its norm. Counted on the optimizer."""
    from gpaco.segmentation import train as seg

    steps, norms = [], []
    real_step = torch.optim.AdamW.step

    def counting_step(self, *a, **k):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads]))))
        steps.append(1)
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    result = seg.main(_train_argv(demo_root, tmp_path / "acc", "--iters", "4", "--accum-iter", "2",
                                  "--clip-grad", "0.5", "--optimizer", "adamw", "--lr", "1e-3"))
    assert len(steps) == 2 and all(n <= 0.5 + 1e-4 for n in norms), norms
    assert result["iter"] == 4 and result["train_loss"] > 0
    with pytest.raises(SystemExit, match="--clip-grad is the maximum gradient norm and must be > 0"):
        seg.parse_train_args(["--clip-grad", "0"])
    with pytest.raises(SystemExit, match="--accum-iter must be > 0"):
        seg.parse_train_args(["--accum-iter", "0"])
    with pytest.raises(SystemExit, match=r"--ckpt-interval 3 must be a multiple of --accum-iter 2"):
        seg.parse_train_args(["--iters", "8", "--accum-iter", "2", "--ckpt-interval", "3"])
    with pytest.raises(SystemExit, match=r"--iters 7 must be a multiple of --accum-iter 2"):
        seg.parse_train_args(["--iters", "7", "--accum-iter", "2"])
    defaults = seg.parse_train_args(["--iters", "50", "--accum-iter", "2"])
    assert (defaults.eval_interval, defaults.ckpt_interval) == (4, 4)  # 50 // 10 = 5, down to a step


def test_deterministic_segmentation_warns_where_cuda_has_no_deterministic_kernel(tmp_path):
    """--deterministic: classification raises on an op without a deterministic kernel (all of its
    ops have one); segmentation's bilinear upsampling / nll_loss2d / adaptive pooling backward
    have none on CUDA, so segmentation turns deterministic algorithms on in warn-only mode."""
    from gpaco.segmentation import train as seg

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        seg.main(["--dry-run", "--deterministic", "--data-root", str(tmp_path / "absent"), "--arch", "r18",
                  "--workers", "0"])
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
