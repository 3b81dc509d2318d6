"""RIDE-ResLT: ResLT heads on RIDE's multi-expert ResNet (docs/method.md#ride-reslt).

One shared trunk (stem + the early stages) feeds ``E`` experts. Each expert owns the two
last stages (ImageNet ResNets: layer3 + layer4; CIFAR ResNets: their last two stages) and a
whole ResLT model on top of them: the conv branch head and one classifier shared by its
branches (:class:`gpaco.models.reslt.ResLTModel`, whose trunk is the expert's stages). No
router, no distillation: the experts interact only through the shared trunk.

=====================  ==================================================================
training forward       :class:`RIDEResLTOutput`: ``expert_logits`` [E, K, B, C] (each
                       expert's branch logits, with bias), ``logits`` [B, C] their sum over
                       experts and branches (the train accuracy, as the original)
evaluation forward     logits [B, C]: the mean over the first ``eval_experts`` experts of
                       each expert's evaluation logits (ResLT's: the gamma-normalised
                       classifier without bias when ``eval_gamma`` is set)
=====================  ==================================================================

Archs: the Bottleneck ResNets of :data:`RIDE_LAYOUTS` (``resnet50``, ``resnext50_32x4d``...;
torchvision's Bottleneck, as the original), whose experts' stage widths ``expert_planes``
may be reduced (the original's ImageNet-LT ResNeXt-50: 192 / 384 planes, F = 1536); and the
CIFAR ResNets (``resnet8``..., full width). Every conv is kaiming-normal (fan_out) and every
BatchNorm starts at 1 / 0 (CIFAR ResNets: their own init); the classifiers keep PyTorch's
default Linear init.

The original's checkpoints (``conv1``, ``layer1``, ``layer3s.<k>``, ``ResLTBlocks.<k>``,
``linears.<k>``...) map onto this model with :func:`original_to_ours`.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from .backbones import CIFAR_ARCHS
from .contrastive import device_groups
from .reslt import ResLTModel
from .view_bn import convert_view_batchnorm

__all__ = ["RIDEResLTOutput", "RIDEResLTModel", "build_ride_reslt", "original_to_ours", "original_key_to_ours",
           "RIDE_LAYOUTS"]

#: arch -> (blocks per stage, groups of the 3x3 convs, width per group): torchvision's Bottleneck ResNets.
RIDE_LAYOUTS: Dict[str, Tuple[Tuple[int, int, int, int], int, int]] = {
    "resnet50": ((3, 4, 6, 3), 1, 64),
    "resnet101": ((3, 4, 23, 3), 1, 64),
    "resnet152": ((3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": ((3, 4, 6, 3), 32, 4),
    "resnext101_32x4d": ((3, 4, 23, 3), 32, 4),
}
_LAYOUT_KEYS = ("layers", "groups", "width_per_group")


class RIDEResLTOutput(NamedTuple):
    """Training output: the loss reads ``expert_logits``, the train accuracy ``logits``."""

    expert_logits: Tensor  # [E, K, B, C]
    logits: Tensor  # [B, C], the sum over experts and branches


class ExpertStages(nn.Sequential):
    """One expert's own later stages: the shared map [B, C', h, w] -> its map [B, F, h', w']
    (``forward_features``, what the ResLT head reads)."""

    def __init__(self, stages: "OrderedDict[str, nn.Module]", num_features: int) -> None:
        super().__init__(stages)
        self.num_features = num_features

    def forward_features(self, x: Tensor) -> Tensor:
        return self(x)


def _stage(inplanes: int, planes: int, blocks: int, stride: int, groups: int, width_per_group: int) -> nn.Sequential:
    """torchvision's ``_make_layer``: the stride on the first block's 3x3 conv, a 1x1 conv + BN
    shortcut when the shape changes."""
    out = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
    layers = [Bottleneck(inplanes, planes, stride, downsample, groups=groups, base_width=width_per_group)]
    layers += [Bottleneck(out, planes, groups=groups, base_width=width_per_group) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _init_resnet(module: nn.Module) -> None:
    """The original's init: kaiming-normal fan_out convs, BatchNorm 1 / 0 (no zero-init of the last BN)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _bottleneck_trunk(arch: str, num_experts: int, expert_planes: Optional[Sequence[int]],
                      layout: Mapping[str, Any]) -> Tuple[nn.Module, List[ExpertStages]]:
    layers, groups, width = RIDE_LAYOUTS[arch] if arch in RIDE_LAYOUTS else (None, None, None)
    layers, groups, width = layout.get("layers", layers), layout.get("groups", groups), \
        layout.get("width_per_group", width)
    if layers is None or groups is None or width is None:
        raise ValueError(f"RIDE-ResLT builds the Bottleneck ResNets {sorted(RIDE_LAYOUTS)} or a CIFAR ResNet "
                         f"{sorted(CIFAR_ARCHS)}, got arch {arch!r}")
    if len(layers) != 4:
        raise ValueError(f"layers must give the blocks of the 4 stages, got {list(layers)}")
    p3, p4 = expert_planes if expert_planes is not None else (256, 512)
    shared = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), bn1=nn.BatchNorm2d(64),
        relu=nn.ReLU(inplace=True), maxpool=nn.MaxPool2d(3, stride=2, padding=1),
        layer1=_stage(64, 64, layers[0], 1, groups, width), layer2=_stage(256, 128, layers[1], 2, groups, width)))
    _init_resnet(shared)
    experts = []
    for _ in range(num_experts):
        stages = ExpertStages(OrderedDict(layer3=_stage(512, p3, layers[2], 2, groups, width),
                                          layer4=_stage(p3 * 4, p4, layers[3], 2, groups, width)), p4 * 4)
        _init_resnet(stages)
        experts.append(stages)
    return shared, experts


def _cifar_trunk(arch: str, num_experts: int) -> Tuple[nn.Module, List[ExpertStages]]:
    """Stem + all but the last two stages shared; each expert's stages come from its own freshly
    built (so independently initialised) network of the arch."""
    nets = [CIFAR_ARCHS[arch]() for _ in range(num_experts)]
    names = sorted(n for n, _ in nets[0].named_children() if re.fullmatch(r"layer\d", n))
    first = nets[0]
    shared = nn.Sequential(OrderedDict([("conv1", first.conv1), ("bn1", first.bn1), ("relu", nn.ReLU(inplace=True))]
                                       + [(n, getattr(first, n)) for n in names[:-2]]))
    experts = [ExpertStages(OrderedDict((n, getattr(net, n)) for n in names[-2:]), int(net.num_features))
               for net in nets]
    return shared, experts


class RIDEResLTModel(nn.Module):
    """Shared trunk ``backbone`` and ``E`` experts (``experts[k]``: a :class:`ResLTModel` on the
    expert's own later stages).

    Args:
        arch: a key of :data:`RIDE_LAYOUTS` or a CIFAR ResNet (``resnet8``...).
        num_classes: C.
        num_experts: E >= 1.
        expert_planes: (layer3, layer4) planes of each expert (Bottleneck archs; None: 256, 512;
            the original's ImageNet-LT model: 192, 384).
        eval_experts: evaluate with the mean of the first V experts (None: all E).
        num_branches, pool, eval_gamma, original_eval_pooling: each expert's ResLT head, as
            :class:`ResLTModel` (``head="conv"``).
        device_batch: per-virtual-device BatchNorm statistics (``--device-batch``).
        layout: Bottleneck archs only: ``layers`` / ``groups`` / ``width_per_group`` overriding the
            arch's (small test networks).
    """

    def __init__(self, arch: str, num_classes: int, *, num_experts: int = 3,
                 expert_planes: Optional[Sequence[int]] = None, eval_experts: Optional[int] = None,
                 num_branches: int = 3, pool: str = "after", eval_gamma: Optional[float] = None,
                 original_eval_pooling: bool = False, device_batch: Optional[int] = None,
                 layout: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if eval_experts is not None and not 1 <= eval_experts <= num_experts:
            raise ValueError(f"eval_experts must be in 1..{num_experts} (the experts), got {eval_experts}")
        if expert_planes is not None and (len(expert_planes) != 2 or min(expert_planes) < 1):
            raise ValueError(f"expert_planes must be two positive plane counts (layer3, layer4), got "
                             f"{list(expert_planes)}")
        layout = dict(layout or {})
        unknown = sorted(set(layout) - set(_LAYOUT_KEYS))
        if unknown:
            raise ValueError(f"unknown layout keys {unknown}; known: {list(_LAYOUT_KEYS)}")
        if arch in CIFAR_ARCHS:
            if expert_planes is not None or layout:
                raise ValueError(f"the CIFAR ResNet {arch!r} keeps its own widths and layout: no expert_planes / "
                                 f"layout")
            self.backbone, stages = _cifar_trunk(arch, num_experts)
        else:
            self.backbone, stages = _bottleneck_trunk(arch, num_experts, expert_planes, layout)
        self.experts = nn.ModuleList(
            ResLTModel(s, num_classes, num_branches=num_branches, head="conv", pool=pool, eval_gamma=eval_gamma,
                       original_eval_pooling=original_eval_pooling) for s in stages)
        self.num_classes, self.num_experts, self.eval_experts = num_classes, num_experts, eval_experts
        self.feat_dim = self.experts[0].feat_dim
        self.device_batch = device_batch
        if device_batch is not None:
            convert_view_batchnorm(self, device_batch=device_batch)

    @property
    def fc(self) -> nn.Linear:
        """Expert 0's classifier (all have its shape): where tools read the class count."""
        return self.experts[0].fc

    def expert_eval_logits(self, images: Tensor, experts: Optional[int] = None) -> Tensor:
        """[E', B, C]: the evaluation logits of the first ``experts`` experts (None: all); eval mode."""
        h = self.backbone(images)
        return torch.stack([e(h) for e in self.experts[:experts or self.num_experts]])

    def eval_logits(self, images: Tensor) -> Tensor:
        """[B, C]: the mean over the first ``eval_experts`` experts (the original's test-time path
        when built with ``original_eval_pooling`` and ``eval_gamma``)."""
        return self.expert_eval_logits(images, self.eval_experts).mean(0)

    def forward(self, images: Tensor) -> Union[Tensor, RIDEResLTOutput]:
        if not self.training:
            return self.eval_logits(images)
        device_groups(images.shape[0], self.device_batch)  # says when --device-batch does not divide the batch
        h = self.backbone(images)
        expert_logits = torch.stack([e(h).branch_logits for e in self.experts])  # [E, K, B, C]
        return RIDEResLTOutput(expert_logits, expert_logits.sum((0, 1)))

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, eval_experts={self.eval_experts}, device_batch={self.device_batch}"


def build_ride_reslt(arch: str, num_classes: int, *, branch_sizes: Optional[Sequence[int]] = None,
                     pretrained: Union[bool, str, None] = False, drop_path_rate: float = 0.0,
                     backbone_kwargs: Optional[Dict[str, Any]] = None, **kw: Any) -> RIDEResLTModel:
    """:class:`RIDEResLTModel` whose experts have one branch per entry of ``branch_sizes`` plus
    the head branch (None: 3). ``backbone_kwargs``: the ``layout`` keys. The original trains from
    scratch: no pretrained weights, no drop path. Contrastive-only options are ignored."""
    for k in ("proj_dim", "hidden_dim", "queue_size", "global_batch"):
        kw.pop(k, None)
    if pretrained:
        raise ValueError("RIDE-ResLT trains from scratch (its experts have their own widths): no pretrained weights")
    if drop_path_rate:
        raise ValueError("RIDE-ResLT's torchvision Bottlenecks have no drop path")
    num_branches = 1 + len(branch_sizes) if branch_sizes is not None else 3
    return RIDEResLTModel(arch, num_classes, num_branches=num_branches, layout=backbone_kwargs, **kw)


_ORIGINAL_EXPERT_KEYS = ((r"layer3s\.(\d+)\.", "experts.{}.backbone.layer3."),
                         (r"layer4s\.(\d+)\.", "experts.{}.backbone.layer4."),
                         (r"ResLTBlocks\.(\d+)\.", "experts.{}.head."),
                         (r"linears\.(\d+)\.", "experts.{}.fc."))


def original_key_to_ours(key: str) -> str:
    """Our name of one of the original's state-dict keys (``module.`` prefix or not):
    ``layer3s.1.0.conv1.weight`` -> ``experts.1.backbone.layer3.0.conv1.weight``,
    ``ResLTBlocks.0.1.weight`` -> ``experts.0.head.1.weight``, ``conv1.weight`` -> ``backbone.conv1.weight``."""
    name = key[len("module."):] if key.startswith("module.") else key
    for pattern, target in _ORIGINAL_EXPERT_KEYS:
        m = re.match(pattern, name)
        if m:
            return target.format(m.group(1)) + name[m.end():]
    return "backbone." + name


def original_to_ours(state: Mapping[str, Tensor], model: RIDEResLTModel) -> Tuple["OrderedDict[str, Tensor]",
                                                                                  List[str]]:
    """The original's RIDE-ResLT state dict (``module.`` prefix or not) in ``model``'s names.

    Experts beyond ``model.num_experts`` are returned as unused keys. A ResLT block wider than
    the model's head (the original's iNaturalist network computes a third branch that no loss
    reads) is cut to the model's ``K x F`` channels: the kept channels compute exactly what they
    did. Returns (state dict, unused original keys).
    """
    own = model.state_dict()
    out: "OrderedDict[str, Tensor]" = OrderedDict()
    unused: List[str] = []
    for key, value in state.items():
        name = original_key_to_ours(key)
        if name not in own:
            unused.append(key)
            continue
        if ".head." in name and value.ndim >= 1 and value.shape[0] > own[name].shape[0]:
            value = value[:own[name].shape[0]]  # branches the model does not have (rows are branch-major)
        out[name] = value
    return out, unused
