"""--arch wrn34_10 / wrn28_10: the WideResNet of adversarial training (TRADES / AWP / DKL).

The original's layout is written out here by hand (key names, shapes, a functional forward),
independently of gpaco.models.wideresnet, and the model is checked against it: parameter
count, forward, initialisation, and the loading of a DataParallel checkpoint.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as F

from gpaco.checkpoint import CheckpointError
from gpaco.classification.args import check_arch, check_layer_decay_arch
from gpaco.engine.args import FlagError
from gpaco.methods.rebuild import build_model_from_checkpoint
from gpaco.models import (
    WideResNet, build_classifier, create_backbone, list_archs, load_original_checkpoint, to_original_state_dict,
)
from gpaco.models.backbones import known_arch
from gpaco.models.convert import read_checkpoint

# DKL's WideResNet34_10 (jiequancui/DKL @ 4f417fc, DKLv2/Adv-training-dkl/models/wideresnet.py:65-129, the model
# of every adversarial-training script) builds conv1, block1..3, bn1 and fc, and no `sub_block1`. Counted from
# that file's modules (a DataParallel copy of the original cannot run here): 46,160,474 parameters with 10
# classes. The TRADES variant adds `sub_block1`, a second block1 stage forward never uses; TRADES-derived code
# states its count as 48,262,586 (`dense_params` of a WRN-34-10 pruning script), which the formula below
# reproduces as ours + one block1 stage: a cross-check of the formula against a number counted elsewhere.
DKL_WRN34_10_PARAMS = 46_160_474
TRADES_WRN34_10_PARAMS_WITH_SUB_BLOCK1 = 48_262_586


# ----------------------------------------------------------------------------- the original, by hand

def _widths(widen: int):
    return [16, 16 * widen, 32 * widen, 64 * widen]


def _stage_params(n: int, c_in: int, c_out: int) -> int:
    """n pre-activation blocks: bn1(c_in) + conv3x3(c_in->c_out) + bn2 + conv3x3 (+ 1x1 shortcut where
    the width changes) for the first, then n - 1 blocks of c_out -> c_out (a BN has weight + bias)."""
    first = 2 * c_in + 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + (c_in * c_out if c_in != c_out else 0)
    return first + (n - 1) * (2 * c_out + 9 * c_out * c_out + 2 * c_out + 9 * c_out * c_out)


def hand_count(depth: int, widen: int, num_classes: int) -> int:
    """conv1 (3x3, 3 -> 16) + three stages + final BN + Linear(64k, C) with bias."""
    n, w = (depth - 4) // 6, _widths(widen)
    return (9 * 3 * w[0] + sum(_stage_params(n, a, b) for a, b in zip(w[:-1], w[1:]))
            + 2 * w[3] + w[3] * num_classes + num_classes)


def original_shapes(depth: int, widen: int, num_classes: int) -> Dict[str, Tuple[int, ...]]:
    """Every state-dict key of the original's WideResNet (in module order) -> shape."""
    n, w = (depth - 4) // 6, _widths(widen)
    keys: Dict[str, Tuple[int, ...]] = OrderedDict()

    def bn(name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}.{p}"] = (c,)
        keys[f"{name}.num_batches_tracked"] = ()

    keys["conv1.weight"] = (w[0], 3, 3, 3)
    for s in range(3):
        for i in range(n):
            c_in, c_out = (w[s] if i == 0 else w[s + 1]), w[s + 1]
            pre = f"block{s + 1}.layer.{i}"
            bn(f"{pre}.bn1", c_in)
            keys[f"{pre}.conv1.weight"] = (c_out, c_in, 3, 3)
            bn(f"{pre}.bn2", c_out)
            keys[f"{pre}.conv2.weight"] = (c_out, c_out, 3, 3)
            if c_in != c_out:
                keys[f"{pre}.convShortcut.weight"] = (c_out, c_in, 1, 1)
    bn("bn1", w[3])
    keys["fc.weight"] = (num_classes, w[3])
    keys["fc.bias"] = (num_classes,)
    return keys


def original_state_dict(depth: int, widen: int, num_classes: int, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """A trained-looking state dict in the original's names (random weights, BN statistics away from 0/1)."""
    g = torch.Generator().manual_seed(seed)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, shape in original_shapes(depth, widen, num_classes).items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(200 * 391, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith((".conv1.weight", ".conv2.weight", "convShortcut.weight")) or k == "conv1.weight":
            out[k] = torch.randn(shape, generator=g) * math.sqrt(2.0 / (shape[0] * shape[2] * shape[3]))
        else:
            out[k] = torch.randn(shape, generator=g) * 0.1
    return out


def original_forward(state: Dict[str, torch.Tensor], x: torch.Tensor, depth: int, training: bool) -> torch.Tensor:
    """The original's forward, functionally: pre-activation blocks whose shortcut is the raw input when
    the width is kept and the 1x1 conv of the *activated* input when it changes; strides 1, 2, 2;
    relu(bn1) > avg_pool2d(8) > fc."""
    n = (depth - 4) // 6

    def bn(name, t):
        return F.batch_norm(t, state[f"{name}.running_mean"].clone(), state[f"{name}.running_var"].clone(),
                            state[f"{name}.weight"], state[f"{name}.bias"], training=training)

    out = F.conv2d(x, state["conv1.weight"], padding=1)
    for s in range(3):
        for i in range(n):
            pre, stride = f"block{s + 1}.layer.{i}", (1 if s == 0 else 2) if i == 0 else 1
            act = F.relu(bn(f"{pre}.bn1", out))
            y = F.conv2d(act, state[f"{pre}.conv1.weight"], stride=stride, padding=1)
            y = F.conv2d(F.relu(bn(f"{pre}.bn2", y)), state[f"{pre}.conv2.weight"], padding=1)
            shortcut = f"{pre}.convShortcut.weight"
            out = (F.conv2d(act, state[shortcut], stride=stride) if shortcut in state else out) + y
    out = F.avg_pool2d(F.relu(bn("bn1", out)), 8).flatten(1)
    return F.linear(out, state["fc.weight"], state["fc.bias"])


# ----------------------------------------------------------------------------- a small WRN: the formula, the forward

@pytest.mark.parametrize("depth,widen,classes", [(10, 2, 10), (16, 1, 7), (16, 4, 100)])
def test_hand_count_is_the_sum_of_the_original_keys_and_our_parameters(depth, widen, classes):
    shapes = original_shapes(depth, widen, classes)
    learnable = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var",
                                                                                "num_batches_tracked")))
    net = WideResNet(depth, widen, num_classes=classes)
    assert hand_count(depth, widen, classes) == learnable == sum(p.numel() for p in net.parameters())
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes  # names, order-free


@pytest.mark.parametrize("training", [False, True])
def test_forward_is_the_originals(training):
    depth, widen, classes = 10, 2, 10
    state = original_state_dict(depth, widen, classes)
    net = WideResNet(depth, widen, num_classes=classes)
    net.load_state_dict(state, strict=True)
    net.train(training)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))  # pixels in [0, 1], no normalisation
    with torch.no_grad():
        torch.testing.assert_close(net(x), original_forward(state, x, depth, training), rtol=1e-5, atol=1e-5)


def test_bad_depth_and_unknown_arch():
    with pytest.raises(ValueError, match="depth 6n\\+4"):
        WideResNet(33, 10)
    with pytest.raises(ValueError, match="unknown arch 'wrn40_10'"):
        create_backbone("wrn40_10")


# ----------------------------------------------------------------------------- the real WRN-34-10 (built once)

@pytest.fixture(scope="module")
def wrn34_10():
    torch.manual_seed(0)
    return build_classifier("wrn34_10", 10)


def test_wrn34_10_parameter_count(wrn34_10):
    ours = sum(p.numel() for p in wrn34_10.parameters())
    assert hand_count(34, 10, 10) == ours == DKL_WRN34_10_PARAMS
    sub_block1 = _stage_params(5, 16, 160)  # a second block1 stage
    assert ours + sub_block1 == TRADES_WRN34_10_PARAMS_WITH_SUB_BLOCK1
    assert not any("sub_block1" in k for k in wrn34_10.state_dict())
    assert wrn34_10.backbone.num_features == wrn34_10.feat_dim == 640


def test_wrn34_10_forward_shape(wrn34_10):
    wrn34_10.eval()
    with torch.no_grad():
        assert wrn34_10(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        assert wrn34_10.backbone(torch.rand(2, 3, 32, 32)).shape == (2, 640)


def test_wrn34_10_init(wrn34_10):
    """conv ~ N(0, 2 / (k*k*out)), BN weight 1 / bias 0, Linear bias 0 (weight: PyTorch's default)."""
    convs = [m for m in wrn34_10.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 5 * 2 + 3  # stem, two per block, three shortcuts
    for m in convs:
        w = m.weight.detach()
        k = m.kernel_size[0] * m.kernel_size[1]
        expected, samples = math.sqrt(2.0 / (k * m.out_channels)), w.numel()
        # the sample std of N Gaussians has relative standard error 1/sqrt(2N): 6 of them
        assert abs(w.std().item() / expected - 1) < 6 / math.sqrt(2 * samples), (m, w.std().item(), expected)
        assert abs(w.mean().item()) < 6 * expected / math.sqrt(samples)
    bns = [m for m in wrn34_10.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3 * 5 * 2 + 1
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    fc = wrn34_10.fc
    assert torch.all(fc.bias == 0)
    bound = 1 / math.sqrt(640)  # nn.Linear's default kaiming-uniform bound
    assert fc.weight.abs().max() <= bound and fc.weight.std() > bound / 3


def test_dataparallel_checkpoint_round_trips(wrn34_10, tmp_path):
    """`torch.save(model.state_dict())` of the original's nn.DataParallel model (keys `module.<name>`)
    loads strictly into build_classifier("wrn34_10", 10) and maps back to the same names and tensors;
    the post-hoc EMA ("SWA") file, whose num_batches_tracked are floats, loads too."""
    wrn34_10 = copy.deepcopy(wrn34_10)  # the module's model keeps its initial weights
    state = original_state_dict(34, 10, 10, seed=1)
    ddp = OrderedDict((f"module.{k}", v) for k, v in state.items())
    load_original_checkpoint(wrn34_10, ddp, "wrn34_10")
    back = to_original_state_dict(wrn34_10.state_dict(), "wrn34_10")
    assert list(back) == list(state)
    for k, v in state.items():
        assert torch.equal(back[k], v), k
    assert torch.equal(wrn34_10.backbone.block3.layer[4].conv2.weight, state["block3.layer.4.conv2.weight"])
    shortcut = wrn34_10.backbone.block2.layer[0].convShortcut.weight
    assert torch.equal(shortcut, state["block2.layer.0.convShortcut.weight"])

    swa = OrderedDict((k, v.float() if k.endswith("num_batches_tracked") else v) for k, v in ddp.items())
    path = tmp_path / "ours-model-epoch-SWA0.91200.pt"
    torch.save(swa, path)
    load_original_checkpoint(wrn34_10, path, "wrn34_10")
    assert int(wrn34_10.backbone.bn1.num_batches_tracked) == 200 * 391
    assert torch.equal(wrn34_10.fc.weight, state["fc.weight"])

    # tools/eval.py --checkpoint FILE --method ce --arch wrn34_10 reads it as a plain classifier
    model, report = build_model_from_checkpoint(read_checkpoint(str(path)), method="ce", arch="wrn34_10")
    assert report.layout == "classifier" and report.missing == [] and report.unused == []
    assert torch.equal(model.backbone.block1.layer[0].convShortcut.weight, state["block1.layer.0.convShortcut.weight"])
    assert torch.equal(model.fc.bias, state["fc.bias"])


def test_checkpoint_of_another_network_is_named(wrn34_10):
    trades = original_state_dict(34, 10, 10)
    trades.update({f"sub_block1.{k[len('block1.'):]}": v for k, v in list(trades.items()) if k.startswith("block1.")})
    with pytest.raises(CheckpointError, match=r"unexpected keys \['backbone.sub_block1.layer.0.bn1.weight'"):
        load_original_checkpoint(wrn34_10, trades, "wrn34_10")
    with pytest.raises(CheckpointError, match=r"shape mismatches \['fc.weight: file \(100, 640\)"):
        load_original_checkpoint(wrn34_10, original_state_dict(34, 10, 100), "wrn34_10")


# ----------------------------------------------------------------------------- registration

@pytest.mark.parametrize("arch,dim", [("wrn34_10", 640), ("wrn28_10", 640)])
def test_arch_registration(arch, dim):
    assert arch in list_archs() and known_arch(arch)
    check_arch(arch)  # --arch accepts it
    with pytest.raises(FlagError, match="--layer-decay is for ViT archs"):
        check_layer_decay_arch(arch)
    with pytest.raises(ValueError, match="drop_path_rate is not supported"):
        create_backbone(arch, drop_path_rate=0.1)
    with pytest.raises(RuntimeError, match="no hub weights"):
        create_backbone(arch, pretrained=True)


def test_wrn28_10_backbone():
    """create_backbone gives the trunk without its classifier: [B, 3, H, W] -> [B, 640]."""
    trunk, dim = create_backbone("wrn28_10")
    assert dim == trunk.num_features == 640
    assert not any(k.startswith("fc.") for k in trunk.state_dict())
    head = dim * 10 + 10
    assert sum(p.numel() for p in trunk.parameters()) + head == hand_count(28, 10, 10) == 36_479_194
    assert {k for k in original_shapes(28, 10, 10) if not k.startswith("fc.")} == set(trunk.state_dict())
