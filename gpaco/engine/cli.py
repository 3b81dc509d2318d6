"""The error contract of every tool: our errors as one ``error: ...`` line on stderr.

Bad flags, data and checkpoints exit 2, a non-finite loss exits 1, a preempted run exits 0
(docs/reliability.md). Anything else is a bug and keeps its traceback (under torchrun the
failing rank's one-line summary is printed first so it stands out in the teardown noise).
``--debug`` (every tool) shows the traceback of our errors too.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Optional, Sequence

from gpaco.checkpoint import CheckpointError
from gpaco.data.splits import DataError
from gpaco.engine.lifecycle import NonFiniteLossError

__all__ = ["DEBUG_HELP", "USER_ERRORS", "add_debug_flag", "one_line_error", "run_cli"]

DEBUG_HELP = "show the Python traceback of an error instead of the one 'error: ...' line (for bug reports)"

#: Errors a user causes (a bad file, folder, split or checkpoint): one line, exit 2. Bad flags
#: are ``SystemExit("error: ...")`` (gpaco.engine.args.FlagError).
USER_ERRORS = (DataError, CheckpointError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    """List ``--debug`` in a tool's --help (run_cli takes it off the command line)."""
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)


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


def _write_line(text: str) -> None:
    """One write call per line: ranks sharing a terminal or log then never splice their lines
    (``print`` writes the text and the newline separately)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run_cli(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> object:
    """Run a tool's ``main(argv)`` under the error contract; returns what ``main`` returns."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    rank = os.environ.get("RANK")
    tag = f"[rank {rank}] " if rank is not None else ""

    def fail(e: BaseException, code: int) -> None:
        if debug:
            traceback.print_exc()
        _write_line(tag + one_line_error(e))
        sys.exit(code)

    try:
        return main(argv)
    except SystemExit as e:
        if not isinstance(e.code, str):  # argparse (already printed), --help, sys.exit(n)
            raise
        fail(e, 2)
    except USER_ERRORS as e:
        fail(e, 2)
    except NonFiniteLossError as e:
        fail(e, 1)
    except Exception as e:
        _write_line(f"{tag}error: {type(e).__name__}: {' '.join(str(e).split())[:500]}")
        raise
