"""Backbones, heads, the feature queue and the PaCo / GPaCo / CE models (single process)."""
from __future__ import annotations

import copy
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpaco import distributed as gdist
from gpaco.losses import multitask_loss, paco_loss
from gpaco.methods.rebuild import build_model
from gpaco.models import (
    Classifier,
    ContrastiveOutput,
    FeatureQueue,
    GPaCoModel,
    GPaCoProjection,
    PaCoModel,
    PaCoProjection,
    create_backbone,
    list_archs,
    load_backbone_weights,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

B, C, D, K = 4, 5, 8, 16


def _batch(seed: int = 0, b: int = B, hw: int = 32):
    g = torch.Generator().manual_seed(seed)
    im_q = torch.randn(b, 3, hw, hw, generator=g)
    im_k = torch.randn(b, 3, hw, hw, generator=g)
    y = torch.randint(0, C, (b,), generator=g)
    return im_q, im_k, y


# ----------------------------------------------------------------------------- backbones

@pytest.mark.parametrize("arch,dim", [("resnet8", 64), ("resnet20", 64), ("resnet32", 64), ("resnet50_cifar", 2048)])
def test_cifar_backbone_shapes(arch, dim):
    torch.manual_seed(0)
    model, feat_dim = create_backbone(arch)
    assert feat_dim == dim
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, dim)


def test_resnet32_is_ldam_style():
    model, _ = create_backbone("resnet32")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 31  # 1 stem + 3 stages x 5 blocks x 2; option-A shortcuts have no conv
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [5, 5, 5]
    assert {c.out_channels for c in convs} == {16, 32, 64}
    assert sum(p.numel() for p in model.parameters()) == 463_504  # 0.46M without the classifier


def test_resnet50_cifar_stem():
    model, _ = create_backbone("resnet50_cifar")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.slow
def test_timm_resnet50_small_input():
    model, dim = create_backbone("resnet50")
    assert dim == 2048
    # torchvision-like init: the last BN of each block is not zero-initialised
    assert torch.all(model.layer1[0].bn3.weight == 1)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


def test_list_archs():
    names = list_archs()
    for arch in ("resnet8", "resnet20", "resnet32", "resnet50_cifar", "resnet50", "resnet101",
                 "resnet152", "resnet200", "resnext50_32x4d", "resnext101_32x4d"):
        assert arch in names


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch"):
        create_backbone("not_a_model_xyz")


@pytest.mark.parametrize("arch", ["resnet50", "resnet8", "resnet200"])
def test_pretrained_hub_offline_fails_fast(monkeypatch, arch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="--pretrained /path/to/weights.pth"):
        create_backbone(arch, pretrained=True)
    assert time.monotonic() - start < 5.0


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def test_load_local_weights_pth(tmp_path):
    torch.manual_seed(1)
    src, _ = create_backbone("resnet8")
    state = _prefixed(src.state_dict(), "module.")
    state["module.fc.weight"] = torch.zeros(10, 64)  # a classifier the backbone does not have
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    torch.manual_seed(2)
    dst, _ = create_backbone("resnet8", pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_load_local_weights_safetensors_and_our_checkpoint(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = PaCoModel("resnet8", C, proj_dim=D, queue_size=K)
    path = tmp_path / "paco.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst, _ = create_backbone("resnet8", pretrained=path)
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_load_local_weights_reports_and_rejects(tmp_path):
    torch.manual_seed(0)
    src, _ = create_backbone("resnet8")
    state = src.state_dict()
    state.pop("conv1.weight")
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    model, _ = create_backbone("resnet8")
    with pytest.warns(UserWarning, match="1 missing keys"):
        missing, unexpected = load_backbone_weights(model, path)
    assert missing == ["conv1.weight"] and unexpected == []

    wide = {"conv1.weight": torch.zeros(32, 3, 3, 3)}
    torch.save(wide, path)
    with pytest.raises(RuntimeError, match="do not fit"):
        load_backbone_weights(model, path)
    torch.save({"foo.bar": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="no key"):
        load_backbone_weights(model, path)


# ----------------------------------------------------------------------------- heads

def test_projection_heads():
    paco = PaCoProjection(64, out_dim=32)
    assert [type(m) for m in paco] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert paco[0].out_features == 64 and paco(torch.randn(3, 64)).shape == (3, 32)
    gp = GPaCoProjection(16, hidden_dim=24)
    assert [type(m) for m in gp] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in gp)
    assert gp(torch.randn(3, 16)).shape == (3, 128)


# ----------------------------------------------------------------------------- queue

def test_queue_rejects_size_not_multiple_of_global_batch():
    with pytest.raises(ValueError, match=r"K=100 .*global batch 64"):
        FeatureQueue(100, D, C, global_batch=64)
    q = FeatureQueue(12, D, C)
    with pytest.raises(ValueError, match=r"K=12 .*global batch 8"):
        q.enqueue(torch.randn(8, D), torch.zeros(8, dtype=torch.long))


def test_queue_init_is_column_normalised():
    torch.manual_seed(0)
    q = FeatureQueue(32, D, C)
    assert torch.allclose(q.features.norm(dim=0), torch.ones(D), atol=1e-6)
    assert not torch.allclose(q.features.norm(dim=1), torch.ones(32), atol=1e-3)  # rows are not unit
    assert q.labels.dtype == torch.long and q.labels.min() >= 0 and q.labels.max() < C
    assert q.ptr.tolist() == [0]
    torch.manual_seed(0)
    assert torch.equal(FeatureQueue(32, D, C).labels, q.labels)  # seeded by torch's global RNG


def test_queue_enqueue_writes_at_ptr_and_wraps():
    q = FeatureQueue(8, D, C, global_batch=4)
    before = q.features.clone()
    k1, k2, k3 = (torch.full((4, D), float(i)) for i in (1, 2, 3))
    q.enqueue(k1, torch.tensor([0, 1, 2, 3]))
    assert q.ptr.item() == 4 and torch.equal(q.features[:4], k1) and torch.equal(q.features[4:], before[4:])
    assert q.labels[:4].tolist() == [0, 1, 2, 3]
    q.enqueue(k2, torch.tensor([4, 4, 4, 4]))
    assert q.ptr.item() == 0 and torch.equal(q.features[4:], k2)
    q.enqueue(k3, torch.tensor([1, 1, 1, 1]))  # wrapped: overwrites the oldest slots
    assert q.ptr.item() == 4 and torch.equal(q.features[:4], k3) and torch.equal(q.features[4:], k2)
    assert q.labels.tolist() == [1, 1, 1, 1, 4, 4, 4, 4]
    assert set(dict(q.named_buffers())) == {"features", "labels", "ptr"}


def test_queue_size_zero():
    q = FeatureQueue(0, D, C, global_batch=64)
    q.enqueue(torch.randn(4, D), torch.zeros(4, dtype=torch.long))
    assert q.features.shape == (0, D) and q.labels.shape == (0,)


# ----------------------------------------------------------------------------- PaCo

def _grads_flow(model: nn.Module, rows: torch.Tensor) -> bool:
    """Whether any trainable parameter receives gradient from ``rows``."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(rows.sum(), params, allow_unused=True, retain_graph=True)
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def _paco(**kw) -> PaCoModel:
    torch.manual_seed(0)
    return PaCoModel("resnet8", C, proj_dim=D, queue_size=K, **kw)


def test_paco_training_output_layout_and_queue():
    model = _paco()
    im_q, im_k, y = _batch()
    queue_before, qlab_before = model.queue.features.clone(), model.queue.labels.clone()
    out = model(im_q, im_k, y)
    assert isinstance(out, ContrastiveOutput)
    assert out.features.shape == (2 * B + K, D) and out.labels.shape == (2 * B + K,)
    assert out.logits.shape == (B, C) and out.num_anchors == B
    assert torch.allclose(out.features[: 2 * B].norm(dim=1), torch.ones(2 * B), atol=1e-5)
    assert torch.equal(out.labels[:B], y) and torch.equal(out.labels[B:2 * B], y)
    assert torch.equal(out.labels[2 * B:], qlab_before) and torch.equal(out.features[2 * B:], queue_before)
    # only k enqueued, after features were built (features keep the old queue rows)
    assert model.queue.ptr.item() == B
    assert torch.equal(model.queue.features[:B], out.features[B:2 * B])
    assert torch.equal(model.queue.labels[:B], y)
    assert torch.equal(model.queue.features[B:], queue_before[B:])
    assert _grads_flow(model, out.features[:B]) and not _grads_flow(model, out.features[B:])


def test_paco_logits_use_pooled_feature_not_projection():
    model = _paco()
    im_q, im_k, y = _batch()
    ref = copy.deepcopy(model)
    out = model(im_q, im_k, y)
    expected = ref.fc(ref.encoder_q.backbone(im_q))
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert model.fc.in_features == 64


def test_paco_momentum_update_formula():
    model = _paco(momentum=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(0.5)  # make theta_q != theta_k
    name = "backbone.conv1.weight"
    theta_q = dict(model.encoder_q.named_parameters())[name].detach().clone()
    theta_k = dict(model.encoder_k.named_parameters())[name].detach().clone()
    model(*_batch())
    new_k = dict(model.encoder_k.named_parameters())[name]
    assert torch.allclose(new_k, 0.9 * theta_k + 0.1 * theta_q, atol=1e-6)


def test_paco_key_encoder_buffers_are_its_own():
    model = _paco()
    model.encoder_q.backbone.bn1.running_mean.fill_(5.0)
    model(*_batch())
    assert model.encoder_k.backbone.bn1.running_mean.abs().max() < 1.0  # not synced from encoder_q


def test_paco_keys_match_unshuffled_key_encoder():
    """Single process still goes through shuffle/unshuffle; BN batch stats are permutation
    invariant, so the keys must equal the key encoder run on the batch in its own order."""
    model = _paco()
    im_q, im_k, y = _batch()
    out = model(im_q, im_k, y)
    enc_k = copy.deepcopy(model.encoder_k)  # parameters already momentum-updated
    with torch.no_grad():
        expected = F.normalize(enc_k(im_k)[1], dim=1)
    assert torch.allclose(out.features[B:2 * B], expected, atol=1e-5)


def test_paco_full_step_with_loss():
    model = _paco()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    out = model(*_batch())
    loss = paco_loss(out.features, out.labels, out.logits, out.num_anchors, alpha=0.05, temperature=0.07)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_k.parameters())
    assert model.fc.weight.grad is not None and model.encoder_q.projection[0].weight.grad is not None
    assert model.encoder_q.backbone.conv1.weight.grad is not None
    opt.step()
    out2 = model(*_batch(1))
    assert torch.isfinite(paco_loss(*out2, alpha=0.05, temperature=0.07))


def test_paco_eval_returns_logits_and_keeps_queue():
    model = _paco()
    im_q, im_k, y = _batch()
    model.eval()
    before = model.queue.features.clone()
    with torch.no_grad():
        logits = model(im_q)
        assert torch.equal(model(im_q, im_k, y), logits)
    assert logits.shape == (B, C) and torch.equal(model.queue.features, before)
    model.train()
    assert model(im_q).shape == (B, C)  # no second view: logits only


def test_state_dict_plain_names():
    for model in (_paco(), GPaCoModel("resnet8", C, proj_dim=D, queue_size=K)):
        keys = list(model.state_dict())
        assert not any(k.startswith("module.") for k in keys)
        assert {"queue.features", "queue.labels", "queue.ptr", "fc.weight", "fc.bias"} <= set(keys)
    assert any(k.startswith("encoder_k.") for k in _paco().state_dict())


# ----------------------------------------------------------------------------- GPaCo

def _gpaco(**kw) -> GPaCoModel:
    torch.manual_seed(0)
    return GPaCoModel("resnet8", C, proj_dim=D, queue_size=K, **kw)


def test_gpaco_training_output_layout_and_queue():
    model = _gpaco()
    im_q, im_k, y = _batch()
    queue_before, qlab_before = model.queue.features.clone(), model.queue.labels.clone()
    tracked = model.encoder.backbone.bn1.num_batches_tracked.item()
    out = model(im_q, im_k, y)
    assert out.features.shape == (2 * B + K, D) and out.num_anchors == 2 * B
    assert out.logits.shape == (2 * B, C)
    assert torch.equal(out.labels, torch.cat([y, y, qlab_before]))
    assert torch.equal(out.features[2 * B:], queue_before)
    # both views carry gradient; the queue does not
    assert _grads_flow(model, out.features[B:2 * B]) and not _grads_flow(model, out.features[2 * B:])
    # BN statistics updated once per view (one pass, per-view statistics)
    assert model.encoder.backbone.bn1.num_batches_tracked.item() == tracked + 2
    assert torch.equal(model.queue.features[:B], out.features[B:2 * B].detach())
    assert torch.equal(model.queue.labels[:B], y) and model.queue.ptr.item() == B
    assert not model.queue.features.requires_grad


def test_gpaco_logits_per_view():
    model = _gpaco()
    im_q, im_k, y = _batch()
    ref = copy.deepcopy(model)
    out = model(im_q, im_k, y)
    expected = torch.cat([ref.classify(im_q), ref.classify(im_k)])
    assert torch.allclose(out.logits, expected, atol=1e-5)


@pytest.mark.parametrize("bn_momentum,dtype", [(0.1, torch.float32), (None, torch.float32), (0.1, torch.float64)])
def test_gpaco_one_pass_equals_two_passes(bn_momentum, dtype):
    from gpaco.models.view_bn import ViewBatchNorm1d, ViewBatchNorm2d, batchnorm_views
    """One encoder pass over cat(q, k) with per-view BatchNorm = the original's two passes:
    same features, logits, gradients and running statistics (also for momentum=None BN, and
    float64, which takes the generic path instead of the CPU float32 kernel)."""
    model = _gpaco().to(dtype)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = bn_momentum
    ref = copy.deepcopy(model)
    im_q, im_k, y = (t.to(dtype) if t.is_floating_point() else t for t in _batch(3))
    out = model(im_q, im_k, y)
    with batchnorm_views(ref.encoder, 1):  # the reference: one plain BatchNorm call per view
        pooled_q, z_q = ref.encoder(im_q)
        pooled_k, z_k = ref.encoder(im_k)
    feats = torch.cat([F.normalize(z_q, dim=1), F.normalize(z_k, dim=1)])
    logits = torch.cat([ref.fc(pooled_q), ref.fc(pooled_k)])
    assert torch.allclose(out.features[:2 * B], feats, atol=1e-5)
    assert torch.allclose(out.logits, logits, atol=1e-5)
    w = torch.randn_like(logits)
    ((out.logits * w).sum() + out.features[:2 * B].sum()).backward()
    ((logits * w).sum() + feats.sum()).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-4 * q.grad.abs().max().item() + 1e-6), name
    for (name, a), b in zip(model.named_buffers(), ref.buffers()):
        if not name.startswith("queue."):
            assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    bns = [m for m in model.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, ViewBatchNorm2d | ViewBatchNorm1d) and m.views == 2 for m in bns)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the aten .out path and the F.batch_norm path
def test_per_group_batchnorm_is_separate_batchnorms(dtype):
    """views x groups chunks (view-major) normalised separately; running statistics from group 0
    of each view, view 0 first; gradients as if each chunk had its own call."""
    from gpaco.models.view_bn import per_group_batchnorm
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)).to(dtype)
    ref = copy.deepcopy(net)
    x = torch.randn(2 * 3 * 4, 3, 6, 6, dtype=dtype)  # 2 views x 3 groups x 4 samples
    with per_group_batchnorm(net, views=2, groups=3):
        y = net(x)
    chunks = x.chunk(6)
    outs = []
    bn = ref[1]
    for i, chunk in enumerate(chunks):
        if i % 3:  # groups 1, 2: batch statistics only, running statistics untouched
            outs.append(F.batch_norm(ref[0](chunk), None, None, bn.weight, bn.bias, True, 0.0, bn.eps))
        else:
            outs.append(bn(ref[0](chunk)))
    y_ref = torch.cat(outs)
    assert torch.allclose(y, y_ref, atol=1e-5)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4 * q.grad.abs().max().item())
    for a, b in zip(net[1].buffers(), ref[1].buffers()):
        assert torch.allclose(a.to(b.dtype), b, atol=1e-6)
    assert net[1].num_batches_tracked.item() == 2
    assert type(net[1]).forward is net[1].forward.__func__  # patched forward removed


def test_device_batch_groups_the_contrast_set():
    """GPaCo with device_batch 2 of a batch of 4: features [2 groups, 2 + 2 + K, D], each group's
    rows its own q, k and the whole queue; logits [2, 4, C] (q then k of the group)."""
    torch.manual_seed(0)
    model = build_model("gpaco", "resnet8", C, proj_dim=D, queue_size=K, device_batch=2)
    im_q, im_k, y = _batch()
    queue_before = model.queue.features.clone()
    out = model(im_q[:4], im_k[:4], y[:4])
    assert out.features.shape == (2, 4 + K, D) and out.labels.shape == (2, 4 + K)
    assert out.logits.shape == (2, 4, C) and out.num_anchors == 4
    assert torch.equal(out.labels[1, :4], torch.cat([y[2:4], y[2:4]]))
    assert torch.equal(out.features[0, 4:], queue_before) and torch.equal(out.features[1, 4:], queue_before)
    assert torch.isfinite(paco_loss(*out, alpha=0.05, temperature=0.2))
    assert torch.isfinite(multitask_loss(*out, alpha=0.5, temperature=0.2))
    with pytest.raises(ValueError, match="--device-batch 3 must divide the per-process batch 4"):
        build_model("gpaco", "resnet8", C, proj_dim=D, queue_size=K, device_batch=3)(im_q, im_k, y)


def test_gpaco_keeps_two_passes_with_sync_batchnorm():
    from gpaco.models.view_bn import supports_one_pass
    model = _gpaco()
    assert supports_one_pass(model.encoder)
    assert not supports_one_pass(nn.SyncBatchNorm.convert_sync_batchnorm(model).encoder)


def test_gpaco_single_view():
    model = _gpaco(single_view=True)
    im_q, _, y = _batch()
    out = model(im_q, None, y)
    assert out.features.shape == (B + K, D) and out.num_anchors == B and out.logits.shape == (B, C)
    assert torch.equal(out.labels[:B], y)
    assert torch.equal(model.queue.features[:B], out.features[:B].detach())


def test_gpaco_full_step_with_losses_and_eval():
    model = _gpaco()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, fn in enumerate((paco_loss, multitask_loss)):
        out = model(*_batch(step))
        loss = fn(out.features, out.labels, out.logits, out.num_anchors, alpha=0.5, temperature=0.07)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        assert model.encoder.projection[0].weight.grad is not None
        opt.step()
    assert model.queue.ptr.item() == 2 * B
    model.eval()
    with torch.no_grad():
        assert model(_batch()[0]).shape == (B, C)


# ----------------------------------------------------------------------------- build_model / CE

def test_build_model_dispatch():
    kw = dict(proj_dim=D, queue_size=K, momentum=0.99)
    assert isinstance(build_model("ce", "resnet8", C, **kw), Classifier)
    assert isinstance(build_model("balanced_ce", "resnet8", C), Classifier)
    paco = build_model("paco", "resnet8", C, **kw)
    assert isinstance(paco, PaCoModel) and paco.momentum == 0.99
    assert isinstance(build_model("gpaco", "resnet8", C, **kw), GPaCoModel)
    mt = build_model("multitask", "resnet8", C, proj_dim=D, queue_size=K)
    assert isinstance(mt, GPaCoModel) and mt.queue.size == K
    with pytest.raises(ValueError, match="unknown classification method"):
        build_model("moco", "resnet8", C)
    with pytest.raises(ValueError, match="global batch"):
        build_model("paco", "resnet8", C, queue_size=100, global_batch=64)


def test_classifier_forward():
    model = build_model("ce", "resnet8", C)
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 64
    assert model(torch.randn(B, 3, 32, 32)).shape == (B, C)
    assert set(k.split(".")[0] for k in model.state_dict()) == {"backbone", "fc"}


# ----------------------------------------------------------------------------- distributed (1 process)

def test_distributed_helpers_single_process(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = gdist.init_distributed()
    assert (info.rank, info.world_size, info.distributed) == (0, 1, False)
    assert gdist.get_rank() == 0 and gdist.get_world_size() == 1 and gdist.is_main_process()
    gdist.barrier()
    t = torch.randn(3, 2, requires_grad=True)
    gathered = gdist.all_gather_nograd(t)
    assert torch.equal(gathered, t) and not gathered.requires_grad
    counts = [torch.tensor([3, 1])]
    assert gdist.all_reduce_counts(counts) is counts and gdist.agree([True, False], t.device) == [True, False]
    torch.manual_seed(0)
    x = torch.arange(16.0)[:, None].repeat(1, 3)
    shuffled, idx = gdist.batch_shuffle(x)
    assert not torch.equal(shuffled, x) and torch.equal(shuffled.sort(dim=0).values, x)
    assert torch.equal(gdist.batch_unshuffle(shuffled, idx), x)
    gdist.cleanup()
