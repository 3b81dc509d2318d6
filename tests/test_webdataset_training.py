"""Training on label-free tar shards (``--dataset webdataset``, CC3M's layout) through tools/train.py:
shards this file writes from the demo digits (PNG images with captions, no labels), a GenDD
label-free run of ``--epoch-iters`` steps per epoch evaluated on the demo's split lists, stopped by
SIGTERM mid-epoch and resumed bit-identical; the KL baseline (``kl_kd --kd-ce-weight 0``); the
flags' errors (a method that needs labels, a missing --epoch-iters / --num-classes); the
``crop_flip06`` augmentation of GenDD's ImageNet stage 2 and CC3M runs."""
from __future__ import annotations

import json
import random
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

pytest.importorskip("webdataset")

from conftest import demo_flags  # noqa: E402
from gpaco.checkpoint import load_checkpoint  # noqa: E402
from gpaco.classification import train as trainer  # noqa: E402
from gpaco.classification.args import parse_train_args  # noqa: E402
from gpaco.data.build import build_train_dataset, data_fingerprint  # noqa: E402
from gpaco.data.transforms import NORMALIZATION, build_train_transform  # noqa: E402
from gpaco.engine.args import FlagError  # noqa: E402
from gpaco.engine.preemption import FAULT_ENV  # noqa: E402
from gpaco.models import build_classifier, to_original_state_dict  # noqa: E402

SHARDS = 4
PATTERN = "digits-{000000..000003}.tar"


@pytest.fixture(scope="module")
def shards(demo_data, tmp_path_factory):
    """The small demo train split's images (PNG bytes as stored) in 4 shards, each sample an
    image and a caption: the labels of the split list are left behind."""
    import webdataset as wds

    root = tmp_path_factory.mktemp("digit_shards")
    paths = [line.split()[0] for line in (demo_data / "train_small.txt").read_text().splitlines()]
    for s in range(SHARDS):
        with wds.TarWriter(str(root / f"digits-{s:06d}.tar")) as sink:
            for k, path in enumerate(paths[s::SHARDS]):
                sink.write({"__key__": f"{s:03d}{k:06d}", "png": (demo_data / path).read_bytes(),
                            "txt": "a handwritten digit"})
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A resnet8 teacher with random weights, as a torchvision-layout file (--teacher-arch resnet8)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wds_teacher") / "teacher.pth"
    torch.save({"model": to_original_state_dict(build_classifier("resnet8", 10).state_dict(), "resnet8")}, path)
    return path


def _flags(demo_data, shards, teacher, out, *extra):
    """A label-free run on the shards: 10 classes (the teacher's), val/test the demo split lists."""
    return demo_flags(demo_data) + [
        "--dataset", "webdataset", "--train-list", str(shards / PATTERN), "--num-classes", "10",
        "--teacher-weights", str(teacher), "--teacher-arch", "resnet8", "--aug", "crop_flip06", "--batch-size", "16",
        "--seed", "3", "--output-dir", str(out), *extra]


def _gendd(demo_data, shards, teacher, out, *extra):
    return trainer.main(_flags(demo_data, shards, teacher, out, *[
        "--method", "gendd", "--gendd-label-free", "--gendd-contraction", "0", "--gendd-token-dim", "16",
        "--gendd-width", "32", "--gendd-depth", "1", "--gendd-batch-mul", "2", "--gendd-steps", "4",
        "--optimizer", "adamw", "--wd", "0.05", "--lr", "2e-3", "--schedule", "constant", "--epochs", "2",
        "--epoch-iters", "4", "--workers", "2", *extra]))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 2 workers on a 1-CPU machine
def test_label_free_gendd_trains_evaluates_and_resumes_exactly(demo_data, shards, teacher, tmp_path, monkeypatch,
                                                               capsys):
    """2 epochs of 4 steps from the shards (2 loader workers, one stream of 2 shards each),
    validated and tested on the demo split lists through the teacher classifier (no
    many/medium/few: the shards have no class counts). SIGTERM at the 7th step (epoch 2 stops
    after 3 steps: the resumed epoch starts on the second stream) and --resume auto end with the
    uninterrupted run's weights, optimizer state and metrics."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    first = _gendd(demo_data, shards, teacher, straight)
    said = capsys.readouterr().out
    assert f"on {SHARDS} shard files (4 steps per epoch), 10 classes" in said
    assert "[epoch 2] val top-1 " in said and "(many — / medium — / few —)" in said
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "epoch" in r] == [1, 2]
    assert first["num_samples"] == len((demo_data / "test_small.txt").read_text().splitlines())
    assert first["many"] is None and "probe" in first["heads"]

    monkeypatch.setenv(FAULT_ENV, "sigterm_step7")
    assert _gendd(demo_data, shards, teacher, stopped) == {"preempted": True, "signal": "SIGTERM", "epoch": 1,
                                                           "step": 3}
    monkeypatch.delenv(FAULT_ENV)
    _gendd(demo_data, shards, teacher, stopped, "--resume", "auto")
    assert "epoch 2 step 3/4" in capsys.readouterr().out
    a, b = (load_checkpoint(d / "checkpoint.pth") for d in (straight, stopped))
    assert a["class_counts"] is None and a["args"]["epoch_iters"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for p, state in a["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, b["optimizer"]["state"][p][k]), (p, k)
    assert json.loads((straight / "metrics.json").read_text()) == json.loads((stopped / "metrics.json").read_text())

    # another worker count deals the shards out differently: said, not refused
    _gendd(demo_data, shards, teacher, stopped, "--resume", "auto", "--workers", "0")
    assert "read the shards with --workers 2, this run with 0" in capsys.readouterr().out


def test_kl_baseline_trains_without_labels(demo_data, shards, teacher, tmp_path, capsys):
    """kl_kd with --kd-ce-weight 0 (the CC3M KL baseline) trains on the shards: the loss is the
    KL term alone; the dry run reads the real shards too."""
    common = ["--method", "kl_kd", "--kd-ce-weight", "0", "--epoch-iters", "2", "--epochs", "1", "--lr", "0.05",
              "--warmup-epochs", "0"]
    trainer.main(_flags(demo_data, shards, teacher, tmp_path / "dry", *common, "--dry-run"))
    assert "dry run ok: 2 steps" in capsys.readouterr().out
    result = trainer.main(_flags(demo_data, shards, teacher, tmp_path / "kl", *common))
    assert result["num_samples"] > 0 and result["many"] is None
    (record,) = [json.loads(line) for line in (tmp_path / "kl" / "log.jsonl").read_text().splitlines()
                 if '"epoch"' in line]
    assert np.isfinite(record["train_loss"]) and record["train_loss"] > 0


# --------------------------------------------------------------------------- flags


def _parse(demo_data, shards, *extra):
    return parse_train_args(["--dataset", "webdataset", "--data-root", str(demo_data), "--train-list",
                             str(shards / PATTERN), *extra])


TEACHER = ("--teacher-weights", "t.pth")
LABEL_FREE_GENDD = ("--method", "gendd", "--gendd-label-free", "--optimizer", "adamw", *TEACHER)


@pytest.mark.parametrize("extra, message", [
    (("--epoch-iters", "5"), r"--dataset webdataset needs --num-classes: the shards' images have no labels"),
    (("--num-classes", "10"), r"--dataset webdataset needs --epoch-iters: .* \(it is a number of steps; CC3M 5501\)"),
    (("--num-classes", "10", "--epoch-iters", "0"), r"--epoch-iters must be > 0, got 0"),
    (("--method", "gendd", "--optimizer", "adamw", *TEACHER, "--num-classes", "10", "--epoch-iters", "5"),
     r"--method gendd trains on labels with these flags, and --dataset webdataset has none"),
    (("--method", "kl_kd", *TEACHER, "--num-classes", "10", "--epoch-iters", "5"),
     r"--method kl_kd trains on labels .* --method kl_kd --kd-ce-weight 0"),
    (("--method", "ikl_kd", *TEACHER, "--kd-ce-weight", "0", "--num-classes", "10", "--epoch-iters", "5"),
     r"--method ikl_kd trains on labels"),  # its class statistics are per label
    (("--method", "ce", "--num-classes", "10", "--epoch-iters", "5"), r"--method ce trains on labels"),
    ((*LABEL_FREE_GENDD, "--num-classes", "10", "--epoch-iters", "5", "--mixup", "0.2"),
     r"--mixup/--cutmix mix the labels, and --dataset webdataset has none"),
    ((*LABEL_FREE_GENDD, "--num-classes", "10", "--epoch-iters", "5", "--skip-bad-images"),
     r"--skip-bad-images is for split lists"),
])
def test_label_free_flag_errors_are_one_line(demo_data, shards, extra, message):
    with pytest.raises(FlagError, match=message) as e:
        _parse(demo_data, shards, *extra)
    assert "\n" not in str(e.value)


def test_epoch_iters_belongs_to_webdataset(demo_data, shards):
    with pytest.raises(FlagError, match=r"--epoch-iters is for --dataset webdataset .* --dataset split is one pass"):
        parse_train_args(demo_flags(demo_data) + ["--epoch-iters", "5"])
    args = _parse(demo_data, shards, *LABEL_FREE_GENDD, "--num-classes", "10", "--epoch-iters", "5")
    assert args.epoch_iters == 5 and args.aug == "crop_flip"  # the method's default aug


def test_ranks_compare_the_shard_list_not_a_length(demo_data, shards):
    """check_ranks_agree's fingerprint of the shards: the pattern, the number of shard files and
    the CRC-32 of their names (a node with a shard missing differs)."""
    kw = dict(dataset="webdataset", data_root=str(demo_data), aug="none", image_size=32, norm="mnist",
              num_classes=10, epoch_iters=3)
    images = build_train_dataset(train_list=str(shards / PATTERN), **kw)
    names = "\n".join(f"digits-{s:06d}.tar" for s in range(SHARDS)).encode()
    assert data_fingerprint(images) == {"file": str(shards / PATTERN), "samples": SHARDS, "classes": 10,
                                        "crc": zlib.crc32(names)}
    fewer = build_train_dataset(train_list=str(shards / "digits-00000[0-2].tar"), **kw)
    assert data_fingerprint(fewer)["samples"] == 3 and data_fingerprint(fewer)["crc"] != zlib.crc32(names)


# --------------------------------------------------------------------------- the augmentation


def test_crop_flip06_is_random_resized_crop_06_and_flip():
    """``crop_flip06`` (tensor fast path) = torchvision's RandomResizedCrop(S, scale (.6, 1)) +
    RandomHorizontalFlip on PIL from the same draws, pixels within one grey level; ``crop_flip``
    (scale .08-1) differs from it."""
    mean, std = NORMALIZATION["imagenet"]
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    ours = build_train_transform("crop_flip06", image_size=24, mean=mean, std=std)
    reference = T.Compose([T.RandomResizedCrop(24, scale=(0.6, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])
    one_level = 1.01 / 255 / min(std)
    differs = 0
    for seed in range(20):
        outs = []
        for t in (ours, reference, build_train_transform("crop_flip", image_size=24, mean=mean, std=std)):
            random.seed(seed), torch.manual_seed(seed)
            outs.append(t(img))
        assert outs[0].shape == (3, 24, 24)
        assert (outs[0] - outs[1]).abs().max() <= one_level, seed
        differs += not torch.allclose(outs[0], outs[2], atol=one_level)
    assert differs >= 15
