"""gpaco-predict (tools/predict.py): class names and probabilities of image files, folders and
lists from a run, the same predictions as tools/eval.py (the method's test-time forward
included), and one error line for a missing checkpoint, an unreadable image, an empty folder."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, demo_flags
from gpaco.engine.cli import run_cli

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def run(demo_data, tmp_path_factory) -> Path:
    """A one-epoch CE run on the small demo lists, a classes.txt naming the digits beside its lists."""
    from gpaco.classification import train as trainer

    lists = tmp_path_factory.mktemp("predict_lists")
    for name in ("train_small.txt", "val_small.txt"):
        shutil.copy(demo_data / name, lists / name)
    (lists / "classes.txt").write_text("\n".join(DIGITS) + "\n")
    out = tmp_path_factory.mktemp("predict") / "run"
    trainer.main(demo_flags(demo_data, lists=False) + [
        "--train-list", str(lists / "train_small.txt"), "--val-list", str(lists / "val_small.txt"), "--print-freq",
        "0", "--arch", "resnet8", "--aug", "digits", "--method", "ce", "--epochs", "1", "--batch-size", "32",
        "--lr", "0.05", "--warmup-epochs", "0", "--output-dir", str(out)])
    return out


def _predict(*argv):
    from gpaco.classification.predict_images import main

    return main([str(a) for a in argv])


def _rows(path: Path):
    return list(csv.DictReader(path.open()))


def _test_images(demo_data: Path, n: int):
    """The first ``n`` lines of the small test list: (relative path, label)."""
    lines = (demo_data / "test_small.txt").read_text().split("\n")[:n]
    return [(ln.rsplit(None, 1)[0], int(ln.rsplit(None, 1)[1])) for ln in lines]


def test_predict_a_folder_files_and_a_list(run, demo_data, tmp_path, capsys):
    images = _test_images(demo_data, 6)
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i, (rel, _) in enumerate(images[:3]):
        shutil.copy(demo_data / rel, folder / ("nested" if i == 2 else "") / f"img{i}.png")
    (folder / "notes.md").write_text("not an image")  # skipped
    single = demo_data / images[3][0]
    listed = tmp_path / "some.txt"  # a split list's lines: paths relative to the run's data root, labels
    listed.write_text("".join(f"{rel} {label}\n" for rel, label in images[4:]))
    csv_path = tmp_path / "out" / "pred.csv"
    result = _predict("--checkpoint", run, folder, single, listed, "--top-k", "10", "--output", csv_path)
    out = capsys.readouterr().out
    rows = _rows(csv_path)
    assert len(rows) == 6 and len(result["probs"]) == 6
    assert [Path(r["path"]).name for r in rows[:3]] == ["img0.png", "img1.png", "img2.png"]  # sorted by path
    assert rows[3]["path"] == str(single) and rows[4]["path"] == str(demo_data / images[4][0])
    assert list(rows[0])[:7] == ["path", "label", "label_name", "pred", "pred_name", "prob", "top2"]
    assert [r["label_name"] for r in rows] == ["", "", "", ""] + [DIGITS[label] for _, label in images[4:]]
    for row, p in zip(rows, result["probs"]):
        probs = [float(row["prob"])] + [float(row[f"top{k}_prob"]) for k in range(2, 11)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5) and probs == sorted(probs, reverse=True)
        assert row["pred_name"] == DIGITS[int(row["pred"])] and int(row["pred"]) == int(p.argmax())
        assert {row["pred"]} | {row[f"top{k}"] for k in range(2, 11)} == {str(c) for c in range(10)}
    np.testing.assert_allclose(result["probs"].sum(1).numpy(), 1.0, atol=1e-6)
    assert result["class_names"] == DIGITS  # the classes.txt beside the run's lists
    assert f"wrote {csv_path}: 6 images, top-10 of 10 classes by class names" in out
    assert "top-1 on the 2 labelled images: " in out


def test_predict_matches_tools_eval_with_the_methods_forward(run, demo_data, tmp_path, monkeypatch):
    """The same images through tools/eval.py (--save-logits) and gpaco-predict give the same
    probabilities, also when the method's test-time forward is not model(x): here one that
    returns {"logits": reversed class order, "probe": ...}, as GenDD's returns two heads."""
    from gpaco.classification import evaluate as evaluator
    from gpaco.methods import get_method

    listed = tmp_path / "test.txt"
    listed.write_text("".join(f"{rel} {label}\n" for rel, label in _test_images(demo_data, 24)))

    def both(tag):
        evaluator.main(["--checkpoint", str(run / "best.pth"), *demo_flags(demo_data, lists=False), "--test-list",
                        str(listed), "--save-logits", str(tmp_path / f"{tag}.npy"), "--output-dir",
                        str(tmp_path / f"eval_{tag}"), "--batch-size", "10"])
        logits = torch.from_numpy(np.load(tmp_path / f"{tag}.npy"))
        result = _predict("--checkpoint", run, listed, "--output", tmp_path / f"{tag}.csv", "--batch-size", "7",
                          "--data-root", demo_data)
        torch.testing.assert_close(result["probs"], torch.softmax(logits, 1), atol=1e-5, rtol=0)
        assert [int(r["pred"]) for r in _rows(tmp_path / f"{tag}.csv")] == logits.argmax(1).tolist()
        return result["probs"]

    plain = both("plain")
    method = get_method("ce")
    monkeypatch.setattr(method, "eval_forward", lambda model, x: {"logits": model(x).flip(1), "probe": model(x)})
    flipped = both("flipped")
    torch.testing.assert_close(flipped, plain.flip(1))  # the method's forward was used, not model(x)


def test_predict_prints_the_csv_with_output_dash(run, demo_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = demo_data / _test_images(demo_data, 1)[0][0]
    _predict("--checkpoint", run / "best.pth", image, "--top-k", "2", "--output", "-")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "path,pred,pred_name,prob,top2,top2_name,top2_prob" and lines[1].startswith(f"{image},")
    assert len(lines) == 2 and not (tmp_path / "predictions.csv").exists()


def test_predict_class_names_flag(run, demo_data, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"digit {c}\n" for c in range(10)))
    image = demo_data / _test_images(demo_data, 1)[0][0]
    _predict("--checkpoint", run, image, "--class-names", names, "--output", tmp_path / "p.csv")
    row = _rows(tmp_path / "p.csv")[0]
    assert row["pred_name"] == f"digit {row['pred']}"
    names.write_text("a\nb\n")
    with pytest.raises(ValueError, match="--class-names: 2 class names for 10 classes"):
        _predict("--checkpoint", run, image, "--class-names", names, "--output", tmp_path / "p.csv")


def test_predict_names_from_the_checkpoint(run, demo_data, tmp_path):
    """A checkpoint that keeps its class names (the ``class_names`` key) names the classes on its
    own, moved away from its run folder and its lists."""
    ckpt = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    ckpt["class_names"] = [f"class {c}" for c in range(10)]
    for key in ("train_list", "val_list", "test_list"):
        ckpt["args"][key] = None  # no classes.txt to find
    torch.save(ckpt, tmp_path / "moved.pth")
    image = demo_data / _test_images(demo_data, 1)[0][0]
    result = _predict("--checkpoint", tmp_path / "moved.pth", image, "--output", tmp_path / "p.csv")
    assert result["class_names"] == ckpt["class_names"]
    row = _rows(tmp_path / "p.csv")[0]
    assert row["pred_name"] == f"class {row['pred']}"
    del ckpt["class_names"]
    torch.save(ckpt, tmp_path / "moved.pth")
    assert _predict("--checkpoint", tmp_path / "moved.pth", image, "--output", tmp_path / "p.csv")["class_names"] \
        is None  # nothing names the classes: indices
    assert _rows(tmp_path / "p.csv")[0]["pred_name"] == _rows(tmp_path / "p.csv")[0]["pred"]


def _error_line(argv, capsys) -> str:
    from gpaco.classification.predict_images import main

    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(a) for a in argv])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_predict_errors_are_one_line(run, demo_data, tmp_path, capsys):
    image = demo_data / _test_images(demo_data, 1)[0][0]
    missing = tmp_path / "no_run"
    assert _error_line(["--checkpoint", missing, image], capsys) == \
        f"error: --checkpoint {missing}: no such file or run folder"
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    assert "holds no best.pth or checkpoint.pth" in _error_line(["--checkpoint", empty_run, image], capsys)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    line = _error_line(["--checkpoint", run, image, bad, "--output", tmp_path / "p.csv"], capsys)
    assert line.startswith(f"error: {bad}: cannot read image")
    assert not (tmp_path / "p.csv").exists()  # nothing half-written
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert _error_line(["--checkpoint", run, empty], capsys).startswith(f"error: {empty}: no images (.jpg")
    assert _error_line(["--checkpoint", run, tmp_path / "nope.png"], capsys) == \
        f"error: {tmp_path / 'nope.png'}: no such image, folder or list file"
    listed = tmp_path / "list.txt"
    listed.write_text("images/none/x.png\n")
    assert "list.txt:1: image images/none/x.png not found under" in \
        _error_line(["--checkpoint", run, listed], capsys)
    listed.write_text(f"{_test_images(demo_data, 1)[0][0]} 12\n")
    assert _error_line(["--checkpoint", run, listed, "--data-root", demo_data], capsys) == \
        f"error: {listed}:1: label 12 is out of range for the 10-class model"


def test_tools_predict_is_the_cli():
    text = (ROOT / "tools" / "predict.py").read_text()
    assert "from gpaco.classification.predict_images import cli" in text
