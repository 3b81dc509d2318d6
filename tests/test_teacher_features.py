"""The frozen teacher's pooled feature and classifier (gpaco/methods/teacher.py), what Generative
Distribution Distillation generates and decodes with: for every kind of teacher file,
``F.linear(teacher.features(x), *teacher.classifier)`` are the teacher's logits, the feature is
the one the source network's classifier reads, and D is the width of the distillation tables.
Also the students' pooled features (``model.backbone(x)``) and their widths F."""
from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn.functional as F

from gpaco.engine.args import FlagError
from gpaco.methods import teacher as teacher_module
from gpaco.methods.rebuild import build_model, model_config
from gpaco.methods.teacher import FrozenTeacher, load_teacher, random_teacher
from gpaco.models import build_classifier
from gpaco.models.beit_teacher import BEIT_TEACHERS, beit_release_state_dict
from gpaco.models.kd_zoo import build_kd_net, to_classifier_state_dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _randomize_bn(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so that eval mode (running statistics) is what is compared."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


def _check_factorisation(teacher: FrozenTeacher, x: torch.Tensor, logits: torch.Tensor, features: torch.Tensor,
                         exact: bool = True) -> None:
    """The teacher's logits are the source's, its features are the source's pooled feature, and
    the classifier applied to its features gives its logits."""
    got_features, (weight, bias) = teacher.features(x), teacher.classifier
    assert got_features.shape == features.shape and weight.shape == (logits.shape[1], features.shape[1])
    assert bias.shape == (logits.shape[1],) and teacher.feature_dim == features.shape[1]
    assert not got_features.requires_grad and not weight.requires_grad and not bias.requires_grad
    if exact:  # the same operations as the network's forward
        assert torch.equal(teacher(x), logits) and torch.equal(got_features, features)
        assert torch.equal(F.linear(got_features, weight, bias), logits)
    else:
        torch.testing.assert_close(teacher(x), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_features, features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(F.linear(got_features, weight, bias), logits, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- CIFAR (CRD) teachers

# the CRD/RepDistiller ``*_vanilla/ckpt_epoch_240.pth`` teachers of the GenDD CIFAR scripts: D, the original's head
CRD_TEACHERS = {"kd_wrn_40_2": (128, "fc."), "kd_resnet56": (64, "fc."), "kd_resnet110": (64, "fc."),
                "kd_resnet32x4": (256, "fc."), "kd_vgg13": (512, "classifier."), "kd_resnet50": (2048, "linear.")}


@pytest.mark.parametrize("arch", sorted(CRD_TEACHERS))
def test_crd_cifar_teacher(tmp_path, arch):
    """A CRD checkpoint ({'epoch', 'model', 'best_acc', 'optimizer'}, the classifier under the
    original's name): its classifier keys become fc, its feature is the original's pooled feature."""
    dim, head = CRD_TEACHERS[arch]
    torch.manual_seed(0)
    original = _randomize_bn(build_kd_net(arch, 100))  # the original's module names
    state = original.state_dict()
    assert {k for k in state if k.startswith(head)} == {f"{head}weight", f"{head}bias"}
    torch.save({"epoch": 240, "model": state, "best_acc": 75.6, "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "ckpt_epoch_240.pth")
    teacher = load_teacher(str(tmp_path / "ckpt_epoch_240.pth"), arch=arch, num_classes=100)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, features = original(x), original.forward_head(original.forward_features(x), pre_logits=True)
    assert features.shape == (2, dim)
    _check_factorisation(teacher, x, logits, features)
    assert torch.equal(teacher.classifier[0], state[f"{head}weight"])


# --------------------------------------------------------------------------- torchvision teachers

@pytest.mark.parametrize("arch,dim", [("resnet34", 512), ("resnet50", 2048)])
def test_torchvision_resnet_teacher(tmp_path, arch, dim):
    """A torchvision state dict (``resnet34-333f7ec4.pth``: conv1 / layerN / fc keys, no wrapper)."""
    import timm

    torch.manual_seed(0)
    source = _randomize_bn(timm.create_model(arch, num_classes=7))  # torchvision's keys and layout
    torch.save(source.state_dict(), tmp_path / f"{arch}.pth")
    teacher = load_teacher(str(tmp_path / f"{arch}.pth"), arch=arch, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, features = source(x), source.forward_head(source.forward_features(x), pre_logits=True)
    assert features.shape == (2, dim)
    _check_factorisation(teacher, x, logits, features)


# --------------------------------------------------------------------------- BEiT-v2 teachers

TINY_BEIT = dict(depth=2, embed_dim=32, num_heads=2, img_size=32)  # 2x2 patches of 16 px


def _release_file(source: torch.nn.Module) -> dict:
    """A BEiT-v2 file as the release and the GenDD scripts' ``_new.pth`` have it: timm's keys plus
    each block's relative-position index table (a buffer of the older BEiT code)."""
    state = dict(source.state_dict())
    for i, block in enumerate(source.blocks):
        state[f"blocks.{i}.attn.relative_position_index"] = block.attn.relative_position_index.clone()
    return state


@pytest.mark.parametrize("wrapper", ["flat", "model", "module"])
def test_beit_teacher_release_file(tmp_path, monkeypatch, wrapper):
    """``--teacher-arch beitv2_base_patch16_224 --teacher-weights FILE`` on a tiny BEiT-v2 (the
    same timm code at a smaller config): the file loads strictly, head -> fc, the feature is
    fc_norm of the mean patch token."""
    import timm

    monkeypatch.setattr(teacher_module, "build_classifier",
                        functools.partial(build_classifier, backbone_kwargs=TINY_BEIT))
    torch.manual_seed(0)
    source = timm.create_model("beitv2_base_patch16_224", num_classes=5, **TINY_BEIT).eval()
    state = _release_file(source)
    torch.save(state if wrapper == "flat" else {wrapper: state, "epoch": 90}, tmp_path / "beit.pth")
    teacher = load_teacher(str(tmp_path / "beit.pth"), arch="beitv2_base_patch16_224", num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = source.forward_features(x)
        features = source.fc_norm(tokens[:, 1:].mean(dim=1))  # the class token is not used
        logits = source(x)
    _check_factorisation(teacher, x, logits, features)
    assert torch.equal(teacher.classifier[0], state["head.weight"])


def test_beit_file_of_another_size_is_one_error_line(tmp_path, monkeypatch):
    import timm

    monkeypatch.setattr(teacher_module, "build_classifier",
                        functools.partial(build_classifier, backbone_kwargs=TINY_BEIT))
    wider = timm.create_model("beitv2_base_patch16_224", num_classes=5, **{**TINY_BEIT, "embed_dim": 64})
    torch.save(_release_file(wider), tmp_path / "large.pth")
    with pytest.raises(FlagError, match=r"--teacher-arch beitv2_base_patch16_224 does not fit .*shape") as err:
        load_teacher(str(tmp_path / "large.pth"), arch="beitv2_base_patch16_224", num_classes=5)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch", sorted(BEIT_TEACHERS))
def test_beit_release_keys_fit_the_real_teachers(arch):
    """The real BEiT-v2 base / large (built on the meta device: shapes only, no memory): a
    release file's key set maps onto gpaco's classifier exactly, and D is 768 / 1024."""
    import timm

    with torch.device("meta"):
        ours = build_classifier(arch, 1000)
        release = _release_file(timm.create_model(arch, num_classes=1000))
    assert ours.feat_dim == BEIT_TEACHERS[arch] and ours.backbone.global_pool == "avg"
    assert len([k for k in release if k.endswith("relative_position_index")]) == len(ours.backbone.blocks)
    mapped = to_classifier_state_dict(beit_release_state_dict(release), arch)
    own = ours.state_dict()
    assert set(mapped) == set(own)
    assert all(mapped[k].shape == own[k].shape for k in own)


# --------------------------------------------------------------------------- gpaco checkpoints

def _gpaco_checkpoint(path, method: str, options: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = _randomize_bn(build_model(method, "resnet8", 5, **options), seed)
    with torch.no_grad():
        for p in model.parameters():  # also LWS scales away from 1 and biases away from 0
            p.add_(torch.randn_like(p) * 0.05)
    torch.save({"model": model.state_dict(), "model_config": model_config(method, "classification", "resnet8", 5,
                                                                          options)}, path)
    return model


@pytest.mark.parametrize("method,options,features_of", [
    ("ce", {}, lambda m, x: m.backbone(x)),
    ("paco", {"queue_size": 16, "proj_dim": 8}, lambda m, x: m.encoder_q.backbone(x)),
    ("paco", {"queue_size": 16, "proj_dim": 8, "normalize_pooled": True},
     lambda m, x: F.normalize(m.encoder_q.backbone(x), dim=1)),
    ("gpaco", {"queue_size": 16, "proj_dim": 8}, lambda m, x: m.encoder.backbone(x)),
    ("mislas_stage2", {}, lambda m, x: m.backbone(x)),
])
def test_gpaco_checkpoint_teacher(tmp_path, method, options, features_of):
    """gpaco checkpoints of the models whose logits are one classifier on one pooled feature
    (MiSLAS stage 2: the learnt per-class scale folds into the classifier)."""
    source = _gpaco_checkpoint(tmp_path / "best.pth", method, options)
    teacher = load_teacher(str(tmp_path), arch=None, num_classes=5)  # the run folder
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, features = source(x), features_of(source, x)
    _check_factorisation(teacher, x, logits, features, exact=method != "mislas_stage2")


@pytest.mark.parametrize("method", ["ride_reslt", "reslt"])
def test_teacher_without_one_classifier_says_so(tmp_path, method):
    """Several experts / branches: the teacher still gives its logits (KD), but asking for its
    feature or classifier is one error line naming the file."""
    source = _gpaco_checkpoint(tmp_path / "best.pth", method, {})
    teacher = load_teacher(str(tmp_path / "best.pth"), arch=None, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), get_logits(method, source, x))
    assert not teacher.has_features
    for ask in (lambda: teacher.features(x), lambda: teacher.classifier):
        with pytest.raises(FlagError, match=r"its logits are not one linear classifier") as err:
            ask()
        assert str(tmp_path / "best.pth") in str(err.value) and "\n" not in str(err.value)


def get_logits(method: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from gpaco.methods.registry import get_method

    return get_method(method).eval_forward(model.eval(), x)


# --------------------------------------------------------------------------- frozen

def test_features_are_frozen_on_any_input():
    """Eval mode whatever train() asks, no gradient even from an input that requires one; the
    classifier is the network's own frozen tensors (no copy)."""
    teacher = random_teacher("kd_resnet8x4", 10)
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    assert not teacher.features(x).requires_grad
    weight, bias = teacher.classifier
    assert weight.data_ptr() == teacher.net.fc.weight.data_ptr() and bias.data_ptr() == teacher.net.fc.bias.data_ptr()
    assert not any(p.requires_grad for p in teacher.parameters())


# --------------------------------------------------------------------------- students

# The students of the GenDD recipes (docs/recipes.md): --arch -> F, the width of model.backbone(x)
STUDENTS = {"kd_resnet8x4": 256, "kd_resnet20": 64, "kd_resnet32": 64, "kd_wrn_16_2": 128, "kd_wrn_40_1": 64,
            "kd_vgg8": 512, "resnet18": 512, "resnet50": 2048, "kd_mobilenetv1": 1024}


@pytest.mark.parametrize("arch", sorted(STUDENTS))
def test_student_pooled_feature(arch):
    """A GenDD student built as every classifier (build_classifier): ``model.backbone(x)`` is the
    pooled feature [B, F] its fc reads."""
    torch.manual_seed(0)
    model = build_classifier(arch, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.backbone(x)
        assert features.shape == (2, STUDENTS[arch]) and model.feat_dim == STUDENTS[arch]
        assert torch.equal(model.fc(features), model(x))
