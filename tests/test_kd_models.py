"""The knowledge-distillation zoo (gpaco.models.kd_zoo): every network's output shape, its
parameter count against a count by hand from the architecture, and the original (mdistiller /
torchvision) checkpoint key names loading strictly, into the original's layout and into gpaco's
Classifier."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, Tuple

import pytest
import torch

from gpaco.checkpoint import CheckpointError
from gpaco.classification.args import check_arch
from gpaco.methods.rebuild import build_model
from gpaco.models import Classifier, build_classifier, create_backbone, list_archs, load_backbone_weights
from gpaco.models.backbones import known_arch
from gpaco.models.kd_zoo import (
    KD_ARCHS,
    MDISTILLER_CIFAR,
    MDISTILLER_IMAGENET,
    build_kd_net,
    kd_backbone,
    load_original_checkpoint,
    to_classifier_state_dict,
    to_original_state_dict,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

C = 100  # CIFAR-100
Shapes = Dict[str, Tuple[int, ...]]


# ------------------------------------------------------------------ counting by hand, naming by hand
# Parameters: conv k*k*(cin/groups)*cout (+ cout with a bias), BN 2c (weight, bias), Linear i*o + o.
# Key names: the same walk, recording each tensor's name and shape (BN also has running_mean,
# running_var [c] and num_batches_tracked [] buffers, which are not parameters).

class Net:
    """Accumulates (key -> shape) while a spec function walks an architecture."""

    def __init__(self) -> None:
        self.keys: Shapes = OrderedDict()
        self.params = 0

    def conv(self, name: str, k: int, cin: int, cout: int, groups: int = 1, bias: bool = False) -> None:
        self.keys[f"{name}.weight"] = (cout, cin // groups, k, k)
        self.params += k * k * (cin // groups) * cout
        if bias:
            self.keys[f"{name}.bias"] = (cout,)
            self.params += cout

    def bn(self, name: str, c: int) -> None:
        for t in ("weight", "bias", "running_mean", "running_var"):
            self.keys[f"{name}.{t}"] = (c,)
        self.keys[f"{name}.num_batches_tracked"] = ()
        self.params += 2 * c

    def linear(self, name: str, i: int, o: int) -> None:
        self.keys[f"{name}.weight"] = (o, i)
        self.keys[f"{name}.bias"] = (o,)
        self.params += i * o + o


def spec_resnet(depth: int, widths, classes: int = C) -> Net:
    """mdistiller resnet<depth>: stem, 3 stages of (depth-2)/6 BasicBlocks (strides 1, 2, 2); a
    1x1 conv + BN `downsample` where the stride or the width changes; `fc`."""
    n, net = (depth - 2) // 6, Net()
    net.conv("conv1", 3, 3, widths[0]), net.bn("bn1", widths[0])
    cin = widths[0]
    for s, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            net.conv(f"{p}.conv1", 3, cin, planes), net.bn(f"{p}.bn1", planes)
            net.conv(f"{p}.conv2", 3, planes, planes), net.bn(f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or cin != planes):
                net.conv(f"{p}.downsample.0", 1, cin, planes), net.bn(f"{p}.downsample.1", planes)
            cin = planes
    net.linear("fc", cin, classes)
    return net


def spec_wrn(depth: int, k: int, classes: int = C) -> Net:
    """WRN-depth-k: conv1 3->16; block1..3 of (depth-4)/6 pre-activation blocks (bn1 conv1 bn2 conv2,
    1x1 convShortcut where the width changes); final bn1; fc."""
    n, w, net = (depth - 4) // 6, (16, 16 * k, 32 * k, 64 * k), Net()
    net.conv("conv1", 3, 3, 16)
    for s in (1, 2, 3):
        for b in range(n):
            cin, cout, p = (w[s - 1] if b == 0 else w[s]), w[s], f"block{s}.layer.{b}"
            net.bn(f"{p}.bn1", cin), net.conv(f"{p}.conv1", 3, cin, cout)
            net.bn(f"{p}.bn2", cout), net.conv(f"{p}.conv2", 3, cout, cout)
            if cin != cout:
                net.conv(f"{p}.convShortcut", 1, cin, cout)
    net.bn("bn1", w[3]), net.linear("fc", w[3], classes)
    return net


def spec_vgg(cfg, classes: int = C) -> Net:
    """VGG-BN: block i = [conv3x3 with bias (index 3j), BN (3j+1), ReLU] per width; classifier 512 -> C."""
    net, cin = Net(), 3
    for i, widths in enumerate(cfg):
        for j, wd in enumerate(widths):
            net.conv(f"block{i}.{3 * j}", 3, cin, wd, bias=True), net.bn(f"block{i}.{3 * j + 1}", wd)
            cin = wd
    net.linear("classifier", 512, classes)
    return net


def spec_mobilenetv2(classes: int = C) -> Net:
    """mobile_half: T 6, width 0.5. Stem 3x3 s2 3->16; inverted residuals (1x1 expand -> 3x3 dw ->
    1x1 project, each + BN; the expand conv exists for t=1 too); conv2 1x1 160->1280; classifier.0."""
    net = Net()
    net.conv("conv1.0", 3, 3, 16), net.bn("conv1.1", 16)
    setting = [(1, 8, 1), (6, 12, 2), (6, 16, 3), (6, 32, 4), (6, 48, 3), (6, 80, 3), (6, 160, 1)]  # t, c*0.5, n
    cin = 16
    for s, (t, c, n) in enumerate(setting):
        for b in range(n):
            h, p = cin * t, f"blocks.{s}.{b}.conv"
            net.conv(f"{p}.0", 1, cin, h), net.bn(f"{p}.1", h)
            net.conv(f"{p}.3", 3, h, h, groups=h), net.bn(f"{p}.4", h)
            net.conv(f"{p}.6", 1, h, c), net.bn(f"{p}.7", c)
            cin = c
    net.conv("conv2.0", 1, 160, 1280), net.bn("conv2.1", 1280)
    net.linear("classifier.0", 1280, classes)
    return net


def spec_shufflev1(classes: int = C) -> Net:
    """ShuffleV1 (groups 3, 240/480/960, blocks 4/8/4): stem 1x1 3->24; each stage's first block
    outputs planes - cin channels (the avg-pooled input is concatenated), mid = out/4, conv1 has
    1 group on the 24-channel stem, conv2 is depthwise, conv3 has 3 groups; linear 960 -> C."""
    net = Net()
    net.conv("conv1", 1, 3, 24), net.bn("bn1", 24)
    cin = 24
    for s, (planes, n) in enumerate(zip((240, 480, 960), (4, 8, 4)), start=1):
        for b in range(n):
            out = planes - cin if b == 0 else planes
            mid, p = out // 4, f"layer{s}.{b}"
            net.conv(f"{p}.conv1", 1, cin, mid, groups=1 if cin == 24 else 3), net.bn(f"{p}.bn1", mid)
            net.conv(f"{p}.conv2", 3, mid, mid, groups=mid), net.bn(f"{p}.bn2", mid)
            net.conv(f"{p}.conv3", 1, mid, out, groups=3), net.bn(f"{p}.bn3", out)
            cin = planes
    net.linear("linear", 960, classes)
    return net


def spec_shufflev2(classes: int = C) -> Net:
    """ShuffleV2 x1 (116/232/464, blocks 3/7/3): stem 1x1 3->24; per stage a down unit (left dw3x3 s2 +
    1x1 to c/2; right 1x1 to c/2 + dw3x3 s2 + 1x1) then n units on c/2 channels (1x1, dw3x3, 1x1);
    conv2 1x1 464->1024; linear."""
    net = Net()
    net.conv("conv1", 1, 3, 24), net.bn("bn1", 24)
    cin = 24
    for s, (c, n) in enumerate(zip((116, 232, 464), (3, 7, 3)), start=1):
        m, p = c // 2, f"layer{s}.0"
        net.conv(f"{p}.conv1", 3, cin, cin, groups=cin), net.bn(f"{p}.bn1", cin)
        net.conv(f"{p}.conv2", 1, cin, m), net.bn(f"{p}.bn2", m)
        net.conv(f"{p}.conv3", 1, cin, m), net.bn(f"{p}.bn3", m)
        net.conv(f"{p}.conv4", 3, m, m, groups=m), net.bn(f"{p}.bn4", m)
        net.conv(f"{p}.conv5", 1, m, m), net.bn(f"{p}.bn5", m)
        for b in range(1, n + 1):
            p = f"layer{s}.{b}"
            net.conv(f"{p}.conv1", 1, m, m), net.bn(f"{p}.bn1", m)
            net.conv(f"{p}.conv2", 3, m, m, groups=m), net.bn(f"{p}.bn2", m)
            net.conv(f"{p}.conv3", 1, m, m), net.bn(f"{p}.bn3", m)
        cin = c
    net.conv("conv2", 1, 464, 1024), net.bn("bn2", 1024)
    net.linear("linear", 1024, classes)
    return net


def spec_bottleneck_resnet(layers, stem: str, head: str, shortcut: str, classes: int) -> Net:
    """Bottleneck ResNet (widths 64/128/256/512, x4 out): 1x1 - 3x3 - 1x1, each + BN; a 1x1 conv +
    BN shortcut on the first block of each stage. ``stem``: "cifar" 3x3 conv, "imagenet" 7x7."""
    net = Net()
    net.conv("conv1", 3 if stem == "cifar" else 7, 3, 64), net.bn("bn1", 64)
    cin = 64
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            net.conv(f"{p}.conv1", 1, cin, planes), net.bn(f"{p}.bn1", planes)
            net.conv(f"{p}.conv2", 3, planes, planes), net.bn(f"{p}.bn2", planes)
            net.conv(f"{p}.conv3", 1, planes, 4 * planes), net.bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                net.conv(f"{p}.{shortcut}.0", 1, cin, 4 * planes), net.bn(f"{p}.{shortcut}.1", 4 * planes)
            cin = 4 * planes
    net.linear(head, 2048, classes)
    return net


def spec_basic_resnet_imagenet(layers, classes: int = 1000) -> Net:
    """torchvision ResNet-18/34: 7x7 stem, BasicBlocks 64/128/256/512, 1x1 conv + BN downsample
    on the first block of stages 2-4; fc."""
    net = Net()
    net.conv("conv1", 7, 3, 64), net.bn("bn1", 64)
    cin = 64
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            net.conv(f"{p}.conv1", 3, cin, planes), net.bn(f"{p}.bn1", planes)
            net.conv(f"{p}.conv2", 3, planes, planes), net.bn(f"{p}.bn2", planes)
            if b == 0 and s > 1:
                net.conv(f"{p}.downsample.0", 1, cin, planes), net.bn(f"{p}.downsample.1", planes)
            cin = planes
    net.linear("fc", 512, classes)
    return net


def spec_mobilenetv1(classes: int = 1000) -> Net:
    """model.0: 3x3 s2 3->32 + BN; model.1..13: 3x3 depthwise + BN, 1x1 + BN; fc 1024 -> C."""
    net = Net()
    net.conv("model.0.0", 3, 3, 32), net.bn("model.0.1", 32)
    chans = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    for u in range(1, 14):
        i, o = chans[u - 1], chans[u]
        net.conv(f"model.{u}.0", 3, i, i, groups=i), net.bn(f"model.{u}.1", i)
        net.conv(f"model.{u}.3", 1, i, o), net.bn(f"model.{u}.4", o)
    net.linear("fc", 1024, classes)
    return net


X4, PLAIN = (32, 64, 128, 256), (16, 16, 32, 64)
SPECS = {
    "kd_resnet8x4": lambda: spec_resnet(8, X4),
    "kd_resnet32x4": lambda: spec_resnet(32, X4),
    "kd_resnet20": lambda: spec_resnet(20, PLAIN),
    "kd_resnet32": lambda: spec_resnet(32, PLAIN),
    "kd_resnet56": lambda: spec_resnet(56, PLAIN),
    "kd_resnet110": lambda: spec_resnet(110, PLAIN),
    "kd_wrn_16_2": lambda: spec_wrn(16, 2),
    "kd_wrn_40_1": lambda: spec_wrn(40, 1),
    "kd_wrn_40_2": lambda: spec_wrn(40, 2),
    "kd_vgg8": lambda: spec_vgg([[64], [128], [256], [512], [512]]),
    "kd_vgg13": lambda: spec_vgg([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]),
    "kd_mobilenetv2": spec_mobilenetv2,
    "kd_shufflev1": spec_shufflev1,
    "kd_shufflev2": spec_shufflev2,
    "kd_resnet50": lambda: spec_bottleneck_resnet((3, 4, 6, 3), "cifar", "linear", "shortcut", C),
    "kd_mobilenetv1": spec_mobilenetv1,
}

# The hand counts above, written out (100 classes; MobileNetV1 1000): the sizes quoted for these
# networks in the distillation literature, e.g. resnet8x4 1.23M, wrn_40_2 2.26M, ShuffleV1 0.95M.
PARAMS = {
    "kd_resnet8x4": 1_233_540, "kd_resnet32x4": 7_433_860, "kd_resnet20": 278_324, "kd_resnet32": 472_756,
    "kd_resnet56": 861_620, "kd_resnet110": 1_736_564, "kd_wrn_16_2": 703_284, "kd_wrn_40_1": 569_780,
    "kd_wrn_40_2": 2_255_156, "kd_vgg8": 3_965_028, "kd_vgg13": 9_462_180, "kd_mobilenetv2": 812_836,
    "kd_shufflev1": 949_258, "kd_shufflev2": 1_355_528, "kd_resnet50": 23_705_252, "kd_mobilenetv1": 4_231_976,
}

# Key names read off mdistiller's model definitions (models/cifar/*.py, models/imagenet/mobilenetv1.py).
ORIGINAL_KEYS = {
    "kd_resnet8x4": ["conv1.weight", "layer1.0.downsample.0.weight", "layer3.0.downsample.1.running_var",
                     "fc.weight"],
    "kd_resnet110": ["layer1.17.conv2.weight", "layer2.0.downsample.1.num_batches_tracked", "fc.bias"],
    "kd_wrn_40_1": ["block2.layer.0.convShortcut.weight", "block3.layer.5.bn2.weight", "bn1.running_mean"],
    "kd_wrn_40_2": ["block1.layer.0.convShortcut.weight", "block1.layer.1.bn1.weight", "fc.weight"],
    "kd_vgg13": ["block0.0.bias", "block0.4.running_mean", "block4.3.weight", "classifier.weight"],
    "kd_mobilenetv2": ["conv1.0.weight", "blocks.0.0.conv.0.weight", "blocks.6.0.conv.7.bias", "conv2.1.weight",
                       "classifier.0.weight"],
    "kd_shufflev1": ["layer1.0.conv1.weight", "layer3.3.bn3.bias", "linear.weight"],
    "kd_shufflev2": ["layer1.0.conv5.weight", "layer2.7.bn3.weight", "conv2.weight", "bn2.bias", "linear.bias"],
    "kd_resnet50": ["layer1.0.shortcut.0.weight", "layer4.2.conv3.weight", "linear.weight"],
    "kd_mobilenetv1": ["model.0.0.weight", "model.13.4.running_var", "fc.weight"],
}
ABSENT_KEYS = {  # the original has no such module
    "kd_resnet20": ["layer1.0.downsample.0.weight"],  # 16 -> 16, stride 1
    "kd_wrn_40_1": ["block1.layer.0.convShortcut.weight"],  # 16 -> 16
}


def original_state_dict(arch: str, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Random tensors under the hand-listed original names (as a checkpoint's ``model`` entry)."""
    g = torch.Generator().manual_seed(seed)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, shape in SPECS[arch]().keys.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(240, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.1
    return out


def _input(arch: str, b: int = 2) -> torch.Tensor:
    hw = 224 if KD_ARCHS[arch].dataset == "imagenet" else 32
    return torch.randn(b, 3, hw, hw, generator=torch.Generator().manual_seed(1))


ARCHS = list(KD_ARCHS)


def test_the_zoo_is_complete():
    assert ARCHS == list(SPECS) == list(PARAMS)
    assert set(MDISTILLER_CIFAR) == {"resnet8x4", "resnet32x4", "resnet20", "resnet32", "resnet56", "resnet110",
                                     "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "MobileNetV2",
                                     "ShuffleV1", "ShuffleV2", "ResNet50"}
    assert MDISTILLER_IMAGENET["MobileNetV1"] == "kd_mobilenetv1" and MDISTILLER_IMAGENET["ResNet34"] == "resnet34"


@pytest.mark.parametrize("arch", ARCHS)
def test_params_shape_and_original_keys(arch):
    spec = SPECS[arch]()
    net = build_kd_net(arch)
    # parameter count == the count by hand
    assert spec.params == PARAMS[arch]
    assert sum(p.numel() for p in net.parameters()) == spec.params
    # a state dict with the original's names (and shapes) loads strictly
    net.load_state_dict(original_state_dict(arch), strict=True)
    assert list(net.state_dict()) == list(spec.keys)  # same names, in the original's order
    for key in ORIGINAL_KEYS.get(arch, []):
        assert key in spec.keys
    for key in ABSENT_KEYS.get(arch, []):
        assert key not in spec.keys
    # logits on a batch of 2 (CIFAR 32 px; MobileNetV1 224 px)
    net.eval()
    with torch.no_grad():
        x = _input(arch)
        logits = net(x)
        pooled = net.forward_head(net.forward_features(x), pre_logits=True)
    classes = 1000 if arch == "kd_mobilenetv1" else C
    assert logits.shape == (2, classes) and torch.isfinite(logits).all()
    assert pooled.shape == (2, net.num_features)
    torch.testing.assert_close(net.get_classifier()(pooled), logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_classifier_takes_the_original_checkpoint(arch):
    """backbone + gpaco fc == the original's network, weights mapped by to_classifier_state_dict."""
    classes = 1000 if arch == "kd_mobilenetv1" else C
    state = original_state_dict(arch)
    net = build_kd_net(arch)
    net.load_state_dict(state, strict=True)
    clf = build_classifier(arch, classes)
    assert isinstance(clf, Classifier)
    assert sum(p.numel() for p in clf.parameters()) == PARAMS[arch]
    load_original_checkpoint(clf, state, arch)
    assert to_original_state_dict(clf.state_dict(), arch).keys() == state.keys()
    net.eval(), clf.eval()
    x = _input(arch, b=1)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), net(x))
        torch.testing.assert_close(clf.backbone(x), net.forward_head(net.forward_features(x), pre_logits=True))


def test_mdistiller_checkpoint_file(tmp_path):
    """ckpt_epoch_240.pth as mdistiller saves it (weights under "model"), also with DDP's module."""
    state = original_state_dict("kd_resnet32x4")
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": state, "epoch": 240, "best_acc": 79.42}, path)
    net = load_original_checkpoint(build_kd_net("kd_resnet32x4"), path)
    torch.testing.assert_close(net.fc.weight, state["fc.weight"])
    ddp = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, ddp)
    clf = load_original_checkpoint(build_classifier("kd_resnet32x4", C), ddp, "kd_resnet32x4")
    torch.testing.assert_close(clf.fc.weight, state["fc.weight"])
    torch.testing.assert_close(clf.backbone.layer3[4].conv2.weight, state["layer3.4.conv2.weight"])


def test_head_names_map_to_fc():
    for arch, head in (("kd_vgg8", "classifier."), ("kd_mobilenetv2", "classifier.0."),
                       ("kd_shufflev2", "linear."), ("kd_wrn_16_2", "fc.")):
        mapped = to_classifier_state_dict(original_state_dict(arch), arch)
        assert "fc.weight" in mapped and f"backbone.{head}weight" not in mapped
        assert all(k.startswith(("backbone.", "fc.")) for k in mapped)
        assert to_original_state_dict(mapped, arch).keys() == original_state_dict(arch).keys()


def test_bad_checkpoints_are_named():
    state = original_state_dict("kd_resnet20")
    with pytest.raises(CheckpointError, match=r"missing keys \['fc.weight'"):
        load_original_checkpoint(build_kd_net("kd_resnet20"), {k: v for k, v in state.items() if k != "fc.weight"})
    with pytest.raises(CheckpointError, match="shape mismatches"):  # resnet32 weights into resnet32x4
        load_original_checkpoint(build_kd_net("kd_resnet32x4"), original_state_dict("kd_resnet32"))
    with pytest.raises(ValueError, match="needs its arch"):
        load_original_checkpoint(build_classifier("kd_resnet20", C), state)
    with pytest.raises(ValueError, match="unknown distillation-zoo arch"):
        build_kd_net("resnet32x4")


@pytest.mark.parametrize("arch,layers,params", [("resnet18", (2, 2, 2, 2), 11_689_512),
                                                ("resnet34", (3, 4, 6, 3), 21_797_672)])
def test_imagenet_basic_resnets_take_torchvision_weights(arch, layers, params):
    """The ImageNet students/teachers come from timm with torchvision's key names; a v1 torchvision
    file (no num_batches_tracked, it predates them) loads strictly into the gpaco Classifier."""
    spec = spec_basic_resnet_imagenet(layers)
    assert spec.params == params
    clf = build_classifier(arch, 1000)
    assert sum(p.numel() for p in clf.parameters()) == params
    state = OrderedDict((k, torch.randn(s) * 0.01 if not k.endswith("running_var") else torch.ones(s))
                        for k, s in spec.keys.items() if not k.endswith("num_batches_tracked"))
    load_original_checkpoint(clf, state, arch)
    torch.testing.assert_close(clf.fc.bias, state["fc.bias"])
    assert all(m.weight.abs().sum() > 0 for m in clf.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        assert clf.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_imagenet_resnet50_teacher_keys():
    spec = spec_bottleneck_resnet((3, 4, 6, 3), "imagenet", "fc", "downsample", 1000)
    assert spec.params == 25_557_032
    clf = build_classifier("resnet50", 1000)
    assert sum(p.numel() for p in clf.parameters()) == spec.params
    assert set(to_original_state_dict(clf.state_dict(), "resnet50")) == set(spec.keys)


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_registration(arch):
    """`--arch kd_*`: create_backbone gives the trunk without the classifier ([B, F]), and the CE
    method builds it."""
    assert arch in list_archs() and known_arch(arch)
    check_arch(arch)  # --arch is accepted
    trunk, dim = create_backbone(arch)
    assert dim == trunk.num_features == build_kd_net(arch).num_features
    head = KD_ARCHS[arch].head_prefix
    assert not any(k.startswith(head) for k in trunk.state_dict())
    assert list(trunk.state_dict()) == [k for k in SPECS[arch]().keys if not k.startswith(head)]
    if arch in ("kd_resnet8x4", "kd_shufflev1", "kd_mobilenetv1"):
        trunk.eval()
        with torch.no_grad():
            assert trunk(_input(arch, b=1)).shape == (1, dim)
        model = build_model("ce", arch, 10)
        assert isinstance(model, Classifier) and model.fc.in_features == dim


def test_pretrained_flag_takes_an_mdistiller_file(tmp_path):
    """--pretrained <ckpt_epoch_240.pth>: the trunk's weights load, the original's classifier is dropped."""
    state = original_state_dict("kd_mobilenetv2")
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": state}, path)
    trunk, _ = create_backbone("kd_mobilenetv2", pretrained=str(path))
    torch.testing.assert_close(trunk.conv2[0].weight, state["conv2.0.weight"])
    missing, unexpected = load_backbone_weights(kd_backbone("kd_mobilenetv2"), str(path))
    assert missing == [] and unexpected == []


def test_original_initialisation():
    """The heads' init of the originals (gpaco's fc can take it through init_classifier)."""
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    try:
        _check_original_initialisation()
    finally:
        torch.set_grad_enabled(True)


def _check_original_initialisation():
    vgg = build_kd_net("kd_vgg13")
    assert float(vgg.classifier.bias.abs().max()) == 0.0 and abs(float(vgg.classifier.weight.std()) - 0.01) < 1e-3
    assert float(build_kd_net("kd_wrn_40_2").fc.bias.abs().max()) == 0.0
    mv2 = build_kd_net("kd_mobilenetv2")
    assert float(mv2.classifier[0].bias.abs().max()) == 0.0
    conv = build_kd_net("kd_resnet20").layer2[0].conv1  # N(0, 2 / (3*3*32))
    assert abs(float(conv.weight.std()) - (2.0 / (9 * 32)) ** 0.5) < 0.01
    # gpaco's Classifier (what --method ce trains) gives its fc the same init
    vgg_ce = build_classifier("kd_vgg13", 100)
    assert float(vgg_ce.fc.bias.abs().max()) == 0.0 and abs(float(vgg_ce.fc.weight.std()) - 0.01) < 1e-3
    assert float(build_classifier("kd_wrn_40_2", 100).fc.bias.abs().max()) == 0.0
