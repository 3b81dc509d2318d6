"""MAE ViT fine-tuning on the one engine: models, --finetune loading, layer decay, the
per-iteration schedule, gradient accumulation, mixup/erasing, recipes (docs/method.md#mae-vits, #learning-rate-schedules)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from gpaco.data.build import train_loader
from gpaco.data.splits import SplitDataset
from gpaco.data.transforms import NORMALIZATION, build_train_transform
from gpaco.classification import train as trainer
from gpaco.classification.args import parse_train_args
from gpaco.engine.step import FitContext, train_epoch
from gpaco.methods import build_criterion, get_method
from gpaco.classification.task import batch_transform, finetune_from, model_kwargs, optimizer_kwargs
from gpaco.engine.optim import build_optimizer, param_groups, vit_layer_id
from gpaco.engine.schedule import LRSchedule, schedule_from_flags
from gpaco.methods.rebuild import build_model
from gpaco.models import create_backbone
from gpaco.models.vit import (
    MAE_ARCHS, MAEProjection, find_vit, interpolate_pos_embed, load_mae_checkpoint, register_archs,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = "mae_vit_tiny_d2_patch8"  # embed 64, depth 2, 4 heads, patch 8, 32 px
MAE_SH = ROOT / "sh" / "GPaCo" / "MAE-ViTs"


def tiny_gpaco(num_classes=10, queue=64, **kw):
    return build_model("gpaco", TINY, num_classes, queue_size=queue, projection_act="gelu",
                       backbone_kwargs={"img_size": 32}, **kw)


def mae_layout(embed, depth, patch, grid, *, decoder=False, head_classes=None):
    """A state dict with the key names and shapes of an MAE pre-training checkpoint (the
    encoder of MAE's models_mae: cls/pos/patch_embed, blocks, final norm), random values."""
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    sd = {"cls_token": r(1, 1, embed), "pos_embed": r(1, 1 + grid * grid, embed),
          "patch_embed.proj.weight": r(embed, 3, patch, patch), "patch_embed.proj.bias": r(embed)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": r(embed), b + "norm1.bias": r(embed),
                   b + "attn.qkv.weight": r(3 * embed, embed), b + "attn.qkv.bias": r(3 * embed),
                   b + "attn.proj.weight": r(embed, embed), b + "attn.proj.bias": r(embed),
                   b + "norm2.weight": r(embed), b + "norm2.bias": r(embed),
                   b + "mlp.fc1.weight": r(4 * embed, embed), b + "mlp.fc1.bias": r(4 * embed),
                   b + "mlp.fc2.weight": r(embed, 4 * embed), b + "mlp.fc2.bias": r(embed)})
    sd.update({"norm.weight": r(embed), "norm.bias": r(embed)})
    if decoder:
        sd.update({"mask_token": r(1, 1, 16), "decoder_embed.weight": r(16, embed), "decoder_embed.bias": r(16)})
    if head_classes:
        sd.update({"head.weight": r(head_classes, embed), "head.bias": r(head_classes)})
    return sd




# ----------------------------------------------------------------------------- the model

def test_mae_vit_layout():
    register_archs()
    vit, dim = create_backbone(TINY, img_size=32)
    assert dim == 64 and vit.global_pool == "avg" and vit.num_prefix_tokens == 1
    assert isinstance(vit.norm, torch.nn.Identity) and isinstance(vit.fc_norm, torch.nn.LayerNorm)
    assert vit.fc_norm.eps == 1e-6 and vit.patch_embed.grid_size == (4, 4)
    x = torch.randn(3, 3, 32, 32)
    vit.eval()
    tokens = vit.forward_features(x)  # [B, 1 + 16, E]
    # MAE's global pool: mean of the patch tokens (class token excluded), then fc_norm.
    assert torch.allclose(vit(x), vit.fc_norm(tokens[:, 1:].mean(1)), atol=1e-6)
    assert vit(torch.randn(1, 3, 64, 64)).shape == (1, 64)  # other sizes: pos_embed resampled on the fly


def test_gpaco_vit_projection_and_forward():
    model = tiny_gpaco()
    proj = model.encoder.projection
    assert isinstance(proj, MAEProjection)
    assert [type(m).__name__ for m in proj] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert proj[0].in_features == proj[4].in_features == 64 and proj[4].out_features == 128
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = model.train()(x, x, y)
    assert out.features.shape == (8 + 64, 128) and out.logits.shape == (8, 10) and out.num_anchors == 8
    sv = build_model("gpaco", TINY, 10, queue_size=64, single_view=True, backbone_kwargs={"img_size": 32})
    out = sv.train()(x, None, y)
    assert out.features.shape == (4 + 64, 128) and out.num_anchors == 4


# ----------------------------------------------------------------------------- layer decay

def test_layer_decay_groups_two_block_vit():
    """Every parameter of a 2-block GPaCo ViT against hand-computed (lr_scale, weight decay).

    depth L = 2 -> scale = ld ** (3 - layer): patch/cls/pos ld^3, block 0 ld^2, block 1 ld,
    fc_norm / projection / centers 1. wd 0 for 1-D params and pos_embed/cls_token.
    """
    model = tiny_gpaco()
    ld, wd = 0.5, 0.05
    groups = param_groups(model, weight_decay=wd, layer_decay=ld)
    got = {}
    for g in groups:
        for p in g["params"]:
            got[p] = (g["lr_scale"], g["weight_decay"])
    names = dict(model.named_parameters())
    assert len(got) == len(names)  # each parameter in exactly one group

    def block(i, scale):
        b = f"encoder.backbone.blocks.{i}."
        return {b + "norm1.weight": (scale, 0.0), b + "norm1.bias": (scale, 0.0),
                b + "attn.qkv.weight": (scale, wd), b + "attn.qkv.bias": (scale, 0.0),
                b + "attn.proj.weight": (scale, wd), b + "attn.proj.bias": (scale, 0.0),
                b + "norm2.weight": (scale, 0.0), b + "norm2.bias": (scale, 0.0),
                b + "mlp.fc1.weight": (scale, wd), b + "mlp.fc1.bias": (scale, 0.0),
                b + "mlp.fc2.weight": (scale, wd), b + "mlp.fc2.bias": (scale, 0.0)}

    want = {
        "encoder.backbone.cls_token": (0.125, 0.0), "encoder.backbone.pos_embed": (0.125, 0.0),
        "encoder.backbone.patch_embed.proj.weight": (0.125, wd), "encoder.backbone.patch_embed.proj.bias": (0.125, 0.0),
        **block(0, 0.25), **block(1, 0.5),
        "encoder.backbone.fc_norm.weight": (1.0, 0.0), "encoder.backbone.fc_norm.bias": (1.0, 0.0),
        "encoder.projection.0.weight": (1.0, wd), "encoder.projection.0.bias": (1.0, 0.0),
        "encoder.projection.2.weight": (1.0, wd), "encoder.projection.2.bias": (1.0, 0.0),
        "encoder.projection.4.weight": (1.0, wd), "encoder.projection.4.bias": (1.0, 0.0),
        "fc.weight": (1.0, wd), "fc.bias": (1.0, 0.0),
    }
    assert set(want) == set(names)
    assert {n: got[p] for n, p in names.items()} == want
    # 4 layers x {decay, no_decay}
    assert sorted(g["name"] for g in groups) == sorted(f"layer_{i}_{d}" for i in range(4)
                                                       for d in ("decay", "no_decay"))
    assert [vit_layer_id(n, 2) for n in ("pos_embed", "patch_embed.proj.weight", "blocks.1.mlp.fc1.bias",
                                          "fc_norm.weight")] == [0, 0, 2, 3]


def test_optimizer_factory(tmp_path):
    args = parse_train_args(["--train-list", "x", "--arch", TINY, "--optimizer", "adamw", "--blr", "1e-3",
                             "--batch-size", "64", "--accum-iter", "2", "--layer-decay", "0.5", "--wd", "0.05"])
    assert args.lr == 1e-3 * 128 / 256
    opt = build_optimizer(tiny_gpaco(), **optimizer_kwargs(args))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    for g in opt.param_groups:  # each group starts at lr * lr_scale
        assert g["lr"] == pytest.approx(args.lr * g["lr_scale"])
    LRSchedule.apply(opt, 0.2)
    assert sorted({round(g["lr"], 12) for g in opt.param_groups}) == [0.025, 0.05, 0.1, 0.2]
    # The ResNet recipes' optimizer is unchanged: one SGD group, weight decay on everything.
    args = parse_train_args(["--train-list", "x", "--arch", "resnet8", "--method", "ce"])
    model = build_model("ce", "resnet8", 10)
    opt = build_optimizer(model, **optimizer_kwargs(args))
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert g["weight_decay"] == 5e-4 and g["lr"] == 0.02 and g["momentum"] == 0.9 and "lr_scale" not in g
    assert len(g["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="needs a ViT"):
        param_groups(model, weight_decay=0.1, layer_decay=0.7)


# ----------------------------------------------------------------------------- pos_embed / --finetune

def test_pos_embed_interpolation():
    pe = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pe, (4, 4)) is pe  # same grid: identity
    up = interpolate_pos_embed(pe, (6, 6))
    assert up.shape == (1, 37, 8) and torch.equal(up[:, :1], pe[:, :1])  # the class token row is kept
    # Same numbers as timm's resampler with MAE's settings (bicubic, no antialias).
    from timm.layers import resample_abs_pos_embed

    ref = resample_abs_pos_embed(pe, new_size=[6, 6], num_prefix_tokens=1, interpolation="bicubic", antialias=False)
    assert torch.allclose(up, ref, atol=1e-6)
    # A constant field stays constant; up then down returns a smooth field closely.
    const = torch.cat([torch.zeros(1, 1, 2), torch.full((1, 16, 2), 0.3)], 1)
    assert torch.allclose(interpolate_pos_embed(const, (7, 7))[:, 1:], torch.tensor(0.3), atol=1e-6)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 8), torch.linspace(0, 1, 8), indexing="ij")
    smooth = torch.cat([torch.zeros(1, 1, 1), (torch.sin(2 * yy + xx)).reshape(1, 64, 1)], 1)
    back = interpolate_pos_embed(interpolate_pos_embed(smooth, (16, 16)), (8, 8))
    assert torch.allclose(back, smooth, atol=1e-2)  # max error here 3.4e-3


def test_finetune_loads_mae_layout_small_vit(tmp_path):
    """An MAE checkpoint ({'model': ...}, pre-trained at 64 px = 8x8 grid) into the 32 px ViT (4x4)."""
    sd = mae_layout(64, 2, 8, grid=8, head_classes=1000)
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": sd}, path)
    model = tiny_gpaco()
    res = load_mae_checkpoint(model.backbone, torch.load(path, weights_only=True))
    assert res.missing == ["fc_norm.bias", "fc_norm.weight"]
    assert res.unexpected == ["norm.bias", "norm.weight"]
    assert res.dropped_head == ["head.bias", "head.weight"]
    assert res.pos_embed_resized == ((8, 8), (4, 4))
    vit = model.backbone
    assert torch.equal(vit.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
    assert torch.equal(vit.cls_token, sd["cls_token"])
    assert torch.allclose(vit.pos_embed, interpolate_pos_embed(sd["pos_embed"], (4, 4)))
    # With the decoder kept (a full pre-training checkpoint) the decoder keys are unexpected too.
    res = load_mae_checkpoint(tiny_gpaco().backbone, {"model": mae_layout(64, 2, 8, grid=4, decoder=True)})
    assert res.unexpected == ["decoder_embed.bias", "decoder_embed.weight", "mask_token", "norm.bias",
                              "norm.weight"]
    assert res.pos_embed_resized is None
    # Through the trainer: the centers start at trunc-normal(2e-5), bias 0.
    model = tiny_gpaco()
    finetune_from(model, str(path))
    assert model.fc.weight.abs().max() < 1e-4 and 0 < model.fc.weight.std() < 4e-5
    assert torch.count_nonzero(model.fc.bias) == 0
    with pytest.raises(RuntimeError, match="does not fit"):
        load_mae_checkpoint(tiny_gpaco().backbone, {"model": mae_layout(64, 2, 4, grid=8)})  # patch 4


@pytest.mark.slow
def test_finetune_loads_mae_layout_vit_b(tmp_path):
    torch.manual_seed(0)
    sd = {k: v.half() for k, v in mae_layout(768, 12, 16, grid=14).items()}
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": sd}, path)
    del sd
    register_archs()
    vit, dim = create_backbone("mae_vit_base_patch16")
    assert dim == 768 and sum(p.numel() for p in vit.parameters()) == 85_798_656
    res = load_mae_checkpoint(vit, torch.load(path, weights_only=True))
    assert (res.missing, res.unexpected, res.dropped_head, res.pos_embed_resized) == (
        ["fc_norm.bias", "fc_norm.weight"], ["norm.bias", "norm.weight"], [], None)


# ----------------------------------------------------------------------------- schedule / loop

def recipe_argv(name, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "EXTRA_ARGS", "PRETRAINED")}
    full.update(GPACO_PRINT_ARGV="1", **env)
    proc = subprocess.run(["bash", str(MAE_SH / f"{name}.sh")], env=full, capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("GPACO_ARGV ")][0]
    return json.loads(line[len("GPACO_ARGV "):])


def test_mae_schedule_through_the_trainer(refvectors):
    """lr_schedules.json's MAE samples from the recipe's flags, through schedule_from_flags."""
    ref = json.loads((refvectors / "lr_schedules.json").read_text())["vit_b_gpaco"]
    args = parse_train_args(recipe_argv("finetune_base_mae_gpaco"))
    assert args.lr == ref["lr"] and args.min_lr == ref["min_lr"]
    assert (args.epochs, args.warmup_epochs) == (ref["epochs"], ref["warmup"])
    sched = schedule_from_flags(args.schedule, vars(args))
    assert sched.per_iteration and sched.name == "mae_cosine"
    for frac, want in ref["at_fractional_epochs"].items():
        epoch = int(float(frac))
        it = round((float(frac) - epoch) * 100)
        assert sched(epoch, it, 100) == want, frac  # bit-exact
    # The ResNet recipes keep their per-epoch schedule.
    lt = json.loads((refvectors / "lr_schedules.json").read_text())["imagenet_lt_r50_paco"]
    args = parse_train_args(["--train-list", "x", "--lr", "0.02", "--epochs", "400", "--warmup-epochs", "10"])
    sched = schedule_from_flags(args.schedule, vars(args))
    assert not sched.per_iteration and [sched(e) for e in range(400)] == lt["per_epoch"]


class _Loader(list):
    """A list of batches with the sampler API train_epoch does not need."""


def _epoch(model, criterion, loader, optimizer, *, epoch, method="ce", accum_iter=1, lr_schedule=None,
           mixup_fn=None, random_erasing=None):
    """One engine epoch of ``method``'s step over ``loader`` on the CPU."""
    ctx = FitContext(model=model, criterion=criterion, optimizer=optimizer, method=get_method(method),
                     device=torch.device("cpu"), accum_iter=accum_iter, schedule=lr_schedule,
                     to_batch=batch_transform(mixup_fn=mixup_fn, random_erasing=random_erasing))
    return train_epoch(ctx, loader, epoch=epoch)


def _recording(optimizer):
    seen = []
    step = optimizer.step

    def wrapped(*a, **k):
        seen.append([g["lr"] for g in optimizer.param_groups])
        return step(*a, **k)

    optimizer.step = wrapped
    return seen


def test_loop_per_iteration_lr_and_accumulation():
    """10 micro-batches, accum 2: 5 steps, each at sched(epoch, it, 10) x lr_scale of the cycle start;
    the accumulated gradient equals the mean of the micro-batch gradients."""
    torch.manual_seed(0)
    args = parse_train_args(["--train-list", "x", "--arch", TINY, "--method", "ce", "--optimizer", "adamw",
                             "--lr", "1e-3", "--layer-decay", "0.5", "--schedule", "mae_cosine", "--epochs", "4",
                             "--warmup-epochs", "1", "--min-lr", "1e-5"])
    model = build_model("ce", TINY, 10, backbone_kwargs={"img_size": 32})
    opt = build_optimizer(model, **optimizer_kwargs(args))
    sched = schedule_from_flags(args.schedule, vars(args))
    batches = _Loader((torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(10))
    seen = _recording(opt)
    crit = build_criterion("ce")
    _epoch(model, crit, batches, opt, epoch=1, accum_iter=2, lr_schedule=sched)
    scales = [g["lr_scale"] for g in opt.param_groups]
    assert len(seen) == 5
    for k, lrs in enumerate(seen):
        base = sched(1, 2 * k, 10)
        assert lrs == [base * s for s in scales]
    # accumulation == one big batch (no dropout/drop-path in this model; LayerNorm only)
    model.eval()
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    two = _Loader([(x[:3], y[:3]), (x[3:], y[3:])])
    model.train()
    grads = {}

    def grab(*a, **k):
        grads.update({n: p.grad.clone() for n, p in model.named_parameters()})

    sgd.step = grab
    _epoch(model, crit, two, sgd, epoch=0, accum_iter=2)
    model.zero_grad()
    crit(model(x[:3]), y[:3]).div(2).add(crit(model(x[3:]), y[3:]).div(2)).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-6), n


def test_no_sync_on_non_final_micro_batches():
    class FakeDDP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(4, 3)
            self.entered = 0

        def forward(self, x):
            return self.inner(x)

        def no_sync(self):
            import contextlib

            self.entered += 1
            return contextlib.nullcontext()

    m = FakeDDP()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    batches = _Loader((torch.randn(2, 4), torch.randint(0, 3, (2,))) for _ in range(8))
    _epoch(m, build_criterion("ce"), batches, opt, epoch=0, accum_iter=4)
    assert m.entered == 6  # micro-batches 1-3 and 5-7 of each cycle of 4


def test_mixup_and_erasing_in_the_loop():
    from timm.data.mixup import Mixup
    from timm.data.random_erasing import RandomErasing

    torch.manual_seed(0)
    seen = {}

    def crit(out, target):
        seen["target"] = target
        return build_criterion("ce")(out, target)

    model = build_model("ce", TINY, 10, backbone_kwargs={"img_size": 32})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    er = RandomErasing(1.0, mode="pixel", device="cpu")
    x = torch.zeros(4, 3, 32, 32)
    stats = _epoch(model, crit, _Loader([(x, torch.tensor([0, 1, 2, 3]))]), opt, epoch=0, mixup_fn=mix,
                   random_erasing=er)
    t = seen["target"]
    assert t.shape == (4, 10) and t.is_floating_point() and torch.allclose(t.sum(1), torch.ones(4))
    assert torch.count_nonzero(x) > 0  # erased in place with random pixels
    assert 0 <= stats["train_top1"] <= 100


def test_gpaco_vit_steps_lower_the_loss(demo_data):
    """A tiny GPaCo ViT (the MAE recipe's loss, AdamW, layer decay) on one fixed demo batch."""
    torch.manual_seed(0)
    mean, std = NORMALIZATION["mnist"]
    tf = build_train_transform("sim_cifar_sim_cifar", image_size=32, mean=mean, std=std)
    ds = SplitDataset(str(demo_data / "train_small.txt"), str(demo_data), tf)
    images, labels = next(iter(train_loader(ds, batch_size=32, workers=0, rank=0, world_size=1, seed=0,
                                            pin_memory=False)))
    model = tiny_gpaco(queue=64)
    crit = build_criterion("gpaco", alpha=0.2, temperature=0.2, smoothing=0.1, prior=False)
    args = parse_train_args(["--train-list", "x", "--arch", TINY, "--optimizer", "adamw", "--lr", "1e-3",
                             "--layer-decay", "0.65", "--wd", "0.05"])
    opt = build_optimizer(model, **optimizer_kwargs(args))
    losses = []
    for _ in range(10):
        stats = _epoch(model, crit, _Loader([(images, labels)]), opt, epoch=0, method="gpaco")
        losses.append(stats["train_loss"])
    # after the random initial queue has been replaced (K = 2 batches), the loss goes down
    assert losses[-1] < losses[2] < losses[0], losses


# ----------------------------------------------------------------------------- flags / recipes

def test_flag_validation():
    base = ["--train-list", "x"]
    a = parse_train_args(base + ["--sched", "cosine_epoch"])
    assert a.schedule == "cosine" and a.optimizer == "sgd" and a.accum_iter == 1 and a.lr == 0.02
    with pytest.raises(SystemExit, match="--mixup"):
        parse_train_args(base + ["--method", "gpaco", "--mixup", "0.8"])
    with pytest.raises(SystemExit, match="single-view"):
        parse_train_args(base + ["--method", "gpaco", "--single-view", "--aug", "randclsstack_sim"])
    with pytest.raises(SystemExit, match="accum-iter"):
        parse_train_args(base + ["--accum-iter", "0"])
    a = parse_train_args(base + ["--method", "gpaco", "--single-view"])
    assert a.aug == "randclsstack"
    with pytest.raises(SystemExit, match="--proj-act is an option of --method gpaco/multitask, not paco"):
        parse_train_args(base + ["--method", "paco", "--proj-act", "gelu"])
    kw = model_kwargs(parse_train_args(base + ["--method", "gpaco", "--arch", TINY, "--image-size", "32",
                                                       "--drop-path", "0.1"]))
    assert kw["projection_act"] == "auto" and kw["backbone_kwargs"] == {"img_size": 32}
    assert kw["drop_path_rate"] == 0.1
    # "auto": the MAE ViTs' GELU MLP, the ResNets' ReLU one
    from gpaco.models.vit import MAEProjection
    from gpaco.models.heads import GPaCoProjection
    vit = build_model("gpaco", TINY, 10, queue_size=64, projection_act="auto", backbone_kwargs={"img_size": 32})
    assert isinstance(vit.encoder.projection, MAEProjection)
    res = build_model("gpaco", "resnet8", 10, queue_size=64, projection_act="auto")
    assert type(res.encoder.projection) is GPaCoProjection


MAE_EXPECTED = {
    "finetune_base_mae": dict(
        method="ce", arch="mae_vit_base_patch16", epochs=100, lr=2e-3, blr=5e-4, batch_size=256, accum_iter=4,
        optimizer="adamw", layer_decay=0.65, wd=0.05, drop_path=0.1, schedule="mae_cosine", warmup_epochs=5,
        min_lr=1e-6, mixup=0.8, cutmix=1.0, label_smoothing=0.1, reprob=0.25, remode="pixel", aug="timm_randaug",
        randaug_n=2, randaug_m=9, amp="fp16", interpolation="bicubic", image_size=224, resize_size=256),
    "finetune_base_mae_gpaco": dict(
        method="gpaco", arch="mae_vit_base_patch16", epochs=100, lr=2e-3, layer_decay=0.65, drop_path=0.1,
        alpha=0.2, temperature=0.2, smoothing=0.1, prior=False, queue_size=8192, proj_act="gelu",
        aug="randclsstack_sim", randaug_n=12, randaug_m=10, mixup=0.0, cutmix=0.0, reprob=0.0, single_view=False),
    "finetune_base_mae_multitask": dict(
        method="multitask", alpha=0.5, temperature=0.2, label_smoothing=0.1, prior=False, randaug_n=12, lr=2e-3),
    "finetune_base_mae_singleview": dict(
        method="gpaco", single_view=True, aug="randclsstack", randaug_n=12, alpha=0.2, smoothing=0.1, lr=2e-3),
    "finetune_large_mae": dict(
        method="ce", arch="mae_vit_large_patch16", epochs=50, blr=1e-3, lr=4e-3, batch_size=128, accum_iter=8,
        layer_decay=0.75, drop_path=0.2, mixup=0.8, cutmix=1.0, reprob=0.25, label_smoothing=0.1),
    "finetune_large_mae_gpaco": dict(
        method="gpaco", arch="mae_vit_large_patch16", epochs=50, lr=4e-3, layer_decay=0.75, drop_path=0.2,
        alpha=0.2, temperature=0.2, smoothing=0.1, randaug_n=12, randaug_m=10, mixup=0.0),
}


@pytest.mark.parametrize("name", sorted(MAE_EXPECTED))
def test_mae_recipe_hyperparameters(name):
    argv = recipe_argv(name)
    args = parse_train_args(argv)
    assert {k: getattr(args, k) for k in MAE_EXPECTED[name]} == MAE_EXPECTED[name]
    size = "base" if "base" in name else "large"
    assert argv[argv.index("--finetune") + 1] == f"pretrained/mae_pretrain_vit_{size}.pth"
    assert "--finetune" not in recipe_argv(name, PRETRAINED="")
    assert args.queue_size % args.batch_size == 0 and args.resume == "auto"


def test_mae_eval_recipe():
    from gpaco.classification.evaluate import build_eval_parser

    argv = recipe_argv("finetune_base_mae_gpaco_eval")
    args = build_eval_parser().parse_args(argv)
    assert args.checkpoint == "runs/GPaCo/MAE-ViTs/finetune_base_mae_gpaco/best.pth"
    assert (args.arch, args.method, args.interpolation, args.resize_size) == ("mae_vit_base_patch16", "gpaco",
                                                                              "bicubic", 256)


def test_archs_registered():
    import timm

    register_archs()
    assert all(timm.is_model(n) for n in MAE_ARCHS)
    assert find_vit(build_model("ce", "resnet8", 10)) is None


# ----------------------------------------------------------------------------- end to end

def vit_args(data, out, *extra):
    return ["--data-root", str(data), "--train-list", str(data / "train_small.txt"), "--val-list",
            str(data / "val.txt"), "--test-list", str(data / "test_small.txt"), "--arch", TINY,
            "--image-size", "32", "--resize-size", "32", "--norm", "mnist", "--batch-size", "32",
            "--accum-iter", "2", "--optimizer", "adamw", "--blr", "1e-3", "--layer-decay", "0.65", "--wd", "0.05",
            "--schedule", "mae_cosine", "--warmup-epochs", "1", "--min-lr", "1e-6", "--drop-path", "0.1",
            "--workers", "0", "--print-freq", "0", "--output-dir", str(out), *extra]


@pytest.mark.slow
def test_vit_gpaco_finetune_and_resume_exact(demo_data, tmp_path):
    """--finetune from a local MAE-layout file, accumulation, per-iteration LR; --resume is exact."""
    ckpt = tmp_path / "mae.pth"
    torch.save({"model": mae_layout(64, 2, 8, grid=8)}, ckpt)
    common = ["--method", "gpaco", "--aug", "sim_cifar_sim_cifar", "--queue-size", "64", "--alpha", "0.2",
              "--smoothing", "0.1", "--no-prior", "--finetune", str(ckpt), "--epochs", "3", "--seed", "1"]
    straight = tmp_path / "straight"
    trainer.main(vit_args(demo_data, straight, *common))
    split = tmp_path / "split"
    assert trainer.main(vit_args(demo_data, split, *common, "--stop-after", "1")) == {"stopped_at_epoch": 1}
    trainer.main(vit_args(demo_data, split, *common, "--resume", "auto"))
    a = torch.load(straight / "checkpoint.pth", weights_only=True)
    b = torch.load(split / "checkpoint.pth", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    # the logged LR is the last one the loop set: 7 micro-batches, cycles start at 0, 2, 4, 6
    args = parse_train_args(vit_args(demo_data, straight, *common))
    sched = schedule_from_flags(args.schedule, vars(args))
    assert [r["lr"] for r in log] == [sched(e, 6, 7) for e in range(3)]
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics == json.loads((split / "metrics.json").read_text())
    # tools/eval.py rebuilds the ViT from the checkpoint's flags and reproduces the test metrics
    from gpaco.classification import evaluate as evaluator

    ev = evaluator.main(["--checkpoint", str(straight / "best.pth"), "--data-root", str(demo_data), "--test-list",
                         str(demo_data / "test_small.txt"), "--image-size", "32", "--resize-size", "32", "--norm",
                         "mnist", "--batch-size", "50", "--workers", "0", "--output-dir", str(tmp_path / "eval")])
    for key in ("top1", "top5", "num_samples"):
        assert ev[key] == pytest.approx(metrics[key]), key


@pytest.mark.slow
def test_vit_ce_mixup_and_single_view_train(demo_data, tmp_path):
    r = trainer.main(vit_args(demo_data, tmp_path / "ce", "--method", "ce", "--aug", "none", "--mixup", "0.8",
                              "--cutmix", "1.0", "--label-smoothing", "0.1", "--reprob", "0.25", "--epochs", "2"))
    assert r["num_samples"] > 0
    r = trainer.main(vit_args(demo_data, tmp_path / "sv", "--method", "gpaco", "--single-view", "--aug", "none",
                              "--queue-size", "64", "--no-prior", "--epochs", "2"))
    assert r["num_samples"] > 0
