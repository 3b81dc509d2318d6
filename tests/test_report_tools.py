"""Report tools that hold up (issue 28): reliability.png with empty bins, summarize_runs.py and
compare_runs.py on runs without a test split and on more than two runs, a title and labelled
axes on every figure, class names in the report files and tables, docs/api.md's code runs."""
import csv
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ROOT, demo_flags
from gpaco.classification.report import fairness_line, plot_curves, plot_reliability, write_eval_report
from gpaco.data.splits import DataError
from gpaco.metrics import ClassificationMeter

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_report_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- figures as drawn


def _describe(fig) -> dict:
    """What a test checks of a saved figure: per axes its title, labels, tick labels and bars."""
    axes = []
    for ax in fig.axes:
        axes.append({"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                     "xticks": [t.get_text() for t in ax.get_xticklabels()],
                     "yticks": [t.get_text() for t in ax.get_yticklabels()],
                     "bars": [(p.get_x() + p.get_width() / 2, p.get_y(), p.get_height()) for p in ax.patches
                              if type(p).__name__ == "Rectangle"]})
    return {"axes": axes}


@pytest.fixture
def figures(monkeypatch):
    """``{file name: _describe(figure)}`` of every figure saved while the test runs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved, original = {}, Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        original(self, fname, *args, **kwargs)
        saved[re.sub(r"\.\d+\.tmp", "", Path(str(fname)).name)] = _describe(self)  # atomic_path's temporary name

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def assert_titled_and_labelled(name: str, fig: dict) -> None:
    axes = fig["axes"]
    assert any(a["title"] for a in axes), f"{name}: no title"
    assert axes[0]["xlabel"], f"{name}: no x label"
    assert all(a["ylabel"] for a in axes), f"{name}: an axis without a y label"


# --------------------------------------------------------------------------- tiny runs


@pytest.fixture(scope="module")
def lists(demo_data, tmp_path_factory) -> Path:
    """The small demo lists in a folder of their own, with a classes.txt naming the digits."""
    folder = tmp_path_factory.mktemp("lists")
    for name in ("train_small.txt", "val_small.txt", "test_small.txt"):
        shutil.copy(demo_data / name, folder / name)
    (folder / "classes.txt").write_text("\n".join(DIGITS) + "\n")
    return folder


@pytest.fixture(scope="module")
def runs(demo_data, lists, tmp_path_factory) -> dict:
    """One-epoch CE runs on the small demo lists: 'test' with a test split (and two copies of it,
    'test2' and 'test3'), 'no_test' without one (a few seconds)."""
    from gpaco.classification import train as trainer

    out = tmp_path_factory.mktemp("runs")
    flags = demo_flags(demo_data, lists=False) + [
        "--train-list", str(lists / "train_small.txt"), "--val-list", str(lists / "val_small.txt"), "--print-freq",
        "0", "--arch", "resnet8", "--aug", "digits", "--method", "ce", "--epochs", "1", "--batch-size", "32",
        "--lr", "0.05", "--warmup-epochs", "0"]
    trainer.main(flags + ["--test-list", str(lists / "test_small.txt"), "--output-dir", str(out / "test")])
    trainer.main(flags + ["--output-dir", str(out / "no_test")])
    for copy in ("test2", "test3"):
        shutil.copytree(out / "test", out / copy)
    return {name: out / name for name in ("test", "test2", "test3", "no_test")}


# --------------------------------------------------------------------------- reliability.png


def _calibration_of_two_bins() -> dict:
    """A meter whose samples fall in two confidence bins only (about 40 % and 90 %)."""
    meter = ClassificationMeter(3)
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.6, 0.0, 0.0], [2.6, 0.0, 0.0], [0.5, 0.0, 0.0]])
    meter.update(logits, torch.tensor([0, 0, 1, 0]))
    return meter.compute()


@pytest.mark.parametrize("from_json", [False, True], ids=["meter", "metrics.json"])
def test_reliability_leaves_empty_bins_blank(from_json, figures, tmp_path):
    metrics = _calibration_of_two_bins()
    cal = metrics["calibration"]
    if from_json:  # metrics.json keeps an empty bin's NaN as null
        from gpaco.engine.logging import to_jsonable

        cal = json.loads(json.dumps(to_jsonable(cal)))
    filled = [b for b, n in enumerate(cal["count"]) if n]
    assert len(filled) == 3 and cal["bins"] == 15  # 33.3 % (bin 4), 41.9 % (bin 6), 87.1 % (bin 13)
    plot_reliability(cal, metrics["ece"], str(tmp_path / "reliability.png"))
    fig = figures["reliability.png"]
    bars = [(x, y, h) for x, y, h in fig["axes"][0]["bars"]]
    width = 100 / 15
    drawn_bins = {int(x // width) for x, _, h in bars}
    assert drawn_bins == set(filled)  # no bar (accuracy or gap) where no sample fell
    # bin 13: 2 samples at confidence 87.1 %, one right: accuracy 50, the gap up to 87.1
    acc13 = [(y, h) for x, y, h in bars if int(x // width) == 13]
    assert acc13[0] == pytest.approx((0.0, 50.0))
    assert acc13[1][0] == pytest.approx(50.0) and acc13[1][0] + acc13[1][1] == pytest.approx(cal["confidence"][13])
    assert "12 of 15 bins empty" in fig["axes"][0]["title"]


# --------------------------------------------------------------------------- class names


def test_read_class_names(tmp_path):
    from gpaco.classification.report import class_names_beside, read_class_names

    path = tmp_path / "classes.txt"
    path.write_text("\ufeffcat\n  dog \nsnow leopard\n\n")  # a byte-order mark, spaces, a trailing blank line
    assert read_class_names(str(path)) == ["cat", "dog", "snow leopard"]
    assert class_names_beside([None, str(tmp_path / "train.txt")], num_classes=3) == ["cat", "dog", "snow leopard"]
    assert class_names_beside([str(tmp_path / "none" / "train.txt")]) is None
    with pytest.raises(DataError, match=r"classes.txt: 3 class names for 4 classes"):
        read_class_names(str(path), num_classes=4)
    for text, message in (("cat\n\ndog\n", r"classes.txt:2: empty line"),
                          ("cat\ndog\ncat\n", r"classes.txt:3: class name 'cat' repeats line 1"),
                          ("\n", r"no class names")):
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            read_class_names(str(path))


def _metrics_of_three_classes() -> dict:
    meter = ClassificationMeter(3)
    meter.update(torch.eye(3)[[0, 0, 1, 0, 2, 0]], torch.tensor([0, 0, 1, 1, 2, 2]))  # per class 100, 50, 50
    return meter.compute([300, 50, 5])


def test_eval_report_names_the_classes(figures, tmp_path):
    metrics = _metrics_of_three_classes()
    names = ["cat", "dog", "snow leopard"]
    written = write_eval_report(str(tmp_path), metrics, [300, 50, 5], class_names=names)
    assert {Path(p).name for p in written} == {"per_class.csv", "per_class.png", "confusion.png", "reliability.png"}
    rows = list(csv.DictReader((tmp_path / "per_class.csv").open()))
    assert list(rows[0])[:3] == ["class", "name", "train_count"]
    assert [(r["class"], r["name"], r["accuracy"]) for r in rows] == \
        [("0", "cat", "100.0000"), ("1", "dog", "50.0000"), ("2", "snow leopard", "50.0000")]
    assert figures["per_class.png"]["axes"][0]["xticks"] == names  # head to tail: 300, 50, 5 images
    assert "worst 50.0 (dog)" in figures["per_class.png"]["axes"][0]["title"]
    confusion = figures["confusion.png"]["axes"][0]
    assert confusion["xticks"] == names and confusion["yticks"] == names
    # the names a metrics.json holds serve when none are passed; without any the indices stay
    write_eval_report(str(tmp_path), {**metrics, "class_names": names})
    assert figures["confusion.png"]["axes"][0]["yticks"] == names
    write_eval_report(str(tmp_path), metrics)
    assert figures["confusion.png"]["axes"][0]["yticks"] == ["0", "1", "2"]
    assert list(csv.DictReader((tmp_path / "per_class.csv").open()))[0]["class"] == "0"
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        write_eval_report(str(tmp_path), metrics, class_names=names[:2])


def test_fairness_line_names_the_worst_class():
    metrics = {**_metrics_of_three_classes(), "class_names": ["cat", "dog", "snow leopard"]}
    assert fairness_line(metrics).startswith("per class: worst 50.00 (dog) | std ")


# --------------------------------------------------------------------------- every figure: a title, labelled axes


def test_every_figure_has_a_title_and_labelled_axes(runs, figures, tmp_path, capsys):
    rows = [{"epoch": "1", "train_loss": "2.0", "val_top1": "30"},
            {"epoch": "2", "train_loss": "1.0", "val_top1": "50"}]
    plot_curves(rows, str(tmp_path / "curves.png"))
    metrics = _metrics_of_three_classes()
    write_eval_report(str(tmp_path), metrics, [300, 50, 5], class_names=["a", "b", "c"])
    write_eval_report(str(tmp_path / "."), metrics)  # no train counts: per_class.png on a single axis
    _tool("summarize_runs").main([str(runs["test"]), str(runs["no_test"]), "--plot", str(tmp_path / "summary.png")])
    _tool("compare_runs").main([str(runs["test"]), str(runs["test2"]), "--plot", str(tmp_path / "compare2.png")])
    _tool("compare_runs").main([str(runs["test"]), str(runs["test2"]), str(runs["test3"]), "--plot",
                                str(tmp_path / "compare3.png")])
    expected = {"curves.png", "per_class.png", "confusion.png", "reliability.png", "summary.png", "compare2.png",
                "compare3.png"}
    assert expected <= set(figures)
    for name, fig in figures.items():
        assert_titled_and_labelled(name, fig)
    assert figures["summary.png"]["axes"][0]["title"] == "test accuracy of 2 runs"


# --------------------------------------------------------------------------- summarize_runs.py


def test_summary_png_has_a_title_and_labelled_axes(runs, figures, tmp_path):
    _tool("summarize_runs").main([str(runs["test"]), str(runs["test2"]), "--plot", str(tmp_path / "summary.png")])
    fig = figures["summary.png"]
    assert_titled_and_labelled("summary.png", fig)
    assert fig["axes"][0]["xticks"] == ["top-1", "many", "medium", "few"]


def test_summarize_runs_handles_a_run_without_a_test_split(runs, tmp_path, capsys):
    summarize = _tool("summarize_runs")
    assert summarize.main([str(runs["test"]), str(runs["no_test"]), "--out", str(tmp_path / "s.md")]) == 0
    out = capsys.readouterr().out
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in out.splitlines() if ln.startswith("| ")}
    test = json.loads((runs["test"] / "metrics.json").read_text())
    assert rows["test"].startswith(f"| test | {test['top1']:.2f} | {test['top5']:.2f} |")
    assert rows["no_test"] == "| no_test | — | — | — | — | — | — | 1 |"  # its selection is still known
    assert f"note: {runs['no_test']}: no test metrics (trained without --test-list)" in out
    assert "no test metrics" in (tmp_path / "s.md").read_text()
    # evaluated later by tools/eval.py into RUN/eval (its default folder): that row is read from there
    later = tmp_path / "later"
    shutil.copytree(runs["no_test"], later)
    (later / "eval").mkdir()
    shutil.copy(runs["test"] / "metrics.json", later / "eval" / "metrics.json")
    summarize.main([str(later)])
    out = capsys.readouterr().out
    assert f"| later | {test['top1']:.2f} |" in out and f"test metrics from {later / 'eval' / 'metrics.json'}" in out


# --------------------------------------------------------------------------- compare_runs.py


def test_compare_runs_with_and_without_per_class_data(runs, tmp_path, capsys):
    table = _tool("compare_runs").main([str(runs["test"]), str(runs["no_test"]), "--plot", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert table in out
    lines = {ln[:20].strip(): ln.split()[-3:] for ln in table.splitlines()[1:]}
    test = json.loads((runs["test"] / "metrics.json").read_text())
    assert lines["top-1"] == [f"{test['top1']:.2f}", "—", "—"]
    assert "note: no_test has no test metrics (trained without --test-list)" in table
    assert "note: no per-class table or plot: no_test has no per-class accuracies (no test split)" in out
    assert not (tmp_path / "c.png").exists()


def test_compare_more_than_two_runs_plots_and_names_the_classes(runs, figures, capsys):
    table = _tool("compare_runs").main([str(runs["test"]), str(runs["test2"]), str(runs["test3"])])
    out = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["test", "test2", "test3"]
    plot = runs["test3"] / "compare_test_vs_test2_vs_test3.png"  # beside the last run
    assert plot.is_file() and f"wrote {plot}" in out
    per_class = json.loads((runs["test"] / "metrics.json").read_text())["per_class"]
    train = [int(r["train_count"]) for r in csv.DictReader((runs["test"] / "per_class.csv").open())]
    order = sorted(range(10), key=lambda c: -train[c])  # head to tail
    fig = figures[plot.name]
    assert fig["axes"][0]["xticks"] == [DIGITS[c] for c in order]  # the classes.txt beside the run's lists
    assert len(fig["axes"]) == 2 and fig["axes"][0]["ylabel"] == "train images (log)"
    # the per-class table: one row per class, head to tail, named, each run's accuracy
    rows = out.split(table, 1)[1].strip().splitlines()
    assert rows[0].split() == ["class", "train", "test", "test2", "test3"]
    assert [r.split()[:2] for r in rows[1:11]] == [[DIGITS[c], str(train[c])] for c in order]
    assert rows[1].split()[2:5] == [f"{per_class[order[0]]:.2f}"] * 3


def test_compare_two_runs_names_the_classes(runs, figures, tmp_path, capsys):
    _tool("compare_runs").main([str(runs["test"]), str(runs["test2"]), "--names", "A", "B", "--plot",
                                str(tmp_path / "ab.png")])
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.startswith("class "))
    assert header.split() == ["class", "train", "A", "B", "B", "-", "A"]
    assert sorted(figures["ab.png"]["axes"][0]["xticks"]) == sorted(DIGITS)
    assert "per-class accuracy difference: B vs A" == figures["ab.png"]["axes"][0]["title"]


def test_compare_runs_of_different_class_counts_says_why_there_is_no_plot(runs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"top1": 50.0, "per_class": [50.0, 50.0]}))
    _tool("compare_runs").main([str(runs["test"]), str(other), "--plot", str(tmp_path / "x.png")])
    out = capsys.readouterr().out
    assert "note: no per-class table or plot: the runs have different numbers of classes: test 10, other 2" in out
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- docs/api.md


def test_api_md_python_blocks_run_as_written(capsys):
    """Every python block of docs/api.md after the first (tests/test_api.py trains with that one)."""
    from test_docs import code_blocks

    api = ROOT / "docs" / "api.md"
    blocks = code_blocks(api, langs=("python",))
    assert len(blocks) >= 2
    for block in blocks[1:]:
        exec(compile(block, str(api), "exec"), {"__name__": "api_example"})
    out = capsys.readouterr().out
    assert "'gpaco'" in out  # the second block prints the method names
