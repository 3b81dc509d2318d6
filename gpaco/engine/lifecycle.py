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

import contextlib
import os
import random
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from gpaco.checkpoint import (
    RESUME_NAME, CheckpointError, check_writable, find_resume, load_checkpoint, remove_stale_temporaries, rng_state,
    save_checkpoint,
)
from gpaco.distributed import agree, all_gather_objects, barrier, cleanup, init_distributed
from gpaco.engine.logging import RunLogger, print_main, save_args_yaml
from gpaco.engine.preemption import FaultInjector, PreemptionHandler

__all__ = ["TrainingRun", "NonFiniteLossError", "seed_everything", "autocast_context", "BEST_NAME"]

BEST_NAME = "best.pth"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf under ``--nan-policy stop``; the message names the step."""


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
        nan_policy: ``stop`` (raise :class:`NonFiniteLossError`) or ``skip`` (drop the batch).
        dist_timeout: collective timeout in seconds under torchrun.
    """

    def __init__(self, *, output_dir: str, resume: Optional[str] = None, seed: int = 0, deterministic: bool = False,
                 dry_run: bool = False, nan_policy: str = "stop", dist_timeout: float = 600.0) -> None:
        if nan_policy not in ("stop", "skip"):
            raise ValueError(f"nan_policy must be 'stop' or 'skip', got {nan_policy!r}")
        self.output_dir, self.resume = output_dir, resume
        self.seed, self.deterministic, self.dry_run = seed, deterministic, dry_run
        self.nan_policy, self.dist_timeout = nan_policy, dist_timeout
        self.logger = RunLogger(output_dir, enabled=False)
        self.nan_skipped = 0
        self._stack = contextlib.ExitStack()

    # ------------------------------------------------------------------ enter / exit

    def __enter__(self) -> "TrainingRun":
        self.preempt = self._stack.enter_context(PreemptionHandler())
        self.dist = init_distributed(timeout=self.dist_timeout)
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=False)
            torch.backends.cudnn.benchmark = False
        self.faults = FaultInjector.from_env(self.rank)  # test-only (GPACO_FAULT_INJECT)
        seed_everything(self.seed)
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        self.logger.close()
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
        if path is None:
            if self.resume == "auto":
                print_main(f"--resume auto: no checkpoint in {self.output_dir}, starting from scratch")
            return None
        self.resume_path = path
        return load_checkpoint(path)

    def open_output(self, args: Mapping[str, Any]) -> None:
        """Prepare the run folder (main process): writable, stale temporaries of a killed save
        removed, ``args.yaml`` written, ``log.jsonl`` / TensorBoard opened. No-op in a dry run."""
        if self.dry_run:
            return
        if self.is_main:
            check_writable(self.output_dir)
            if remove_stale_temporaries(self.output_dir):
                print_main(f"removed the temporary file(s) of an interrupted checkpoint save in {self.output_dir}")
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

    def save(self, state: Mapping[str, Any], *, best_keys: Optional[Sequence[str]] = None) -> None:
        """Atomically write ``checkpoint.pth`` (main process; no-op in a dry run); with
        ``best_keys`` also ``best.pth`` holding those entries of ``state``."""
        if self.dry_run or not self.is_main:
            return
        self._save_or_explain(state, self.checkpoint_path)
        if best_keys is not None:
            self._save_or_explain({k: state[k] for k in best_keys if k in state}, self.best_path)

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
