"""Running a study's jobs: one after another, ``--parallel N`` at a time, or as a SLURM job array.

Each run is a subprocess of the training tool with its output in ``<run folder>/study.log``
(echoed to the terminal when the runs go one at a time). ``--parallel N`` divides the CPU
threads: every run gets ``OMP_NUM_THREADS = threads // N`` (threads: ``$OMP_NUM_THREADS`` if
set, else the CPUs this process may use). SIGTERM / SIGUSR1 (preemption) stop the study
from launching more runs and reach the running ones, which save a checkpoint and exit; the
same command later continues them.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from gpaco.study.plan import FINAL_METRIC, Job, final_metric, run_state

__all__ = ["Launcher", "subprocess_launcher", "threads_per_run", "run_jobs", "StudyOutcome", "slurm_array_script",
           "LOG_NAME"]

#: the training output of a run, inside its folder
LOG_NAME = "study.log"
#: launch(cmd, env, log_path, echo) -> exit code
Launcher = Callable[[Sequence[str], Dict[str, str], str, bool], int]


class StudyOutcome(NamedTuple):
    """What a pass over the jobs did: folders trained to the end, those that failed (with their
    exit code), and whether a stop signal cut it short."""
    finished: List[str]
    failed: Dict[str, int]
    skipped: List[str]
    stopped: bool


class _Children:
    """The training processes now running, so that a stop signal reaches them (a signal sent to the
    study's pid alone; one sent to the process group reaches them anyway, and the training tool
    treats the copy as the same request)."""

    def __init__(self) -> None:
        self.lock, self.procs = threading.Lock(), set()
        self.stop_signal: Optional[int] = None

    def add(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.add(proc)
            signum = self.stop_signal
        if signum is not None:  # launched while the signal arrived: it stops right away
            _send(proc, signum)

    def discard(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.discard(proc)

    def forward(self, signum: int, frame=None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        for proc in list(self.procs):  # no lock: a signal handler must not wait on one
            _send(proc, signum)


def _send(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except (ProcessLookupError, OSError):
        pass


_CHILDREN = _Children()


def subprocess_launcher(cmd: Sequence[str], env: Dict[str, str], log_path: str, echo: bool) -> int:
    """Run ``cmd``, its stdout and stderr appended to ``log_path`` (and printed with ``echo``);
    returns its exit code."""
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1)
        _CHILDREN.add(proc)
        try:
            for line in proc.stdout:
                log.write(line)
                if echo:
                    print(line, end="", flush=True)
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the terminal's process group; a run still going gets it too
            _send(proc, signal.SIGINT)
            proc.wait()
            raise
        finally:
            _CHILDREN.discard(proc)


def threads_per_run(parallel: int, environ: Optional[Dict[str, str]] = None) -> int:
    """CPU threads of each of ``parallel`` concurrent runs: ``$OMP_NUM_THREADS`` (else the usable
    CPUs) divided by ``parallel``, at least 1."""
    from gpaco.engine.args import cpu_count

    environ = os.environ if environ is None else environ
    try:
        total = int(environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        total = 0
    return max(1, (total if total > 0 else cpu_count()) // max(1, parallel))


def _result_line(job: Job, task: str) -> str:
    value = final_metric(job.folder, task)
    return f"{'top-1' if FINAL_METRIC[task] == 'top1' else 'mIoU'} {value:.2f}" if value is not None else "no result"


def run_jobs(jobs: Sequence[Job], task: str, command: Sequence[str], *, parallel: int = 1,
             launcher: Launcher = subprocess_launcher, environ: Optional[Dict[str, str]] = None,
             log=print) -> StudyOutcome:
    """Train every unfinished run of ``jobs`` (``command``: interpreter and training entry), up to
    ``parallel`` jobs at a time; the stages of a job go in order. A run that fails ends its job
    (later stages need it) but not the study. Returns the :class:`StudyOutcome`."""
    environ = dict(os.environ if environ is None else environ)
    env = {**environ, "OMP_NUM_THREADS": str(threads_per_run(parallel, environ)), "PYTHONUNBUFFERED": "1"}

    def retrain(run) -> bool:  # the study's --overwrite: every run anew
        return "--overwrite" in run.argv

    todo = [j for j in jobs if retrain(j.runs[-1]) or run_state(j.folder, task) != "finished"]
    skipped = [j.folder for j in jobs if j not in todo]
    if skipped:
        log(f"[study] {len(skipped)} of {len(jobs)} runs already finished (kept; --overwrite retrains them)")
    finished: List[str] = []
    failed: Dict[str, int] = {}
    lock = threading.Lock()
    total = len(todo)

    def do(index: int, job: Job) -> None:
        start = time.time()
        for run in job.runs:
            if _CHILDREN.stop_signal is not None:
                return
            if not retrain(run) and run_state(run.folder, task) == "finished":
                continue
            where = os.path.join(run.folder, LOG_NAME)
            log(f"[study] {index}/{total} {job.name}{'' if run is job.runs[-1] else ' (' + run.folder + ')'}: "
                f"training, log {where}")
            t0 = time.time()
            code = launcher([*command, *run.argv], env, where, parallel == 1)
            if run_state(run.folder, task) != "finished":
                with lock:
                    if code != 0:
                        failed[run.folder] = code
                        log(f"[study] {index}/{total} {job.name}: FAILED (exit {code}) after {time.time() - t0:.0f} s; "
                            f"see {where}")
                    elif _CHILDREN.stop_signal is None:
                        failed[run.folder] = code
                        log(f"[study] {index}/{total} {job.name}: ended without a test result; see {where}")
                return
        with lock:
            finished.append(job.folder)
        log(f"[study] {index}/{total} {job.name}: {_result_line(job, task)} ({time.time() - start:.0f} s)")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            previous[sig] = signal.signal(sig, _CHILDREN.forward)
    _CHILDREN.stop_signal = None
    try:
        if parallel <= 1:
            for i, job in enumerate(todo, 1):
                if _CHILDREN.stop_signal is not None:
                    break
                do(i, job)
        else:
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                pending = {pool.submit(do, i, job) for i, job in enumerate(todo, 1)}
                try:
                    while pending:  # short waits: the main thread keeps handling signals
                        done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                        for f in done:
                            f.result()
                except KeyboardInterrupt:  # no new runs; the pool waits for the running ones to end
                    _CHILDREN.forward(signal.SIGINT)
    except KeyboardInterrupt:
        _CHILDREN.stop_signal = signal.SIGINT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stopped = _CHILDREN.stop_signal is not None
    if stopped:
        log(f"[study] stopped by {signal.Signals(_CHILDREN.stop_signal).name}: no run was started after it (a run "
            f"stopped by SIGTERM/SIGUSR1 saved a checkpoint); the same command continues the study")
    return StudyOutcome(finished, failed, skipped, stopped)


def slurm_array_script(jobs: Sequence[Job], task: str, command: Sequence[str], *, cwd: str,
                       study_command: str) -> str:
    """A bash script whose SLURM array task ``i`` trains job ``i`` of ``jobs`` (its stages in order,
    each resumable), for ``bash sh/slurm.sh SCRIPT --array=0-N``."""
    lines = [
        "#!/usr/bin/env bash",
        f"# gpaco study: {len(jobs)} job(s) as a SLURM job array; task i trains job i (all its stages, each with",
        "# --resume auto, so a requeued task continues). Submit through sh/slurm.sh, which adds the cluster's",
        "# environment (one task per node, the stop signals):",
        f"#   bash sh/slurm.sh {{this script}} --array=0-{max(len(jobs) - 1, 0)} [sbatch args]",
        "# Then the report:",
        f"#   {study_command} --report-only",
        "set -euo pipefail",
        f"cd {shlex.quote(cwd)}",
        'export PYTHONUNBUFFERED=1',
        'case "${SLURM_ARRAY_TASK_ID:?not a SLURM array task: submit it with bash sh/slurm.sh THIS --array=...}" in',
    ]
    for i, job in enumerate(jobs):
        lines.append(f"    {i})  # {job.name}")
        cmds = [shlex.join([*command, *run.argv]) for run in job.runs]
        for k, cmd in enumerate(cmds):
            lines.append(f"        {cmd}{' &&' if k + 1 < len(cmds) else ' ;;'}")
    last = len(jobs) - 1
    lines += [f'    *) echo "error: SLURM_ARRAY_TASK_ID=$SLURM_ARRAY_TASK_ID: the array has tasks 0-{last}" >&2',
              "       exit 2 ;;", "esac", ""]
    return "\n".join(lines)
