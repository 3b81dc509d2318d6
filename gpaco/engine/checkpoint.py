"""Checkpoint I/O: atomic saves, weights-only loads, RNG state, resume lookup.

* Saves go to a temporary file in the target directory, are fsync'ed, then renamed over
  the old file, so a crash or a full disk never leaves a truncated ``checkpoint.pth``.
* Every save is checked to contain only what ``torch.load(weights_only=True)`` accepts
  (tensors, numbers, strings, plain containers), so everything we write loads safely.
* Loads never unpickle arbitrary objects: a file that needs that (e.g. an original
  release checkpoint holding an ``argparse.Namespace``) is refused with
  :class:`UnsafeCheckpointError`, because unpickling can run arbitrary code.
"""
from __future__ import annotations

import os
import pickle
import random
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "save_checkpoint", "load_checkpoint",
    "check_writable", "strip_prefix", "rng_state", "set_rng_state", "find_resume",
    "RESUME_NAME",
]

PathLike = Union[str, os.PathLike]

#: The rolling checkpoint that ``resume='auto'`` picks up.
RESUME_NAME = "checkpoint.pth"

CONVERT_HINT = "python tools/convert_checkpoint.py --trust-pickle"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, read or understood; the message names the path."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs arbitrary unpickling (it could run code), so it was not loaded."""


# --------------------------------------------------------------------------- save

# Leaves torch.load(weights_only=True) accepts (checked against torch 2.14). Primitive types
# are matched exactly: subclasses (np.float64 is a float, IntEnum an int) pickle by reference.
_SAFE_PRIMITIVES = (str, bytes, int, float, complex, bool, type(None))
_SAFE_CLASSES = (torch.Tensor, torch.Size, torch.dtype, torch.device)


def _check_weights_only_safe(obj: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value that a weights-only load would refuse."""
    if type(obj) in _SAFE_PRIMITIVES or isinstance(obj, _SAFE_CLASSES):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            _check_weights_only_safe(k, f"{where} key {k!r}")
            _check_weights_only_safe(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple, set, frozenset):
        for i, v in enumerate(obj):
            _check_weights_only_safe(v, f"{where}[{i}]")
        return
    hint = ""
    if isinstance(obj, np.generic):
        hint = " (convert numpy scalars with .item())"
    elif isinstance(obj, np.ndarray):
        hint = " (convert numpy arrays with torch.from_numpy)"
    elif hasattr(obj, "__dict__") and not callable(obj):
        hint = " (store vars(obj) or a plain dict instead)"
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which a weights-only load "
        f"cannot restore{hint}"
    )


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); best effort elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: Mapping[str, Any], path: PathLike) -> None:
    """Atomically write ``state`` to ``path`` (``torch.save``; ``.safetensors``: flat tensor dict).

    On any failure the temporary file is removed, an existing ``path`` is left untouched,
    and :class:`CheckpointError` naming ``path`` is raised.
    """
    path = Path(path)
    safetensors_format = path.suffix == ".safetensors"
    try:
        if safetensors_format:
            bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
            if bad:
                raise TypeError(f"a .safetensors file holds a flat {{str: Tensor}} dict; offending keys {bad[:5]}")
        else:
            _check_weights_only_safe(dict(state))
    except TypeError as e:
        raise CheckpointError(f"refusing to save checkpoint {path}: {e}") from e

    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is an atomic rename on the same filesystem.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        # 0o666 & ~umask, like a normally created file (mkstemp would force 0o600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            if safetensors_format:
                from safetensors.torch import save as st_save

                f.write(st_save({k: v.detach().contiguous().cpu() for k, v in state.items()}))
            else:
                torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, Exception):
            raise CheckpointError(f"could not save checkpoint to {path}: {type(e).__name__}: {e}") from e
        raise  # KeyboardInterrupt / SystemExit: cleaned up, re-raised as is
    _fsync_dir(path.parent)


def check_writable(directory: PathLike) -> Path:
    """Create ``directory`` if needed and prove it is writable (write and remove a probe file).

    Call at start-up so a bad output dir fails before hours of training, not at the first save.
    """
    directory = Path(directory)
    probe = directory / f".write_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        try:
            probe.unlink()
        except OSError:
            pass
        raise CheckpointError(f"output directory {directory} is not writable: {type(e).__name__}: {e}") from e
    return directory


# --------------------------------------------------------------------------- load


def _unsafe_message(path: Path, detail: str) -> str:
    # torch's message is long and suggests weights_only=False; keep only the reason.
    reason = next((ln.strip() for ln in detail.splitlines() if "Unsupported" in ln or "GLOBAL" in ln), "")
    return (
        f"refusing to load checkpoint {path}: it contains pickled Python objects beyond tensors and "
        f"plain containers{f' ({reason})' if reason else ''}. Restoring such objects means unpickling, "
        f"which can execute arbitrary code embedded in the file. If (and only if) you trust where this "
        f"file came from, convert it once into a weights-only checkpoint with "
        f"`{CONVERT_HINT} {path} <out.pth>` and load the converted file."
    )


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint dict without arbitrary unpickling.

    ``.safetensors`` files are read with safetensors (tensors only); anything else with
    ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file needs full unpickling (see the message for how to
            convert it deliberately).
        CheckpointError: unreadable, truncated or not a checkpoint dict.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a directory, expected a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
        try:
            return dict(load_file(str(path), device=device))
        except Exception as e:
            raise CheckpointError(f"could not read safetensors file {path}: {type(e).__name__}: {e}") from e
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise UnsafeCheckpointError(_unsafe_message(path, str(e))) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another format): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict")
    return obj


# --------------------------------------------------------------------------- state helpers


def strip_prefix(state_dict: Mapping[str, Any], prefixes: Sequence[str] = ("module.",)) -> "OrderedDict[str, Any]":
    """Copy of ``state_dict`` with each leading prefix removed, in order (e.g. ``('module.', 'encoder_q.')``).

    Keys without the prefixes are kept as they are; two keys collapsing to one raise ValueError.
    """
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    out: "OrderedDict[str, Any]" = OrderedDict()
    for key, value in state_dict.items():
        new = key
        for p in prefixes:
            if new.startswith(p):
                new = new[len(p):]
        if new in out:
            raise ValueError(f"strip_prefix{tuple(prefixes)}: keys collide on {new!r} (from {key!r})")
        out[new] = value
    return out


def rng_state() -> dict:
    """Python ``random``, NumPy global, torch CPU (and CUDA) RNG states, as weights-only-safe values."""
    version, internal, gauss_next = random.getstate()
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        # 624 32-bit words + index: int64 holds them exactly.
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(bit_generator),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured. CUDA states are restored only when the
    device count matches (resuming on another machine keeps fresh CUDA generators)."""
    if "python" in state:
        py = state["python"]
        internal = tuple(int(x) for x in torch.as_tensor(py["state"]).tolist())
        random.setstate((int(py["version"]), internal, py["gauss_next"]))
    if "numpy" in state:
        npst = state["numpy"]
        keys = np.asarray(torch.as_tensor(npst["keys"]).numpy(), dtype=np.uint32)
        np.random.set_state(
            (npst["bit_generator"], keys, int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"]))
        )
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])


def find_resume(output_dir: PathLike, resume: Optional[str]) -> Optional[str]:
    """Which checkpoint to resume from.

    ``None``/``''`` -> None; ``'auto'`` -> ``output_dir/checkpoint.pth`` if it exists,
    else None (fresh start); any other value is a path that must exist.
    """
    if not resume:
        return None
    if resume == "auto":
        candidate = Path(output_dir) / RESUME_NAME
        return str(candidate) if candidate.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"--resume checkpoint not found: {resume}")
    return str(resume)
