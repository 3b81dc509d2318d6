"""``gpaco-study`` / ``tools/study.py``: methods x seeds (x datasets) in one command, and the report.

    gpaco-study                                          # CE, balanced CE, GPaCo x seeds 0 1 2 on the demo
    gpaco-study --methods ce gpaco --seeds 0 1 2 3 4 --data my_lists -- --epochs 60
    gpaco-study --task segmentation --parallel 2
    gpaco-study ... --slurm --submit --sbatch-args "--gpus-per-node=1 --time=4:00:00"
    gpaco-study ... --report-only                        # the report of whatever has finished

Docs: docs/study.md.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from typing import List, Optional, Sequence

from gpaco.study.plan import (
    StudyError, build_plan, check_extra_flags, check_plan, datasets_of, override_flags, parse_method_labels,
    train_command,
)
from gpaco.study.presets import ALL_METHODS, DEFAULT_METHODS, DEMO_DATA, TASKS, stages_of

__all__ = ["build_parser", "main", "cli", "DEFAULT_OUT"]

DEFAULT_OUT = "runs/study"
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    from gpaco.engine.args import RawHelpFormatter
    from gpaco.engine.cli import add_debug_flag

    p = argparse.ArgumentParser(
        prog="gpaco-study", formatter_class=RawHelpFormatter,
        usage="%(prog)s [options] [-- TRAINING FLAGS...]",
        description="Train methods x seeds (x datasets) as ordinary run folders OUT/<dataset>/<method>/seed<k>\n"
                    "(finished runs are kept, unfinished ones resumed) and write the report: mean ± std and\n"
                    "95 % t-intervals over seeds, paired differences against a baseline, figures (docs/study.md).\n"
                    "Everything after -- is passed to every training run and wins over the study's flags.",
        epilog="examples:\n"
               "  gpaco-study                                   CE, balanced CE, GPaCo x seeds 0 1 2 on the demo\n"
               "  gpaco-study --methods ce gpaco --seeds 0 1 2 3 4 --data data/my_lists -- --epochs 60 --lr 0.1\n"
               "  gpaco-study --plan --data data/my_lists --arch resnet18 --aug sim --norm imagenet -- "
               "--image-size 64 --resize-size 72\n"
               "  gpaco-study --name photos -- --data-root photos --train-list photos/train.txt "
               "--val-list photos/val.txt --test-list photos/test.txt\n"
               "  gpaco-study --task segmentation --parallel 2 -- --iters 300\n"
               "  gpaco-study --slurm --submit --sbatch-args=\"--gpus-per-node=1 --time=2:00:00\"\n"
               "  gpaco-study --report-only                     the report of the finished runs")
    p.add_argument("--task", default="classification", choices=TASKS, help="classification (tools/train.py) or "
                   "segmentation (tools/train_seg.py)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="methods to compare, 'all', or LABEL=METHOD for a variant (with --flags LABEL=...) "
                        "(default: classification ce balanced_ce gpaco; segmentation ce gpaco ceco)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", nargs="+", type=int, default=None, metavar="K",
                       help="seeds (default 0 1 2); finished seeds are kept, so a longer list grows a study")
    seeds.add_argument("--num-seeds", type=int, default=None, metavar="N", help="seeds 0 .. N-1")
    p.add_argument("--data", nargs="+", default=[], metavar="DIR",
                   help="dataset folder(s), one study each (classification: train.txt, val.txt, test.txt "
                        "inside; segmentation: the --data-root). Default: the demo data, built if missing; data "
                        "flags after -- (e.g. -- --dataset folder --data-root DIR) instead name one dataset as is")
    p.add_argument("--name", default=None, help="the dataset's name in OUT and the report (default: its folder's)")
    p.add_argument("--out", default=DEFAULT_OUT, help="the study's folder: runs and report")
    p.add_argument("--baseline", default=None, metavar="METHOD",
                   help="the method the others are compared with seed by seed (default: the first)")
    g = p.add_argument_group("training flags of every run (after the demo's, before those after --)")
    g.add_argument("--arch", default=None, help="network of every run")
    g.add_argument("--aug", default=None,
                   help="classification: one-view augmentation; two-view methods get the strategy that repeats it "
                        "(digits -> digits_digits) unless --aug2 is given")
    g.add_argument("--aug2", default=None, help="classification: two-view augmentation of two-view methods")
    g.add_argument("--norm", default=None, help="classification: input normalisation of every run")
    g.add_argument("--flags", nargs="+", default=[], metavar="METHOD=FLAGS",
                   help="extra training flags of one method, e.g. --flags 'gpaco=--alpha 0.01' (after --'s; MiSLAS's "
                        "stages are mislas_stage1 and mislas)")
    g = p.add_argument_group("how the runs go")
    g.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="runs at a time, the CPU threads divided among them (OMP_NUM_THREADS / N each); "
                        "with --slurm: array tasks at a time")
    g.add_argument("--slurm", action="store_true",
                   help="write OUT/slurm/study_array.sh (array task i trains job i) and print its sbatch command "
                        "through sh/slurm.sh instead of training here")
    g.add_argument("--submit", action="store_true", help="with --slurm: submit it (bash sh/slurm.sh ...)")
    g.add_argument("--sbatch-args", default="", metavar="ARGS",
                   help="with --slurm: sbatch arguments, written --sbatch-args=\"--gpus-per-node=1 --time=4:00:00\"")
    g.add_argument("--overwrite", action="store_true",
                   help="retrain every run of the plan from scratch (after an interruption, rerun without it to "
                        "continue)")
    g.add_argument("--plan", action="store_true", help="print every run's state and command; train nothing")
    g.add_argument("--report-only", action="store_true", help="write the report of the finished runs; train nothing")
    g.add_argument("--python", default=None, help="interpreter of the training runs (default: this one)")
    add_debug_flag(p)
    return p


def _split(argv: Sequence[str]):
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _per_method_flags(entries: Sequence[str], labels: Sequence[str]) -> dict:
    out = {}
    for entry in entries:
        label, sep, flags = entry.partition("=")
        if not sep or label not in labels:
            raise StudyError(f"--flags {entry!r}: expected METHOD=FLAGS with METHOD one of --methods "
                             f"({', '.join(labels)})")
        try:
            out[label] = [*out.get(label, []), *shlex.split(flags)]
        except ValueError as e:
            raise StudyError(f"--flags {entry!r}: {e}") from None
        check_extra_flags(out[label])
    return out


def build_demo_data(task: str) -> None:
    """The demo data of ``task`` under :data:`DEMO_DATA` (nothing is written when it is there)."""
    if task == "classification":
        from gpaco.data.demo import build_mnist_lt

        meta = build_mnist_lt(DEMO_DATA[task])
    else:  # sh/demo_seg.sh's scenes: 48 px, imbalance ratio 10
        from gpaco.data.demo_seg import build_demo_scenes

        meta = build_demo_scenes(DEMO_DATA[task], size=48, imb_factor=0.1)
    if not meta["skipped"]:
        print(f"[study] built the demo data in {DEMO_DATA[task]}", flush=True)


def _display(command: Sequence[str]) -> List[str]:
    """``python tools/train.py`` for the report (the real interpreter path is in the logs)."""
    cmd = list(command)
    if len(cmd) >= 2 and cmd[1].endswith(".py"):
        rel = os.path.relpath(cmd[1])
        return ["python", rel if not rel.startswith("..") else cmd[1]]
    return ["python", *cmd[1:]]


def main(argv: Optional[Sequence[str]] = None, *, launcher=None):
    """Run the study of ``argv`` (``launcher``: :data:`gpaco.study.runner.Launcher`, default a
    subprocess per run). Returns ``{"jobs", "states" | "outcome", ...}`` for the caller."""
    from gpaco.study.report import write_report
    from gpaco.study.runner import run_jobs, slurm_array_script, subprocess_launcher

    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = _split(argv)
    args = build_parser().parse_args(own)
    task = args.task
    if args.submit and not args.slurm:
        raise StudyError("--submit submits the SLURM array of --slurm: give both")
    if args.parallel < 1:
        raise StudyError(f"--parallel must be >= 1, got {args.parallel}")
    methods = args.methods or list(DEFAULT_METHODS[task])
    if methods == ["all"]:
        methods = list(ALL_METHODS[task])
    labelled = parse_method_labels(task, methods)
    labels = [label for label, _ in labelled]
    seeds = args.seeds if args.seeds is not None else list(range(args.num_seeds if args.num_seeds is not None else 3))
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds/--num-seeds: expected distinct seeds >= 0, got {seeds}")
    baseline = args.baseline or labels[0]
    if baseline not in labels:
        raise StudyError(f"--baseline {baseline}: not one of --methods ({', '.join(labels)})")
    check_extra_flags(extra)
    stage_labels = [label + stage.folder_suffix for label, method in labelled for stage in stages_of(task, method)]
    per_method = _per_method_flags(args.flags, stage_labels)
    datasets = datasets_of(task, args.data, extra, args.name)
    demo = not args.data and not any(d.flags == () for d in datasets)
    overrides = {label: override_flags(task, method, arch=args.arch, aug=args.aug, aug2=args.aug2, norm=args.norm)
                 for label, method in labelled}
    jobs = build_plan(task, args.out, labelled, seeds, datasets, extra=extra, per_method=per_method,
                      overrides=overrides, overwrite=args.overwrite)
    states = check_plan(task, jobs)
    command = train_command(task, args.python or sys.executable)
    shown = _display(command)
    first = {}
    for job in jobs:
        first.setdefault(job.method, " && ".join(shlex.join([*shown, *r.argv]) for r in job.runs))
    counts = {s: sum(1 for j in jobs if states[j.folder] == s) for s in ("finished", "partial", "new")}
    print(f"[study] {task}: {len(labels)} method(s) x {len(seeds)} seed(s) x {len(datasets)} dataset(s) = "
          f"{len(jobs)} runs under {args.out} ({counts['finished']} finished, {counts['partial']} to resume, "
          f"{counts['new']} new)", flush=True)
    if not demo:
        print("[study] note: the runs start from the demo's flags (made for 32 px digits / 48 px scenes); "
              "--arch, --aug, --norm and flags after -- set yours (the commands: --plan)", flush=True)
    if args.plan:
        for job in jobs:
            for run in job.runs:
                print(f"{states[run.folder]:>8s}  {shlex.join([*shown, *run.argv])}")
        return {"jobs": jobs, "states": states}
    if demo and not args.report_only:
        build_demo_data(task)
    study_command = shlex.join(["python", "tools/study.py", *argv])
    if args.slurm:
        todo = [j for j in jobs if args.overwrite or states[j.folder] != "finished"]
        if not todo:
            print("[study] every run has finished; nothing to submit")
            return {"jobs": jobs, "states": states}
        folder = os.path.join(args.out, "slurm")
        os.makedirs(folder, exist_ok=True)
        script = os.path.abspath(os.path.join(folder, "study_array.sh"))
        with open(script, "w", encoding="utf-8") as f:
            f.write(slurm_array_script(todo, task, command, cwd=os.getcwd(), study_command=study_command))
        os.chmod(script, 0o755)
        array = f"--array=0-{len(todo) - 1}" + (f"%{args.parallel}" if args.parallel > 1 else "")
        submit = ["bash", os.path.join(_REPO, "sh", "slurm.sh"), script, array,
                  f"--output={os.path.abspath(folder)}/%A_%a.out", *shlex.split(args.sbatch_args)]
        print(f"[study] wrote {script}: {len(todo)} array task(s)")
        print(f"[study] submit: {shlex.join(submit)}")
        print(f"[study] report, when the array is done: {study_command} --report-only")
        if args.submit:
            if not os.path.isfile(submit[1]):
                raise StudyError(f"--submit: {submit[1]} not found (submitting needs a gpaco checkout's sh/slurm.sh)")
            proc = subprocess.run(submit)
            if proc.returncode:
                raise StudyError(f"--submit: sh/slurm.sh exited {proc.returncode}")
        return {"jobs": jobs, "states": states, "script": script, "submit": submit}
    t0 = time.time()
    outcome = None
    if not args.report_only:
        outcome = run_jobs(jobs, task, command, parallel=args.parallel, launcher=launcher or subprocess_launcher)
        if outcome.stopped:
            return {"jobs": jobs, "outcome": outcome}
    report = write_report(jobs, task, labels, baseline, args.out, seeds=seeds, commands=first)
    table = report["markdown"].split("\n\n")
    main_table = next((block for block in table if block.startswith("| method | seeds |")), "")
    print(f"\n{main_table}\n")
    print(f"[study] report: {', '.join(report['paths'])}" + (f" ({time.time() - t0:.0f} s)" if outcome else ""))
    if outcome is not None and outcome.failed:
        first_bad = next(iter(outcome.failed))
        raise StudyError(f"{len(outcome.failed)} run(s) failed, first {first_bad} (exit "
                         f"{outcome.failed[first_bad]}; its log: {os.path.join(first_bad, 'study.log')}); the "
                         f"report holds the finished ones; fix and rerun the same command to continue")
    return {"jobs": jobs, "outcome": outcome, **report}


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """``gpaco-study`` (one ``error: ...`` line and exit 2 for a study that cannot run as asked)."""
    from gpaco.engine.cli import run_cli

    run_cli(main, argv)
