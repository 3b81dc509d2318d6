"""Defaults that fail loudly (docs/data.md#what-the-warnings-mean): one printed line each, naming
the flag to change, for a warm-up that covers the whole run, a contrastive queue larger than the
training set (capped by the data), an augmentation made for 224 px at <= 64 px (a small-image
default when --aug is left out), more loader workers than cores, and a --num-classes that is not
the data's (an error in a real run)."""
from __future__ import annotations

import pytest

from conftest import demo_flags
from gpaco.classification import args as train_args_module, train as trainer
from gpaco.classification.args import default_warmup_epochs, parse_train_args
from gpaco.engine.schedule import schedule_from_flags


def warnings_of(out: str) -> list:
    return [line for line in out.splitlines() if line.startswith("warning: ")]


@pytest.fixture
def two_cores(monkeypatch):
    """A 2-core machine, one training process (the workers warning depends on the machine)."""
    monkeypatch.setattr(train_args_module, "cpu_count", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


# ----------------------------------------------------------------------------- warm-up


def test_default_warmup_leaves_a_short_run_decaying(two_cores, capsys):
    """Left out, the warm-up is 10 epochs or a third of a shorter run, so the rate decays: a 5-epoch
    run warms up for 1 epoch and then decays (it used to rise for all 5)."""
    args = parse_train_args(["--train-list", "x", "--epochs", "5", "--workers", "0"])
    out = capsys.readouterr().out
    assert args.warmup_epochs == 1
    assert "note: --warmup-epochs 1 (the default 10 shortened to fit --epochs 5; pass --warmup-epochs to choose)" \
        in out and not warnings_of(out)
    lrs = [schedule_from_flags(args.schedule, vars(args))(e) for e in range(5)]
    assert lrs[0] == args.lr and lrs == sorted(lrs, reverse=True) and lrs[-1] < args.lr / 2
    assert [default_warmup_epochs(e, "cosine") for e in (1, 2, 3, 5, 10, 30, 400)] == [1, 0, 1, 1, 3, 10, 10]
    assert [default_warmup_epochs(e, "step_cifar") for e in (1, 2, 5, 400)] == [1, 1, 1, 10]
    assert [default_warmup_epochs(e, "mae_cosine") for e in (1, 3, 5, 400)] == [0, 1, 1, 10]


@pytest.mark.parametrize("flags, covered", [
    (("--epochs", "5", "--warmup-epochs", "5"), "--warmup-epochs 5 covers all --epochs 5 of --schedule cosine"),
    (("--epochs", "4", "--warmup-epochs", "3", "--schedule", "step_cifar"),
     "--warmup-epochs 3 covers all --epochs 4 of --schedule step_cifar"),  # step_cifar warms up through epoch W
])
def test_a_warmup_over_the_whole_run_warns(two_cores, capsys, flags, covered):
    parse_train_args(["--train-list", "x", "--workers", "0", *flags])
    epochs = flags[1]
    assert warnings_of(capsys.readouterr().out) == [
        f"warning: {covered}: the learning rate only rises and never decays; pass --warmup-epochs below {epochs} "
        f"(e.g. 1 for a short run)"]


# ----------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("aug, size, method", [("randcls_randclsstack", 32, "gpaco"), ("randcls_sim", 64, "paco"),
                                               ("randcls", 28, "ce")])
def test_an_imagenet_augmentation_on_small_images_warns(two_cores, capsys, aug, size, method):
    parse_train_args(["--train-list", "x", "--workers", "0", "--method", method, "--aug", aug, "--image-size",
                      str(size)])
    views = {"randcls": "randcls: crops down to 8 % of the area, RandAugment",
             "randclsstack": "randclsstack: crops down to 8 % of the area, RandAugment, a blur of up to 2 px",
             "sim": "sim: crops down to 8 % of the area, a blur of up to 2 px"}
    what = "; ".join(views[v] for v in dict.fromkeys(aug.split("_")))
    instead = "--aug sim_cifar_sim_cifar (colour) or digits_digits (grey, no flips)" if "_" in aug else \
        "--aug cifar_crop_flip (colour) or digits (grey, no flips)"
    assert warnings_of(capsys.readouterr().out) == [
        f"warning: --aug {aug} is made for 224-px images ({what}) and --image-size is {size}: at that size they can "
        f"wipe out what an image shows; for small images use {instead}"]


@pytest.mark.parametrize("flags", [("--aug", "randcls_randclsstack", "--image-size", "96"),
                                   ("--aug", "sim_cifar_sim_cifar", "--image-size", "32"),
                                   ("--aug", "digits_digits", "--image-size", "32"),
                                   ("--dataset", "cifar100", "--image-size", "32")])
def test_small_image_augmentations_do_not_warn(two_cores, capsys, flags):
    parse_train_args(["--train-list", "x", "--workers", "0", *flags])
    assert not warnings_of(capsys.readouterr().out)


def test_left_out_aug_is_the_methods_small_image_one_at_small_sizes(two_cores, capsys):
    args = parse_train_args(["--train-list", "x", "--workers", "0", "--image-size", "32"])
    out = capsys.readouterr().out
    assert args.aug == "cifar100" and not warnings_of(out)
    assert "note: --aug cifar100 (the method's strategy for small images, as on CIFAR: --image-size 32 <= 64; pass " \
           "--aug to choose)" in out
    assert parse_train_args(["--train-list", "x", "--workers", "0"]).aug == "randcls_randclsstack"  # 224 px
    assert parse_train_args(["--train-list", "x", "--workers", "0", "--method", "ce", "--image-size",
                             "32"]).aug == "cifar_regular"


# ----------------------------------------------------------------------------- workers


def test_more_workers_than_cores_warns(two_cores, capsys, monkeypatch):
    parse_train_args(["--train-list", "x", "--workers", "4"])
    assert warnings_of(capsys.readouterr().out) == [
        "warning: --workers 4 loader processes on 2 CPU core(s): they compete with training for the cores and slow "
        "it down; pass --workers 2 (or fewer; 0 loads in the main process)"]
    parse_train_args(["--train-list", "x", "--workers", "2"])
    parse_train_args(["--train-list", "x", "--workers", "4", "--dry-run"])  # a dry run loads in the main process
    assert not warnings_of(capsys.readouterr().out)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two training processes on this node
    parse_train_args(["--train-list", "x", "--workers", "2"])
    assert warnings_of(capsys.readouterr().out) == [
        "warning: --workers 2 loader processes for each of 2 training processes on 2 CPU core(s): they compete "
        "with training for the cores and slow it down; pass --workers 1 (or fewer; 0 loads in the main process)"]


def test_the_default_workers_fit_the_cores(two_cores, capsys, monkeypatch):
    """Left out, --workers is 4 or the cores per training process when fewer: no warning, and no
    loader that torch itself warns about."""
    assert parse_train_args(["--train-list", "x"]).workers == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert parse_train_args(["--train-list", "x"]).workers == 1
    monkeypatch.setattr(train_args_module, "cpu_count", lambda: 64)
    assert parse_train_args(["--train-list", "x"]).workers == 4
    assert not warnings_of(capsys.readouterr().out)


# ----------------------------------------------------------------------------- queue and class count (the data)


def test_a_queue_larger_than_the_training_set_is_capped(demo_data, capsys):
    """235 training images, global batch 16: the default queue of 8192 becomes 224 (14 batches)."""
    args = parse_train_args([*demo_flags(demo_data), "--method", "gpaco", "--aug", "digits_digits", "--batch-size",
                             "16", "--epochs", "1", "--dry-run"])
    trainer.run(args)
    out = capsys.readouterr().out
    assert args.queue_size == 224 == 235 // 16 * 16
    assert warnings_of(out) == [
        "warning: --queue-size 8192 is larger than the training set (235 images): capped to 224, one epoch of "
        "--batch-size 16 batches (a larger queue would hold its random initial features for 37 epochs, then stale "
        "ones); pass --queue-size (a multiple of --batch-size, at most 235) to choose"]
    args = parse_train_args([*demo_flags(demo_data), "--method", "gpaco", "--aug", "digits_digits", "--batch-size",
                             "16", "--queue-size", "64", "--epochs", "1", "--dry-run"])
    trainer.run(args)
    assert args.queue_size == 64 and not warnings_of(capsys.readouterr().out)


def test_a_class_count_that_is_not_the_datas_warns_in_a_dry_run_and_stops_a_real_one(demo_data, tmp_path, capsys):
    flags = [*demo_flags(demo_data), "--method", "ce", "--epochs", "1", "--num-classes", "1000"]
    trainer.main([*flags, "--dry-run"])
    out = capsys.readouterr().out
    message = (f"--num-classes 1000, but the data has 10 classes (labels 0..9 in --train-list "
               f"{demo_data / 'train_small.txt'}); leave --num-classes out to take the data's count, or give the data "
               f"the recipe was written for")
    assert warnings_of(out) == [f"warning: {message}; a real run stops here"]
    assert "1000 classes" in out and "dry run ok" in out
    with pytest.raises(SystemExit) as exc:
        trainer.cli([*flags, "--output-dir", str(tmp_path / "run")])
    assert exc.value.code == 2 and capsys.readouterr().err.strip() == f"error: {message}"
    # a classes.txt beside the lists is the data's class count
    names = tmp_path / "lists"
    names.mkdir()
    for split in ("train_small", "val_small", "test_small"):
        (names / f"{split}.txt").write_text((demo_data / f"{split}.txt").read_text())
    (names / "classes.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
    lists = [*demo_flags(demo_data), "--train-list", str(names / "train_small.txt")]
    with pytest.raises(SystemExit, match=rf"--num-classes 12, but the data has 10 classes \(10 in "
                                         rf"{names / 'classes.txt'}\)"):
        trainer.main([*lists, "--method", "ce", "--epochs", "1", "--num-classes", "12",
                      "--output-dir", str(tmp_path / "run2")])
    trainer.main([*flags[:-1], "10", "--dry-run"])  # the data's own count: no warning
    assert not warnings_of(capsys.readouterr().out)
