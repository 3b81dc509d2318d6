"""Image-level class counts of the CeCo and RR segmentation methods: the ADE20K file gpaco
ships (the values of the original's ``stats/ade20k_image_label_stats.txt``; a copy is
tests/data/ade20k_image_label_stats.txt), and the same format written by
tools/class_counts_seg.py from the masks, read back to what tools/train_seg.py counts at start."""
from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path

import pytest

from gpaco.losses.rr import read_class_counts, write_class_counts
from gpaco.segmentation import class_counts as cc

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "gpaco" / "data" / "stats" / "ade20k_image_label_stats.txt"
COPY = Path(__file__).resolve().parent / "data" / "ade20k_image_label_stats.txt"
LINE = re.compile(r"\d+\n")  # the file format: one decimal integer per line, nothing else


def _format_ok(text: str) -> bool:
    return bool(text) and all(LINE.fullmatch(line) for line in text.splitlines(keepends=True))


def test_shipped_ade20k_counts_read_back_to_the_original_values(tmp_path):
    from gpaco.data.seg_datasets import SEG_DATASETS

    path = cc.shipped_class_counts("ade20k")
    assert path.resolve() == SHIPPED.resolve()
    counts = read_class_counts(path, num_classes=SEG_DATASETS["ade20k"].num_classes)
    assert counts == [int(x) for x in COPY.read_text().split()]
    assert len(counts) == 150 and all(isinstance(c, int) and c > 0 for c in counts)
    assert (min(counts), max(counts)) == (41, 11588)
    # byte for byte the format tools/class_counts_seg.py writes
    assert _format_ok(SHIPPED.read_text())
    write_class_counts(tmp_path / "again.txt", counts)
    assert (tmp_path / "again.txt").read_bytes() == SHIPPED.read_bytes()
    with pytest.raises(KeyError, match="ships image-level class counts for \\['ade20k'\\] only"):
        cc.shipped_class_counts("cityscapes")


def test_shipped_counts_are_package_data():
    """The wheel carries the file: pyproject's package data names it, and it is found as a
    resource of the installed package."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        pytest.skip("tomllib needs Python 3.11")
    from importlib.resources import files

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gpaco.data"]
    assert any(fnmatch.fnmatch("stats/ade20k_image_label_stats.txt", pattern) for pattern in data)
    assert files("gpaco.data").joinpath("stats").joinpath("ade20k_image_label_stats.txt").is_file()


def test_counting_the_demo_masks_writes_the_same_format_and_reads_back(tmp_path, capsys):
    """tools/class_counts_seg.py on the demo scenes writes the shipped file's format; it reads
    back to the counts the tool returned and to what tools/train_seg.py counts at start (and
    to the same numbers when passed back as --class-counts)."""
    from gpaco.data.demo_seg import build_demo_scenes
    from gpaco.data.seg_datasets import build_seg_dataset

    root = tmp_path / "demo_seg"
    build_demo_scenes(root, num_train=8, num_val=2, num_test=2, size=32)
    out = tmp_path / "stats" / "demo_image_label_stats.txt"
    tool = cc.main(["--dataset", "demo", "--data-root", str(root), "--out", str(out), "--workers", "0"])
    assert _format_ok(out.read_text()) and len(out.read_text().splitlines()) == 11
    train = build_seg_dataset("demo", str(root), "train", None)
    at_start = cc.class_counts_for_training(path=None, dataset=train, num_classes=11)
    assert "image-level class counts of 8 training masks" in capsys.readouterr().out
    assert read_class_counts(out, num_classes=11) == tool == at_start
    assert cc.class_counts_for_training(path=str(out), dataset=train, num_classes=11) == at_start
    assert 0 < max(at_start) <= 8 and at_start[10] == 8  # background in every scene
