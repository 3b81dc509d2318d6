"""Classification datasets, samplers and loaders (tools/train.py and tools/eval.py map their flags to these)."""
from __future__ import annotations

import os
import random
import zlib
from typing import Iterator, List, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from .cifar_lt import CIFARLT
from .folder import DEFAULT_SPLIT_SEED, FolderDataset, FolderSplit
from .splits import DataError, SplitDataset
from .transforms import NORMALIZATION, build_eval_transform, build_train_transform
from .workers import ignore_stop_signals


class SyntheticDataset(Dataset):
    """Random RGB images with long-tailed labels: the --dry-run stand-in when the data is absent."""

    def __init__(self, num_samples: int, num_classes: int, image_size: int, transform=None, seed: int = 0):
        self.num_classes = num_classes
        self.image_size = image_size
        self.transform = transform
        self.seed = seed
        # Every class present, then a long tail on class 0 (at least one extra image, so that
        # the counts are never all equal: label-aware smoothing needs a head and a tail).
        n = max(num_samples, num_classes + 1)
        labels = np.concatenate([np.arange(num_classes), np.zeros(n - num_classes, int)])
        self.targets = labels[:n].tolist()
        self.class_counts = np.bincount(self.targets, minlength=num_classes).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        rng = np.random.default_rng(self.seed + index)
        img = Image.fromarray(rng.integers(0, 256, (self.image_size, self.image_size, 3), dtype=np.uint8))
        return (self.transform(img) if self.transform else img), self.targets[index]


class ShardSampler(Sampler[int]):
    """Every index exactly once over all processes (no padding): rank r takes r, r+W, ...

    DistributedSampler pads the last batch with repeated samples, which would count some
    test images twice; evaluation needs each sample once.
    """

    def __init__(self, num_samples: int, rank: int, world_size: int):
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def is_cifar(dataset: str) -> bool:
    """``cifar10`` / ``cifar100``: the CIFAR python pickles instead of split lists of image files."""
    return dataset in ("cifar10", "cifar100")


def is_folder(dataset: str) -> bool:
    """``folder``: a tree of class folders under the data root, split at start-up (:mod:`gpaco.data.folder`)."""
    return dataset == "folder"


def is_label_free(dataset: str) -> bool:
    """``webdataset``: training images without labels (tar shards read as a stream; CC3M)."""
    return dataset == "webdataset"


def build_train_dataset(*, dataset: str, data_root: str, train_list: Optional[str], aug: str, image_size: int,
                        norm: str, num_classes: Optional[int] = None, imb_factor: float = 0.01, randaug_n: int = 2,
                        randaug_m: int = 10, allow_outside_root: bool = False, skip_bad_images: bool = False,
                        follow_symlinks: bool = False, synthetic: bool = False, gpu_aug: bool = False,
                        epoch_iters: Optional[int] = None, split_seed: int = DEFAULT_SPLIT_SEED):
    """The training split: ``dataset`` ``split`` (the ``train_list`` file under ``data_root``),
    ``folder`` (the train part of the class folders under ``data_root``, split with ``split_seed``:
    :class:`~gpaco.data.folder.FolderDataset`),
    ``cifar10``/``cifar100`` (the long-tailed subset of ``imb_factor``), ``webdataset`` (the
    label-free images of the tar shards the pattern ``train_list`` names, under ``data_root``
    unless absolute, ``epoch_iters`` batches per process per epoch:
    :class:`~gpaco.data.webdataset_reader.WebDatasetImages`, not a map-style Dataset), or
    ``synthetic`` random images (dry runs without data), with the ``aug`` strategy's transform.
    ``gpu_aug``: the workers' half of ``--gpu-aug`` (:class:`~gpaco.data.gpu_aug.GpuAugViews`;
    uint8 crops + parameters)."""
    mean, std = NORMALIZATION[norm]
    if gpu_aug:
        from .gpu_aug import GpuAugViews

        transform = GpuAugViews(aug, image_size, randaug_n, randaug_m)
    else:
        transform = build_train_transform(aug, image_size=image_size, mean=mean, std=std, randaug_n=randaug_n,
                                          randaug_m=randaug_m)
    if synthetic:
        return SyntheticDataset(64, num_classes or 10, image_size, transform)
    if is_cifar(dataset):
        return CIFARLT(data_root, num_classes=100 if dataset == "cifar100" else 10, imb_factor=imb_factor,
                       train=True, transform=transform, seed=0)
    if is_label_free(dataset):
        from .webdataset_reader import WebDatasetImages, expand_shards  # it imports this module

        if epoch_iters is None:
            raise ValueError("dataset 'webdataset' needs epoch_iters (its shards are read as a stream)")
        return WebDatasetImages(expand_shards(train_list, data_root), transform, epoch_iters=epoch_iters,
                                num_classes=num_classes, name=train_list)
    if is_folder(dataset):
        return FolderDataset(data_root, "train", transform, seed=split_seed, num_classes=num_classes,
                             allow_outside_root=allow_outside_root, skip_bad_images=skip_bad_images,
                             follow_symlinks=follow_symlinks)
    return SplitDataset(train_list, data_root, transform, num_classes=num_classes,
                        allow_outside_root=allow_outside_root, skip_bad_images=skip_bad_images,
                        follow_symlinks=follow_symlinks)


def build_eval_dataset(list_path: Optional[str], *, dataset: str, data_root: str, num_classes: int, image_size: int,
                       norm: str, resize_size: Optional[int] = None, interpolation: str = "bilinear",
                       allow_outside_root: bool = False, skip_bad_images: bool = False, follow_symlinks: bool = False,
                       synthetic: bool = False, reduced_decode: bool = False, split: str = "test",
                       split_seed: int = DEFAULT_SPLIT_SEED,
                       folder_split: Optional[FolderSplit] = None) -> Optional[Dataset]:
    """The val/test split (None if ``list_path`` is not given); CIFAR's test set for the CIFAR datasets;
    ``folder``: the ``split`` part (``"val"`` or ``"test"``) of the class folders under ``data_root``
    (split with ``split_seed``, or ``folder_split``, the train set's; None when the split is empty).
    ``reduced_decode``: JPEGs decoded at reduced size (changes pixels; default full decode)."""
    mean, std = NORMALIZATION[norm]
    if is_cifar(dataset) and resize_size is None:
        resize_size = image_size  # CIFAR's test images as they are (ToTensor > Normalize), not resized and cropped
    transform = build_eval_transform(image_size, resize_size=resize_size, mean=mean, std=std,
                                     interpolation=interpolation, reduced_decode=reduced_decode)
    if synthetic:
        return SyntheticDataset(16, num_classes, image_size, transform, seed=1)
    if is_cifar(dataset):
        return CIFARLT(data_root, num_classes=100 if dataset == "cifar100" else 10, imb_factor=1.0, train=False,
                       transform=transform)
    if is_folder(dataset):
        if folder_split is not None and not folder_split.samples[split]:
            return None  # every class too small to spare an image for it
        ds = FolderDataset(data_root, split, transform, seed=split_seed, num_classes=num_classes,
                           allow_outside_root=allow_outside_root, skip_bad_images=skip_bad_images,
                           follow_symlinks=follow_symlinks, folder_split=folder_split)
        return ds if len(ds) else None
    if not list_path:
        return None
    return SplitDataset(list_path, data_root, transform, num_classes=num_classes,
                        allow_outside_root=allow_outside_root, skip_bad_images=skip_bad_images,
                        follow_symlinks=follow_symlinks)


def data_fingerprint(dataset: Optional[Dataset]) -> Optional[dict]:
    """What every rank must agree on about a dataset: its file, size, class count and (split
    lists) the CRC-32 of its lines; tar shards: the pattern, the number of shard files and the
    CRC-32 of their names (the ranks deal the sorted list out among themselves); None for no dataset."""
    if dataset is None:
        return None
    from .webdataset_reader import WebDatasetImages  # it imports this module

    if isinstance(dataset, WebDatasetImages):
        names = "\n".join(os.path.basename(s) for s in dataset.shards).encode()
        return {"file": dataset.name, "samples": len(dataset.shards), "classes": dataset.num_classes,
                "crc": zlib.crc32(names)}
    return {"file": getattr(dataset, "list_path", None) or getattr(dataset, "name", None) or type(dataset).__name__,
            "samples": len(dataset), "classes": getattr(dataset, "num_classes", None),
            "crc": getattr(dataset, "list_crc", None)}


def check_ranks_agree(datasets: dict) -> None:
    """Compare the datasets of every rank once, before training: a rank whose split list
    differs (another copy of the file on its node) would otherwise wait in a collective
    until --dist-timeout. ``datasets``: flag -> dataset (or None). Raises
    :class:`DataError` on every rank, naming the rank and the file. No-op in one process."""
    from gpaco.distributed import all_gather_objects, get_world_size

    if get_world_size() == 1:
        return
    mine = {flag: data_fingerprint(ds) for flag, ds in datasets.items()}
    everyone = all_gather_objects(mine)
    for rank, theirs in enumerate(everyone[1:], 1):
        for flag, ref in everyone[0].items():
            other = theirs.get(flag)
            if other == ref:
                continue
            if ref is None or other is None:
                raise DataError(f"{flag}: rank {rank} {'has' if other else 'lacks'} a dataset that rank 0 "
                                f"{'lacks' if other else 'has'}; every rank must be given the same flags")
            diff = ", ".join(f"{k} {other[k]} on rank {rank} vs {ref[k]} on rank 0"
                             for k in ("samples", "classes", "crc", "file") if other[k] != ref[k])
            raise DataError(f"{flag} {other['file']} differs between ranks: {diff}; every rank (node) must "
                            f"read the same split list")


def data_available(*, dataset: str, data_root: str, list_path: Optional[str]) -> bool:
    """Whether the data a run needs is on disk (else a dry run uses synthetic images)."""
    if is_cifar(dataset) or is_folder(dataset):
        return os.path.isdir(data_root)
    return bool(list_path) and os.path.isfile(list_path) and os.path.isdir(data_root)


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start an epoch at an offset (a mid-epoch resume).

    ``set_epoch(e)`` also resets the offset; ``set_start(n)`` then skips the first ``n``
    indices of this rank's order for that epoch, so the already-trained samples are
    neither loaded nor augmented again. The order itself is DistributedSampler's
    (seed + epoch), so the remaining indices are exactly those of the uninterrupted run.
    """

    start = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"sampler start {start} outside 0..{self.num_samples}")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixed from (seed, epoch, index) (splitmix64 steps): distinct streams per sample."""
    h = 0
    for x in (seed, epoch, index):
        h = (h + (x & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


class EpochSeededDataset(Dataset):
    """Wraps a training dataset so that sample ``i`` of epoch ``e`` is augmented from its own
    seed ``sample_seed(seed, e, i)`` (Python ``random``, NumPy's global RNG, torch's CPU RNG).

    The augmentation of a sample then depends neither on the number of loader workers nor
    on which worker or in which order it is loaded, so a run resumed mid-epoch with
    ``--workers N`` re-creates exactly the batches of the uninterrupted run. In the main
    process (``workers=0``) the global RNG states are saved and restored around each
    sample, so the model's own random draws (shuffle-BN, drop path, mixup) keep one
    stream that the checkpoint can restore. Other attributes are the wrapped dataset's.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _seed(self, index: int) -> None:
        s = sample_seed(self.seed, self.epoch, int(index))
        random.seed(s)
        np.random.seed(s & 0xFFFFFFFF)
        torch.default_generator.manual_seed(s)  # CPU only: never touches the CUDA generators

    def __getitem__(self, index: int):
        if get_worker_info() is not None:  # a worker's RNGs serve only this loader
            self._seed(index)
            return self.dataset[index]
        py, npy, th = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
        try:
            self._seed(index)
            return self.dataset[index]
        finally:
            random.setstate(py)
            np.random.set_state(npy)
            torch.default_generator.set_state(th)


def train_loader(dataset: Dataset, *, batch_size: int, workers: int, rank: int, world_size: int, seed: int,
                 pin_memory: bool, sampler: str = "random", drop_last: bool = True) -> DataLoader:
    """Shuffled; ``drop_last`` (the default: a queue needs a constant global batch) drops the
    epoch's last partial batch, False keeps it (every rank then gets the same number of batches,
    the sampler repeating a few images to even them out); call :func:`set_train_epoch`
    before every epoch. Each sample is augmented from its own (seed, epoch, index) seed
    (:class:`EpochSeededDataset`), the loader's base seed comes from a per-epoch generator.
    ``sampler="class_aware"``: class-balanced batches (:class:`~gpaco.data.samplers.ClassAwareSampler`).
    Tar shards (:class:`~gpaco.data.webdataset_reader.WebDatasetImages`): their own loader, full
    batches always, the images of each rank's shards in a shuffled stream (random sampling only)."""
    from .webdataset_reader import WebDatasetImages  # it imports this module

    if isinstance(dataset, WebDatasetImages):
        if sampler != "random":
            raise ValueError(f"sampler {sampler!r} needs labels; tar shards are read in a random stream")
        return dataset.loader(batch_size=batch_size, workers=workers, rank=rank, world_size=world_size, seed=seed,
                              pin_memory=pin_memory)
    if sampler == "class_aware":
        from .samplers import ClassAwareSampler

        sampler = ClassAwareSampler(dataset.targets, batch_size * world_size, rank=rank, world_size=world_size,
                                    seed=seed)
    elif sampler == "random":
        sampler = ResumableDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                              drop_last=drop_last)
    else:
        raise ValueError(f"sampler must be 'random' or 'class_aware', got {sampler!r}")
    loader = DataLoader(EpochSeededDataset(dataset, seed), batch_size=batch_size, sampler=sampler,
                        num_workers=workers, drop_last=drop_last, pin_memory=pin_memory,
                        worker_init_fn=ignore_stop_signals,
                        generator=torch.Generator().manual_seed(seed))  # not persistent: set per epoch
    return loader


def set_train_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Point a :func:`train_loader` at ``epoch``, skipping its first ``start_batch`` batches
    (mid-epoch resume): sampler order, per-sample augmentation seeds, worker base seed."""
    from .webdataset_reader import WebDatasetLoader  # it imports this module

    if isinstance(loader, WebDatasetLoader):  # tar shards: the epoch sets every seed of the stream
        loader.set_epoch(epoch, start_batch)
        return
    loader.sampler.set_epoch(epoch)
    loader.sampler.set_start(start_batch * loader.batch_size)
    if isinstance(loader.dataset, EpochSeededDataset):
        loader.dataset.set_epoch(epoch)
        seed = loader.dataset.seed
    else:
        seed = getattr(loader.sampler, "seed", 0)
    if loader.generator is not None:
        loader.generator.manual_seed(sample_seed(seed, epoch, -1))


def eval_loader(dataset: Dataset, *, batch_size: int, workers: int, rank: int, world_size: int,
                pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      num_workers=workers, pin_memory=pin_memory, worker_init_fn=ignore_stop_signals)


def class_counts_of(dataset: Dataset, num_classes: int) -> List[int]:
    counts = getattr(dataset, "class_counts", None)
    if counts is not None and len(counts) == num_classes:
        return list(counts)
    return np.bincount(np.asarray(dataset.targets), minlength=num_classes).tolist()
