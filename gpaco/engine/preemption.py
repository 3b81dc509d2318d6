"""Surviving preemption: stop signals, cross-rank agreement, and test-only fault injection.

* :class:`PreemptionHandler` turns SIGTERM / SIGUSR1 (what SLURM sends before it preempts
  a job) into a flag. The training loop finishes the current optimizer step, the trainer
  writes a checkpoint atomically and the process exits 0; ``--resume auto`` continues.
  A repeat of the same signal within :data:`REPEAT_GRACE_S` is the same request: under
  SLURM + torchrun each worker gets one SIGTERM from SLURM and one forwarded by torchrun,
  milliseconds apart. A different signal, or the same one after that window, stops the
  process at once (the previous handler is restored and the signal re-delivered); the
  atomic save keeps the last complete checkpoint intact either way.
* :func:`~gpaco.data.workers.ignore_stop_signals` (re-exported here) is the ``worker_init_fn``
  of every DataLoader: SLURM's ``scancel`` and a ``kill -- -PGID`` signal the whole process
  group, and a loader worker that died of the signal would take the run down before the main
  process could save. It lives in the data layer, which builds the loaders.
* :func:`gpaco.distributed.agree` makes every rank take the same decision (stop after this step, skip
  this non-finite step): one tiny all-reduce, a no-op in a single process.
* :class:`FaultInjector` reads ``GPACO_FAULT_INJECT`` **(test-only)** to raise, poison
  the loss, or send a signal at a chosen micro-batch on a chosen rank, so the tests can
  prove the behaviour above. Never set it in a real run.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from typing import Dict, Optional, Sequence

import torch

from gpaco.data.workers import ignore_stop_signals

__all__ = ["STOP_SIGNALS", "REPEAT_GRACE_S", "PreemptionHandler", "ignore_stop_signals", "FaultInjector",
           "InjectedFault", "FAULT_ENV"]

#: Signals that request a graceful stop (checkpoint, exit 0).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

#: Seconds after the first stop signal during which the same signal again is a duplicate
#: delivery (SLURM signals every process of the step and torchrun forwards its own copy),
#: not a request to stop at once.
REPEAT_GRACE_S = 10.0

#: Test-only fault injection; see :class:`FaultInjector`.
FAULT_ENV = "GPACO_FAULT_INJECT"


class PreemptionHandler:
    """Context manager: while active, SIGTERM/SIGUSR1 set :attr:`signal_name` instead of killing.

    Installs nothing outside the main thread (Python only delivers signals there); the
    previous handlers are restored on exit.
    """

    def __init__(self, signals: Sequence[signal.Signals] = STOP_SIGNALS, grace_s: float = REPEAT_GRACE_S) -> None:
        self.signals = tuple(signals)
        self.grace_s = grace_s
        self.signal_name: Optional[str] = None
        self._first_at = 0.0
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            if name == self.signal_name and time.monotonic() - self._first_at < self.grace_s:
                return  # the same request delivered twice (SLURM + torchrun forwarding)
            self.restore()  # a deliberate second signal: stop now
            signal.raise_signal(signum)
            return
        self._first_at = time.monotonic()
        self.signal_name = name
        # No print here: the handler can interrupt a print in progress (reentrant call).

    def install(self) -> "PreemptionHandler":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            try:
                signal.signal(sig, previous)
            except (TypeError, ValueError):
                pass
        self._previous.clear()

    def __enter__(self) -> "PreemptionHandler":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()


class InjectedFault(RuntimeError):
    """Raised by ``GPACO_FAULT_INJECT=...raise...`` (test-only)."""


_ITEM = re.compile(r"^(?:rank(?P<rank>\d+)_)?(?:(?P<kind>raise|nan|sigterm|sigusr1|sigkill|slurmterm)_)?"
                   r"step(?P<step>\d+)$")


class FaultInjector:
    """**Test-only.** ``GPACO_FAULT_INJECT`` = comma-separated ``[rank<R>_][<kind>_]step<N>``.

    ``N`` counts micro-batches from 1 over the whole run (``epoch * iters_per_epoch + it + 1``,
    so it means the same micro-batch after a resume). Without ``rank<R>_`` the fault hits
    every rank. Kinds: ``raise`` (default: :class:`InjectedFault` before the forward pass),
    ``nan`` (the loss of that micro-batch becomes NaN), ``sigterm`` / ``sigusr1`` / ``sigkill``
    (the process sends itself that signal before the forward pass), ``slurmterm`` (under
    torchrun started in its own session: SIGTERM to torchrun's process group, then 5 ms later
    SIGTERM to every worker, which is what SLURM's signal plus torchrun's forwarding deliver).
    Examples: ``rank1_step3`` (rank 1 dies at its 3rd micro-batch), ``nan_step5``,
    ``rank0_sigterm_step4``.
    """

    def __init__(self, spec: str, rank: int) -> None:
        self.spec = spec
        self.rank = rank
        self.faults: Dict[int, str] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            m = _ITEM.match(item)
            if not m:
                raise ValueError(f"{FAULT_ENV}={spec!r}: cannot parse {item!r} "
                                 f"(expected [rank<R>_][raise|nan|sigterm|sigusr1|sigkill|slurmterm_]step<N>)")
            if m["rank"] is None or int(m["rank"]) == rank:
                self.faults[int(m["step"])] = m["kind"] or "raise"

    @classmethod
    def from_env(cls, rank: int) -> Optional["FaultInjector"]:
        spec = os.environ.get(FAULT_ENV, "").strip()
        return cls(spec, rank) if spec else None

    def before(self, step: int) -> None:
        kind = self.faults.get(step)
        if kind == "raise":
            raise InjectedFault(f"injected fault ({FAULT_ENV}={self.spec}) on rank {self.rank} at step {step}")
        if kind in ("sigterm", "sigusr1", "sigkill"):
            os.kill(os.getpid(), getattr(signal, kind.upper()))
        elif kind == "slurmterm":
            _slurm_like_sigterm()

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if self.faults.get(step) == "nan" else loss


def _slurm_like_sigterm() -> None:
    """SIGTERM to the parent torchrun's process group, then to each of its workers 5 ms later."""
    parent = os.getppid()
    # Signalling a process group that is not torchrun's own would hit the test runner too.
    if os.getpgid(parent) != parent:
        raise RuntimeError(f"{FAULT_ENV}=slurmterm needs torchrun started in its own session (pid {parent})")
    workers = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces: the fields after its closing ')' are fixed.
                if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                    workers.append(int(entry))
        except (ValueError, OSError, IndexError):
            continue
    os.killpg(parent, signal.SIGTERM)
    time.sleep(0.005)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
