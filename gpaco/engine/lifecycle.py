"""One run lifecycle for every training tool (classification and segmentation).

:class:`TrainingRun` owns what does not depend on the task: the process group, seeding
and determinism, the stop signals (preemption), the output folder and its logs, finding
and loading the checkpoint to resume from, atomic checkpoint / best saves, the
non-finite-loss policy and the stop decision all ranks agree on. The task packages
(``gpaco.classification``, ``gpaco.segmentation``) hold only what differs: data, forward,
metrics, test-time modes.

    with TrainingRun(output_dir=..., resume="auto", seed=0, dry_run=False) as run:
        model.to(run.device)
        ckpt = run.resume_checkpoint()          # None for a fresh start
        run.open_output(vars(args))             # args.yaml, log.jsonl, TensorBoard
        ...
        nonfinite, stop = run.agree(loss, step_done=True)
        run.save(state, best=...)
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import glob
import os
import random
import re
import socket
import time
import uuid
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

try:
    import fcntl
except ImportError:  # Windows: the lock falls back to the pid/host it names
    fcntl = None

from gpaco.checkpoint import (
    RESUME_NAME, CheckpointError, check_writable, find_resume, load_checkpoint, remove_stale_temporaries, rng_state,
    save_checkpoint,
)
from gpaco.distributed import agree, all_gather_objects, barrier, cleanup, init_distributed
from gpaco.engine.args import FlagError, flag_name
from gpaco.engine.logging import RunLogger, print_main, save_args_yaml
from gpaco.engine.precision import use_cudnn_benchmark
from gpaco.engine.preemption import FaultInjector, PreemptionHandler

__all__ = ["TrainingRun", "NonFiniteLossError", "seed_everything", "autocast_context", "BEST_NAME", "LOCK_NAME",
           "RUN_FILES", "changed_args", "run_evidence"]

BEST_NAME = "best.pth"
LOCK_NAME = "run.lock"
#: What a training run writes into its folder (``--overwrite`` removes them).
RUN_FILES = (RESUME_NAME, BEST_NAME, "log.jsonl", "args.yaml", "metrics.json")


def _file_stat(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def run_evidence(folder: str) -> list:
    """The files that show ``folder`` holds a run: a checkpoint, a best.pth, metrics or a
    non-empty log (a run that failed before its first epoch leaves only args.yaml and an empty
    log, which a fresh start may reuse)."""
    found = []
    for name in RUN_FILES:
        path = os.path.join(folder, name)
        if name != "args.yaml" and os.path.isfile(path) and (name != "log.jsonl" or os.path.getsize(path) > 0):
            found.append(name)
    return found
#: Flags that differ between two runs yet never matter to a resume.
_RUN_ONLY_FLAGS = {"output_dir", "resume", "overwrite", "config", "dry_run", "print_freq", "workers", "stop_after",
                   "dist_timeout"}


def changed_args(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict:
    """``{flag dest: (old, new)}`` of the flags whose values differ (paths compared resolved;
    flags one side does not know, and the run-only flags, are left out)."""
    out = {}
    for key, value in new.items():
        if key in _RUN_ONLY_FLAGS or key not in old:
            continue
        before = old[key]
        if isinstance(before, tuple):
            before = list(before)
        now = list(value) if isinstance(value, tuple) else value
        if before == now:
            continue
        if isinstance(before, str) and isinstance(now, str) and os.path.realpath(before) == os.path.realpath(now):
            continue
        out[key] = (before, now)
    return out


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf under ``--nan-policy stop``; the message names the step."""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _FolderLock:
    """``run.lock`` in a folder, held for the life of the run or evaluation that writes there.

    The file is created (never replaced) and held with ``flock``: the kernel drops the flock
    when its process dies, so a second process can take over only a lock whose holder is gone,
    and only one of several racing takers gets it. The file names pid, host and SLURM job id,
    for the message and for filesystems without flock: a lock naming a pid alive on this host
    is never taken over, one from another host only by a requeued run of the same SLURM job."""

    def __init__(self, folder: str) -> None:
        self.folder, self.path = folder, os.path.join(folder, LOCK_NAME)
        self._fd: Optional[int] = None

    @staticmethod
    def _holder(fd: int) -> Tuple[int, str, str]:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            fields = os.read(fd, 512).decode(errors="replace").split()
        except OSError:
            fields = []
        pid = int(fields[0]) if fields and fields[0].isdigit() else -1
        return pid, (fields[1] if len(fields) > 1 else "?"), (fields[2] if len(fields) > 2 else "")

    def _in_use(self, pid: int, their_host: str) -> FlagError:
        who = pid if pid > 0 else "?"  # a taker that has not written its pid yet
        return FlagError(f"--output-dir {self.folder} is in use by a live run (pid {who} on host {their_host}, lock "
                         f"{self.path}); wait for it or choose another --output-dir (remove the lock only if that "
                         f"run is gone)")

    def acquire(self) -> None:
        host, job = socket.gethostname(), os.environ.get("SLURM_JOB_ID", "")
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError as e:
                        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                            raise self._in_use(*self._holder(fd)[:2]) from None
                        # a filesystem without flock: only the pid/host rules below apply
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # the holder removed it between our open and flock: open the new one
                    os.close(fd)
                    continue
                pid, their_host, their_job = self._holder(fd)
                if pid > 0 and pid != os.getpid():
                    if their_host == host:
                        if _alive(pid):  # never taken over, whatever its job id (a lock without flock)
                            raise self._in_use(pid, their_host)
                    elif not (job and their_job == job):  # another host's pid cannot be checked
                        raise self._in_use(pid, their_host)
                    print_main(f"note: took over the lock {self.path} of a run that is gone (pid {pid} on "
                               f"{their_host})")
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, f"{os.getpid()} {host} {job}\n".encode())
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            self._fd = fd
            return
        raise FlagError(f"--output-dir {self.folder}: could not take the lock {self.path} (it keeps being replaced); "
                        f"retry")

    def release(self) -> None:
        if self._fd is None:
            return
        # removed while still held: a waiting taker sees that its file is gone and opens the new one
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                os.remove(self.path)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(device: torch.device, amp: str):
    """``--amp`` none | fp16 | bf16 as an autocast context on ``device``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


class TrainingRun:
    """Context manager around one training run (see the module docstring).

    Args:
        output_dir: the run folder (created by :meth:`open_output`; untouched in a dry run).
        resume: None, ``'auto'`` (``output_dir/checkpoint.pth`` if present) or a path.
        seed: global seed, set on entry.
        deterministic: torch deterministic algorithms (CPU runs are bit-identical; on GPU
            ops without a deterministic kernel raise).
        dry_run: nothing is written and nothing is resumed.
        overwrite: a fresh run may replace the run already in ``output_dir`` (otherwise refused).
        run_name: names the default folder ``runs/<run_name>-<YYYYmmdd-HHMMSS>`` when
            ``output_dir`` is None (rank 0 picks the time, every rank uses it).
        nan_policy: ``stop`` (raise :class:`NonFiniteLossError`) or ``skip`` (drop the batch).
        dist_timeout: collective timeout in seconds under torchrun.
    """

    def __init__(self, *, output_dir: Optional[str], resume: Optional[str] = None, seed: int = 0,
                 deterministic: bool = False, dry_run: bool = False, nan_policy: str = "stop",
                 dist_timeout: float = 600.0, overwrite: bool = False, run_name: str = "run") -> None:
        if nan_policy not in ("stop", "skip"):
            raise ValueError(f"nan_policy must be 'stop' or 'skip', got {nan_policy!r}")
        self.output_dir, self.resume = output_dir, resume
        self.seed, self.deterministic, self.dry_run = seed, deterministic, dry_run
        self.nan_policy, self.dist_timeout = nan_policy, dist_timeout
        self.overwrite, self.run_name = overwrite, re.sub(r"[^A-Za-z0-9._-]+", "_", run_name)
        self.logger = RunLogger(output_dir or ".", enabled=False)
        self.nan_skipped = 0
        self.run_id: Optional[str] = None  # set by resume_checkpoint: carried by checkpoint.pth and best.pth
        self._run_id_known = False  # a fresh run, or a resumed checkpoint that names its run
        self._lock: Optional[_FolderLock] = None
        self.resume_path: Optional[str] = None
        self._resume_stat: Optional[tuple] = None  # checkpoint.pth as read: a change before the lock is refused
        self._stack = contextlib.ExitStack()

    # ------------------------------------------------------------------ enter / exit

    def __enter__(self) -> "TrainingRun":
        self.preempt = self._stack.enter_context(PreemptionHandler())
        self.dist = init_distributed(timeout=self.dist_timeout)
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = use_cudnn_benchmark(self.device, deterministic=self.deterministic)
        self.faults = FaultInjector.from_env(self.rank)  # test-only (GPACO_FAULT_INJECT)
        seed_everything(self.seed)
        if self.output_dir is None:
            folder = os.path.join("runs", f"{self.run_name}-{time.strftime('%Y%m%d-%H%M%S')}")
            n = 1
            while os.path.exists(folder if n == 1 else f"{folder}-{n}"):  # two runs started in the same second
                n += 1
            folder = folder if n == 1 else f"{folder}-{n}"
            if self.distributed:
                folder = all_gather_objects(folder)[0]  # rank 0's clock names the folder for all
            self.output_dir = folder
            print_main(f"--output-dir not given: this run writes to {self.output_dir}")
        if not self.dry_run:
            self._refuse_foreign_run()  # before any data or model is built
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        self.logger.close()
        self._release_lock()
        self._stack.close()
        if exc_type is None:  # on an error the process ends; a peer may still be inside a collective
            cleanup()

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def distributed(self) -> bool:
        return self.dist.distributed

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.output_dir, RESUME_NAME)

    @property
    def best_path(self) -> str:
        return os.path.join(self.output_dir, BEST_NAME)

    def wrap_ddp(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel under torchrun, itself otherwise."""
        if not self.distributed:
            return model
        device = self.device
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def barrier(self) -> None:
        barrier()

    # ------------------------------------------------------------------ output folder, resume

    def resume_checkpoint(self) -> Optional[dict]:
        """The checkpoint to resume from (loaded weights-only), or None for a fresh start."""
        if self.dry_run:
            return None
        path = find_resume(self.output_dir, self.resume)
        self._resume_stat = _file_stat(path) if path is not None else None  # before reading: a later write shows
        ckpt = load_checkpoint(path) if path is not None else None
        if path is None and self.resume == "auto":
            print_main(f"--resume auto: no checkpoint in {self.output_dir}, starting from scratch")
        self.resume_path = path
        resumed_id = ckpt.get("run_id") if ckpt is not None else None
        self._run_id_known = ckpt is None or bool(resumed_id)  # checkpoints written before run ids had none
        self.run_id = str(resumed_id) if resumed_id else uuid.uuid4().hex[:12]
        if self.distributed:
            self.run_id = all_gather_objects(self.run_id)[0]
        return ckpt

    def check_resume_args(self, old: Mapping[str, Any], new: Mapping[str, Any], fixed: Sequence[str]) -> None:
        """Print the flags that differ from the resumed checkpoint's; refuse (FlagError) those
        in ``fixed`` (they change the model or the data, so the resumed run would be another run)."""
        diff = changed_args(old or {}, new)
        if not diff:
            return
        print_main("resumed with changed flags: " + ", ".join(f"{flag_name(k)} {a!r} -> {b!r}" for k, (a, b) in
                                                               sorted(diff.items())))
        refused = sorted(k for k in diff if k in fixed)
        if refused:
            listed = ", ".join(f"{flag_name(k)} {diff[k][0]!r} -> {diff[k][1]!r}" for k in refused)
            raise FlagError(f"--resume: {listed}"
                            f" change the model or the data of the run in {self.output_dir}; use the checkpoint's "
                            f"values, or start a new run in another --output-dir")

    def _own_checkpoint(self, path: str) -> bool:
        return os.path.realpath(path) == os.path.realpath(self.checkpoint_path)

    def _foreign_run_problem(self, resume: Optional[str]) -> Optional[str]:
        """Why starting with ``resume`` (None: fresh, ``'auto'``, or a checkpoint path) would
        replace the run already in the folder; None when it would not (or ``--overwrite``)."""
        present = run_evidence(self.output_dir)
        if not present or self.overwrite:
            return None
        held = f"{', '.join(present)}"
        if not resume:
            return (f"--output-dir {self.output_dir} already holds a run ({held}); continue it with --resume auto, "
                    f"or replace it with --overwrite")
        if resume == "auto":
            if os.path.isfile(self.checkpoint_path):
                return None
            # a fresh start here would replace best.pth and metrics.json and append to the old log
            return (f"--output-dir {self.output_dir} holds a run ({held}) but no checkpoint.pth to continue; start "
                    f"it anew with --overwrite (without --resume), or give another --output-dir")
        if self._own_checkpoint(resume):
            return None
        return (f"--resume {resume} continues a run from elsewhere, but --output-dir {self.output_dir} holds a run "
                f"({held}) it would replace; give another --output-dir (or --overwrite, without --resume, to "
                f"start anew there)")

    def _refuse_foreign_run(self) -> None:
        """A start that would replace the run in the folder is refused unless ``--overwrite``
        (a fresh run; ``--resume auto`` without checkpoint.pth; ``--resume`` of another folder's
        checkpoint); an empty ``--output-dir`` is refused. Checked again under the lock."""
        if not str(self.output_dir).strip():
            raise FlagError("--output-dir is empty; name a run folder (or leave the flag out for "
                            "runs/<method>-<arch>-<time>)")
        problem = self._foreign_run_problem(self.resume) if self.is_main else None
        if self.distributed:
            problem = all_gather_objects(problem)[0]  # every rank stops with rank 0's error
        if problem:
            raise FlagError(problem)

    def _changed_under_us(self) -> Optional[str]:
        """Under the lock: what another run wrote since this one decided how to start (the
        folder checks ran before the lock, and a slow start may follow a whole other run)."""
        if self.resume_path is None:
            return self._foreign_run_problem(None)  # starting fresh: the folder must still hold no run
        if self._own_checkpoint(self.resume_path) and _file_stat(self.resume_path) != self._resume_stat:
            return (f"{self.resume_path} was rewritten by another run after this one read it; rerun with --resume "
                    f"auto to continue from the new one")
        return self._foreign_run_problem(self.resume_path)

    def _take_lock(self) -> None:
        """One live run per folder (:class:`_FolderLock`), then the folder checked again."""
        lock = _FolderLock(self.output_dir)
        lock.acquire()
        self._lock = lock
        problem = self._changed_under_us()
        if problem:
            self._release_lock()
            raise FlagError(problem)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def open_output(self, args: Mapping[str, Any]) -> None:
        """Prepare the run folder (main process): writable, locked against a second live run,
        the previous run's files removed under ``--overwrite``, stale temporaries of a killed
        save removed, ``args.yaml`` written, ``log.jsonl`` / TensorBoard opened. No-op in a dry run."""
        if self.dry_run:
            return
        problem = None
        if self.is_main:
            check_writable(self.output_dir)
            try:
                self._take_lock()
            except FlagError as e:
                problem = str(e.code)[len("error: "):]
        if self.distributed:
            problem = all_gather_objects(problem)[0]  # every rank stops with rank 0's error
        if problem:
            raise FlagError(problem)
        if self.is_main:
            if self.overwrite and not (self.resume_path and self._own_checkpoint(self.resume_path)):
                removed = [n for n in RUN_FILES if os.path.exists(os.path.join(self.output_dir, n))]
                removed += [os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(self.output_dir),
                                                                                 "events.out.tfevents.*"))]
                for name in removed:  # the old TensorBoard curves too, or they would mix with the new run's
                    os.remove(os.path.join(self.output_dir, name))
                if removed:
                    print_main(f"--overwrite: removed the previous run's {', '.join(removed)} from {self.output_dir}")
            if remove_stale_temporaries(self.output_dir):
                print_main(f"removed the temporary file(s) of an interrupted save in {self.output_dir}")
            save_args_yaml(dict(args), os.path.join(self.output_dir, "args.yaml"))
        self.logger = RunLogger(self.output_dir, enabled=self.is_main)

    @staticmethod
    def load_model_state(model: nn.Module, state: Mapping[str, Any], path: str) -> None:
        """Strict load with a message that names the file and the mismatching keys."""
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointError(f"checkpoint {path} does not fit the model (--arch/--method/--num-classes?): "
                                  f"{str(e).splitlines()[-1].strip()}") from None
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path} does not fit the model (--arch/--method/--num-classes?): "
                                  f"missing {list(missing)[:8]}, unexpected {list(unexpected)[:8]}")

    # ------------------------------------------------------------------ saving

    def save(self, state: Mapping[str, Any], *, best_keys: Optional[Sequence[str]] = None, where: str = "") -> None:
        """Atomically write ``checkpoint.pth`` (main process; no-op in a dry run); with
        ``best_keys`` also ``best.pth`` holding those entries of ``state``. Both carry the run id.

        Weights that are not finite are never written (every rank raises
        :class:`NonFiniteLossError`), so the last good checkpoint and best.pth stay.
        checkpoint.pth (which records the best step) is written first: a crash before best.pth
        is repaired by :meth:`reconcile_best` from checkpoint.pth, whose weights are that best."""
        if self.dry_run:
            return
        bad = [k for k, v in (state.get("model") or {}).items()
               if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise NonFiniteLossError(f"the model weights became NaN/Inf ({bad[0]}{more})"
                                     f"{f' at {where}' if where else ''}; not saved, the last good checkpoint is kept "
                                     f"(lower --lr)")
        if not self.is_main:
            return
        state = {**state, "run_id": self.run_id}
        self._save_or_explain(state, self.checkpoint_path)
        if best_keys is not None:
            self._save_or_explain({**{k: state[k] for k in best_keys if k in state}, "run_id": self.run_id},
                                  self.best_path)

    def _best_problem(self, step_key: str, best_step: int) -> Optional[str]:
        """Why best.pth is not the best that checkpoint.pth records (None: it is)."""
        if not os.path.isfile(self.best_path):
            return "is missing"
        try:
            best = load_checkpoint(self.best_path)
        except CheckpointError as e:
            return f"is unreadable ({e})"
        if self._run_id_known and best.get("run_id") != self.run_id:
            return f"belongs to another run (run id {best.get('run_id')}, this run {self.run_id})"
        if int(best.get(step_key, -1)) != best_step:
            return (f"holds {step_key} {best.get(step_key)}, not the best {step_key} {best_step} that "
                    f"checkpoint.pth records")
        return None

    def reconcile_best(self, ckpt: Mapping[str, Any], *, step_key: str, best_step_key: str, best_metric_key: str,
                       best_keys: Sequence[str]) -> Tuple[float, int]:
        """(best metric, best step) of a resumed run, after checking that best.pth holds them.

        A best.pth that is missing, foreign, unreadable or from another step is rewritten from
        checkpoint.pth when its weights are that best (a crash between the two saves); else the
        best is lost: say so and restart the selection (-1, -1), never report other weights."""
        metric, best_step = float(ckpt.get(best_metric_key, -1.0)), int(ckpt.get(best_step_key, -1))
        if best_step <= 0 or self.dry_run:
            return metric, best_step
        problem = None
        if self.is_main:
            problem = self._best_problem(step_key, best_step)
            if problem and int(ckpt.get(step_key, -1)) == best_step and not ckpt.get("step"):
                self._save_or_explain({**{k: ckpt[k] for k in best_keys if k in ckpt}, "run_id": self.run_id},
                                      self.best_path)
                print_main(f"note: {self.best_path} {problem}; rewritten from {self.resume_path} (its weights are the "
                           f"best, {step_key} {best_step})")
                problem = None
        if self.distributed:
            problem = all_gather_objects(problem)[0]
        if problem is None:
            return metric, best_step
        print_main(f"warning: {self.best_path} {problem}; the best {best_metric_key} {metric:.2f} at {step_key} "
                   f"{best_step} cannot be recovered, the selection restarts from here")
        return -1.0, -1

    def load_best(self, step_key: str, best_step: int) -> dict:
        """best.pth, checked to hold ``best_step`` of this run (CheckpointError otherwise)."""
        problem = self._best_problem(step_key, best_step)
        if problem:
            raise CheckpointError(f"{self.best_path} {problem}; refusing to report other weights as the best "
                                  f"(rerun with --resume auto to repair or restart the selection)")
        return load_checkpoint(self.best_path)

    @staticmethod
    def _save_or_explain(state: Mapping[str, Any], path: str) -> None:
        """save_checkpoint, whose failure (disk full, folder gone) says that the previous file is intact."""
        try:
            save_checkpoint(state, path)
        except CheckpointError as e:
            kept = "the previous one is intact" if os.path.exists(path) else "no earlier checkpoint exists"
            raise CheckpointError(f"{e} ({kept}; free space or fix the folder, then --resume auto)") from e

    def gather_rng_states(self) -> list:
        """Every rank's RNG state (rank order); collective under DDP."""
        return all_gather_objects(rng_state())

    # ------------------------------------------------------------------ per-step decisions

    def agree(self, loss: torch.Tensor, stop_local: Optional[bool] = None) -> Tuple[bool, bool]:
        """(non-finite loss on some rank, a stop signal on some rank): the same on every rank,
        in one tiny all-reduce."""
        finite = bool(torch.isfinite(loss))
        stop = self.preempt.requested if stop_local is None else stop_local
        nonfinite, stop_any = agree([not finite, stop], loss.device)
        return nonfinite, stop_any

    def stop_agreed(self) -> bool:
        """A stop signal arrived on some rank (collective under DDP)."""
        return agree([self.preempt.requested], self.device)[0]

    def nonfinite(self, loss: torch.Tensor, where: str) -> None:
        """Apply ``--nan-policy`` to a non-finite loss at ``where``: raise, or count and say so."""
        value = loss.item() if not bool(torch.isfinite(loss)) else "finite here, non-finite on another rank"
        if self.nan_policy == "stop":
            raise NonFiniteLossError(f"loss is {value} at {where}; stopped (--nan-policy stop), the last "
                                     f"checkpoint is kept")
        self.nan_skipped += 1
        print_main(f"non-finite loss ({value}) at {where}: skipped (--nan-policy skip), {self.nan_skipped} "
                   f"skipped so far")

    def preempted(self, where: str, info: Mapping[str, Any]) -> dict:
        """Say that the run stopped on a signal with a checkpoint at ``where``; the result dict."""
        self.barrier()
        print_main(f"preempted ({self.preempt.signal_name or 'stop signal on another rank'}): checkpoint saved at "
                   f"{where} to {self.checkpoint_path}; continue with --resume auto")
        return {"preempted": True, "signal": self.preempt.signal_name, **info}


#: The evaluation lock this process holds (folder -> lock), kept until it exits or evaluates elsewhere.
_EVAL_LOCKS: dict = {}


def _release_eval_locks(keep: Optional[str] = None) -> None:
    for folder in [f for f in _EVAL_LOCKS if f != keep]:
        _EVAL_LOCKS.pop(folder).release()


atexit.register(_release_eval_locks)


def claim_eval_dir(out: str, *, overwrite: bool) -> str:
    """The evaluation tools' output folder ``out``, checked before anything is evaluated: one
    that already holds a ``metrics.json`` (an earlier evaluation, or a training run's final
    report) is refused unless ``overwrite``, so no result is replaced silently. Creates the
    folder and proves it writable, and takes its ``run.lock`` (rank 0) for the rest of the
    evaluation, so a second evaluation (or a training run) into it at the same time is refused."""
    def results_problem() -> Optional[str]:
        path = os.path.join(out, "metrics.json")
        if os.path.exists(path) and not overwrite:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path)))
            return (f"{out} already holds results (metrics.json of {when}); give another --output-dir, or "
                    f"--overwrite to replace them")
        return None

    problem = results_problem()
    if problem:
        raise FlagError(problem)
    check_writable(out)
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() \
        else 0
    if rank == 0:
        # the tools have no end hook: the lock lives until the process exits or evaluates into another folder
        key = os.path.realpath(out)
        _release_eval_locks(keep=key)
        if key not in _EVAL_LOCKS:
            lock = _FolderLock(out)
            try:
                lock.acquire()
            except FlagError as e:
                problem = str(e.code)[len("error: "):]
            else:
                _EVAL_LOCKS[key] = lock
                problem = results_problem()  # again under the lock: an evaluation may have ended meanwhile
                if problem:
                    _release_eval_locks()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        problem = all_gather_objects(problem)[0]  # every rank stops with rank 0's error
    if problem:
        raise FlagError(problem)
    return out
