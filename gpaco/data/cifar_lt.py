"""CIFAR-10-LT / CIFAR-100-LT built from the standard CIFAR python pickles (never downloads).

On-disk layout (what ``torchvision.datasets.CIFAR100(root, download=True)`` leaves, or the
"python version" tarballs from https://www.cs.toronto.edu/~kriz/cifar.html unpacked):

* CIFAR-100: ``root/cifar-100-python/{train,test,meta}``
* CIFAR-10:  ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``

The long-tailed train subset is exactly the one of the PaCo/GPaCo (LDAM-style) code
(docs/method.md#data-and-augmentation): ``n_c = int(n_max * IF^(c/(C-1)))``, and the
kept indices of class ``c`` are the first ``n_c`` of that class's file-order indices
after one ``shuffle`` of a NumPy
legacy RNG seeded once with ``seed`` (classes processed 0..C-1). The subset is returned
class by class, in that order. The test split is the full balanced test set.
"""
from __future__ import annotations

import os
import pickle
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .splits import DataError

__all__ = ["lt_class_counts", "CIFARLT"]

_LAYOUT = {
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels"),
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
}


def lt_class_counts(n_max: float, num_classes: int, imb_factor: float) -> List[int]:
    """Exponential long-tail profile ``[int(n_max * imb_factor ** (c / (C - 1))) for c]``.

    Class 0 is the head (``n_max``), class ``C-1`` the tail (``n_max * imb_factor``);
    ``imb_factor=0.01`` is "imbalance ratio 100". ``imb_factor=1`` gives a balanced set.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0 < imb_factor <= 1:
        raise ValueError(f"imb_factor must be in (0, 1] (0.01 = ratio 100), got {imb_factor}")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * imb_factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]


# What a CIFAR python pickle (or one re-saved by NumPy 1/2) may reference; anything else
# (os.system, builtins.eval, ...) is refused before it is called.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only: a CIFAR file is data, and a
    full unpickler would run whatever code a tampered file names."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (a CIFAR pickle holds only arrays, "
                                         f"lists and dicts)")
        return super().find_class(module, name)


def _unpickle(path: str, layout_hint: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"{path}: CIFAR file not found; expected the python-version layout {layout_hint}")
    try:
        with open(path, "rb") as f:
            # latin1 reads the original Python 2 pickles; keys may then be str or bytes.
            raw = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # any unpickling failure means a corrupt/foreign file
        msg = " ".join(str(exc).split())[:200]
        raise DataError(f"{path}: not a readable CIFAR python pickle ({type(exc).__name__}: {msg})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a pickled dict with 'data' and labels, got {type(raw).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _load_cifar(root: str, num_classes: int, train: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 32, 32, 3]`` uint8 and labels ``[N]`` int64 of one CIFAR split, in file order."""
    folder, train_files, test_files, label_key = _LAYOUT[num_classes]
    base = root if os.path.isfile(os.path.join(root, (train_files + test_files)[0])) else os.path.join(root, folder)
    hint = f"{os.path.join(root, folder)}/{{{','.join(train_files + test_files)}}}"
    datas, labels = [], []
    for name in train_files if train else test_files:
        path = os.path.join(base, name)
        entry = _unpickle(path, hint)
        if "data" not in entry or label_key not in entry:
            raise DataError(f"{path}: CIFAR-{num_classes} pickle must hold 'data' and '{label_key}', "
                            f"got {sorted(map(repr, entry))[:10]}")
        try:
            data = np.asarray(entry["data"])
            lab = np.asarray(entry[label_key])
            if data.dtype != np.uint8 and np.issubdtype(data.dtype, np.integer) and data.ndim == 2:
                if data.size and (data.min() < 0 or data.max() > 255):
                    raise ValueError("pixel values outside 0..255")
                data = data.astype(np.uint8)
            if data.dtype != np.uint8 or lab.ndim != 1 or not (np.issubdtype(lab.dtype, np.integer) or len(lab) == 0):
                raise TypeError(f"'data' must be uint8 and '{label_key}' a list of integers, got {data.dtype} "
                                f"and {lab.dtype} of shape {lab.shape}")
            lab = lab.astype(np.int64)
        except Exception as exc:  # ragged lists, strings, objects, out-of-range integers
            msg = " ".join(str(exc).split())[:200]
            raise DataError(f"{path}: 'data'/'{label_key}' are not a CIFAR image array and label list "
                            f"({type(exc).__name__}: {msg})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(lab):
            raise DataError(
                f"{path}: expected 'data' of shape [N, 3072] and N labels, got {data.shape} and {lab.shape}"
            )
        if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
            raise DataError(f"{path}: labels must be in 0..{num_classes - 1}, got {lab.min()}..{lab.max()}")
        datas.append(data)
        labels.append(lab)
    data = np.concatenate(datas).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW rows -> HWC images
    return np.ascontiguousarray(data), np.concatenate(labels)


class CIFARLT(Dataset):
    """CIFAR-10/100 with a long-tailed train subset; ``dataset[i] -> (transform(pil), label)``.

    Args:
        root: folder holding ``cifar-100-python/`` or ``cifar-10-batches-py/`` (or that
            folder itself).
        num_classes: 100 or 10.
        imb_factor: tail/head ratio of the train subset (0.01 = IF 100; 1.0 = full set).
        train: long-tailed train subset, else the full test set.
        transform: applied to the RGB PIL image (a two-view transform returns a list).
        seed: seeds the subset selection (0 = the paper's subset).
    Attributes:
        data: ``[N, 32, 32, 3]`` uint8. targets: ``[N]`` labels (list of int).
        indices: ``[N]`` positions of the kept images in the original split, so the
            subset can be saved and shipped.
        class_counts: ``[num_classes]``; num_classes.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        num_classes: int = 100,
        imb_factor: float = 0.01,
        train: bool = True,
        transform: Optional[Callable] = None,
        seed: int = 0,
    ) -> None:
        if num_classes not in _LAYOUT:
            raise ValueError(f"num_classes must be 10 or 100 (CIFAR-10/100), got {num_classes}")
        self.root = os.fspath(root)
        self.num_classes = num_classes
        self.imb_factor = imb_factor
        self.train = train
        self.transform = transform
        data, labels = _load_cifar(self.root, num_classes, train)
        if train:
            indices = self.select_lt_indices(labels, num_classes, imb_factor, seed)
        else:
            indices = np.arange(len(labels))
        self.indices = indices
        self.data = data[indices]
        self.targets: List[int] = labels[indices].tolist()
        self.class_counts = np.bincount(labels[indices], minlength=num_classes).tolist()

    @staticmethod
    def select_lt_indices(labels: Sequence[int], num_classes: int, imb_factor: float, seed: int = 0) -> np.ndarray:
        """Indices of the long-tailed subset, class by class (see the module docstring).

        ``n_max = len(labels) / num_classes`` (500 for CIFAR-100) as in the original.
        A local ``RandomState(seed)`` draws the same shuffles as ``np.random.seed(seed)``
        followed by ``np.random.shuffle`` (both are the legacy MT19937 generator) without
        touching NumPy's global state.
        """
        labels = np.asarray(labels)
        counts = lt_class_counts(len(labels) / num_classes, num_classes, imb_factor)
        rng = np.random.RandomState(seed)
        kept = []
        for c, n_c in enumerate(counts):
            idx = np.where(labels == c)[0]
            if len(idx) < n_c:
                raise DataError(f"class {c} has {len(idx)} training images, the long-tailed subset needs {n_c}")
            rng.shuffle(idx)
            kept.append(idx[:n_c])
        return np.concatenate(kept)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self) -> str:
        split = f"train, imb_factor={self.imb_factor}" if self.train else "test"
        return f"{type(self).__name__}(CIFAR-{self.num_classes} {split}, samples={len(self)})"
