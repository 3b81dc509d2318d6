"""The error contract of every tool: our errors as one ``error: ...`` line on stderr.

Bad flags, data and checkpoints exit 2, a non-finite loss exits 1, a preempted run exits 0
(docs/reliability.md). Anything else is a bug and keeps its traceback (under torchrun the
failing rank's one-line summary is printed first so it stands out in the teardown noise).
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

from gpaco.checkpoint import CheckpointError
from gpaco.data.splits import DataError
from gpaco.engine.lifecycle import NonFiniteLossError

__all__ = ["one_line_error", "run_cli"]


def one_line_error(err: BaseException) -> str:
    """``error: ...`` on one line. A DataError re-raised by a DataLoader worker carries the
    worker's traceback in its message: keep the original message (its last line)."""
    if isinstance(err, SystemExit):
        text = str(err.code)
    else:
        text = str(err)
        if "Original Traceback" in text:
            last = [ln for ln in text.splitlines() if ln.strip()][-1]
            text = last.split(": ", 1)[1] if ": " in last else last
    text = " ".join(text.split()) or type(err).__name__
    return text if text.startswith("error: ") else f"error: {text}"


def run_cli(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> None:
    """Run a tool's ``main(argv)`` under the error contract."""
    rank = os.environ.get("RANK")
    tag = f"[rank {rank}] " if rank is not None else ""
    try:
        main(argv)
    except SystemExit as e:
        if not isinstance(e.code, str):  # argparse (already printed), --help
            raise
        print(tag + one_line_error(e), file=sys.stderr, flush=True)
        sys.exit(2)
    except (DataError, CheckpointError, FileNotFoundError) as e:
        print(tag + one_line_error(e), file=sys.stderr, flush=True)
        sys.exit(2)
    except NonFiniteLossError as e:
        print(tag + one_line_error(e), file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception as e:
        print(f"{tag}error: {type(e).__name__}: {' '.join(str(e).split())[:500]}", file=sys.stderr, flush=True)
        raise
