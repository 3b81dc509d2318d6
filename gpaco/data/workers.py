"""DataLoader workers: what every worker process sets up when it starts.

A stop signal (SLURM's ``scancel``, ``kill -- -PGID``) reaches the whole process group, the
loader workers included. A worker that died of it would take the run down before the main
process could write its checkpoint, so the workers leave stopping to the main process
(docs/reliability.md#a-signal-to-the-whole-process-group).
"""
from __future__ import annotations

import os
import signal
import threading

__all__ = ["ignore_stop_signals"]


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGTERM/SIGUSR1 sent to the process
    group (torch's worker loop installs a SIGTERM handler that kills it); the main process alone
    decides to stop. A SIGTERM from the main process itself (``Process.terminate()`` when it
    exits with the loader still open, e.g. on an error) still ends the worker: SIGTERM is
    blocked and a thread waits for it and checks who sent it. Otherwise a worker ends with its
    loader, or when the main process is gone (torch's watchdog)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # macOS: the sender cannot be told, SIGTERM keeps its default
        return
    parent = os.getppid()

    def wait_for_parent() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent:
                os._exit(0)

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=wait_for_parent, name="gpaco_sigterm_from_parent", daemon=True).start()
