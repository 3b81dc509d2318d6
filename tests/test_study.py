"""gpaco-study (gpaco.study): the t quantile and the aggregation against hand-computed numbers,
the plan and its run folders, resuming a half-finished study without repeating finished runs,
--overwrite, a finished run asked with other flags, the SLURM array, the report files, and
the demo flags the study starts from.

Most tests train nothing: a fake launcher writes each run's metrics.json (with the numbers of
``TABLE``) as a finished training run would. One slow test trains two real one-epoch runs.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gpaco.study import cli as study_cli
from gpaco.study.plan import StudyError, merge_flags, run_state
from gpaco.study.presets import COMMON, PRESETS
from gpaco.study.report import pooled_calibration
from gpaco.study.runner import slurm_array_script, threads_per_run
from gpaco.study.stats import paired_difference, summarize, t_quantile

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("q,df,expected", [
    # two-sided 95 % (q 0.975) from printed t tables, and one-sided 95 % / 99.5 %
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 3, 3.1824), (0.975, 4, 2.7764), (0.975, 5, 2.5706),
    (0.975, 9, 2.2622), (0.975, 10, 2.2281), (0.975, 29, 2.0452), (0.975, 30, 2.0423), (0.975, 100, 1.9840),
    (0.95, 1, 6.3138), (0.95, 5, 2.0150), (0.995, 3, 5.8409), (0.5, 7, 0.0), (0.025, 3, -3.1824)])
def test_t_quantile_matches_the_tables(q, df, expected):
    assert t_quantile(q, df) == pytest.approx(expected, abs=5e-5)


def test_t_quantile_against_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (*range(1, 41), 57, 250):
        for q in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.01):
            assert t_quantile(q, df) == pytest.approx(float(stats.t.ppf(q, df)), rel=1e-9)


@pytest.mark.parametrize("q,df", [(1.0, 3), (0.0, 3), (0.9, 0), (0.9, 2.5)])
def test_t_quantile_refuses_bad_input(q, df):
    with pytest.raises(ValueError, match="t_quantile"):
        t_quantile(q, df)


def test_summary_by_hand():
    s = summarize([70.0, 72.0, 77.0])
    # mean 73; deviations -3, -1, 4: std = sqrt((9 + 1 + 16) / 2) = sqrt(13); t(0.975, 2) = 4.302653
    assert (s.n, s.mean, s.std) == (3, 73.0, pytest.approx(math.sqrt(13)))
    half = 4.302652729749464 * math.sqrt(13) / math.sqrt(3)
    assert (s.low, s.high) == (pytest.approx(73 - half), pytest.approx(73 + half))
    assert (s.low, s.high) == (pytest.approx(64.0433, abs=1e-4), pytest.approx(81.9567, abs=1e-4))
    one = summarize([5.0, None, float("nan")])  # missing values are left out
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.std) and math.isnan(one.low)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_paired_difference_by_hand():
    method = {0: 75.0, 1: 71.0, 2: 80.0, 3: 60.0}
    base = {0: 70.0, 1: 72.0, 2: 77.0, 5: 1.0}
    p = paired_difference(method, base)  # seeds 0, 1, 2: differences 5, -1, 3
    assert p.seeds == (0, 1, 2)
    assert p.diff.mean == pytest.approx(7 / 3)
    assert p.diff.std == pytest.approx(math.sqrt(((5 - 7 / 3) ** 2 + (-1 - 7 / 3) ** 2 + (3 - 7 / 3) ** 2) / 2))
    assert p.diff.std == pytest.approx(3.05505, abs=1e-5)
    assert p.diff.half_width == pytest.approx(4.302652729749464 * p.diff.std / math.sqrt(3))
    assert (p.method_better, p.baseline_better, p.tied) == (2, 1, 0)
    lower = paired_difference(method, base, higher_is_better=False)  # e.g. ECE
    assert (lower.method_better, lower.baseline_better, lower.tied) == (1, 2, 0)
    tie = paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 3.0})
    assert (tie.method_better, tie.baseline_better, tie.tied) == (0, 1, 1)


def test_pooled_calibration_weights_bins_by_count():
    a = {"bins": 3, "count": [0, 2, 2], "accuracy": [None, 50.0, 100.0], "confidence": [None, 40.0, 90.0]}
    b = {"bins": 3, "count": [0, 6, 0], "accuracy": [None, 100.0, None], "confidence": [None, 60.0, None]}
    pooled = pooled_calibration([a, b])
    assert pooled["count"] == [0, 8, 2]
    assert pooled["accuracy"] == [None, pytest.approx((2 * 50 + 6 * 100) / 8), 100.0]
    assert pooled["confidence"] == [None, pytest.approx((2 * 40 + 6 * 60) / 8), 90.0]


# ----------------------------------------------------------------------------- a fake training

#: (method, seed) -> (top1, few, ece, per-class accuracies of 3 classes)
TABLE = {("ce", 0): (70.0, 10.0, 5.0, [100.0, 100.0, 10.0]), ("ce", 1): (72.0, 16.0, 6.0, [100.0, 100.0, 16.0]),
         ("ce", 2): (77.0, 31.0, 4.0, [100.0, 100.0, 31.0]),
         ("gpaco", 0): (75.0, 25.0, 9.0, [100.0, 100.0, 25.0]), ("gpaco", 1): (71.0, 13.0, 8.0, [100.0, 100.0, 13.0]),
         ("gpaco", 2): (80.0, 40.0, 7.0, [100.0, 100.0, 40.0])}
TRAIN_COUNTS = [300, 60, 5]


def _flag(cmd, name):
    return cmd[len(cmd) - 1 - cmd[::-1].index(name) + 1]


def write_fake_run(folder: str, method: str, seed: int) -> None:
    """The files of a finished classification run: metrics.json, per_class.csv, args.yaml."""
    top1, few, ece, per_class = TABLE.get((method, seed)) or TABLE[("ce", seed % 3)]
    os.makedirs(folder, exist_ok=True)
    metrics = {"top1": top1, "mean_class_acc": top1, "many": 100.0, "medium": 100.0, "few": few,
               "worst_class_acc": min(per_class), "class_acc_std": 1.0, "class_acc_cv": 0.1, "many_few_gap": 100 - few,
               "ece": ece, "top5": 99.0, "per_class": per_class, "num_samples": 300,
               "calibration": {"bins": 2, "count": [10, 20], "accuracy": [40.0, 90.0], "confidence": [30.0, 80.0]}}
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    with open(os.path.join(folder, "per_class.csv"), "w") as f:
        f.write("class,train_count,test_count,accuracy,precision,recall\n")
        for c, (n, acc) in enumerate(zip(TRAIN_COUNTS, per_class)):
            f.write(f"{c},{n},100,{acc},,\n")
    with open(os.path.join(folder, "args.yaml"), "w") as f:
        f.write(f"method: {method}\nseed: {seed}\nepochs: 30\nlr: 0.05\n")
    open(os.path.join(folder, "checkpoint.pth"), "wb").close()


class FakeLauncher:
    """A launcher that records each command and writes the finished run of TABLE; ``preempt``:
    the call numbers (1-based) that instead leave a checkpoint and send SIGTERM to the study,
    as a preempted training would; ``fail``: those that exit 1 having written nothing."""

    def __init__(self, preempt=(), fail=()):
        self.calls, self.preempt, self.fail = [], set(preempt), set(fail)

    def __call__(self, cmd, env, log_path, echo):
        self.calls.append(list(cmd))
        folder, method, seed = _flag(cmd, "--output-dir"), _flag(cmd, "--method"), int(_flag(cmd, "--seed"))
        assert os.path.dirname(log_path) == folder
        if len(self.calls) in self.fail:
            return 1
        if len(self.calls) in self.preempt:
            os.makedirs(folder, exist_ok=True)
            open(os.path.join(folder, "checkpoint.pth"), "wb").close()
            os.kill(os.getpid(), signal.SIGTERM)  # the study's handler: no more launches
            return 0
        write_fake_run(folder, method, seed)
        return 0


@pytest.fixture
def lists(tmp_path) -> Path:
    data = tmp_path / "mydata"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"{split}.txt").write_text("a.png 0\n")
    return data


def study_argv(tmp_path, lists, *extra):
    return ["--methods", "ce", "gpaco", "--seeds", "0", "1", "2", "--data", str(lists), "--out",
            str(tmp_path / "study"), *extra]


def folders(calls):
    return [_flag(c, "--output-dir") for c in calls]


def test_study_runs_every_job_and_reports_hand_computed_numbers(tmp_path, lists):
    fake = FakeLauncher()
    result = study_cli.main(study_argv(tmp_path, lists), launcher=fake)
    out = tmp_path / "study"
    # seed-major order: seed 0 of every method first
    assert folders(fake.calls) == [str(out / "mydata" / m / f"seed{s}") for s in (0, 1, 2) for m in ("ce", "gpaco")]
    for call in fake.calls:
        assert call[-2:] == ["--resume", "auto"] and "--overwrite" not in call
        assert call[1].endswith(os.path.join("tools", "train.py"))
    assert not result["outcome"].failed
    for name in ("study.md", "study.csv", "study_runs.csv", "mydata_metrics.png", "mydata_paired.png",
                 "mydata_per_class.png", "mydata_reliability.png"):
        assert (out / name).stat().st_size > 0, name
    rows = {(r["method"], r["metric"]): r for r in csv.DictReader(open(out / "study.csv"))}
    ce, gp = rows[("ce", "top1")], rows[("gpaco", "top1")]
    assert float(ce["mean"]) == pytest.approx(73.0) and float(ce["std"]) == pytest.approx(math.sqrt(13), rel=1e-5)
    assert float(ce["ci95_low"]) == pytest.approx(64.0433, abs=1e-3)
    assert float(ce["ci95_high"]) == pytest.approx(81.9567, abs=1e-3)
    assert ce["diff_mean"] == "" and ce["values"] == "0:70;1:72;2:77"
    assert float(gp["diff_mean"]) == pytest.approx(7 / 3, rel=1e-5)
    assert float(gp["diff_std"]) == pytest.approx(3.05505, abs=1e-4)
    assert (gp["seeds_method_better"], gp["seeds_baseline_better"], gp["seeds_tied"]) == ("2", "1", "0")
    ece = rows[("gpaco", "ece")]  # 9, 8, 7 against 5, 6, 4: worse on every seed (lower is better)
    assert float(ece["diff_mean"]) == pytest.approx(3.0)
    assert (ece["seeds_method_better"], ece["seeds_baseline_better"]) == ("0", "3")
    assert float(rows[("gpaco", "class_acc:2")]["mean"]) == pytest.approx(26.0)
    md = (out / "study.md").read_text()
    assert "| ce | 3 | 73.00 ± 3.61 |" in md
    assert "| gpaco | 3 | 75.33 ± 4.51 |" in md  # 75, 71, 80
    assert "| ce | [64.04, 81.96] |" in md
    assert "| gpaco | top-1 | +2.33 | [-5.26, +9.92] | 2 / 1 / 0 |" in md
    assert "| gpaco | ECE (x100) (lower is better) | +3.00 |" in md
    assert "With 3 seeds the 95 % t-interval" in md and "do not show that two methods are equal" in md
    runs = list(csv.DictReader(open(out / "study_runs.csv")))
    assert [(r["method"], r["seed"], r["top1"]) for r in runs] == [
        (m, str(s), f"{TABLE[(m, s)][0]:g}") for s in (0, 1, 2) for m in ("ce", "gpaco")]


def test_a_half_finished_study_resumes_without_repeating_finished_runs(tmp_path, lists):
    argv = study_argv(tmp_path, lists)
    first = FakeLauncher(preempt={3})  # seed 0 of both methods finish, the third run is preempted
    outcome = study_cli.main(argv, launcher=first)["outcome"]
    assert outcome.stopped and len(first.calls) == 3
    out = tmp_path / "study" / "mydata"
    assert run_state(str(out / "ce" / "seed1"), "classification") == "partial"
    assert run_state(str(out / "gpaco" / "seed1"), "classification") == "new"
    assert not (tmp_path / "study" / "study.md").exists()  # a stopped study leaves the report to the next pass
    second = FakeLauncher()
    result = study_cli.main(argv, launcher=second)
    assert folders(second.calls) == [str(out / m / f"seed{s}") for s in (1, 2) for m in ("ce", "gpaco")]
    assert all(c[-2:] == ["--resume", "auto"] for c in second.calls)
    assert len(result["outcome"].skipped) == 2
    third = FakeLauncher()  # all finished: nothing is launched, the report is written again
    study_cli.main(argv, launcher=third)
    assert third.calls == []
    # more seeds later: only the new ones train
    fourth = FakeLauncher()
    result = study_cli.main([*argv[:4], "0", "1", "2", "3", *argv[7:]], launcher=fourth)
    assert folders(fourth.calls) == [str(out / m / "seed3") for m in ("ce", "gpaco")]
    assert "| ce | 4 |" in result["markdown"]


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, lists):
    fake = FakeLauncher(fail={1})
    with pytest.raises(StudyError, match=r"1 run\(s\) failed, first .*ce/seed0 \(exit 1; its log: .*study.log\)"):
        study_cli.main(study_argv(tmp_path, lists), launcher=fake)
    assert len(fake.calls) == 6
    md = (tmp_path / "study" / "study.md").read_text()
    assert "5 of 6 finished; not finished: mydata/ce/seed0" in md and "| ce | 2 | 74.50 ± 3.54 |" in md


def test_overwrite_retrains_every_run(tmp_path, lists):
    argv = study_argv(tmp_path, lists)
    study_cli.main(argv, launcher=FakeLauncher())
    again = FakeLauncher()
    study_cli.main([*argv, "--overwrite"], launcher=again)
    assert len(again.calls) == 6
    assert all(c[-1] == "--overwrite" and "--resume" not in c for c in again.calls)


def test_a_finished_run_with_other_flags_is_an_error(tmp_path, lists):
    argv = study_argv(tmp_path, lists)
    study_cli.main(argv, launcher=FakeLauncher())  # args.yaml records epochs 30, lr 0.05
    with pytest.raises(StudyError, match=r"ce/seed0 finished with other flags \(--epochs 30 -> 5\) \(and 5 more "
                                         r"run\(s\)\).*--overwrite"):
        study_cli.main([*argv, "--", "--epochs", "5"], launcher=FakeLauncher())
    fake = FakeLauncher()
    study_cli.main([*argv, "--", "--epochs", "30"], launcher=fake)  # the same value: still finished
    assert fake.calls == []


def test_parallel_divides_the_threads(tmp_path, lists, monkeypatch):
    assert threads_per_run(1, {"OMP_NUM_THREADS": "8"}) == 8
    assert threads_per_run(3, {"OMP_NUM_THREADS": "8"}) == 2
    assert threads_per_run(16, {"OMP_NUM_THREADS": "8"}) == 1
    from gpaco.engine.args import cpu_count

    assert threads_per_run(2, {}) == max(1, cpu_count() // 2)
    envs = []

    def launcher(cmd, env, log_path, echo):
        envs.append((env["OMP_NUM_THREADS"], echo))
        return FakeLauncher()(cmd, env, log_path, echo)

    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    study_cli.main([*study_argv(tmp_path, lists), "--parallel", "2"], launcher=launcher)
    assert envs == [("2", False)] * 6


# ----------------------------------------------------------------------------- the plan


def test_plan_flags_later_ones_win_once(tmp_path, lists, capsys):
    result = study_cli.main(["--methods", "ce", "gpaco", "mislas", "--seeds", "4", "--data", str(lists), "--out",
                             str(tmp_path / "s"), "--aug", "sim", "--norm", "imagenet", "--arch", "resnet32",
                             "--flags", "gpaco=--alpha 0.01", "mislas_stage1=--lr 0.2", "--plan", "--",
                             "--epochs", "12", "--warmup-epochs", "1"])
    jobs = {j.method: j for j in result["jobs"]}
    ce, gpaco = jobs["ce"].runs[0].argv, jobs["gpaco"].runs[0].argv
    for argv in (ce, gpaco):
        assert argv.count("--epochs") == 1 and argv[argv.index("--epochs") + 1] == "12"
        assert argv[argv.index("--arch") + 1] == "resnet32" and argv[argv.index("--norm") + 1] == "imagenet"
        assert argv[argv.index("--seed") + 1] == "4"
    assert ce[ce.index("--aug") + 1] == "sim" and gpaco[gpaco.index("--aug") + 1] == "sim_sim"  # two views
    assert gpaco[gpaco.index("--alpha") + 1] == "0.01" and "--alpha" not in ce
    stage1, stage2 = jobs["mislas"].runs
    assert stage1.folder.endswith(os.path.join("mislas_stage1", "seed4")) and stage1.argv[1] == "mislas"
    assert stage1.argv[stage1.argv.index("--lr") + 1] == "0.2"
    assert stage2.argv[stage2.argv.index("--epochs") + 1] == "3"  # stage 2's own schedule wins over --'s
    assert stage2.argv[stage2.argv.index("--stage1") + 1] == os.path.join(stage1.folder, "best.pth")
    printed = capsys.readouterr().out
    assert "note: the runs start from the demo's flags" in printed and printed.count("     new  python") == 4
    assert merge_flags("classification", ["--shift-bn", "--lr", "1", "--reslt-branch-sizes", "8", "6", "--lr=2",
                                          "--no-shift-bn", "--reslt-branch-sizes", "3", "4"]) == (
        "--no-shift-bn", "--lr=2", "--reslt-branch-sizes", "3", "4")


@pytest.mark.parametrize("argv,message", [
    (["--methods", "nosuch"], "--methods: unknown classification method 'nosuch'"),
    (["--methods", "ce", "ce"], "'ce' is listed twice"),
    (["--baseline", "gpaco", "--methods", "ce"], "--baseline gpaco: not one of --methods"),
    (["--seeds", "0", "0"], "distinct seeds"),
    (["--", "--seed", "3"], "--seed after --: the study sets it for each run; use --seeds"),
    (["--", "--output-dir", "x"], "use --out"),
    (["--aug", "timm_randaug"], "gpaco trains on two views and no two-view strategy repeats timm_randaug"),
    (["--flags", "paco=--alpha 1"], "--flags 'paco=--alpha 1': expected METHOD=FLAGS"),
    (["--", "--lr", "-1"], "the training flags do not parse: --lr must be > 0"),
    (["--", "--no-such-flag"], "the training flags do not parse: unrecognized arguments: --no-such-flag"),
    (["--submit"], "--submit submits the SLURM array of --slurm"),
    (["--task", "segmentation", "--aug", "sim"], "--aug, --aug2 and --norm are classification flags"),
])
def test_bad_study_flags_are_one_line(tmp_path, lists, argv, message):
    with pytest.raises(SystemExit) as e:
        study_cli.main(["--data", str(lists), "--out", str(tmp_path / "s"), "--plan", *argv])
    assert message in str(e.value.code) and str(e.value.code).startswith("error: ")


def test_data_flags_after_the_separator_name_the_dataset(tmp_path):
    result = study_cli.main(["--methods", "ce", "--seeds", "0", "--out", str(tmp_path / "s"), "--plan", "--",
                             "--data-root", str(tmp_path / "photos"), "--train-list", "t.txt"])
    (job,) = result["jobs"]
    assert job.dataset == "photos" and job.folder == str(tmp_path / "s" / "photos" / "ce" / "seed0")
    assert job.runs[0].argv.count("--data-root") == 1  # the demo data is not added
    with pytest.raises(SystemExit, match="--data names the data and so does --data-root"):
        study_cli.main(["--data", str(tmp_path), "--plan", "--", "--data-root", str(tmp_path)])


def test_run_state_reads_the_run_files(tmp_path):
    folder = tmp_path / "run"
    assert run_state(str(folder), "classification") == "new"
    folder.mkdir()
    (folder / "checkpoint.pth").write_bytes(b"")
    assert run_state(str(folder), "classification") == "partial"
    (folder / "metrics.json").write_text('{"top1": 7')  # killed while writing
    assert run_state(str(folder), "classification") == "partial"
    (folder / "metrics.json").write_text('{"stopped_at_epoch": 3}')
    assert run_state(str(folder), "classification") == "partial"
    (folder / "metrics.json").write_text('{"top1": 70.5}')
    assert run_state(str(folder), "classification") == "finished"
    assert run_state(str(folder), "segmentation") == "partial"  # no miou
    (folder / "metrics.json").write_text('{"miou": 19.3}')
    assert run_state(str(folder), "segmentation") == "finished"


# ----------------------------------------------------------------------------- SLURM


def _fake_exe(path: Path, record: Path) -> Path:
    path.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" >> {shlex.quote(str(record))}\necho --- >> "
                    f"{shlex.quote(str(record))}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_slurm_array_task_i_runs_job_i(tmp_path, lists):
    record = tmp_path / "calls.txt"
    python = _fake_exe(tmp_path / "python", record)
    argv = ["--methods", "ce", "mislas", "--seeds", "0", "1", "--data", str(lists), "--out", str(tmp_path / "s"),
            "--python", str(python)]
    fin = FakeLauncher()
    write_fake_run(str(tmp_path / "s" / "mydata" / "ce" / "seed0"), "ce", 0)  # one job done before submitting
    result = study_cli.main([*argv, "--slurm", "--parallel", "2"], launcher=fin)
    assert fin.calls == []
    todo = [j for j in result["jobs"] if not j.folder.endswith(os.path.join("ce", "seed0"))]
    script = Path(result["script"])
    assert script.read_text() == slurm_array_script(todo, "classification", [str(python), str(ROOT / "tools" /
                                                                                              "train.py")],
                                                    cwd=os.getcwd(), study_command=shlex.join(
                                                        ["python", "tools/study.py", *argv, "--slurm", "--parallel",
                                                         "2"]))
    assert result["submit"][:4] == ["bash", str(ROOT / "sh" / "slurm.sh"), str(script), f"--array=0-{len(todo) - 1}%2"]
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    for i, job in enumerate(todo):
        record.unlink(missing_ok=True)
        proc = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(i)}, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
        calls = [c.splitlines() for c in record.read_text().split("---\n") if c]
        assert calls == [[str(ROOT / "tools" / "train.py"), *run.argv] for run in job.runs], i
    proc = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(len(todo))},
                          capture_output=True, text=True)
    assert proc.returncode == 2 and f"the array has tasks 0-{len(todo) - 1}" in proc.stderr
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "not a SLURM array task" in proc.stderr


def test_slurm_submit_goes_through_sh_slurm(tmp_path, lists, monkeypatch):
    record = tmp_path / "sbatch.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_exe(bin_dir / "sbatch", record)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    result = study_cli.main([*study_argv(tmp_path, lists), "--slurm", "--submit", "--sbatch-args=--time=1:00:00 "
                             "--gpus-per-node=1"])
    args = record.read_text().split("---\n")[0].splitlines()
    assert args[:3] == ["--ntasks-per-node=1", f"--chdir={ROOT}", f"--export=ALL,GPACO_ROOT={ROOT}"]
    assert args[3:7] == ["--array=0-5", f"--output={tmp_path / 'study' / 'slurm'}/%A_%a.out", "--time=1:00:00",
                         "--gpus-per-node=1"]
    assert args[7:] == [str(ROOT / "sh" / "slurm.sh"), result["script"]]


# ----------------------------------------------------------------------------- the demo flags


def _bash_array(text: str, name: str) -> list:
    body = re.search(rf"^{name}=\((.*?)\)\s*$", text, re.S | re.M).group(1)
    return shlex.split(body.replace("\\\n", " "), comments=True)


def _without(tokens, flags_with_value):
    out, skip = [], 0
    for t in tokens:
        if skip:
            skip -= 1
        elif t in flags_with_value:
            skip = 1
        else:
            out.append(t)
    return out


def test_presets_are_the_demo_flags():
    """The study starts from sh/demo.sh's and sh/demo_seg.sh's flags (the same numbers, so a study's
    seed 0 is the demo's run)."""
    text = (ROOT / "sh" / "demo.sh").read_text()
    values = {"$ARCH": "resnet8", "$SIZE": "32", "$EPOCHS": "30", "$WARMUP": "2"}  # the defaults
    common = [values.get(t, t) for t in _bash_array(text, "common")]
    data_run = ("--data-root", "--train-list", "--val-list", "--test-list", "--seed", "--resume")
    assert tuple(_without(common, data_run)) == COMMON["classification"]
    case = re.search(r'case "\$m" in(.*?)\n\s*esac', text, re.S).group(1).replace("\\\n", " ")
    found = set()
    for branch in re.split(r"\n\s*(?=[\w|]+\) )", case):
        head = re.match(r"\s*([\w|]+)\) ", branch)
        if head is None:
            continue
        for name in head.group(1).split("|"):
            if name not in PRESETS["classification"]:
                continue
            commands = [shlex.split(line, comments=True) for line in branch.splitlines() if "tools/train.py" in line]
            stages = PRESETS["classification"][name]
            assert len(commands) == len(stages), name
            for cmd, stage in zip(commands, stages):
                cmd = [name if t == "$m" else t for t in cmd[cmd.index("${common[@]}") + 1:] if t != ";;"]
                assert cmd[cmd.index("--method") + 1] == stage.method
                flags = [f.replace("{previous}", f"$OUT/{name}{stages[0].folder_suffix}") for f in stage.flags]
                assert _without(cmd, ("--method", "--output-dir")) == flags, name
            found.add(name)
    assert found == set(PRESETS["classification"])
    seg = (ROOT / "sh" / "demo_seg.sh").read_text()
    common = ["700" if t == "$ITERS" else t for t in _bash_array(seg, "common")]
    assert tuple(_without(common, ("--data-root", "--seed", "--resume"))) == COMMON["segmentation"]
    extra = dict(re.findall(r'\[(\w+)\]="([^"]*)"', re.search(r"declare -A extra=\((.*?)\)", seg).group(1)))
    assert {m: " ".join(s[0].flags) for m, s in PRESETS["segmentation"].items()} == extra


# ----------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_a_real_study_of_one_epoch_runs(demo_data, tmp_path):
    """Two one-epoch runs of tools/train.py side by side (--parallel 2), then the same command again
    trains nothing and the report reads the runs' own files."""
    argv = ["--methods", "ce", "--seeds", "0", "1", "--out", str(tmp_path / "s"), "--name", "mnist",
            "--parallel", "2", "--", "--data-root", str(demo_data), "--train-list", str(demo_data / "train_small.txt"),
            "--val-list", str(demo_data / "val_small.txt"), "--test-list", str(demo_data / "test_small.txt"),
            "--epochs", "1", "--warmup-epochs", "0"]
    env = {"OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "study.py"), *argv], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, **env, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""},
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for seed in (0, 1):
        run = tmp_path / "s" / "mnist" / "ce" / f"seed{seed}"
        assert run_state(str(run), "classification") == "finished"
        assert "test (best val top-1" in (run / "study.log").read_text()  # the training's output, kept with it
        assert json.loads((run / "metrics.json").read_text())["top1"] >= 0
    md = (tmp_path / "s" / "study.md").read_text()
    assert re.search(r"\| ce \| 2 \| \d+\.\d\d ± \d+\.\d\d \|", md)
    again = FakeLauncher()
    study_cli.main(argv, launcher=again)
    assert again.calls == []
