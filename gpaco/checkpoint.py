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
import re
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "save_checkpoint", "load_checkpoint",
    "load_checkpoint_trusting_pickle", "plain_data", "read_safetensors_metadata", "unsafe_globals",
    "check_writable", "remove_stale_temporaries", "strip_prefix", "unwrap_state_dict", "rng_state", "set_rng_state", "find_resume",
    "RESUME_NAME", "DATA_GLOBALS", "check_loadable_tensors",
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


def save_checkpoint(state: Mapping[str, Any], path: PathLike, *,
                    metadata: Optional[Mapping[str, str]] = None) -> None:
    """Atomically write ``state`` to ``path`` (``torch.save``; ``.safetensors``: flat tensor dict).

    ``metadata``: ``{str: str}`` stored in a ``.safetensors`` header (ignored for ``.pth``:
    put it in ``state``); read it back with :func:`read_safetensors_metadata`.
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
            if metadata is not None and not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in metadata.items()):
                raise TypeError("safetensors metadata must be a {str: str} dict")
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

                f.write(st_save({k: v.detach().contiguous().cpu() for k, v in state.items()},
                                metadata=dict(metadata) if metadata else None))
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


# The temporaries of an interrupted write: save_checkpoint's ``.<name>.pth.<pid>.<id>.tmp`` and
# gpaco.engine.logging.atomic_path's ``<root>.<pid>.tmp<ext>`` (metrics.json, curves.png, ...).
_TEMPORARY = re.compile(r"^(?:\..+\.pth\.(?P<ckpt_pid>\d+)\.[0-9a-f]+\.tmp|.+\.(?P<pid>\d+)\.tmp(?:\.\w+)?)$")


def remove_stale_temporaries(out: str) -> int:
    """Delete the temporary files that a killed writer left in ``out`` (it writes such a file,
    then renames it): :func:`save_checkpoint`'s and ``atomic_path``'s, when their process is
    gone. Returns how many were removed."""
    removed = 0
    for name in os.listdir(out) if os.path.isdir(out) else ():
        match = _TEMPORARY.match(name)
        if match is None:
            continue  # not one of ours
        pid = int(match.group("ckpt_pid") or match.group("pid"))
        try:
            os.kill(pid, 0)
            continue  # the writer is alive
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue  # alive, another user; or not a pid
        try:
            os.remove(os.path.join(out, name))
            removed += 1
        except OSError:
            pass
    return removed


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


def _data_globals() -> list:
    """Classes whose pickled form is pure data (no code runs to rebuild them), for
    ``allow_data_objects``: ``argparse.Namespace`` (the original's ``args``) and NumPy
    scalars / arrays / dtypes (``best_acc`` as ``np.float64``). Both spellings of NumPy's
    module (1.x ``numpy.core``, 2.x ``numpy._core``) are listed, as files name the writer's."""
    import argparse

    out: list = [argparse.Namespace, np.dtype, np.ndarray]
    try:
        from numpy._core import multiarray as ma  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
    for fn in (ma.scalar, ma._reconstruct):
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            out.append((fn, f"{mod}.{fn.__name__}"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # the per-dtype classes of NumPy >= 1.25 (np.dtypes.Float64DType...)
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    return out


#: Names of the data-only classes :func:`load_checkpoint` restores with ``allow_data_objects=True``.
DATA_GLOBALS = ("argparse.Namespace", "numpy scalars (numpy.core.multiarray.scalar)", "numpy arrays", "numpy dtypes")


def unsafe_globals(path: PathLike) -> list:
    """The Python globals (``module.name``) a zip-format checkpoint needs beyond what a weights-only
    load accepts, read without unpickling anything ([] when unknown, e.g. legacy raw pickles)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(os.fspath(path)))
    except Exception:
        return []


def _unsafe_message(path: Path, detail: str) -> str:
    # torch's message is long and suggests weights_only=False; keep only the reason.
    reason = next((ln.strip() for ln in detail.splitlines() if "Unsupported" in ln or "GLOBAL" in ln), "")
    needed = unsafe_globals(path)
    if needed:
        reason = f"it needs {', '.join(needed)}"
    data_only = bool(needed) and all(_is_data_global(n) for n in needed)
    return (
        f"refusing to load checkpoint {path}: not a safe checkpoint, it contains pickled Python objects "
        f"beyond tensors and plain containers{f' ({reason})' if reason else ''}. Restoring such objects means unpickling, "
        f"which can execute arbitrary code embedded in the file. If (and only if) you trust where this "
        f"file came from, convert it once into a weights-only checkpoint with "
        f"`{CONVERT_HINT} {path} <out.pth>` and load the converted file."
        + (" (These are data-only classes: the conversion rebuilds them without running code from the file.)"
           if data_only else "")
    )


def _is_data_global(name: str) -> bool:
    """Whether ``name`` (as torch lists a checkpoint's globals) is one of :func:`_data_globals`."""
    return name in {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in _data_globals()}


def _is_weights_only_refusal(e: BaseException) -> bool:
    return isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e)


def load_checkpoint(path: PathLike, map_location: Any = "cpu", *, allow_data_objects: bool = False) -> dict:
    """Load a checkpoint dict without arbitrary unpickling.

    ``.safetensors`` files are read with safetensors (tensors only); anything else with
    ``torch.load(weights_only=True)``.

    ``allow_data_objects``: also accept the data-only classes of :data:`DATA_GLOBALS`
    (restored by torch's weights-only unpickler, so still no code from the file runs) and
    return them as plain values (:func:`plain_data`: a Namespace becomes a dict, NumPy
    scalars Python numbers, arrays tensors). Off by default.

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
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            if not (allow_data_objects and _is_weights_only_refusal(e)):
                raise
            with torch.serialization.safe_globals(_data_globals()):
                obj = plain_data(torch.load(path, map_location=map_location, weights_only=True))
    except pickle.UnpicklingError as e:
        if _is_weights_only_refusal(e):
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


def load_checkpoint_trusting_pickle(path: PathLike, map_location: Any = "cpu") -> Tuple[dict, List[str]]:
    """Full unpickling (``weights_only=False``): **runs whatever code the file holds**.

    Only for ``tools/convert_checkpoint.py --trust-pickle``, which the user runs knowingly on
    a file they trust. The data-only path (:func:`load_checkpoint` with
    ``allow_data_objects=True``) is tried first, so a file that merely holds an
    ``argparse.Namespace`` or NumPy scalars is still read without full unpickling.

    Returns:
        (checkpoint dict made of plain values (:func:`plain_data`), notes on what was done).
    """
    path = Path(path)
    try:
        return load_checkpoint(path, map_location, allow_data_objects=True), [
            "read with the weights-only unpickler (data-only classes allowed); nothing was executed"]
    except UnsafeCheckpointError:
        pass
    needed = unsafe_globals(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"could not unpickle {path}: {type(e).__name__}: {e}") from e
    notes: List[str] = [f"fully unpickled (--trust-pickle){': it needed ' + ', '.join(needed) if needed else ''}"]
    if isinstance(obj, torch.nn.Module):
        notes.append(f"the file holds a whole {type(obj).__name__} module; kept its state_dict()")
        obj = {"state_dict": obj.state_dict()}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict")
    return plain_data(obj, notes), notes


def plain_data(obj: Any, notes: Optional[List[str]] = None, where: str = "checkpoint") -> Any:
    """``obj`` rebuilt from values a weights-only load accepts: ``argparse.Namespace`` -> dict,
    NumPy scalars -> Python numbers, arrays -> tensors, modules -> their ``state_dict()``,
    ``OrderedDict`` kept. Anything else is dropped and named in ``notes`` (when given)."""
    import argparse

    if type(obj) in _SAFE_PRIMITIVES or isinstance(obj, _SAFE_CLASSES):
        return obj
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)) if obj.dtype != object else \
            [plain_data(v, notes, f"{where}[{i}]") for i, v in enumerate(obj.tolist())]
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            clean = plain_data(v, notes, f"{where}[{k!r}]")
            if clean is not _DROPPED:
                out[k if type(k) in _SAFE_PRIMITIVES else str(k)] = clean
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [plain_data(v, notes, f"{where}[{i}]") for i, v in enumerate(obj)]
        items = [v for v in items if v is not _DROPPED]
        return items if isinstance(obj, list) else tuple(items) if isinstance(obj, tuple) else type(obj)(items)
    if notes is not None:
        notes.append(f"dropped {where}: a {type(obj).__module__}.{type(obj).__qualname__}")
    return _DROPPED


_DROPPED = object()


def read_safetensors_metadata(path: PathLike) -> dict:
    """The ``{str: str}`` header metadata of a ``.safetensors`` file ({} if none)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"could not read safetensors file {path}: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- state helpers


#: Where training scripts put the weights: ours / MAE ``{'model': ...}``, Lightning and the
#: original ``{'state_dict': ...}``, a few others.
STATE_DICT_KEYS = ("model", "state_dict", "model_state", "module")


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """The state dict inside a loaded checkpoint object: the first mapping of tensors under
    :data:`STATE_DICT_KEYS` (or ``obj`` itself), tensors only, every leading ``module.``
    (DDP) stripped. The one unwrap every loader uses; raises ValueError naming ``where``."""
    state: Any = obj
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in STATE_DICT_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise ValueError(f"{where} does not hold a state dict (got {type(state).__name__})")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = str(key)
        while key.startswith("module."):
            key = key[len("module."):]
        if key in out:
            raise ValueError(f"{where}: keys collide on {key!r} after stripping 'module.' prefixes")
        out[key] = value
    return out


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


def check_loadable_tensors(state: Mapping[str, Any], own: Mapping[str, Any], path: PathLike,
                           names: Optional[Mapping[str, str]] = None) -> List[str]:
    """Check the tensors about to be loaded from ``path`` into a model whose state dict is ``own``.

    ``load_state_dict`` casts silently; we refuse integer (or bool) tensors loaded into float
    parameters (a wrong or damaged file) and non-finite values (NaN/Inf weights evaluate to
    chance accuracy with exit 0), and note half-precision tensors widened to float32, which is
    lossless. ``names``: our key -> the file's key, for messages. Returns the notes.
    """
    names = names or {}
    half = []
    for k, v in state.items():
        target = own.get(k)
        if not isinstance(v, torch.Tensor) or not isinstance(target, torch.Tensor):
            continue
        key = names.get(k, k)
        if target.is_floating_point() and not v.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key} is {str(v.dtype).replace('torch.', '')}, the model's "
                                  f"{k} is {str(target.dtype).replace('torch.', '')}: not weights for this model")
        if v.is_floating_point():
            if v.dtype != target.dtype and v.dtype in (torch.float16, torch.bfloat16):
                half.append(key)
            if not bool(torch.isfinite(v).all()):
                raise CheckpointError(f"{path}: tensor {key} has non-finite values (NaN or Inf): the weights are "
                                      f"broken (a diverged run?); evaluate an earlier checkpoint")
    if half:
        return [f"{len(half)} half-precision tensors (e.g. {half[0]}) widened to float32"]
    return []


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
