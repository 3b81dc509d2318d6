"""``--device-batch`` for CeCo segmentation: the CeCo branch's BatchNorm and class centres per
virtual device of N images, the loss averaged over the devices, as the original's per-GPU
statistics; the rest of the network keeps SyncBatchNorm.

The equality check runs two CPU processes of 2 images under torchrun (the original's
layout, one process per GPU) against one process with ``device_batch`` 2 on the same global
batch of 4 (tests/ceco_device_batch_worker.py): one torchrun launch serves the module.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_worker
from gpaco.engine.args import FlagError
from gpaco.losses.ceco import CeCoBranch, ceco_loss, class_centers_full
from gpaco.methods import get_method

WORKER = Path(__file__).with_name("ceco_device_batch_worker.py")


def _close(a: torch.Tensor, b: torch.Tensor, scale: float, what: str) -> None:
    """Equal within float32 rounding: |a - b| <= 1e-5 x scale (scale: the reference's magnitude)."""
    if not b.dtype.is_floating_point:
        assert torch.equal(a, b), what
        return
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert err <= 1e-5 * scale, f"{what}: max error {err:.3g} > 1e-5 x {scale:.3g}"


# ----------------------------------------------------------------------------- the branch and the loss


def test_branch_pools_each_virtual_device_separately():
    """device_batch 2 on 4 images = the branch on images 0-1 and on 2-3 (BN statistics and class
    centres of each pair), rows group-major; running statistics come from group 0 only."""
    torch.manual_seed(0)
    grouped = CeCoBranch(6, 5, variant="cecol", reduce_channels=4, hidden_channels=8, dropout=0.0, device_batch=2)
    single = CeCoBranch(6, 5, variant="cecol", reduce_channels=4, hidden_channels=8, dropout=0.0)
    single.load_state_dict(grouped.state_dict())
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(4, 6, 4, 4, generator=g), torch.randint(0, 5, (4, 16, 16), generator=g)
    labels[0][labels[0] == 4] = 1  # class 4 absent from device 0, whose class set then differs from the batch's
    labels[1][labels[1] == 4] = 255
    out = grouped(feats, labels)
    assert out["device_groups"] == 2
    parts = [single(feats[sl], labels[sl]) for sl in (slice(0, 2), slice(2, 4))]
    for key in ("center_logits", "center_labels", "centers"):
        _close(out[key], torch.cat([p[key] for p in parts]), 1.0, key)
    assert out["center_labels"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4]
    assert out["center_groups"].tolist() == [0] * 4 + [1] * 5
    # BN running statistics: group 0's update (as the original's rank 0, whose buffers DDP keeps)
    ref = CeCoBranch(6, 5, variant="cecol", reduce_channels=4, hidden_channels=8, dropout=0.0)
    ref.load_state_dict(grouped.state_dict())  # after the grouped call: reset the buffers below
    ref.reduce[1].reset_running_stats()
    ref(feats[:2], labels[:2])
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        _close(getattr(grouped.reduce[1], name), getattr(ref.reduce[1], name), 1.0, name)
    # the class means still equal the literal upsample-then-average per device
    u = grouped._reduce(feats, 2)
    centers, _ = class_centers_full(u[2:], labels[2:])
    _close(out["centers"][4:], centers, 1.0, "device 1 centres")
    with pytest.raises(ValueError, match="--device-batch 3 must divide the per-process batch 4"):
        CeCoBranch(6, 5, device_batch=3)(feats, labels)


def test_loss_is_the_mean_of_the_per_device_losses():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.tensor([0, 2, 4, 1, 2, 3, 4])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    prior = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.05, 0.05], dtype=torch.float64))
    kw = dict(log_prior=prior, smooth=0.5, weight=0.8)
    per_device = [ceco_loss(logits[groups == d], labels[groups == d], **kw) for d in (0, 1)]
    got = ceco_loss(logits, labels, center_groups=groups, device_groups=2, **kw)
    assert got.item() == pytest.approx((per_device[0] + per_device[1]).item() / 2, rel=1e-12)
    assert got.item() != pytest.approx(ceco_loss(logits, labels, **kw).item(), rel=1e-6)  # not the mean over rows
    # a device without labelled pixels has no rows and counts 0 in the mean (a GPU whose loss is 0)
    empty = ceco_loss(logits[:3], labels[:3], center_groups=groups[:3], device_groups=2, **kw)
    assert empty.item() == pytest.approx(per_device[0].item() / 2, rel=1e-12)
    with pytest.raises(ValueError, match="center_groups"):
        ceco_loss(logits, labels, device_groups=2, **kw)


def test_sync_batchnorm_keeps_the_branch_per_virtual_device():
    from torch.nn.modules.batchnorm import _BatchNorm

    from gpaco.models.seg import convert_sync_batchnorm

    model = convert_sync_batchnorm(get_method("ceco", "segmentation").build_model("r18", 5, device_batch=4))
    assert model.ceco.device_batch == 4 and type(model.ceco.reduce[1]) is nn.BatchNorm2d
    others = [m for n, m in model.named_modules() if isinstance(m, _BatchNorm) and not n.startswith("ceco.")]
    assert others and all(type(m) is nn.SyncBatchNorm for m in others)  # the main network: global statistics


# ----------------------------------------------------------------------------- flags


def test_flag_is_validated_and_belongs_to_ceco_methods():
    from gpaco.segmentation.train import parse_train_args

    args = parse_train_args(["--method", "cecol", "--device-batch", "4", "--batch-size", "16"])
    assert args.device_batch == 4
    for method in ("ce", "gpaco", "rr"):
        with pytest.raises(FlagError, match=f"--device-batch is an option of --method ceco/cecol, not {method}$"):
            parse_train_args(["--method", method, "--device-batch", "4"])
    with pytest.raises(FlagError, match=r"--device-batch 3 must divide --batch-size 16 \(the global batch"):
        parse_train_args(["--method", "ceco", "--device-batch", "3", "--batch-size", "16"])
    with pytest.raises(FlagError, match="--device-batch must be >= 1, got 0$"):
        parse_train_args(["--method", "ceco", "--device-batch", "0"])


def test_device_batch_must_divide_the_per_process_batch():
    import argparse

    from gpaco.segmentation.task import _device_batch

    args = argparse.Namespace(device_batch=4, batch_size=8, dry_run=False)
    assert _device_batch(args, 8, 1) == 4 and _device_batch(args, 4, 2) == 4
    with pytest.raises(FlagError, match=r"--device-batch 4 must divide the per-process batch 2 \(--batch-size 8 / "
                                        r"4 process\(es\)\); run on a number of GPUs that divides --batch-size / "
                                        r"--device-batch = 2$"):
        _device_batch(args, 2, 4)
    assert _device_batch(argparse.Namespace(device_batch=None, batch_size=8, dry_run=False), 8, 1) is None
    # a dry run (per-process batch --dry-run-batch) splits its batch in two groups
    assert _device_batch(argparse.Namespace(device_batch=4, batch_size=16, dry_run=True), 2, 1) == 1


def test_dry_run_goes_through_the_grouped_branch_and_records_the_option(tmp_path, capsys):
    from gpaco.segmentation import train as seg

    res = seg.main(["--dataset", "ade20k", "--data-root", str(tmp_path / "absent"), "--arch", "r18", "--method",
                    "ceco", "--batch-size", "16", "--device-batch", "4", "--output-dir", str(tmp_path / "out"),
                    "--dry-run", "--dry-run-crop", "32", "--dry-run-batch", "4"])
    assert res["dry_run"] is True and torch.isfinite(torch.tensor(res["ceco"]))
    assert ("--device-batch 4: 4 virtual devices (2 per process); the CeCo branch's BatchNorm and class centres "
            "work per group of 2 images, as on 4 GPUs (dry run: groups of 2)") in capsys.readouterr().out
    from gpaco.methods.rebuild import build_from_config, model_config

    cfg = model_config("ceco", "segmentation", "r18", 5, {"device_batch": 4, "etf_seed": 0, "ceco_scale": None})
    assert build_from_config(cfg).ceco.device_batch == 4  # a checkpoint's model rebuilds with it


# ----------------------------------------------------------------------------- one process per device


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same two steps on a global batch of 4: 2 processes x 2 images (torchrun), 1 process
    with device_batch 2, and 1 process without it."""
    from ceco_device_batch_worker import train

    out = tmp_path_factory.mktemp("ceco_device_batch") / "two.pt"
    run_worker(WORKER, out, "none", nproc=2)
    return {"2 processes": torch.load(out, weights_only=True), "1 process, device batch 2": train(2),
            "1 process": train(None)}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("method", ["ceco", "cecol"])
def test_device_batch_equals_one_process_per_device(layouts, method):
    """--device-batch 2 on one process trains what 2 processes of 2 train: global loss and each
    part, every device's centre logits, DDP-averaged gradients, parameters and BatchNorm running
    statistics (the CeCo branch's: rank 0's), over two steps."""
    ref, got = layouts["2 processes"][method], layouts["1 process, device batch 2"][method]
    for step in range(2):
        _close(got["loss"][step], ref["loss"][step], ref["loss"][step].abs().item(), f"step {step} loss")
        assert got["parts"][step].keys() == ref["parts"][step].keys() == {"ce", "aux", "ceco"}
        for k, v in ref["parts"][step].items():
            _close(got["parts"][step][k], v, v.abs().item(), f"step {step} {k}")
        assert torch.equal(got["center_labels"][step], ref["center_labels"][step])
        _close(got["center_logits"][step], ref["center_logits"][step], ref["center_logits"][step].abs().max().item(),
               f"step {step} centre logits")
        grads = ref["grads"][step]
        assert got["grads"][step].keys() == grads.keys() and grads
        scale = max(g.abs().max().item() for g in grads.values())
        for name, g in grads.items():
            _close(got["grads"][step][name], g, scale, f"step {step} grad {name}")
    assert got["state"].keys() == ref["state"].keys()
    for name, v in ref["state"].items():
        scale = v.abs().max().item() if v.dtype.is_floating_point else 1.0
        _close(got["state"][name], v, max(scale, 1e-3), name)
    assert int(ref["state"]["ceco.reduce.1.num_batches_tracked"]) == 2


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("method", ["ceco", "cecol"])
def test_without_device_batch_one_process_pools_the_whole_batch(layouts, method):
    """The check above is sensitive: without --device-batch one process pools its 4 images
    (other centres, another CeCo loss, other branch statistics), as the original on 1 GPU."""
    ref, plain = layouts["2 processes"][method], layouts["1 process"][method]
    assert plain["center_logits"][0].shape[0] < ref["center_logits"][0].shape[0]  # classes of the batch, once each
    if method == "ceco":  # (cecol's random classifier at scale 1 gives near-uniform logits: a near-constant loss)
        ceco = ref["parts"][0]["ceco"].item()
        assert abs(plain["parts"][0]["ceco"].item() - ceco) > 10 * 1e-5 * abs(ceco)  # 10x the tolerance above
    _close(plain["parts"][0]["ce"], ref["parts"][0]["ce"], ref["parts"][0]["ce"].item(), "pixel CE (not grouped)")
    for name in ("ceco.reduce.1.running_mean", "ceco.reduce.1.running_var"):  # group 0's vs the 4 images'
        a, b = plain["state"][name], ref["state"][name]
        assert (a - b).abs().max() > 10 * 1e-5 * b.abs().max(), name
