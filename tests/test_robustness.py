"""Robustness: the mCE figures (refvectors), ImageNet-R's 200-column mask, ImageNet-Sketch, and
tools/make_corrupted.py -> tools/eval.py --corrupted-root on a tiny split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gpaco.classification import evaluate as evaluator
from gpaco.checkpoint import save_checkpoint
from gpaco.classification.robustness import corruption_table, evaluate_corruptions, imagenet_r_columns
from gpaco.data.robustness import ALEXNET_ERRORS, CORRUPTIONS, IMAGENET_R_INDICES, ImageFolderDataset, make_corrupted_tree
from gpaco.metrics import corruption_errors
from gpaco.methods.rebuild import build_model

IMG = 16


def _png(path: Path, value=None, seed=0, size=IMG):
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    else:
        arr = np.full((size, size, 3), value, dtype=np.uint8)
    Image.fromarray(arr).save(path)


def test_mce_vector_through_the_corruption_pipeline(refvectors, tmp_path):
    """The per-folder accuracies of the reference vector -> both of the paper's figures, named."""
    ref = json.loads((refvectors / "imagenet_c_mce.json").read_text())
    acc = ref["corruption_top1_acc_by_severity_1to5"]
    for c in CORRUPTIONS:
        for s in range(1, 6):
            (tmp_path / c / str(s)).mkdir(parents=True)
    (tmp_path / "speckle_noise" / "1").mkdir(parents=True)  # an "extra" ImageNet-C corruption: ignored

    def fake(folder, label_index=False):
        c, s = Path(folder).parts[-2:]
        return {"top1": 100.0 * acc[c][int(s) - 1], "num_samples": 50000, "label_index_named": label_index}

    res = evaluate_corruptions(str(tmp_path), fake, log=lambda s: None)
    assert res["mce_unnormalised"] == pytest.approx(ref["printed_mce_unnormalised"], abs=1e-9)
    assert res["mce_alexnet_normalised"] == pytest.approx(ref["printed_rel_mce_alexnet_normalised"], abs=1e-9)
    assert [res["corruption_errors"][c] for c in CORRUPTIONS] == pytest.approx(
        [1 - sum(acc[c]) / 5 for c in CORRUPTIONS], abs=1e-12)
    assert any("speckle_noise" in n for n in res["notes"])
    table = corruption_table(res)
    assert f"{ref['printed_mce_unnormalised']:.2f}" in table
    assert f"{ref['printed_rel_mce_alexnet_normalised']:.2f}" in table
    assert 'the paper\'s "mCE"' in table and 'the paper\'s "rel. mCE"' in table and "AlexNet-normalised" in table
    assert set(res["names"]) == {"mce_unnormalised", "mce_alexnet_normalised"}
    # A label-index tree (tools/make_corrupted.py) has no AlexNet figure; a baseline normalises instead.
    res2 = evaluate_corruptions(str(tmp_path), lambda f: fake(f, True), baseline_errors=dict(ALEXNET_ERRORS),
                                baseline_label="alexnet", log=lambda s: None)
    assert res2["mce_alexnet_normalised"] is None
    assert res2["mce_baseline_normalised"] == pytest.approx(ref["printed_rel_mce_alexnet_normalised"], abs=1e-9)
    assert "n/a" in corruption_table(res2)


class _LabelFromPixel(nn.Module):
    """Logits [B, 1000] from images whose pixel value encodes their ImageNet-R label i (0..199):
    the highest logit overall is column 0 (not an ImageNet-R class); among the 200 R columns the
    true one wins, except for labels divisible by 4 where the next R class wins."""

    def forward(self, x):
        label = torch.round(x[:, 0, 0, 0] * 255).long()
        out = torch.zeros(x.shape[0], 1000)
        cols = torch.tensor(IMAGENET_R_INDICES)
        out[:, 0] = 10.0
        out[torch.arange(x.shape[0]), cols[label]] = 5.0
        wrong = label % 4 == 0
        out[torch.arange(x.shape[0])[wrong], cols[(label[wrong] + 1) % 200]] = 7.0
        return out


def test_imagenet_r_mask_selects_the_200_columns_and_argmax_is_over_them(tmp_path):
    cols = imagenet_r_columns(1000)
    assert cols == list(IMAGENET_R_INDICES) and len(cols) == 200 and 0 not in cols
    for i in range(200):  # wnid-like names whose sorted order is i
        _png(tmp_path / f"n{i:08d}" / "a.png", value=i)
    from torchvision.transforms import ToTensor

    ds = ImageFolderDataset(str(tmp_path), ToTensor(), expect_classes=200)
    assert not ds.label_index_named and ds.targets == list(range(200))
    loader = torch.utils.data.DataLoader(ds, batch_size=64)
    meter, logits = evaluator.predict([_LabelFromPixel()], loader, num_classes=1000, device=torch.device("cpu"),
                                      columns=cols, keep_logits=True)
    assert logits.shape == (200, 200)
    assert meter.compute()["top1"] == pytest.approx(75.0)  # 150 of 200: the wrong ones are labels % 4 == 0
    full, _ = evaluator.predict([_LabelFromPixel()], loader, num_classes=1000, device=torch.device("cpu"))
    assert full.compute()["num_samples"] == 200
    with pytest.raises(ValueError, match="199 class folders, expected 200"):
        import shutil

        shutil.rmtree(tmp_path / "n00000007")
        ImageFolderDataset(str(tmp_path), ToTensor(), expect_classes=200)


def _ckpt(path: Path, num_classes: int, seed: int = 0, method: str = "ce", arch: str = "resnet8") -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(method, arch, num_classes, queue_size=16, proj_dim=8).eval()
    save_checkpoint({"model": model.state_dict(), "arch": arch, "method": method, "num_classes": num_classes,
                     "args": {"arch": arch, "method": method, "norm": "mnist", "image_size": IMG,
                              "resize_size": IMG, "queue_size": 16, "proj_dim": 8}}, path)
    return model


def test_imagenet_r_and_sketch_through_tools_eval(tmp_path):
    """A 1000-way head: ImageNet-R masked to its 200 columns, ImageNet-Sketch with the full head."""
    model = _ckpt(tmp_path / "best.pth", 1000)
    r_root, s_root = tmp_path / "imagenet-r", tmp_path / "sketch"
    for i in range(200):
        _png(r_root / f"n{i:08d}" / "x.png", seed=i)
    for i in range(1000):
        if i % 100 == 0:
            _png(s_root / f"n{i:08d}" / "x.png", seed=i)
        else:
            (s_root / f"n{i:08d}").mkdir(parents=True)  # empty class folders still fix the order
    res = evaluator.main(["--checkpoint", str(tmp_path / "best.pth"), "--imagenet-r-root", str(r_root),
                          "--imagenet-sketch-root", str(s_root), "--workers", "0",
                          "--output-dir", str(tmp_path / "ev")])
    from gpaco.data.transforms import NORMALIZATION, build_eval_transform

    tf = build_eval_transform(IMG, resize_size=IMG, mean=NORMALIZATION["mnist"][0], std=NORMALIZATION["mnist"][1])
    x = torch.stack([tf(Image.open(r_root / f"n{i:08d}" / "x.png").convert("RGB")) for i in range(200)])
    with torch.no_grad():
        pred = model(x)[:, IMAGENET_R_INDICES].argmax(1)
    assert res["imagenet_r"]["num_samples"] == 200
    assert res["imagenet_r"]["top1"] == pytest.approx(100.0 * (pred == torch.arange(200)).float().mean().item())
    x = torch.stack([tf(Image.open(s_root / f"n{i:08d}" / "x.png").convert("RGB")) for i in range(0, 1000, 100)])
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert res["imagenet_sketch"]["num_samples"] == 10
    assert res["imagenet_sketch"]["top1"] == pytest.approx(
        100.0 * (pred == torch.arange(0, 1000, 100)).float().mean().item())
    assert "top1" not in res  # no clean split was given
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["imagenet_r"]["top1"] == res["imagenet_r"]["top1"]


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    lines = []
    for c in range(3):
        for i in range(3):
            rel = f"images/{c}/{i}.png"
            _png(root / rel, seed=10 * c + i, size=12)
            lines.append(f"{rel} {c}")
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    return root


def test_make_corrupted_tree_layout_and_reproducibility(tiny_split, tmp_path):
    out = tmp_path / "c"
    meta = make_corrupted_tree(str(tiny_split / "test.txt"), str(tiny_split), str(out), per_class=2, size=IMG,
                               log=lambda s: None)
    assert not meta["skipped"] and meta["num_images"] == 6 and meta["files"] == 6 * 15 * 5
    assert meta["class_counts"] == [2, 2, 2]
    assert sorted(p.name for p in out.iterdir()) == sorted(list(CORRUPTIONS) + ["meta.json", "subset.txt"])
    files = sorted(out.rglob("*.png"))
    assert len(files) == 450 and all(Image.open(f).size == (IMG, IMG) for f in files[:5])
    assert (out / "subset.txt").read_text().splitlines() == ["images/0/0.png 0", "images/0/1.png 0",
                                                            "images/1/0.png 1", "images/1/1.png 1",
                                                            "images/2/0.png 2", "images/2/1.png 2"]
    assert (out / "impulse_noise" / "5" / "2" / "000007_1.png").is_file()
    again = make_corrupted_tree(str(tiny_split / "test.txt"), str(tiny_split), str(out), per_class=2, size=IMG)
    assert again["skipped"]
    # same seed -> same bytes (impulse noise included), in another folder with 2 worker processes
    other = tmp_path / "c2"
    make_corrupted_tree(str(tiny_split / "test.txt"), str(tiny_split), str(other), per_class=2, size=IMG,
                        workers=2, log=lambda s: None)
    for f in files:
        assert f.read_bytes() == (other / f.relative_to(out)).read_bytes(), f
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_corrupted_tree(str(tiny_split / "test.txt"), str(tiny_split), str(out), per_class=1, size=IMG)


def test_make_corrupted_then_eval_prints_the_mce_table(tiny_split, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tools_make_corrupted", Path(__file__).resolve().parents[1] / "tools" / "make_corrupted.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tree = tmp_path / "tree"
    tool.main(["--data-root", str(tiny_split), "--list", str(tiny_split / "test.txt"), "--out", str(tree),
               "--per-class", "1", "--size", str(IMG)])
    _ckpt(tmp_path / "a.pth", 3, seed=1)
    _ckpt(tmp_path / "b.pth", 3, seed=2, method="gpaco")
    common = ["--data-root", str(tiny_split), "--test-list", str(tree / "subset.txt"), "--corrupted-root", str(tree),
              "--workers", "0"]
    capsys.readouterr()
    base = evaluator.main(["--checkpoint", str(tmp_path / "a.pth"), *common, "--output-dir", str(tmp_path / "ev_a")])
    printed = capsys.readouterr().out
    assert "mCE, unnormalised (the paper's \"mCE\"" in printed and "gaussian_noise" in printed
    assert "rel. mCE, AlexNet-normalised: n/a" in printed
    corr = base["corruption"]
    assert corr["num_images"]["fog"] == [3] * 5 and corr["mce_alexnet_normalised"] is None
    recomputed = corruption_errors(corr["accuracy_by_severity"])
    assert corr["mce_unnormalised"] == pytest.approx(recomputed["mce_unnormalised"])
    res = evaluator.main(["--checkpoint", str(tmp_path / "b.pth"), *common, "--output-dir", str(tmp_path / "ev_b"),
                          "--mce-baseline", str(tmp_path / "ev_a")])
    printed = capsys.readouterr().out
    expected = 100 * np.mean([res["corruption"]["corruption_errors"][c] / corr["corruption_errors"][c]
                              for c in CORRUPTIONS if corr["corruption_errors"][c] > 0])
    assert "normalised by the baseline" in printed
    if all(corr["corruption_errors"][c] > 0 for c in CORRUPTIONS):
        assert res["corruption"]["mce_baseline_normalised"] == pytest.approx(expected)
    self_norm = evaluator.main(["--checkpoint", str(tmp_path / "a.pth"), *common, "--output-dir",
                                str(tmp_path / "ev_a2"), "--mce-baseline", str(tmp_path / "ev_a" / "metrics.json")])
    assert self_norm["corruption"]["mce_baseline_normalised"] == pytest.approx(100.0)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"top1": 50.0}))
    with pytest.raises(SystemExit, match="no corruption results"):
        evaluator.main(["--checkpoint", str(tmp_path / "a.pth"), *common, "--mce-baseline", str(plain)])
