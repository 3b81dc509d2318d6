"""Datasets and loaders from the command-line flags (used by tools/train.py and tools/eval.py)."""
from __future__ import annotations

import argparse
import os
from typing import Iterator, List, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .cifar_lt import CIFARLT
from .splits import SplitDataset
from .transforms import NORMALIZATION, build_eval_transform, build_train_transform


class SyntheticDataset(Dataset):
    """Random RGB images with long-tailed labels: the --dry-run stand-in when the data is absent."""

    def __init__(self, num_samples: int, num_classes: int, image_size: int, transform=None, seed: int = 0):
        self.num_classes = num_classes
        self.image_size = image_size
        self.transform = transform
        self.seed = seed
        # Every class present, then a long tail on class 0.
        labels = np.concatenate([np.arange(num_classes), np.zeros(max(0, num_samples - num_classes), int)])
        self.targets = labels[:max(num_samples, num_classes)].tolist()
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


def _normalization(args: argparse.Namespace):
    return NORMALIZATION[args.norm]


def build_train_dataset(args: argparse.Namespace, *, synthetic: bool = False) -> Dataset:
    mean, std = _normalization(args)
    transform = build_train_transform(args.aug, image_size=args.image_size, mean=mean, std=std,
                                      randaug_n=args.randaug_n, randaug_m=args.randaug_m)
    if synthetic:
        return SyntheticDataset(64, args.num_classes or 10, args.image_size, transform)
    if args.dataset.startswith("cifar"):
        return CIFARLT(args.data_root, num_classes=100 if args.dataset == "cifar100" else 10,
                       imb_factor=args.imb_factor, train=True, transform=transform, seed=0)
    return SplitDataset(args.train_list, args.data_root, transform, num_classes=args.num_classes,
                        allow_outside_root=args.allow_outside_root, skip_bad_images=args.skip_bad_images)


def build_eval_dataset(args: argparse.Namespace, list_path: Optional[str], *, num_classes: int,
                       synthetic: bool = False) -> Optional[Dataset]:
    """The val/test split (None if not given); CIFAR's test set for the CIFAR datasets."""
    mean, std = _normalization(args)
    transform = build_eval_transform(args.image_size, resize_size=args.resize_size, mean=mean, std=std,
                                     interpolation=getattr(args, "interpolation", "bilinear"))
    if synthetic:
        return SyntheticDataset(16, num_classes, args.image_size, transform, seed=1)
    if args.dataset.startswith("cifar"):
        return CIFARLT(args.data_root, num_classes=100 if args.dataset == "cifar100" else 10,
                       imb_factor=1.0, train=False, transform=transform)
    if not list_path:
        return None
    return SplitDataset(list_path, args.data_root, transform, num_classes=num_classes,
                        allow_outside_root=args.allow_outside_root, skip_bad_images=args.skip_bad_images)


def data_available(args: argparse.Namespace) -> bool:
    if args.dataset.startswith("cifar"):
        return os.path.isdir(args.data_root)
    return bool(args.train_list) and os.path.isfile(args.train_list) and os.path.isdir(args.data_root)


def train_loader(dataset: Dataset, *, batch_size: int, workers: int, rank: int, world_size: int, seed: int,
                 pin_memory: bool) -> DataLoader:
    """Shuffled, drop_last (the queue needs a constant global batch), reseeded by epoch via set_epoch."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=pin_memory)  # not persistent: workers re-seed from the per-epoch RNG


def eval_loader(dataset: Dataset, *, batch_size: int, workers: int, rank: int, world_size: int,
                pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      num_workers=workers, pin_memory=pin_memory)


def class_counts_of(dataset: Dataset, num_classes: int) -> List[int]:
    counts = getattr(dataset, "class_counts", None)
    if counts is not None and len(counts) == num_classes:
        return list(counts)
    return np.bincount(np.asarray(dataset.targets), minlength=num_classes).tolist()
