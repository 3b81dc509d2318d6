"""Run logging: JSON-lines epoch log, ``summary.csv``, TensorBoard scalars, progress lines, rank-0 printing."""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import numpy as np
import torch
from gpaco.checkpoint import CheckpointError
from gpaco.distributed import is_main_process

__all__ = [
    "RunLogger", "save_args_yaml", "progress_line", "ProgressMeter", "print_main",
    "to_jsonable", "write_json", "atomic_path", "tensorboard_tag", "read_summary", "LOG_NAME", "SUMMARY_NAME",
]

LOG_NAME = "log.jsonl"
SUMMARY_NAME = "summary.csv"
STEP_KEYS = ("epoch", "iter")  # the step a record belongs to: classification epochs, segmentation iterations
TAG_GROUPS = ("train", "val", "test")
PathLike = Union[str, os.PathLike]


def print_main(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only (flushes by default so logs interleave sanely)."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: tensors/numpy -> numbers/lists, NaN/inf -> None, paths -> str."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 and value.ndim == 0 else value.tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # strict JSON has no NaN
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (os.PathLike, torch.device, torch.dtype)):
        return str(value)
    return repr(value)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` when the block
    ends without an error, removed otherwise. A kill or a full disk leaves the previous file (or
    none), never a half or empty one. The temporary name keeps ``path``'s extension so that a
    writer choosing the format by extension (matplotlib) still does."""
    root, ext = os.path.splitext(os.fspath(path))
    tmp = f"{root}.{os.getpid()}.tmp{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: PathLike, value: Any) -> None:
    """``to_jsonable(value)`` into ``path`` through a temporary file and a rename: a killed
    process leaves the previous file or none, never half of one (an evaluation's metrics.json
    is what the next one checks before it may write there)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(to_jsonable(value), f, indent=1)


def _write_failed(path: PathLike, err: OSError) -> CheckpointError:
    return CheckpointError(f"could not write {path}: {err.strerror or err} (disk full?); what was logged before is "
                           f"intact; free space, then --resume auto")


def _drop_half_line(path: Path) -> bool:
    """Cut ``path`` after its last newline: a full disk or a kill can leave half a line that the
    next append would be glued to. True when something was cut."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if not size:
        return False
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        # the last newline, read backwards in blocks (log files can be long)
        end, keep = size, 0
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            i = block.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            end = start
        f.truncate(keep)
    return True


def _append_whole(fd: int, path: Path, data: bytes) -> None:
    """Append ``data`` to the open ``fd`` whole or not at all: a failed write is cut back off."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise _write_failed(path, e) from None


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of a record key, grouped by split: ``val_top1`` -> ``val/top1``,
    ``test_few`` -> ``test/few``, ``train_loss`` -> ``train/loss``, ``lr`` stays ``lr``; any other
    key is a training figure (``skipped_images`` -> ``train/skipped_images``); a key that
    already holds a ``/`` is kept."""
    if "/" in key or key == "lr":
        return key
    group, _, rest = key.partition("_")
    if group in TAG_GROUPS and rest:
        return f"{group}/{rest}"
    return f"train/{key}"


def _step_of(record: Mapping[str, Any]) -> Optional[float]:
    for key in STEP_KEYS:
        value = record.get(key)
        if value not in (None, ""):
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def read_summary(path: PathLike) -> list[dict[str, str]]:
    """The rows of a ``summary.csv`` (values as text; a row cut short by a crash is dropped)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            return []
        return [dict(zip(header, row)) for row in reader if len(row) == len(header)]


def _csv_value(value: Any) -> str:
    value = to_jsonable(value)
    if value is None or isinstance(value, (list, dict)):
        return ""
    return str(value)


class _Summary:
    """``summary.csv``: one row per step (epoch or iteration), as timm writes it.

    Records of the same step are merged into one row (segmentation logs training and validation
    separately). A resumed run continues the file: the first step it logs drops the rows at and
    after it (written by the attempt that was cut short), so no step appears twice. A new row with
    the known columns is appended and flushed; anything else rewrites the file atomically
    (temporary file + rename), since a new column changes the header.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        _drop_half_line(path)  # a row cut inside its last value would still parse
        self.rows = read_summary(path)
        self.columns: list[str] = list(self.rows[0]) if self.rows else []
        for row in self.rows[1:]:
            self.columns += [k for k in row if k not in self.columns]
        self._resumed = False

    def add(self, record: Mapping[str, Any]) -> None:
        values = {str(k): _csv_value(v) for k, v in record.items()
                  if not isinstance(to_jsonable(v), (list, dict))}
        step = _step_of(values)
        if not self._resumed:
            self._resumed = True
            if step is not None:
                kept = [r for r in self.rows if _step_of(r) is None or _step_of(r) < step]
                if len(kept) != len(self.rows):
                    self.rows = kept
                    self._rewrite()
        last = self.rows[-1] if self.rows else None
        new_columns = [k for k in values if k not in self.columns]
        self.columns += new_columns
        if last is not None and step is not None and _step_of(last) == step:
            last.update(values)
            self._rewrite()
        elif new_columns or not self.path.exists():
            self.rows.append(values)
            self._rewrite()
        else:
            self.rows.append(values)
            buf = io.StringIO()
            csv.writer(buf).writerow([values.get(c, "") for c in self.columns])
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                _append_whole(fd, self.path, buf.getvalue().encode("utf-8"))
            finally:
                os.close(fd)

    @property
    def last_step(self) -> Optional[float]:
        steps = [s for s in map(_step_of, self.rows) if s is not None]
        return max(steps) if steps else None

    def _rewrite(self) -> None:
        try:
            with atomic_path(self.path) as tmp:
                with open(tmp, "w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f)
                    w.writerow(self.columns)
                    for row in self.rows:
                        w.writerow([row.get(c, "") for c in self.columns])
        except OSError as e:
            raise _write_failed(self.path, e) from None


class RunLogger:
    """Per-run log files, written by one process.

    ``log_epoch`` appends one JSON object per call to ``output_dir/log.jsonl`` and updates
    ``output_dir/summary.csv`` (one row per epoch or iteration, :class:`_Summary`);
    ``log_scalars`` writes TensorBoard scalars into ``output_dir``, tags grouped as
    ``train/``, ``val/``, ``test/`` and ``lr`` (:func:`tensorboard_tag`). With
    ``enabled=False`` (non-zero ranks) every method is a no-op and nothing is created.
    """

    def __init__(self, output_dir: PathLike, *, enabled: bool) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = bool(enabled)
        self._writer = None
        self._jsonl: Optional[int] = None  # a raw descriptor: no buffer that a failed flush could leave behind
        self._last_logged: Optional[float] = None  # the last step in log.jsonl
        if self.enabled:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if _drop_half_line(self.jsonl_path):
                print_main(f"note: {self.jsonl_path} ended in half a line (a full disk or a kill); it was cut off")
            self._last_logged = self._read_last_step()
            self._jsonl = os.open(self.jsonl_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            self._summary = _Summary(self.output_dir / SUMMARY_NAME)

    @property
    def jsonl_path(self) -> Path:
        return self.output_dir / LOG_NAME

    def _read_last_step(self) -> Optional[float]:
        last = None
        if self.jsonl_path.is_file():
            with open(self.jsonl_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        step = _step_of(json.loads(line))
                    except (ValueError, AttributeError):
                        continue
                    if step is not None:
                        last = step
        return last

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one JSON line (NaN -> null), written whole or not at all, and add
        it to ``summary.csv`` (plain values only; lists and dicts stay in the JSON line). A failed
        write (disk full) raises :class:`~gpaco.checkpoint.CheckpointError` naming the file."""
        if not self.enabled:
            return
        if self._jsonl is None:
            raise RuntimeError(f"RunLogger for {self.output_dir} is closed")
        line = json.dumps(to_jsonable(record), allow_nan=False) + "\n"
        _append_whole(self._jsonl, self.jsonl_path, line.encode("utf-8"))
        self._last_logged = _step_of(record)
        self._summary.add(record)

    def log_pending(self, record: Optional[Mapping[str, Any]]) -> bool:
        """Log ``record`` (carried by a checkpoint) where the run that wrote the checkpoint was
        stopped before logging it: into log.jsonl and TensorBoard when its step is past
        log.jsonl's last, into summary.csv when past summary.csv's last. A record already logged
        is not repeated. True when something was written."""
        if not self.enabled or not record:
            return False
        step = _step_of(record)
        if step is None:
            return False
        wrote = False
        if self._last_logged is None or step > self._last_logged:
            line = json.dumps(to_jsonable(record), allow_nan=False) + "\n"
            _append_whole(self._jsonl, self.jsonl_path, line.encode("utf-8"))
            self._last_logged = step
            self.log_scalars({k: v for k, v in record.items() if isinstance(v, (int, float))}, int(step))
            wrote = True
        last_row = self._summary.last_step
        if last_row is None or step > last_row:
            self._summary.add(record)
            wrote = True
        return wrote

    def _tb(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # import lazily: tensorboard is slow to import

            self._writer = SummaryWriter(log_dir=str(self.output_dir))
        return self._writer

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        """TensorBoard ``add_scalar`` for every numeric value (lists, strings, None and the step keys
        ``epoch``/``iter`` are skipped), tagged by :func:`tensorboard_tag`."""
        if not self.enabled:
            return
        writer = self._tb()
        for key, value in scalars.items():
            if key in STEP_KEYS:
                continue
            tag = tensorboard_tag(key)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            elif isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(tag, value, global_step=step)
        writer.flush()

    def close(self) -> None:
        # Runs on the way out of a failed run too: an error here must not keep run.lock held.
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except Exception as e:  # a full disk under TensorBoard's own writer
                print_main(f"warning: closing the TensorBoard log in {self.output_dir} failed: {e}")
        if self._jsonl is not None:
            fd, self._jsonl = self._jsonl, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def save_args_yaml(args_namespace: Union[argparse.Namespace, Mapping[str, Any]], path: PathLike) -> None:
    """Write the run's arguments as YAML (plain types only, so ``yaml.safe_load`` reads it back)."""
    import yaml

    args = vars(args_namespace) if isinstance(args_namespace, argparse.Namespace) else dict(args_namespace)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(to_jsonable(args), f, sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------- progress


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _format_metric(name: str, value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return f"{name} {value}"
    if isinstance(value, (int, np.integer)):
        return f"{name} {int(value)}"
    value = float(value)
    if name == "lr":
        return f"lr {value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"lr {value:.2e}"
    return f"{name} {value:.3f}"


def progress_line(
    epoch: int, it: int, iters: int, elapsed: float, images_seen: int, *, epochs: Optional[int] = None,
    eta_s: Optional[float] = None, **metrics: Any
) -> str:
    """One progress line, e.g. ``[epoch 3][ 40/120] loss 2.314 lr 0.0200 42.1 img/s eta 0:01:54``.

    Args:
        epoch: the epoch as displayed.
        it: iterations done in this epoch (1-based position).
        iters: iterations per epoch.
        elapsed: seconds spent in this epoch so far.
        images_seen: images processed in this epoch so far (by this process).
        epochs: total epochs; when given (with 0-based ``epoch``) the ETA covers the
            remaining epochs too, otherwise only the rest of this epoch.
        eta_s: seconds left, when the caller knows better (e.g. the whole run's); overrides
            the estimate from ``elapsed``.
        metrics: extra ``name=value`` pairs printed in order (``lr`` gets 4 decimals).
    """
    width = len(str(iters))
    parts = [f"[epoch {epoch}][{it:>{width}}/{iters}]"]
    parts += [_format_metric(k, v) for k, v in metrics.items()]
    rate = images_seen / elapsed if elapsed > 0 else float("nan")
    parts.append(f"{rate:.1f} img/s" if math.isfinite(rate) else "- img/s")
    remaining = iters - it
    if epochs is not None:
        remaining += iters * max(epochs - epoch - 1, 0)
    eta = elapsed / it * remaining if it > 0 else float("nan")
    if eta_s is not None:
        eta = eta_s
    parts.append(f"eta {_format_duration(eta)}")
    return " ".join(parts)


class ProgressMeter:
    """Times an epoch and prints :func:`progress_line` every ``print_freq`` iterations (and the last).

    Usage: ``pm.start_epoch(e)`` then ``pm.step(batch_size, loss=..., lr=...)`` per iteration.
    """

    def __init__(
        self,
        iters: int,
        *,
        epochs: Optional[int] = None,
        print_freq: int = 10,
        printer: Callable[[str], None] = print_main,
    ) -> None:
        self.iters = int(iters)
        self.epochs = epochs
        self.print_freq = max(int(print_freq), 1)
        self.printer = printer
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.it = 0
        self.images = 0
        self._t0 = time.perf_counter()

    def step(self, batch_size: int, **metrics: Any) -> Optional[str]:
        """Record one iteration; returns the line when one was printed."""
        self.it += 1
        self.images += int(batch_size)
        if self.it % self.print_freq and self.it != self.iters:
            return None
        line = progress_line(
            self.epoch, self.it, self.iters, time.perf_counter() - self._t0, self.images,
            epochs=self.epochs, **metrics,
        )
        self.printer(line)
        return line
