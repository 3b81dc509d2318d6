"""Segmentation data: transforms, dataset readers (pairing checks), label conversions."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpaco.data.seg_datasets import (
    SEG_DATASETS, SegDataError, SegDataset, build_seg_dataset, list_pairs, reduce_zero_label,
)
from gpaco.data.seg_transforms import (
    PhotoMetricDistortion, RandomCrop, SegEvalTransform, SegTrainTransform, hsv_to_rgb, rescale_size, rgb_to_hsv,
)

ROOT = Path(__file__).resolve().parents[1]


def _prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "tools" / "prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rgb(h=12, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- transforms


def test_rescale_size_follows_mmcv_rule():
    assert rescale_size(500, 1000, (2048, 512)) == (512, 1024)      # short edge limited
    assert rescale_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)     # long edge limited
    assert rescale_size(375, 500, (520, 520)) == (390, 520)


def test_train_transform_shapes_padding_and_determinism():
    tf = SegTrainTransform((32, 32), (24, 24), ratio_range=(0.5, 0.5))  # always 16x16: padded to 24
    img, label = _rgb(32, 32), np.random.default_rng(1).integers(0, 5, (32, 32))
    x, y = tf(img, label, np.random.default_rng(0))
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and y.shape == (24, 24) and y.dtype == torch.int64
    assert y[16:].eq(255).all() and y[:, 16:].eq(255).all() and x[:, 16:].eq(0).all()
    assert y[:16, :16].lt(5).all()
    x2, y2 = tf(img, label, np.random.default_rng(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = tf(img, label, np.random.default_rng(1))
    assert not torch.equal(x, x3)


def test_random_crop_category_ratio():
    label = np.zeros((100, 100), np.int64)
    label[:, 60:] = 1

    def ok(crop):
        _, counts = np.unique(crop, return_counts=True)
        return len(counts) > 1 and counts.max() / counts.sum() < 0.75

    limited = [ok(RandomCrop((50, 50), 0.75)(label, label, np.random.default_rng(s))[1]) for s in range(40)]
    free = [ok(RandomCrop((50, 50), 1.0)(label, label, np.random.default_rng(s))[1]) for s in range(40)]
    assert sum(limited) >= 34 and sum(free) < 25


def test_photometric_distortion_range_and_hsv_round_trip():
    img = _rgb(20, 20).astype(np.float32)
    assert np.allclose(hsv_to_rgb(rgb_to_hsv(img)), img, atol=1e-3)
    outs = [PhotoMetricDistortion()(img, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == img.shape and o.min() >= 0 and o.max() <= 255 for o in outs)
    assert any(not np.allclose(o, img) for o in outs)


def test_eval_transform_keeps_raw_image_and_label():
    img, label = _rgb(), np.full((12, 16), 3, np.uint8)
    x, y = SegEvalTransform()(img, label)
    assert x.dtype == torch.uint8 and x.shape == (3, 12, 16) and torch.equal(x.permute(1, 2, 0), torch.from_numpy(img))
    assert y.dtype == torch.int64 and y.eq(3).all()


def test_reduce_zero_label():
    assert reduce_zero_label(np.array([0, 1, 2, 150, 255], np.uint8)).tolist() == [255, 0, 1, 149, 255]


# ----------------------------------------------------------------------------- readers


def _ade(root: Path, names=("a", "b"), labels=("a", "b")):
    base = root / "ADEChallengeData2016"
    for n in names:
        _png(base / "images" / "training" / f"{n}.jpg", _rgb())
    for n in labels:
        _png(base / "annotations" / "training" / f"{n}.png", np.array([[0, 1, 150]] * 4 + [[2, 3, 4]] * 8,
                                                                         np.uint8).repeat(16 // 3 + 1, 1)[:, :16])
    return base


def test_ade20k_reader_pairs_and_reduces_zero_label(tmp_path):
    _ade(tmp_path)
    pairs = list_pairs("ade20k", tmp_path, "train")
    assert [Path(i).stem for i, _ in pairs] == ["a", "b"]
    ds = build_seg_dataset("ade20k", tmp_path / "ADEChallengeData2016", "train", SegEvalTransform())
    _, label, _ = ds[0]
    assert set(label.unique().tolist()) == {255, 0, 149, 1, 2, 3}
    assert ds.num_classes == 150 and ds.class_names[0] == "wall"


def test_reader_names_missing_labels_and_images(tmp_path):
    _ade(tmp_path, names=("a", "b", "c"), labels=("a", "b", "z"))
    with pytest.raises(SegDataError) as e:
        list_pairs("ade20k", tmp_path, "train")
    msg = str(e.value)
    assert "c.png" in msg and "z.jpg" in msg and "1 of 3 images" in msg
    with pytest.raises(SegDataError, match="validation"):
        list_pairs("ade20k", tmp_path, "val")
    with pytest.raises(SegDataError, match="does not exist"):
        list_pairs("ade20k", tmp_path / "nope", "train")


def test_cityscapes_reader_asks_for_conversion_then_reads(tmp_path):
    img_dir = tmp_path / "leftImg8bit" / "train" / "aachen"
    ann_dir = tmp_path / "gtFine" / "train" / "aachen"
    _png(img_dir / "aachen_000000_000019_leftImg8bit.png", _rgb())
    _png(ann_dir / "aachen_000000_000019_gtFine_labelIds.png", np.full((12, 16), 7, np.uint8))
    with pytest.raises(SegDataError, match="prepare_data.py cityscapes"):
        list_pairs("cityscapes", tmp_path, "train")
    _prepare_data().prepare_cityscapes(str(tmp_path), splits=("train",))
    ds = build_seg_dataset("cityscapes", tmp_path, "train", SegEvalTransform())
    assert len(ds) == 1 and ds[0][1].eq(0).all()  # road


def test_pascal_context_reader_uses_split_file(tmp_path):
    base = tmp_path / "VOC2010"
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (base / "ImageSets" / "SegmentationContext" / "train.txt").write_text("2008_000002\n2008_000003\n")
    for n in ("2008_000002", "2008_000003"):
        _png(base / "JPEGImages" / f"{n}.jpg", _rgb())
    _png(base / "SegmentationClassContext" / "2008_000002.png", np.full((12, 16), 59, np.uint8))
    with pytest.raises(SegDataError, match="2008_000003.png"):
        list_pairs("pascal_context59", tmp_path, "train")
    _png(base / "SegmentationClassContext" / "2008_000003.png", np.zeros((12, 16), np.uint8))
    ds = build_seg_dataset("pascal_context59", base, "train", SegEvalTransform())
    assert ds[0][1].eq(58).all() and ds[1][1].eq(255).all()
    assert SEG_DATASETS["pascal_context59"].test_mode == "slide"


def test_label_size_mismatch_is_reported_before_training(tmp_path):
    for name in ("w", "x", "y"):
        _png(tmp_path / "images" / "train" / f"{name}.png", _rgb(12, 16))
        _png(tmp_path / "labels" / "train" / f"{name}.png", np.zeros((12 if name == "w" else 10, 16), np.uint8))
    img, ann = tmp_path / "images" / "train" / "x.png", tmp_path / "labels" / "train" / "x.png"
    with pytest.raises(SegDataError) as e:  # from the file headers, when the dataset is built
        build_seg_dataset("demo", tmp_path, "train", SegEvalTransform())
    assert str(e.value) == f"{img} is 16x12 but its label {ann} is 16x10 (1 more pairs differ)"
    ds = SegDataset([(str(img), str(ann))], num_classes=11, transform=SegEvalTransform())
    with pytest.raises(SegDataError, match="its label"):  # and again when read (a file replaced since)
        ds[0]


@pytest.mark.parametrize("reduce,values,bad", [(False, (0, 10, 255, 11), 11), (True, (0, 150, 255, 151), 151)])
def test_label_value_outside_the_classes_names_the_file(tmp_path, reduce, values, bad):
    """A mask value that is neither a class id nor 255 used to be an IndexError deep in the loss."""
    num_classes = 11 if not reduce else 150
    _png(tmp_path / "img.png", _rgb(4, 4))
    _png(tmp_path / "ann.png", np.array(values, np.uint8).repeat(4).reshape(4, 4))
    ds = SegDataset([(str(tmp_path / "img.png"), str(tmp_path / "ann.png"))], num_classes=num_classes,
                    transform=SegEvalTransform(), reduce_zero_label=reduce)
    for read in (lambda: ds[0], lambda: ds.load_label(0)):
        with pytest.raises(SegDataError) as e:
            read()
        assert str(e.value).startswith(f"label {tmp_path / 'ann.png'} holds the value {bad}: expected class ids")
    _png(tmp_path / "ann.png", np.resize(np.array(values[:3], np.uint8), (4, 4)))
    assert set(ds.load_label(0).flatten().tolist()) == {0 if not reduce else 255, values[1] - reduce, 255}


# ----------------------------------------------------------------------------- conversions


def test_cityscapes_label_ids_to_train_ids():
    lut = _prepare_data().cityscapes_lut()
    assert lut[[7, 8, 0, 33, 26, 24, 9, 255]].tolist() == [0, 1, 255, 18, 13, 11, 255, 255]
    assert sorted(set(lut.tolist()) - {255}) == list(range(19))


def test_coco_stuff_164k_and_10k_mappings(tmp_path):
    pd = _prepare_data()
    lut = pd.coco164k_lut()  # 0-based COCO ids
    assert lut[[0, 10, 11, 12, 90, 91, 181, 255]].tolist() == [0, 10, 255, 11, 255, 80, 170, 255]
    assert sorted(set(lut.tolist()) - {255}) == list(range(171))
    lut10 = pd.coco10k_lut()  # 1-based COCO ids, 0 unlabeled
    assert lut10[[0, 1, 12, 13, 92, 182]].tolist() == [0, 1, 0, 12, 81, 171]

    ann = tmp_path / "annotations" / "val2017"
    _png(ann / "000000000139.png", np.array([[0, 181, 255, 11]], np.uint8))
    _png(tmp_path / "images" / "val2017" / "000000000139.jpg", _rgb(1, 4))
    (tmp_path / "annotations" / "train2017").mkdir()
    assert pd.prepare_coco_stuff164k(str(tmp_path)) == 1
    assert pd.prepare_coco_stuff164k(str(tmp_path)) == 0  # already converted: skipped
    out = np.asarray(Image.open(ann / "000000000139_labelTrainIds.png"))
    assert out.tolist() == [[0, 170, 255, 255]]
    assert len(list_pairs("coco_stuff164k", tmp_path, "val")) == 1


def test_coco_stuff10k_conversion(tmp_path):
    from scipy.io import savemat

    pd = _prepare_data()
    (tmp_path / "imageLists").mkdir()
    (tmp_path / "imageLists" / "train.txt").write_text("COCO_train2014_000000000077\n")
    (tmp_path / "imageLists" / "test.txt").write_text("COCO_train2014_000000000078\n")
    for n in ("COCO_train2014_000000000077", "COCO_train2014_000000000078"):
        _png(tmp_path / "images" / f"{n}.jpg", _rgb(2, 3))
        (tmp_path / "annotations").mkdir(exist_ok=True)
        savemat(tmp_path / "annotations" / f"{n}.mat", {"S": np.array([[0, 1, 12], [13, 92, 182]], np.uint16)})
    pd.prepare_coco_stuff10k(str(tmp_path), workers=1)
    ds = build_seg_dataset("coco_stuff10k", tmp_path, "val", SegEvalTransform())
    assert len(ds) == 1
    assert ds[0][1].tolist() == [[255, 0, 255], [11, 80, 170]]  # after the zero-label reduction


def test_training_set_without_a_labelled_pixel_is_refused(tmp_path):
    """ADE20K masks of all 0 ("other", ignored after reduce-zero-label) would train with loss 0
    and exit 0: the set is refused in one line naming a mask; one labelled pixel anywhere passes."""
    base = _ade(tmp_path, names=("a", "b", "c"), labels=())
    for n in ("a", "b", "c"):
        _png(base / "annotations" / "training" / f"{n}.png", np.zeros((12, 16), np.uint8))
    ds = build_seg_dataset("ade20k", base, "train", SegEvalTransform())
    with pytest.raises(SegDataError, match=r"none of its 3 masks \(first: .*a\.png\) has a labelled pixel, only the "
                                           r"ignore label 255 \(0 = ignored"):
        ds.check_labelled()
    last = np.zeros((12, 16), np.uint8)
    last[5, 7] = 3
    _png(base / "annotations" / "training" / "c.png", last)
    build_seg_dataset("ade20k", base, "train", SegEvalTransform()).check_labelled()
