"""Your own data (docs/data.md#your-own-data): a tree of class folders, split by gpaco-make-lists
(tools/make_lists.py) into lists or by ``--dataset folder`` at start-up with the same seeded,
stratified, val-balanced rule; the class names reach the run's reports; gpaco-eval on a run folder
evaluates the run's own test split."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import demo_flags
from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.classification.make_lists import cli as make_lists_cli, main as make_lists
from gpaco.classification.report import CLASSES_FILE, read_class_names
from gpaco.data import DataError, read_split
from gpaco.data.folder import (
    CLASSES_FILE as FOLDER_CLASSES_FILE, FolderDataset, scan_class_folders, split_class_folders,
)
from gpaco.engine.cli import run_cli

WORDS = ["zero", "one", "two", "three", "four", "five", "six"]
#: Images per digit in the demo tree: a long tail down to one image (sorted class order: five, four,
#: one, six, three, two, zero).
DEMO_TREE_COUNTS = [20, 12, 8, 5, 3, 2, 1]


def fake_tree(root: Path, counts: dict) -> Path:
    """Class folders of empty .png files (the split never opens an image)."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"img{i:03d}.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def digit_tree(demo_data, tmp_path_factory) -> Path:
    """Real demo digits as class folders named by word (so that the sorted class order is not the digit)."""
    root = tmp_path_factory.mktemp("digits") / "tree"
    by_label: dict = {}
    for line in (demo_data / "train.txt").read_text().splitlines():
        rel, label = line.rsplit(None, 1)
        by_label.setdefault(int(label), []).append(rel)
    for digit, n in enumerate(DEMO_TREE_COUNTS):
        folder = root / WORDS[digit]
        (folder / "sub").mkdir(parents=True)  # a class's sub-folders count as that class
        for i, rel in enumerate(by_label[digit][:n]):
            shutil.copy(demo_data / rel, (folder / "sub" if i % 2 else folder) / Path(rel).name)
    return root


def tree_flags(*extra: str) -> list:
    """Seconds-long CE training flags (32 px, ResNet-8, the digits augmentation, 1 epoch)."""
    return ["--image-size", "32", "--resize-size", "32", "--norm", "mnist", "--workers", "0", "--print-freq", "0",
            "--arch", "resnet8", "--aug", "digits", "--method", "ce", "--epochs", "1", "--batch-size", "8",
            "--lr", "0.05", *extra]


# ----------------------------------------------------------------------------- the split rule


def test_split_rule_by_hand(tmp_path):
    """Per class: test max(1, round(0.2 n)) (at most n - 2), val the balanced min over classes of
    max(1, floor(0.1 n)), train the rest; classes of 2 and 1 images said so."""
    tree = scan_class_folders(fake_tree(tmp_path, {"a": 10, "b": 5, "c": 3, "d": 2, "e": 1}))
    split = split_class_folders(tree)
    assert tree.classes == ["a", "b", "c", "d", "e"]
    assert split.counts("train") == [7, 3, 1, 1, 1]
    assert split.counts("val") == [1, 1, 1, 0, 0]
    assert split.counts("test") == [2, 1, 1, 1, 0]
    assert split.notes == ["class 'd' has 2 images: 1 image to train, 1 to test, none to val",
                           "class 'e' has 1 image: its image goes to train (no val or test image)"]
    everything = sorted(p for s in ("train", "val", "test") for p, _ in split.samples[s])
    assert everything == sorted(f for files in tree.files for f in files)  # each image in exactly one split
    assert split.describe() == "13 train / 3 val (1 per class of 3 or more images) / 5 test images of 5 classes"


def test_split_is_seeded_and_each_class_keeps_its_own_draw(tmp_path):
    tree = scan_class_folders(fake_tree(tmp_path / "t", {"a": 40, "b": 20}))
    first, again = split_class_folders(tree, seed=3), split_class_folders(tree, seed=3)
    assert first.samples == again.samples
    assert split_class_folders(tree, seed=4).samples["test"] != first.samples["test"]
    assert first.counts("val") == [2, 2]
    assert first.describe() == "44 train / 4 val (2 per class) / 12 test images of 2 classes"
    # another class added: class a's images go where they went (its draw is seeded by its name)
    bigger = scan_class_folders(fake_tree(tmp_path / "u", {"a": 40, "b": 20, "c": 30}))
    a_of = lambda s, n: sorted(p.split("/", 1)[1] for p, c in s.samples[n] if c == 0)  # noqa: E731
    assert all(a_of(split_class_folders(bigger, seed=3), n) == a_of(first, n) for n in ("train", "val", "test"))


def test_val_per_class_is_capped_where_a_class_cannot_spare_it(tmp_path):
    split = split_class_folders(scan_class_folders(fake_tree(tmp_path, {"a": 10, "b": 5, "c": 3})), val_per_class=3)
    assert split.counts("val") == [3, 3, 1] and split.counts("train") == [5, 1, 1]
    assert split.notes == ["val is not balanced: 1 class(es) cannot spare 3 val images and keep a training image: "
                           "'c' (1)"]


@pytest.mark.parametrize("layout, message", [
    ({"a": 3, "empty": 0}, r"class folder\(s\) without images .*: empty; every class needs training images"),
    ({}, "no class folders"),
])
def test_bad_trees_name_the_problem(tmp_path, layout, message):
    with pytest.raises(DataError, match=message):
        scan_class_folders(fake_tree(tmp_path / "t", layout) if layout else tmp_path)


# ----------------------------------------------------------------------------- the lists tool


def test_make_lists_writes_what_the_folder_dataset_reads(digit_tree, tmp_path, capsys):
    out = tmp_path / "lists"
    result = make_lists([str(digit_tree), "--out", str(out)])
    said = capsys.readouterr().out
    assert set(result["paths"]) == {"train.txt", "val.txt", "test.txt", CLASSES_FILE}
    assert FOLDER_CLASSES_FILE == CLASSES_FILE  # the data layer's name for the reports' file
    assert read_class_names(str(out / CLASSES_FILE)) == sorted(WORDS)
    for split in ("train", "val", "test"):
        listed = read_split(out / f"{split}.txt", digit_tree)
        assert listed == FolderDataset(str(digit_tree), split).samples, split  # the same split, image for image
    assert "note: class 'six' has 1 image: its image goes to train (no val or test image)" in said
    assert f"--data-root {digit_tree} --train-list {out / 'train.txt'}" in said
    # a second run does not overwrite the lists unless asked
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        make_lists_cli([str(digit_tree), "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.endswith("already exist(s); --overwrite replaces them") and "\n" not in err
    make_lists([str(digit_tree), "--out", str(out), "--overwrite", "--seed", "1"])
    with pytest.raises(SystemExit):  # argparse: one or the other
        make_lists([str(digit_tree), "--val-per-class", "2", "--val-fraction", "0.2"])


def test_make_lists_refuses_an_empty_class_folder_in_one_line(tmp_path, capsys):
    fake_tree(tmp_path / "t", {"cat": 3, "dog": 0})
    with pytest.raises(SystemExit) as exc:
        run_cli(make_lists, [str(tmp_path / "t")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 't'}: class folder(s) without images (.jpg, .jpeg, .png, .bmp, .ppm, .pgm, "
                   f".tif, .tiff, .webp): dog; every class needs training images: add some, or remove the folder")


# ----------------------------------------------------------------------------- training on it


def test_folder_and_lists_train_the_same_run_with_class_names(digit_tree, tmp_path, capsys):
    """--dataset folder and --dataset split on the tool's lists: the same images, so the same run;
    both name the classes in metrics.json, per_class.csv and the checkpoint. gpaco-eval given only
    the run folder evaluates the run's own test split and reproduces the run's test numbers."""
    lists = tmp_path / "lists"
    make_lists([str(digit_tree), "--out", str(lists)])
    folder_run, split_run = tmp_path / "folder_run", tmp_path / "split_run"
    capsys.readouterr()
    folder = trainer.main(["--dataset", "folder", "--data-root", str(digit_tree), *tree_flags(),
                           "--output-dir", str(folder_run)])
    said = capsys.readouterr().out
    assert (f"--dataset folder: {digit_tree}: 35 train / 5 val (1 per class of 3 or more images) / 11 test images "
            f"of 7 classes, split with --split-seed 0 (tools/make_lists.py {digit_tree} --seed 0 writes the same "
            f"split as lists)") in said
    listed = trainer.main(["--data-root", str(digit_tree), "--train-list", str(lists / "train.txt"), "--val-list",
                           str(lists / "val.txt"), "--test-list", str(lists / "test.txt"), *tree_flags(),
                           "--output-dir", str(split_run)])
    assert np.array_equal(listed["per_class"], folder["per_class"], equal_nan=True)  # NaN: a class without test
    assert listed["top1"] == folder["top1"]
    for run in (folder_run, split_run):
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["class_names"] == sorted(WORDS), run
        with open(run / "per_class.csv") as f:
            assert [row["name"] for row in csv.DictReader(f)] == sorted(WORDS), run
    from gpaco.checkpoint import load_checkpoint

    assert load_checkpoint(folder_run / "best.pth")["class_names"] == sorted(WORDS)
    for run, result in ((split_run, listed), (folder_run, folder)):
        capsys.readouterr()
        ev = evaluator.main(["--checkpoint", str(run), "--workers", "0"])
        own = "--test-list " + str(lists / "test.txt") if run == split_run else "the folder test split"
        assert f"evaluating on the run's own test split: {own} under --data-root {digit_tree}" in \
            capsys.readouterr().out
        assert ev["num_samples"] == result["num_samples"] == 11
        assert ev["top1"] == pytest.approx(result["top1"]) and ev["class_names"] == sorted(WORDS)
        assert (run / "eval" / "metrics.json").is_file()


def test_eval_of_a_run_without_a_test_split_asks_for_one(demo_data, tmp_path):
    out = tmp_path / "run"
    flags = demo_flags(demo_data)
    flags = flags[:flags.index("--test-list")] + flags[flags.index("--test-list") + 2:]
    trainer.main([*flags, "--method", "ce", "--epochs", "1", "--warmup-epochs", "0", "--output-dir", str(out)])
    with pytest.raises(SystemExit, match=r"--test-list is required: the run of .*best\.pth had no --test-list"):
        evaluator.main(["--checkpoint", str(out), "--workers", "0"])
    assert not (out / "eval").exists()  # refused before the evaluation's folder is made


def test_dataset_split_without_a_train_list_points_at_the_tool(capsys):
    with pytest.raises(SystemExit) as exc:
        trainer.cli(["--data-root", "photos"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --train-list is required with --dataset split (a file of 'relative/path label' lines); for a tree of "
        "class folders DIR/<class>/<image>, train with --dataset folder --data-root DIR, or write the lists with "
        "tools/make_lists.py DIR (gpaco-make-lists; docs/data.md#your-own-data)")
    with pytest.raises(SystemExit, match=r"--dataset folder splits the class folders of --data-root itself and takes "
                                         r"no --train-list/--test-list; to train on split lists"):
        trainer.main(["--dataset", "folder", "--train-list", "a.txt", "--test-list", "b.txt"])
